"""The embedded default: a tiny decoder learns 2-digit addition on a laptop CPU with GRPO.

A short supervised warm start imitates an unreliable teacher, who writes 60% of the answers with their
digits reversed: the model learns the format and the sums, but not which way round to write them.
GRPO with an exact-match reward then raises held-out greedy accuracy from the reward alone. Runs in a few minutes on 2 CPU cores:

  python -m grpo_jax.main --config experiments/default.py --workdir /tmp/grpo_default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # every random draw derives from this
  c.mesh = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices

  c.model = ml_collections.ConfigDict()
  c.model.source = "tiny"  # "tiny": a fresh ModelConfig.tiny(); "hf": a local Hugging Face directory
  c.model.path = ""  # the Hugging Face directory when source == "hf"
  c.model.dtype = "float32"  # activation dtype ("bfloat16" on TPU/GPU)
  c.model.param_dtype = "float32"  # parameter dtype of the tiny model
  # Apply the stacked blocks with a lax.scan (compile time independent of depth; the default for deep
  # models and accelerators) or unrolled (False: faster steps on a CPU, compile grows with depth).
  c.model.scan_layers = True
  # The same for the sampler's prefill and decode steps (False: per-layer caches, faster on a CPU).
  c.model.scan_decode = True
  # Rematerialization in the backward pass: "none", "full" (keep each block's input only), "dots"
  # (keep matmul outputs) or "dots_no_batch" (keep weight matmuls, recompute attention).
  c.model.remat = "none"
  c.model.tiny = ml_collections.ConfigDict(dict(  # ModelConfig.tiny overrides
      hidden_size=128,  # model width D
      intermediate_size=384,  # MLP hidden width
      num_layers=4,  # decoder layers
      num_heads=4,  # query heads
      num_kv_heads=2,  # key/value heads (grouped-query attention)
      head_dim=32))  # width of one head
  c.tokenizer = "char"  # "char": the package's character tokenizer; else a tokenizer directory

  c.task = ml_collections.ConfigDict()
  c.task.name = "arithmetic"  # see grpo_jax.tasks.get_task
  c.task.kwargs = ml_collections.ConfigDict(dict(  # passed to get_task
      num_train=20000,  # training questions
      num_eval=256,  # held-out questions, never in the training set
      num_digits=2,  # digits per operand
      num_operands=2,  # operands per question
      ops="+",  # operators drawn from
      seed=0))  # which questions are drawn

  c.prompt = ml_collections.ConfigDict()
  c.prompt.system_prompt = ""  # prepended as a system message with chat templates
  c.prompt.template = ""  # plain template with {question}; "" uses the prompt text as is
  c.prompt.use_chat_template = False  # format with the tokenizer's chat template

  c.rewards = ml_collections.ConfigDict()
  c.rewards.names = ("exact_match",)  # reward functions (grpo_jax.rewards registry), summed
  c.rewards.weights = (1.0,)  # one weight per reward function
  c.rewards.kwargs = ml_collections.ConfigDict()  # per-function keyword arguments, by name
  c.rewards.correctness = "exact_match"  # the reward that defines "correct" in evaluation
  c.rewards.timeout_s = 10.0  # per reward-function call
  c.rewards.on_error = "fallback"  # a failing reward: "fallback" value or "drop" the sample
  c.rewards.fallback = 0.0  # the reward a failed sample gets with on_error="fallback"

  c.rollout = ml_collections.ConfigDict()
  c.rollout.prompts_per_step = 32  # B prompts per GRPO step
  c.rollout.prompt_len = 8  # prompts are left-padded to this bucket (tokens)
  c.rollout.max_new_tokens = 4  # T: completion length (answer + EOS)
  c.rollout.temperature = 1.0  # sampling temperature (logits are scored at the same temperature)
  c.rollout.top_k = 0  # 0: off
  c.rollout.top_p = 1.0  # 1.0: off
  c.rollout.min_p = 0.0  # 0.0: off
  c.rollout.logprobs_mode = "full"  # sampler log-probs: full (vocabulary) | truncated (the filtered q)
  c.rollout.off_policy_steps = 0  # 1: the next rollout runs during this update (one-step-off-policy, async)

  # Multi-turn / tool-use episodes (grpo_jax.env, grpo_jax.multiturn): the model takes up to max_turns turns
  # of rollout.max_new_tokens tokens; the environment's observations are context, masked out of the loss.
  c.env = ml_collections.ConfigDict()
  c.env.name = ""  # "": single-turn rollouts; "calculator", a register_env name, or "package.module:factory"
  c.env.kwargs = ml_collections.ConfigDict()  # options of the environment factory
  c.env.max_turns = 3  # model turns per episode at most
  c.env.max_obs_tokens = 16  # tokens per environment observation at most (longer ones are cut)

  c.grpo = ml_collections.ConfigDict()
  c.grpo.group_size = 8  # G completions per prompt
  c.grpo.estimator = "grpo"  # grpo | dr_grpo | rloo
  c.grpo.scale = "group"  # group | batch | none: what the advantage is divided by
  c.grpo.beta = 0.0  # KL coefficient (DeepSeekMath 0.04; 0 skips the reference model)
  c.grpo.kl_kind = "k3"  # k1 | k2 | k3 | low_var_kl
  c.grpo.kl_in_reward = False  # True: PPO-style, subtract beta*KL from the reward
  c.grpo.clip_low = 0.2  # epsilon (lower)
  c.grpo.clip_high = 0.2  # epsilon (upper; DAPO clip-higher uses 0.28)
  c.grpo.clip_c = ml_collections.config_dict.placeholder(float)  # dual-clip constant (> 1) or None
  c.grpo.ratio_level = "token"  # token (GRPO) | sequence (GSPO)
  c.grpo.agg = "seq-mean-token-mean"  # loss aggregation (see losses.aggregate)
  c.grpo.norm_len = ml_collections.config_dict.placeholder(int)  # Dr. GRPO constant; None: T
  c.grpo.num_iterations = 1  # mu: optimization passes per rollout
  c.grpo.num_minibatches = 1  # optimizer updates per pass
  c.grpo.grad_accum = 1  # microbatches per update
  c.grpo.old_logp = "sampler"  # sampler | rescore: where old-policy log-probs come from
  c.grpo.ref_reset_every = 0  # iterative GRPO: reference := policy every K steps (0: never)
  c.grpo.filter_zero_std = False  # DAPO dynamic sampling (mask groups with equal rewards)
  c.grpo.mask_truncated = False  # DAPO overlong filtering (mask completions without EOS)
  c.grpo.dynamic_sampling = False  # DAPO dynamic sampling: refill groups with equal rewards by new draws
  c.grpo.dynamic_sampling_max_rounds = 4  # prompt batches drawn per step at most (1st included)
  c.grpo.loss_type = "grpo"  # grpo | cispo | gmpo (clip_* in log space, paper 0.4) | sapo
  c.grpo.sapo_tau_pos = 1.0  # SAPO gate temperature for positive advantages
  c.grpo.sapo_tau_neg = 1.05  # SAPO gate temperature for negative advantages
  c.grpo.cov_control = "none"  # none | clip_cov | kl_cov: entropy control (loss_type grpo only)
  c.grpo.cov_ratio = 2e-4  # fraction of tokens selected (Clip-Cov 2e-4, KL-Cov 2e-3 in the paper)
  c.grpo.cov_bounds = (1.0, 5.0)  # Clip-Cov covariance band (omega_low, omega_high)
  c.grpo.kl_cov_coef = 1.0  # KL-Cov coefficient of |log ratio| on the selected tokens
  c.grpo.entropy_coef = 0.0  # entropy bonus: loss -= entropy_coef * entropy (0: off)
  c.grpo.rollout_is = "none"  # none | tis | mis: sampler/trainer mismatch correction (old_logp=rescore)
  c.grpo.rollout_is_level = "token"  # token | sequence: ratio per token or per completion
  c.grpo.rollout_is_threshold = 2.0  # C: TIS truncates weights at C, MIS zeroes ratios out of [1/C, C]
  c.grpo.logprob_chunk = 0  # completion positions per LM-head chunk, scoring and loss (0: unchunked)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-4  # AdamW peak learning rate
  c.optim.warmup_steps = 5  # in GRPO steps
  c.optim.schedule = "constant"  # constant | cosine
  c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
  c.optim.b1 = 0.9  # Adam first-moment decay
  c.optim.b2 = 0.99  # Adam second-moment decay
  c.optim.grad_clip = 1.0  # global-norm clipping

  # LoRA (Hu et al. 2021): train low-rank adapters W + (alpha / rank) * A B on the chosen projections of
  # every layer; the base stays frozen and is the reference model. Checkpoints hold the adapters and
  # their AdamW moments, not the base (rebuilt from model.source on resume; saved with each checkpoint
  # only when the sft warm start made it). train.export_hf writes the merged model.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # adapter rank r (0: full fine-tuning)
  c.lora.alpha = 16.0  # the adapter update is scaled by alpha / rank
  c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")  # the adapted projections

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 1000  # supervised warm-start steps before GRPO (0: none)
  c.sft.batch_size = 64  # demonstrations per warm-start step
  c.sft.lr = 3e-3  # warm-start Adam learning rate
  c.sft.target_key = "answer"  # example column the warm start imitates
  c.sft.noise_frac = 0.6  # fraction of demonstrations written reversed ("46" -> "64") by the teacher

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 60  # GRPO steps (rollouts)
  c.train.sample_every = 10  # log sample completions every N steps (0: never)
  c.train.num_samples_logged = 4  # completions per logged rollout (samples.jsonl)
  c.train.progress_bar = True  # tqdm bar on the console
  c.train.export_hf = False  # write the final policy as a Hugging Face directory
  # Stop after this many consecutive GRPO steps whose update was skipped (a NaN/Inf loss, gradient or update;
  # or no sample with a reward): the error names the step and the suspect. A skipped step leaves the state.
  c.train.max_consecutive_skips = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 10  # held-out evaluation every N steps (0: only at the start and end)
  c.eval.num_examples = 256  # held-out prompts evaluated
  c.eval.batch_size = 128  # prompts per sampler call
  c.eval.k = 4  # pass@k / maj@k samples per prompt (0: greedy accuracy only)
  c.eval.temperature = 1.0  # sampling temperature for pass@k / maj@k

  c.plan = ml_collections.ConfigDict()
  # Memory per device (GiB) that the planner (python -m grpo_jax.plan) checks the run against before building
  # it; 0: the device's own memory when JAX reports it (TPU, GPU), else no check (CPU).
  c.plan.device_memory_gb = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 20  # save every N GRPO steps (and at the end)
  c.checkpoint.keep = 2  # keep the last K checkpoints ...
  c.checkpoint.best_metric = "eval/accuracy"  # ... plus the best one by this eval metric
  c.checkpoint.async_save = True  # write checkpoints in the background
  # With checkpoints in the workdir of which none can be restored, a run refuses to start over unless this
  # is True (or --fresh_start is given): the unusable ones are then moved to checkpoints/corrupt/.
  c.checkpoint.allow_fresh_start = False
  return c
