"""The GRPO training loop: rollout -> reward -> prepare -> mu updates -> log / eval / checkpoint.

`train(config, workdir)` is what `python -m grpo_jax.main` runs. It resumes from the newest good
checkpoint in `workdir`; with the same config and seed, a resumed run reproduces the metrics of an
uninterrupted one step for step (every random draw is `fold_in(key, step)` and the data iterator's
position is checkpointed).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
from flax import nnx

from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as config_lib
from grpo_jax import evaluation
from grpo_jax import metrics as metrics_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import rollout as rollout_lib
from grpo_jax import sampler as sampler_lib
from grpo_jax import sft
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.experiment import Experiment, build_experiment

log = logging.getLogger(__name__)


def _reward_runner(c) -> rewards_lib.RewardRunner:
  fns = [config_lib.reward_fn(c, n) for n in c.rewards.names]
  return rewards_lib.RewardRunner(fns, list(c.rewards.weights), timeout_s=c.rewards.timeout_s,
                                  on_error=c.rewards.on_error, fallback=c.rewards.fallback)


def _sampler(exp: Experiment, temperature: float, **overrides):
  r = exp.config.rollout
  kw = dict(max_new_tokens=r.max_new_tokens, temperature=temperature, top_k=r.top_k, top_p=r.top_p,
            min_p=r.min_p, eos_id=exp.tokenizer.eos_id, pad_id=exp.tokenizer.pad_id)
  kw.update(overrides)
  return sampler_lib.jit_generate(exp.graphdef, exp.mesh, exp.trainer.param_shardings, **kw)


def _ref_in_checkpoint(c, trainer) -> bool:
  """The reference is saved unless it is the initial model, which `build_experiment` rebuilds."""
  return trainer.need_ref and bool(c.grpo.ref_reset_every or c.sft.steps)


def _init_or_restore(exp: Experiment, ckpt: ckpt_lib.Checkpointer):
  """Returns `(state, ref_params, meta)` from the newest good checkpoint, or a fresh start."""
  c, trainer = exp.config, exp.trainer
  abstract_state = ckpt_lib.abstract_like(
      jax.eval_shape(trainer.init_state, exp.params, jax.random.PRNGKey(0)), trainer.state_shardings)
  abstract_ref = (ckpt_lib.abstract_like(exp.params, trainer.param_shardings)
                  if trainer.need_ref else None)
  restored = ckpt.restore(abstract_state, abstract_ref)
  if restored is not None:
    step, state, ref, meta = restored
    log.info("resumed from %s at step %d", ckpt.directory, step)
    if trainer.need_ref and ref is None:
      if _ref_in_checkpoint(c, trainer):
        raise ckpt_lib.CheckpointCorrupt(f"checkpoint at step {step} lacks the reference params")
      ref = exp.params  # the reference is the initial model, rebuilt by build_experiment
    return state, ref, meta
  params = exp.params
  meta = {"data": None}
  if c.sft.steps:
    t0 = time.time()
    demos = sft.noisy_teacher(exp.train_examples, c.sft.noise_frac, c.seed, c.sft.target_key)
    params, loss = sft.warm_start(
        exp.graphdef, jax.tree.map(lambda x: x.copy(), params), demos, exp.tokenizer,
        exp.mesh, steps=c.sft.steps, batch_size=c.sft.batch_size, lr=c.sft.lr, seed=c.seed,
        prompt_len=c.rollout.prompt_len, target_len=c.rollout.max_new_tokens, fmt=exp.fmt,
        target_key=c.sft.target_key)
    meta["sft"] = {"steps": c.sft.steps, "final_loss": loss, "seconds": time.time() - t0}
    log.info("supervised warm start: %d steps, final loss %.4f, %.1f s", c.sft.steps, loss,
             time.time() - t0)
  state = trainer.init_state(params, jax.random.PRNGKey(c.seed))
  ref = jax.tree.map(lambda x: x.copy(), state.params) if trainer.need_ref else None
  return state, ref, meta


def _write_config(workdir: str, name: str, config) -> None:
  with open(os.path.join(workdir, name), "w") as f:
    f.write(config_lib.config_to_json(config))


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _record_config(workdir: str, config, start: int) -> None:
  """Keeps the history of the configs a run was trained under.

  `config.json` is the config of the run's first start and is never overwritten by a resume. A resume
  (at GRPO step `start` > 0) whose config differs from the latest recorded one (`config.json` or the
  newest `config.<step>.json` up to `start`) warns, naming each changed key as old -> new, and writes
  the new config to `config.<start>.json`. A fresh start (no checkpoint) records afresh.
  """
  if jax.process_index() != 0:
    return
  history = {int(n.split(".")[1]): n for n in os.listdir(workdir)
             if n.startswith("config.") and n.endswith(".json") and n.split(".")[1].isdigit()}
  if start == 0:
    for name in history.values():  # the configs of checkpoints that are gone
      os.remove(os.path.join(workdir, name))
    _write_config(workdir, "config.json", config)
    return
  earlier = [step for step in history if step <= start]
  latest = history[max(earlier)] if earlier else "config.json"
  try:
    with open(os.path.join(workdir, latest)) as f:
      old = _flat(json.load(f))
  except (OSError, ValueError):
    old = {}
  new = _flat(json.loads(config_lib.config_to_json(config)))
  missing = object()
  show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
  changed = [f"{k}: {show(old.get(k, missing))} -> {show(new.get(k, missing))}"
             for k in sorted(old.keys() | new.keys()) if old.get(k, missing) != new.get(k, missing)]
  if not changed:
    return
  name = f"config.{start}.json"
  message = (f"resuming {workdir} at step {start} with a changed config ({latest} -> {name}): "
             + "; ".join(changed))
  log.warning("%s", message)
  print(f"WARNING: {message}", file=sys.stderr, flush=True)
  _write_config(workdir, name, config)


def train(config, workdir: str) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns a summary dict (also in summary.json)."""
  config_lib.validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and not os.path.exists(os.path.join(workdir, "config.json")):
    _write_config(workdir, "config.json", config)  # early: a run that dies while building has one too
  c = config
  exp = build_experiment(c)
  trainer = exp.trainer
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.checkpoint.keep,
                               best_metric=c.checkpoint.best_metric or None,
                               async_save=c.checkpoint.async_save)
  state, ref_params, meta = _init_or_restore(exp, ckpt)
  if meta.get("data"):
    exp.iterator.set_state(meta["data"])
  start = int(state.step) // (c.grpo.num_iterations * c.grpo.num_minibatches)
  _record_config(workdir, c, start)
  runner = _reward_runner(c)
  correct_fn = config_lib.reward_fn(c, c.rewards.correctness)
  rollout_fn = _sampler(exp, c.rollout.temperature, logprobs_mode=c.rollout.logprobs_mode)
  greedy_fn = _sampler(exp, 0.0)
  eval_sample_fn = _sampler(exp, c.eval.temperature) if c.eval.k else None
  eval_rng = jax.random.PRNGKey(c.seed + 1)

  def run_eval(step, params):
    t0 = time.time()
    m = evaluation.evaluate(
        greedy_fn, eval_sample_fn, params, exp.eval_examples[:c.eval.num_examples], exp.tokenizer,
        correct_fn, rewards_lib.extract_answer, jax.random.fold_in(eval_rng, step),
        batch_size=c.eval.batch_size, prompt_len=c.rollout.prompt_len, fmt=exp.fmt, k=c.eval.k)
    m["time/eval_s"] = time.time() - t0
    log.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in m.items()})
    return m

  writer = metrics_lib.MetricsWriter(workdir, c.train.num_steps, initial_step=start,
                                     console=c.train.progress_bar)
  if start == 0 and "eval_before" not in meta:
    meta["eval_before"] = run_eval(0, state.params)
    writer.write(0, meta["eval_before"])
  last_eval = None
  rollout_key = jax.random.PRNGKey(c.seed + 2)
  refill_key = jax.random.PRNGKey(c.seed + 3)  # dynamic sampling's extra draws
  for step in range(start, c.train.num_steps):
    t0 = time.time()

    def draw(i, step=step, params=state.params):  # this step's i-th batch of prompts; 0: the plain rollout
      key = (jax.random.fold_in(rollout_key, step) if i == 0
             else jax.random.fold_in(jax.random.fold_in(refill_key, step), i))
      return rollout_lib.rollout(rollout_fn, params, next(exp.iterator), exp.tokenizer, runner, key,
                                 group_size=c.grpo.group_size, prompt_len=c.rollout.prompt_len, fmt=exp.fmt)

    refill_metrics = {}
    if c.grpo.dynamic_sampling:
      ro, refill_metrics = rollout_lib.refill_rollout(
          draw, num_groups=c.rollout.prompts_per_step, group_size=c.grpo.group_size,
          max_rounds=c.grpo.dynamic_sampling_max_rounds)
    else:
      ro = draw(0)
    t_rollout = time.time() - t0
    batch = trainer.shard_batch(ro.batch)
    batch, prep_metrics = trainer.prepare(state.params, ref_params, batch, ro.rewards_BxG, ro.valid_N)
    t1 = time.time()
    state, train_metrics = trainer.update(state, batch)  # the mu x minibatch updates, one program
    train_metrics = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
    t_train = time.time() - t1
    done = step + 1
    if c.grpo.ref_reset_every and done % c.grpo.ref_reset_every == 0 and ref_params is not None:
      ref_params = jax.tree.map(lambda x: x.copy(), state.params)  # iterative GRPO (DeepSeekMath §4.1.4)
    metrics = {**train_metrics, **jax.device_get(prep_metrics), **ro.reward_metrics, **ro.metrics,
               **refill_metrics,
               "time/rollout_s": t_rollout, "time/train_s": t_train, "time/step_s": time.time() - t0,
               "throughput/completion_tokens_per_s": ro.metrics["completion_tokens"] / max(t_rollout, 1e-9)}
    evaluated = None
    if c.eval.every and (done % c.eval.every == 0 or done == c.train.num_steps):
      last_eval = evaluated = run_eval(done, state.params)
      metrics.update(last_eval)
    writer.write(done, metrics)
    writer.advance()
    if c.train.sample_every and done % c.train.sample_every == 0:
      writer.write_samples(done, rollout_lib.sample_table(ro, c.train.num_samples_logged))
    if done % c.checkpoint.every == 0 or done == c.train.num_steps:
      meta["data"] = exp.iterator.get_state()
      ckpt.save(done, state, meta, ref_params if _ref_in_checkpoint(c, trainer) else None,
                metrics=evaluated)
  ckpt.close()
  writer.close()
  if last_eval is None:
    last_eval = run_eval(c.train.num_steps, state.params)
  summary = {"eval_before": meta.get("eval_before"), "eval_after": last_eval,
             "sft": meta.get("sft"), "steps": c.train.num_steps}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    metrics_lib.plot_metrics(os.path.join(workdir, "metrics.jsonl"),
                             os.path.join(workdir, "metrics.png"))
  if c.train.export_hf:
    from grpo_jax import hf
    export_dir = os.path.join(workdir, "hf_export")
    hf.save_pretrained(nnx.merge(exp.graphdef, state.params), export_dir)  # collective: every process
    if jax.process_index() == 0:
      exp.tokenizer.save_pretrained(export_dir)  # the vocabulary and chat template beside the weights
  return summary
