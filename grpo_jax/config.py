"""Experiment configs: up-front validation with errors that name the bad key, and builders.

A config is one `ml_collections.ConfigDict` from an `experiments/*.py` module's `get_config()` (see
`experiments/default.py` for every field with a comment). `validate(config, num_devices)` runs before
anything is built; `load_config(path)` imports a config file.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re

import ml_collections

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
SCALES = ("group", "batch", "none")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
             "token-mean-global")
LOSS_TYPES = ("grpo", "cispo", "gmpo", "sapo")
COV_CONTROLS = ("none", "clip_cov", "kl_cov")
ROLLOUT_IS = ("none", "tis", "mis")
ROLLOUT_IS_LEVELS = ("token", "sequence")
LOGPROBS_MODES = ("full", "truncated")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl")
RATIO_LEVELS = ("token", "sequence")
OLD_LOGP = ("sampler", "rescore")
MODEL_SOURCES = ("tiny", "hf")
REMAT_CHOICES = ("none", "full", "dots", "dots_no_batch")  # grpo_jax.model.REMAT_CHOICES
FILE_TASKS = ("gsm8k", "math", "local")  # tasks read from task.kwargs.train_path / eval_path
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # grpo_jax.lora.TARGETS
REQUIRED = ("seed", "mesh", "model", "tokenizer", "task", "prompt", "rewards", "rollout", "grpo",
            "optim", "train", "eval", "checkpoint", "sft", "lora", "plan")


class ConfigError(ValueError):
  """A config value is missing, of the wrong kind, or incompatible with another."""

  @property
  def key(self) -> str | None:
    """The bad key, `grpo.beta` of a "config.grpo.beta: ..." message; None when there is none."""
    match = re.match(r"config\.([\w.@-]+):", str(self))
    return match.group(1) if match else None


def load_config(path: str) -> ml_collections.ConfigDict:
  """Imports `path` and returns its `get_config()`."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location("grpo_experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config()")
  return module.get_config()


def _check(cond: bool, key: str, msg: str):
  if not cond:
    raise ConfigError(f"config.{key}: {msg}")


def _get(config, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def _number(config, key: str, ok, allowed: str, *, integer: bool = False):
  """`config.<key>` must be a finite int (or, unless `integer`, float) with `ok(value)`."""
  v = _get(config, key)
  kind = (int,) if integer else (int, float)
  good = isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) and ok(v)
  _check(good, key, f"{v!r} is not allowed; allowed: {'an integer' if integer else 'a finite number'} "
                    f"{allowed}")


def _one_of(config, key: str, allowed):
  value = _get(config, key)
  _check(value in allowed, key, f"{value!r} is not one of {list(allowed)}")


def validate(config: ml_collections.ConfigDict, num_devices: int, *, check_files: bool = True) -> None:
  """Raises `ConfigError` naming the first bad key. `check_files=False` skips the checks that the model,
  tokenizer and data paths exist (the memory planner needs only an hf model's config.json)."""
  for key in REQUIRED:
    _check(key in config, key, "missing")
  c = config
  _check(len(c.mesh) == 3, "mesh", f"must be (data, fsdp, tensor), got {tuple(c.mesh)}")
  mesh = list(c.mesh)
  _check(mesh.count(-1) <= 1 and all(m == -1 or m >= 1 for m in mesh), "mesh",
         f"entries must be >= 1 with at most one -1, got {tuple(mesh)}")
  known = math.prod(m for m in mesh if m != -1)
  _check(num_devices % known == 0 if -1 in mesh else known == num_devices, "mesh",
         f"{tuple(mesh)} does not fit the {num_devices} available devices")
  if -1 in mesh:
    mesh[mesh.index(-1)] = num_devices // known
  batch_shards = mesh[0] * mesh[1]

  _one_of(c, "model.source", MODEL_SOURCES)
  _one_of(c, "model.remat", REMAT_CHOICES)
  if c.model.source == "hf":
    _check(bool(c.model.path), "model.path", "is required when model.source == 'hf'")
    _check(os.path.isdir(c.model.path), "model.path", f"{c.model.path!r} is not a directory")
  if c.tokenizer not in ("", "char") and check_files:
    _check(os.path.isdir(c.tokenizer), "tokenizer",
           f"{c.tokenizer!r} is not a directory (a Hugging Face tokenizer directory, or 'char')")
  from grpo_jax.tasks import TASKS  # local: importing a config module stays light
  _one_of(c, "task.name", TASKS)
  if c.task.name in FILE_TASKS and check_files:
    for key in ("train_path", "eval_path"):
      path = c.task.kwargs.get(key, "")
      _check(key == "eval_path" and not path or bool(path) and os.path.isfile(path),
             f"task.kwargs.{key}", f"{path!r} is not a file (a local JSON-lines or Parquet file)")
  _one_of(c, "grpo.estimator", ESTIMATORS)
  _one_of(c, "grpo.scale", SCALES)
  _one_of(c, "grpo.agg", AGG_MODES)
  _one_of(c, "grpo.kl_kind", KL_KINDS)
  _one_of(c, "grpo.ratio_level", RATIO_LEVELS)
  _one_of(c, "grpo.old_logp", OLD_LOGP)
  g, r = c.grpo, c.rollout
  for key, ok, allowed in (("grpo.group_size", lambda v: v >= 2, ">= 2 (a group needs a baseline)"),
                           ("grpo.num_iterations", lambda v: v >= 1, ">= 1"),
                           ("grpo.num_minibatches", lambda v: v >= 1, ">= 1"),
                           ("grpo.grad_accum", lambda v: v >= 1, ">= 1"),
                           ("grpo.ref_reset_every", lambda v: v >= 0, ">= 0 (0: never)"),
                           ("rollout.prompts_per_step", lambda v: v >= 1, ">= 1"),
                           ("rollout.prompt_len", lambda v: v >= 1, ">= 1"),
                           ("rollout.max_new_tokens", lambda v: v >= 1, ">= 1"),
                           ("rollout.top_k", lambda v: v >= 0, ">= 0 (0: off)")):
    _number(c, key, ok, allowed, integer=True)
  for key, ok, allowed in (("grpo.beta", lambda v: v >= 0, ">= 0"),
                           ("grpo.clip_high", lambda v: v >= 0, ">= 0"),
                           ("rollout.temperature", lambda v: v > 0, "> 0 for GRPO sampling"),
                           ("rollout.top_p", lambda v: 0 < v <= 1, "in (0, 1] (1: off)"),
                           ("rollout.min_p", lambda v: 0 <= v < 1, "in [0, 1) (0: off)")):
    _number(c, key, ok, allowed)
  _number(c, "grpo.clip_low", lambda v: 0 <= v < 1 or g.loss_type == "gmpo" and v >= 0
          or g.loss_type == "cispo" and 0 <= v <= 1,
          "in [0, 1) ([0, 1] for loss_type='cispo', >= 0 for 'gmpo')")
  if g.clip_c is not None:
    _number(c, "grpo.clip_c", lambda v: v > 1, "> 1, or None")
  _check(g.norm_len is None or g.agg == "seq-mean-token-sum-norm", "grpo.norm_len",
         "is only used with agg='seq-mean-token-sum-norm'")
  _validate_objective(c)
  _validate_lora(c)
  n = r.prompts_per_step * g.group_size
  per_update = n // g.num_minibatches if n % g.num_minibatches == 0 else None
  _check(per_update is not None, "grpo.num_minibatches",
         f"{g.num_minibatches} does not divide the rollout batch of {n} sequences")
  _check(per_update % g.grad_accum == 0, "grpo.grad_accum",
         f"{g.grad_accum} does not divide the minibatch of {per_update} sequences")
  _check((per_update // g.grad_accum) % batch_shards == 0, "rollout.prompts_per_step",
         f"a microbatch of {per_update // g.grad_accum} sequences (prompts_per_step * group_size / "
         f"num_minibatches / grad_accum) is not divisible by the {batch_shards} data*fsdp shards of "
         f"mesh {tuple(mesh)}")
  _check(n % batch_shards == 0, "rollout.prompts_per_step",
         f"the rollout batch of {n} sequences is not divisible by {batch_shards} data*fsdp shards")

  names, weights = tuple(c.rewards.names), tuple(c.rewards.weights)
  _check(len(names) >= 1, "rewards.names", "needs at least one reward function")
  _check(len(names) == len(weights), "rewards.weights",
         f"has {len(weights)} entries for {len(names)} reward functions")
  _check(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights),
         "rewards.weights", f"{weights!r} is not allowed; allowed: finite numbers, one per reward function")
  _check(c.rewards.on_error in ("fallback", "drop"), "rewards.on_error", "must be 'fallback' or 'drop'")
  _number(c, "plan.device_memory_gb", lambda v: v >= 0,
          ">= 0 (GiB per device; 0: the device's own memory when JAX reports it, else no check)")
  _number(c, "rewards.timeout_s", lambda v: v > 0, "> 0 (seconds per reward-function call)")
  _number(c, "rewards.fallback", lambda v: True, "(the reward of a failed sample)")
  for name in (*names, c.rewards.correctness):
    try:
      reward_fn(c, name)
    except (KeyError, ValueError, TypeError) as e:
      detail = e.args[0] if e.args else e  # a KeyError's str() would quote the message
      raise ConfigError(f"config.rewards.names: reward function {name!r}: {detail}") from e

  from grpo_jax import env as env_lib  # local: importing a config module stays light
  env_lib.validate_config(c, _check)

  _check(c.optim.schedule in ("constant", "cosine"), "optim.schedule", "must be 'constant' or 'cosine'")
  for key, ok, allowed in (("optim.lr", lambda v: v > 0, "> 0"),
                           ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
                           ("optim.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
                           ("optim.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
                           ("optim.grad_clip", lambda v: v > 0, "> 0"),
                           ("eval.temperature", lambda v: v >= 0, ">= 0 (0: greedy)"),
                           ("sft.noise_frac", lambda v: 0 <= v <= 1, "in [0, 1]")):
    _number(c, key, ok, allowed)
  for key, ok, allowed in (("optim.warmup_steps", lambda v: v >= 0, ">= 0 (GRPO steps)"),
                           ("train.num_steps", lambda v: v >= 1, ">= 1"),
                           ("train.sample_every", lambda v: v >= 0, ">= 0 (0: never)"),
                           ("train.num_samples_logged", lambda v: v >= 0, ">= 0"),
                           ("train.max_consecutive_skips", lambda v: v >= 1, ">= 1"),
                           ("eval.every", lambda v: v >= 0, ">= 0 (0: only at the start and the end)"),
                           ("eval.num_examples", lambda v: v >= 1, ">= 1"),
                           ("eval.batch_size", lambda v: v >= 1, ">= 1"),
                           ("eval.k", lambda v: v >= 0, ">= 0 (0: greedy accuracy only)"),
                           ("checkpoint.every", lambda v: v >= 1, ">= 1 (GRPO steps)"),
                           ("checkpoint.keep", lambda v: v >= 1, ">= 1"),
                           ("sft.steps", lambda v: v >= 0, ">= 0 (0: no warm start)")):
    _number(c, key, ok, allowed, integer=True)
  _check(c.eval.batch_size % batch_shards == 0, "eval.batch_size",
         f"{c.eval.batch_size} is not divisible by the {batch_shards} data*fsdp shards")
  if c.sft.steps:
    _number(c, "sft.lr", lambda v: v > 0, "> 0")
    _number(c, "sft.batch_size", lambda v: v >= 1, ">= 1", integer=True)
    _check(c.sft.batch_size % batch_shards == 0, "sft.batch_size",
           f"{c.sft.batch_size} is not divisible by the {batch_shards} data*fsdp shards")


def _validate_objective(c) -> None:
  """The knobs of the newer objectives, rollout correction, dynamic sampling and chunked log-probs."""
  g = c.grpo
  _one_of(c, "grpo.loss_type", LOSS_TYPES)
  _one_of(c, "grpo.cov_control", COV_CONTROLS)
  _one_of(c, "grpo.rollout_is", ROLLOUT_IS)
  _one_of(c, "grpo.rollout_is_level", ROLLOUT_IS_LEVELS)
  _one_of(c, "rollout.logprobs_mode", LOGPROBS_MODES)
  _check(c.rollout.off_policy_steps in (0, 1) and not isinstance(c.rollout.off_policy_steps, bool),
         "rollout.off_policy_steps", f"must be 0 (synchronous) or 1 (the next rollout overlaps the update; "
         f"staleness bound 1), got {c.rollout.off_policy_steps!r}")
  _check(not (c.rollout.off_policy_steps and g.dynamic_sampling), "rollout.off_policy_steps",
         "one-step-off rollouts and grpo.dynamic_sampling (several draws per step) do not combine; set one 0")
  _check(g.scale != "batch" or g.estimator == "grpo", "grpo.scale",
         f"'batch' only applies to estimator='grpo' (got estimator={g.estimator!r}; the REINFORCE++ "
         "estimators are batch-normalized already)")
  if g.loss_type != "grpo":
    for key, off, what in (("ratio_level", "token", "GSPO's sequence ratio"), ("clip_c", None, "dual clip"),
                           ("cov_control", "none", "Clip-Cov / KL-Cov")):
      _check(g[key] == off, f"grpo.{key}", f"{g[key]!r} ({what}) modifies the GRPO clip and needs "
             f"grpo.loss_type='grpo', got loss_type={g.loss_type!r}")
  _check(g.sapo_tau_pos > 0 and g.sapo_tau_neg > 0, "grpo.sapo_tau_pos",
         f"SAPO temperatures must be > 0, got sapo_tau_pos={g.sapo_tau_pos}, sapo_tau_neg={g.sapo_tau_neg}")
  _check(0 < g.cov_ratio <= 1, "grpo.cov_ratio", f"must be in (0, 1], got {g.cov_ratio}")
  _check(len(g.cov_bounds) == 2 and g.cov_bounds[0] < g.cov_bounds[1], "grpo.cov_bounds",
         f"must be (omega_low, omega_high) with omega_low < omega_high, got {tuple(g.cov_bounds)}")
  _check(g.kl_cov_coef >= 0, "grpo.kl_cov_coef", f"must be >= 0, got {g.kl_cov_coef}")
  _check(math.isfinite(g.entropy_coef), "grpo.entropy_coef", f"must be finite, got {g.entropy_coef}")
  _check(g.rollout_is == "none" or g.old_logp == "rescore", "grpo.rollout_is",
         f"{g.rollout_is!r} weighs the trainer's old log-probs against the sampler's: set "
         "grpo.old_logp='rescore'")
  _check(g.rollout_is_threshold > 1, "grpo.rollout_is_threshold",
         f"must be > 1, got {g.rollout_is_threshold}")
  _check(not g.dynamic_sampling or g.dynamic_sampling_max_rounds >= 1, "grpo.dynamic_sampling_max_rounds",
         f"must be >= 1, got {g.dynamic_sampling_max_rounds}")
  _check(isinstance(g.logprob_chunk, int) and g.logprob_chunk >= 0, "grpo.logprob_chunk",
         f"must be an int >= 0 (0: unchunked), got {g.logprob_chunk!r}")


def _validate_lora(c) -> None:
  """LoRA: rank (0: off), alpha, the adapted projections; the reference is then the frozen base."""
  _number(c, "lora.rank", lambda v: v >= 0, ">= 0 (0: full fine-tuning)", integer=True)
  _number(c, "lora.alpha", lambda v: v > 0, "> 0 (the update is scaled by alpha / rank)")
  targets = c.lora.targets
  _check(isinstance(targets, (tuple, list)) and len(targets) >= 1 and all(t in LORA_TARGETS for t in targets)
         and len(set(targets)) == len(targets), "lora.targets",
         f"{targets!r} is not allowed; allowed: distinct names from {list(LORA_TARGETS)}")
  if c.lora.rank:
    _check(c.grpo.ref_reset_every == 0, "grpo.ref_reset_every",
           f"{c.grpo.ref_reset_every} resets the reference to the policy; with LoRA (lora.rank="
           f"{c.lora.rank}) the reference is the frozen base: set 0")


def check_override_keys(config: ml_collections.ConfigDict, argv) -> None:
  """Raises `ConfigError` (one line) for the first `--config.a.b[=v]` in `argv` whose key `config` lacks,
  naming the full key and the keys that exist where it branches off (for the CLI's unknown-key error)."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, path = config, ["config"]
    for part in key.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config.{key}: unknown key ({'.'.join(path)} is a {type(node).__name__}, "
                          "not a section)")
      if part not in node:
        raise ConfigError(f"config.{key}: unknown key; {'.'.join(path)} has: {', '.join(sorted(node))}")
      node = node[part]
      path.append(part)


def reward_fn(config: ml_collections.ConfigDict, name: str):
  """The reward function `name` (registered, or "module:function" / "path/to/file.py:function") with
  its options `config.rewards.kwargs[key]`, where key is the function's name (the part after the ":":
  ConfigDict keys cannot hold the dots of a module or file path)."""
  from grpo_jax import rewards as rewards_lib  # local: importing configs stays light
  key = name.rpartition(":")[2]
  return rewards_lib.get_reward_fn(name, **dict(config.rewards.kwargs.get(key, {})))


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)
