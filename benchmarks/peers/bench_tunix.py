"""The peer-benchmark GRPO step with Google's Tunix: `RLCluster` with the vanilla rollout engine (Tunix's
own JAX sampler) and `GRPOLearner`. Prints one `RESULT {json}` line.

Only the shared workload is set (see common.py); everything else is Tunix's default, except two engine
sizes that the workload fixes: the KV cache holds exactly P + T positions (its default, 1024, would make
every decode step attend over 1024 slots) and `eos_tokens` is an id outside the vocabulary, so that no
completion stops before T tokens (the other two runners force T tokens too).

Usage: python benchmarks/peers/bench_tunix.py DATA_DIR [--steps 9] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("data_dir")
  ap.add_argument("--steps", type=int, default=9)
  ap.add_argument("--warmup", type=int, default=1)
  args = ap.parse_args()
  if args.steps <= args.warmup:
    ap.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")

  import importlib.metadata
  import json

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import transformers
  from tunix.models.qwen2 import model as qwen2_model
  from tunix.models.qwen2 import params as qwen2_params
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  from tunix.sft import metrics_logger

  c = common
  model_dir = os.path.join(args.data_dir, "model")
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  config = qwen2_model.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
      hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
      head_dim=hf["hidden_size"] // hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
      rope_theta=int(hf["rope_parameters"]["rope_theta"]), norm_eps=hf["rms_norm_eps"],
      use_tied_embedding=hf["tie_word_embeddings"], dtype=jnp.float32, param_dtype=jnp.float32)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  actor = qwen2_params.create_model_from_safe_tensors(model_dir, config, mesh, dtype=jnp.float32)
  reference = qwen2_params.create_model_from_safe_tensors(model_dir, config, mesh, dtype=jnp.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)

  rows = common.load_prompts(args.data_dir)
  # Columns as numpy arrays, like the grain batches of Tunix's examples (the learner np.repeat()s leaves).
  batches = [{k: np.array([r[col] for r in rows[i * c.PROMPTS_PER_STEP:(i + 1) * c.PROMPTS_PER_STEP]])
              for k, col in (("prompts", "prompt"), ("answer", "answer"))} for i in range(args.steps)]

  def exact_match(prompts, completions, answer, **_):
    return common.exact_match_reward(completions, answer)

  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(c.LEARNING_RATE, b1=0.9, b2=0.999, weight_decay=0.0))
  log_dir = tempfile.mkdtemp(prefix="tunix_bench_")
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=args.steps,
          metrics_logging_options=metrics_logger.MetricsLoggerOptions(log_dir=log_dir)),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=c.COMPLETION_LEN, max_prompt_length=c.PROMPT_LEN,
          kv_cache_size=c.PROMPT_LEN + c.COMPLETION_LEN, temperature=c.TEMPERATURE,
          eos_tokens=[hf["vocab_size"]]))  # never sampled: every completion is exactly T tokens
  cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference, tokenizer=tokenizer,
                                     cluster_config=cluster_config)
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=[exact_match],
      algo_config=grpo_learner.GRPOConfig(num_generations=c.GROUP_SIZE, num_iterations=1, beta=c.BETA,
                                          epsilon=c.EPSILON))

  # Timing: wrap the cluster's own entry points (no behaviour change). A step ends when the actor update
  # of that step has finished (and the loop moved on), measured between consecutive step ends.
  phases: list[dict] = [{}]
  step_ends: list[float] = []
  cpu_ends: list[float] = []

  def timed(name, fn, sync=False):
    def wrapper(*a, **kw):
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      if sync:
        jax.block_until_ready(out)
      phases[-1][name] = phases[-1].get(name, 0.0) + time.perf_counter() - t0
      return out
    return wrapper

  cluster.generate = timed("rollout", cluster.generate)
  cluster.get_ref_per_token_logps = timed("reference", cluster.get_ref_per_token_logps, sync=True)
  learner._compute_rewards = timed("reward", learner._compute_rewards)
  update_actor = cluster.update_actor

  def update_and_mark(*a, **kw):
    t0 = time.perf_counter()
    out = update_actor(*a, **kw)
    jax.block_until_ready(jax.tree.leaves(jax.tree.map(lambda x: x, cluster.actor_trainer.model)) or 0)
    now = time.perf_counter()
    phases[-1]["update"] = now - t0
    step_ends.append(now)
    cpu_ends.append(time.process_time())
    phases.append({})
    return out

  cluster.update_actor = update_and_mark
  completion_tokens = []  # a check that every rollout sampled exactly B*G*T tokens
  generate = cluster.generate

  def generate_and_count(*a, **kw):
    out = generate(*a, **kw)
    completion_tokens.append(sum(len(t) for t in out.tokens))
    return out

  cluster.generate = generate_and_count
  setup_s = time.perf_counter() - T_START
  t_train, c_train = time.perf_counter(), time.process_time()
  learner.train(batches)
  step_times = list(np.diff([t_train] + step_ends))
  expected = c.GROUP_SIZE * c.PROMPTS_PER_STEP * c.COMPLETION_LEN
  assert completion_tokens == [expected] * args.steps, completion_tokens
  assert cluster.actor_trainer.train_steps == args.steps, cluster.actor_trainer.train_steps
  phases = phases[:len(step_times)]
  keys = ("rollout", "reference", "update", "reward")
  timed_phases = phases[args.warmup:]
  common.emit(common.summarize("tunix", step_times, warmup=args.warmup,
                                 cpu_times=list(np.diff([c_train] + cpu_ends)), extra={
      "version": importlib.metadata.version("google-tunix"),
      "completion_tokens_per_step": completion_tokens[0], "jax": jax.__version__, "setup_s": setup_s,
      "phases_per_step_s": [{k: round(v, 4) for k, v in p.items()} for p in phases],
      "first_step_phases_s": {k: phases[0].get(k, 0.0) for k in keys},
      "median_phases_s": {k: float(np.median([p.get(k, 0.0) for p in timed_phases])) for k in keys}}))


if __name__ == "__main__":
  main()
