"""GRPO on GSM8K with Qwen2.5-0.5B-Instruct (a Cloud TPU / GPU run; the model and data are local files).

  python -m grpo_jax.main --config experiments/qwen2_5_0_5b_gsm8k.py \
      --config.model.path=/data/Qwen2.5-0.5B-Instruct \
      --config.task.kwargs.train_path=/data/gsm8k/train.jsonl \
      --config.task.kwargs.eval_path=/data/gsm8k/test.jsonl --workdir gs://bucket/runs/gsm8k

Settings and their sources:
- G = 16, beta = 0.04 (k3), eps = 0.2, one update per rollout (mu = 1): DeepSeekMath §4.2 / Table 6 use
  G = 64, beta = 0.04, lr 1e-6, mu = 1; G = 16 is the common budget choice for 0.5B models (TRL GRPO
  examples use 8-16).
- lr 1e-6 constant after a short warmup, AdamW (b2 0.99), grad clip 1.0: DeepSeekMath and
  SimpleRL-Zoo (Zeng et al. 2025) for Qwen2.5-0.5B.
- 512 new tokens, temperature 1.0: SimpleRL-Zoo samples at 1.0; GSM8K chains of thought fit in 512.
- Prompt: Qwen's math system prompt ("Please reason step by step, and put your final answer within
  \\boxed{}."), graded by `math_correctness` (\\boxed / #### / last number, numeric + symbolic).
- model.remat = "dots_no_batch" and grpo.logprob_chunk = 128: the smallest change that fits a v5e chip
  (without remat the update needs 16 GiB of activations per chip; without chunking the LM head's
  backward needs 3 x [8, 512, 151936] float32 per chip).

Memory per device, from the planner (`grpo_jax.plan`: abstract shapes only, nothing is allocated; the model
directory's config.json is all it reads), on a v5e-8 (8 chips of 16 GiB HBM; the mesh (1, -1, 1) is FSDP
over the 8 chips) and on one H100 (80 GB):

  $ python -m grpo_jax.plan --config experiments/qwen2_5_0_5b_gsm8k.py \
      --config.model.path=/data/Qwen2.5-0.5B-Instruct --num_devices 8 --device_memory_gb 16
  mesh (data, fsdp, tensor) = (1, 8, 1); 494.0M parameters (bfloat16), 24 layers, vocab 151936
  remat 'dots_no_batch', logprob_chunk 128, scan_layers True
  rows per device: rollout 128, update micro-batch and prepare part 8, sampler 256
  MiB per device; the state (in every phase)
    params                             117.8
    opt_state                          235.7
    ref_params                         117.8
    batch                                2.0
    fsdp_gather                         28.4
  sampling phase
    kv_cache                          2301.0
    kv_copy                           1150.5
    sampler_work                      2881.5
    = peak with the state             6834.7
  prepare phase
    prepare                            861.9
    = peak with the state             1363.7
  update phase
    grads                              235.7
    activations                       3610.3
    layer_work                        1151.9
    logits                            1780.5
    = peak with the state             6128.3
  peak: 6.67 GiB per device (sampling phase)
  device memory 16.00 GiB: fits (42%)
  $ python -m grpo_jax.plan --config experiments/qwen2_5_0_5b_gsm8k.py \
      --config.model.path=/data/Qwen2.5-0.5B-Instruct --num_devices 1 --device_memory_gb 80
  mesh (data, fsdp, tensor) = (1, 1, 1); 494.0M parameters (bfloat16), 24 layers, vocab 151936
  remat 'dots_no_batch', logprob_chunk 128, scan_layers True
  rows per device: rollout 1024, update micro-batch and prepare part 64, sampler 2048
  MiB per device; the state (in every phase)
    params                             942.3
    opt_state                         1884.6
    ref_params                         942.3
    batch                               16.0
    fsdp_gather                          0.0
  sampling phase
    kv_cache                         18408.0
    kv_copy                           9204.0
    sampler_work                     23051.6
    = peak with the state            54448.8
  prepare phase
    prepare                           5077.9
    = peak with the state             8863.1
  update phase
    grads                             1884.6
    activations                      28882.8
    layer_work                        8817.1
    logits                           14244.0
    = peak with the state            48796.5
  peak: 53.17 GiB per device (sampling phase)
  device memory 80.00 GiB: fits (66%)

The peak is the sampler's at eval time (eval.batch_size x eval.k = 2048 sequences: on one H100 the prefill's
attention scores are [2048, 14, 255, 767] float32); the update peaks at 5.98 GiB (v5e) / 47.65 GiB (H100).

Expected throughput from the roofline (`benchmarks/roofline.py`'s matmul FLOP and decode-byte counts, at the
vendors' peaks: v5e 197 TFLOP/s bf16 and 819 GB/s HBM per chip; H100 SXM 989 TFLOP/s dense bf16 and
3350 GB/s), per GRPO step of N = 1024 sequences (P = 256, T = 512): rollout 0.731, reference 0.732, update
2.195 PFLOP, + 0.169 PFLOP recomputed in the backward (attention under dots_no_batch, the LM-head chunks).
The rollout is bound by HBM bandwidth (each decode step reads all weights and the KV cache so far), the
reference and update passes by compute:

  v5e-8: rollout >= 1.12 s, reference + update >= 1.96 s, step >= 3.08 s: <= 170k completion tokens/s
  H100:  rollout >= 1.13 s, reference + update >= 3.13 s, step >= 4.26 s: <= 123k completion tokens/s

Bounds at 100% of peak, evaluation excluded (`python benchmarks/gpu.py` measures the fraction reached on a
GPU). They come from:

  python - <<'EOF'
  import sys; sys.path.insert(0, "benchmarks"); import roofline as r
  d = r.Dims(vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, head_dim=64, intermediate=4864)
  n, p, t = 1024, 256, 512
  f = r.grpo_step_flops(d, n, p, t)
  attn = 4 * d.layers * d.heads * d.head_dim * (p + t) * (p + t + 1) // 2  # one sequence's attention
  extra = n * (attn + 2 * d.hidden * d.vocab * t)  # recomputed: attention, LM-head chunks
  for name, chips, tflops, gbps in (("v5e-8", 8, 197, 819), ("H100", 1, 989, 3350)):
    kv_s = sum(r.decode_bytes_per_token_step(d, n // chips, p + s, 2) for s in range(t)) / (gbps * 1e9)
    rollout_s = max(f["rollout"] / chips / (tflops * 1e12), kv_s)
    train_s = (f["reference"] + f["update"] + extra) / chips / (tflops * 1e12)
    print(name, rollout_s, train_s, n * t / (rollout_s + train_s))
  EOF
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402  (every field is documented there)


def get_config():
  c = default.get_config()
  c.mesh = (1, -1, 1)  # FSDP over all chips
  c.model.source = "hf"
  c.model.path = ""  # required: a local Qwen2.5-0.5B-Instruct directory
  c.model.dtype = "bfloat16"
  # Keep the weight matmuls' outputs, recompute attention in the backward pass: the update then fits a 16 GiB
  # v5e chip (no remat needs 16 GiB of activations per chip there; see the plan in the docstring).
  c.model.remat = "dots_no_batch"
  c.tokenizer = ""  # "": the model directory's tokenizer
  c.task.name = "gsm8k"
  c.task.kwargs = dict(train_path="", eval_path="", num_eval=0, seed=0)  # GSM8K jsonl/parquet files
  c.prompt.system_prompt = "Please reason step by step, and put your final answer within \\boxed{}."
  c.prompt.use_chat_template = True
  c.rewards.names = ("math_correctness",)
  c.rewards.weights = (1.0,)
  c.rewards.correctness = "math_correctness"
  c.rollout.prompts_per_step = 64
  c.rollout.prompt_len = 256
  c.rollout.max_new_tokens = 512
  c.rollout.temperature = 1.0
  c.grpo.group_size = 16
  c.grpo.beta = 0.04
  c.grpo.num_minibatches = 4  # 1024 sequences per rollout, 4 optimizer steps of 256
  c.grpo.grad_accum = 4
  c.grpo.logprob_chunk = 128  # the LM head 128 positions at a time: no [64, 512, 151936] float32 logits
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.sft.steps = 0  # the instruct model already follows the format
  c.train.num_steps = 500
  c.train.export_hf = True
  c.eval.every = 50
  c.eval.num_examples = 1319  # the GSM8K test set
  c.eval.batch_size = 256
  c.eval.k = 8
  c.eval.temperature = 1.0
  c.checkpoint.every = 50
  c.checkpoint.keep = 3
  return c
