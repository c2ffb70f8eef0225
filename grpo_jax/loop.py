"""The GRPO training loop: rollout -> reward -> prepare -> mu updates -> log / eval / checkpoint.

`train(config, workdir)` is what `python -m grpo_jax.main` runs. It resumes from the newest good
checkpoint in `workdir`; with the same config and seed, a resumed run reproduces the metrics of an
uninterrupted one step for step (every random draw is `fold_in(key, step)` and the data iterator's
position is checkpointed), and `metrics.jsonl` holds each step exactly once however often it was killed.

What stops a run, always with one message and the last good checkpoint kept (`RunStopped`): another run
holding the workdir (`lock.WorkdirLocked`); checkpoints of which none can be restored, unless a fresh start
is asked for; `train.max_consecutive_skips` steps in a row whose update was skipped, because the loss,
gradient or update was NaN/Inf (the state is then left as it was, see `guarded_update`) or because no
sample got a reward; a failed checkpoint write. SIGTERM (a preemption notice) ends the step in progress,
saves a checkpoint and returns with `summary["preempted"]` set.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
from flax import nnx

from grpo_jax import async_rollout as async_lib
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as config_lib
from grpo_jax import env as env_lib
from grpo_jax import evaluation
from grpo_jax import lock as lock_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import multiturn
from grpo_jax import rewards as rewards_lib
from grpo_jax import rollout as rollout_lib
from grpo_jax import sampler as sampler_lib
from grpo_jax import sft
from grpo_jax.experiment import Experiment, build_experiment

log = logging.getLogger(__name__)


class RunStopped(RuntimeError):
  """The run stopped on purpose with a message that says why and what to do; its checkpoints are intact."""


class TrainingDiverged(RunStopped):
  pass


class NoUsableCheckpoint(RunStopped):
  pass


class Preempted(RunStopped):
  """SIGTERM before the first GRPO step: nothing to save yet."""


# Errors the CLI prints as one line (no traceback): each names its cause and the fix.
STOP_ERRORS = (RunStopped, ckpt_lib.CheckpointWriteError, ckpt_lib.NonFiniteState, lock_lib.WorkdirLocked,
               config_lib.ConfigError)
_FINITE_KEYS = ("loss", "grad_norm", "update_norm", "param_norm")


def guarded_update(trainer, state, batch):
  """One optimizer update that never leaves a NaN/Inf state: returns `(state, metrics, skipped)`.

  When the loss, gradient norm, update norm or new parameter norm is not finite, the update is skipped:
  the returned state is the input state exactly (params, optimizer moments, step, rng) and
  `metrics["update_skipped"]` is 1.0 (else 0.0). A `Trainer` whose jitted step does this itself sets
  `skips_nonfinite = True` and returns `update_skipped`; for the others the state is copied before the
  step (which donates its input) and the copy is returned on a skip.
  """
  in_graph = getattr(trainer, "skips_nonfinite", False)
  backup = None if in_graph else jax.tree.map(lambda x: x.copy(), state)
  if in_graph:  # all mu x minibatch updates of the rollout, each skipped in the graph if non-finite
    new_state, metrics = trainer.update(state, batch)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    return new_state, metrics, metrics["update_skipped"] > 0
  new_state, metrics = trainer.step(state, batch)
  skipped = not all(np.isfinite(float(metrics[k])) for k in _FINITE_KEYS if k in metrics)
  metrics = {**metrics, "update_skipped": float(skipped)}
  return (backup if skipped else new_state), metrics, skipped


class SkipGuard:
  """Stops the run after `max_consecutive` GRPO steps in a row whose update was skipped, naming the step and
  the likeliest cause from the last skipped step's metrics."""

  def __init__(self, max_consecutive: int, *, lr: float, temperature: float):
    self.max_consecutive, self.lr, self.temperature = max_consecutive, lr, temperature
    self.consecutive = self.total = 0

  def update(self, step: int, skipped: bool, metrics: dict, no_valid_samples: bool = False):
    if not skipped:
      self.consecutive = 0
      return
    self.consecutive += 1
    self.total += 1
    log.warning("step %d: update skipped (%s); %d in a row", step,
                "no sample got a reward" if no_valid_samples else "non-finite loss/gradient/update",
                self.consecutive)
    if self.consecutive >= self.max_consecutive:
      raise TrainingDiverged(f"stopping at step {step}: {self.consecutive} consecutive steps skipped their "
                             f"update; {self._suspect(metrics, no_valid_samples)}. The checkpoints hold "
                             "only finite states (skipped updates left the state unchanged)")

  def _suspect(self, m: dict, no_valid_samples: bool) -> str:
    finite = {k: bool(np.isfinite(float(m[k]))) for k in _FINITE_KEYS if k in m}
    if no_valid_samples:
      return ("no sample got a reward: every reward function failed on every sample (see the warnings and "
              "reward/*/failures); with rewards.on_error='drop' nothing is left to train on")
    if not finite.get("loss", True):
      return (f"the loss is NaN/Inf: suspect the logits (rollout.temperature={self.temperature}: a tiny "
              "temperature overflows logits / T) or the rewards/advantages")
    if not finite.get("grad_norm", True):
      return "the gradients are NaN/Inf while the loss is finite: suspect the logits' backward pass or dtype"
    return (f"the gradients are finite but the update overflows: suspect the learning rate "
            f"(optim.lr={self.lr})")


class _Preemption:
  """SIGTERM handling: inside the step loop it only sets a flag (the loop saves and stops at the end of the
  step); before the first step there is nothing to save and the run stops at once."""

  def __init__(self):
    self.requested = self.in_loop = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True
    log.warning("SIGTERM: %s", "saving a checkpoint after this step, then stopping" if self.in_loop else
                "stopping (no GRPO step done yet: nothing to save)")
    if not self.in_loop:
      raise Preempted("stopped by SIGTERM before the first GRPO step (nothing to save yet); run the same "
                      "command to resume")

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # every host stops at the same step
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is not running
      return False

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
  """The reference is saved unless it is the initial model, which `build_experiment` rebuilds. (With LoRA
  it is the frozen base, kept whatever beta is, and saved only when a warm start made it.)"""
  return trainer.keeps_ref and bool(c.grpo.ref_reset_every or c.sft.steps)


def _init_or_restore(exp: Experiment, ckpt: ckpt_lib.Checkpointer, fresh_start: bool):
  """Returns `(step, state, ref_params, meta)` from the newest good checkpoint (`step` is its GRPO step),
  or `(None, ...)` for a fresh start. Refuses to start over when checkpoints exist but none is usable,
  unless `fresh_start` (they are then moved to `corrupt/`)."""
  c, trainer = exp.config, exp.trainer
  abstract_state = ckpt_lib.abstract_like(
      jax.eval_shape(trainer.init_state, exp.params, jax.random.PRNGKey(0)), trainer.state_shardings)
  abstract_ref = (ckpt_lib.abstract_like(exp.params, trainer.param_shardings)
                  if trainer.keeps_ref else None)
  restored = ckpt.restore(abstract_state, abstract_ref)
  if restored is not None:
    step, state, ref, meta = restored
    log.info("resumed from %s at step %d", ckpt.directory, step)
    if trainer.keeps_ref and ref is None:
      if _ref_in_checkpoint(c, trainer):
        raise ckpt_lib.CheckpointCorrupt(f"checkpoint at step {step} lacks the reference params")
      ref = exp.params  # the reference is the initial model, rebuilt by build_experiment
    return step, state, ref, meta
  if ckpt.unusable:
    found = "; ".join(f"step {s}: {why}" for s, why in sorted(ckpt.unusable.items()))
    if not fresh_start:
      raise NoUsableCheckpoint(
          f"none of the {len(ckpt.unusable)} checkpoints in {ckpt.directory} can be restored ({found}). "
          "Refusing to start over, which would re-run the warm start and rewrite metrics.jsonl: if the "
          "config changed, restore the one they were saved with; to start from scratch anyway, pass "
          "--fresh_start (or --config.checkpoint.allow_fresh_start=True)")
    log.warning("fresh start requested: moving the unusable checkpoints to %s/corrupt (%s)", ckpt.directory,
                found)
    ckpt.quarantine_unusable()
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
  if trainer.lora is not None:
    ref = params  # LoRA: the frozen base is the reference, the same arrays (no copy)
  else:
    ref = jax.tree.map(lambda x: x.copy(), state.params) if trainer.need_ref else None
  return None, state, ref, meta


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


def _close_after_error(opened: list):
  """Closes the outputs while another error propagates: waits for pending saves and reports (not raises)
  a failed one, so that the first error is the one the user sees."""
  for closable in reversed(opened):
    try:
      closable.close()
    except ckpt_lib.CheckpointWriteError as e:
      log.error("%s", e)


def _eval_correctness(c):
  """The correctness reward for evaluation, behind a RewardRunner (timeout, contained failures):
  `f(prompts, completions, **columns) -> [score or None]`."""
  runner = rewards_lib.RewardRunner([config_lib.reward_fn(c, c.rewards.correctness)],
                                    timeout_s=c.rewards.timeout_s)

  def correct_fn(prompts, completions, **columns):
    values = runner(prompts, completions, **columns).per_fn[runner.names[0]]
    return [float(v) if np.isfinite(v) else None for v in values]
  return correct_fn


def train(config, workdir: str, *, fresh_start: bool = False) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns a summary dict (also in summary.json).
  `fresh_start` (or `config.checkpoint.allow_fresh_start`): start over when no checkpoint is usable."""
  config_lib.validate(config, jax.device_count())
  if "://" in workdir:
    raise config_lib.ConfigError(f"--workdir {workdir}: a URL is not supported yet (it would become a local "
                                 "directory); mount the bucket on every host (e.g. gcsfuse) and pass the path")
  if config.grpo.dynamic_sampling and jax.process_count() > 1:
    raise config_lib.ConfigError("config.grpo.dynamic_sampling: refilling groups from several rollouts is "
                                 "single-process for now; set it False on multi-host runs")
  if config.rollout.off_policy_steps and jax.process_count() > 1:
    raise config_lib.ConfigError("config.rollout.off_policy_steps: the rollout thread's collectives would "
                                 "race the update's across processes; set it 0 on multi-host runs")
  lock = lock_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()  # before anything is written: a second run must not touch the first one's files
  opened = []  # the checkpointer and metrics writer, closed here if the run stops with an error
  try:
    with _Preemption() as preemption:
      return _train(config, workdir, preemption, fresh_start or config.checkpoint.allow_fresh_start, opened)
  except BaseException:
    _close_after_error(opened)
    raise
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str, preemption: _Preemption, fresh_start: bool, opened: list) -> dict:
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and not os.path.exists(os.path.join(workdir, "config.json")):
    _write_config(workdir, "config.json", config)  # early: a run that dies while building has one too
  c = config
  exp = build_experiment(c)
  trainer = exp.trainer
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.checkpoint.keep,
                               best_metric=c.checkpoint.best_metric or None,
                               async_save=c.checkpoint.async_save)
  opened.append(ckpt)
  restored, state, ref_params, meta = _init_or_restore(exp, ckpt, fresh_start)
  if trainer.lora is not None:
    trainer.base = ref_params  # LoRA: the base the adapters train on (warm-started or restored)
  if meta.get("data"):
    exp.iterator.set_state(meta["data"])
  start = restored or 0  # the GRPO step: skipped updates do not advance state.step
  _record_config(workdir, c, start)
  runner = _reward_runner(c)
  correct_fn = _eval_correctness(c)
  env_spec = env_lib.from_config(c)  # None: single-turn rollouts
  rollout_fn = _sampler(exp, c.rollout.temperature, logprobs_mode=c.rollout.logprobs_mode)
  greedy_fn = _sampler(exp, 0.0)
  eval_sample_fn = _sampler(exp, c.eval.temperature) if c.eval.k else None
  eval_rng = jax.random.PRNGKey(c.seed + 1)

  def run_eval(step, params):
    t0 = time.time()
    params = trainer.policy_params(params)  # LoRA: the adapters merged into the base
    if env_spec is not None:
      m = multiturn.evaluate(greedy_fn, params, exp.eval_examples[:c.eval.num_examples], exp.tokenizer,
                             correct_fn, jax.random.fold_in(eval_rng, step), batch_size=c.eval.batch_size,
                             prompt_len=c.rollout.prompt_len, fmt=exp.fmt, spec=env_spec)
    else:
      m = evaluation.evaluate(
          greedy_fn, eval_sample_fn, params, exp.eval_examples[:c.eval.num_examples], exp.tokenizer,
          correct_fn, rewards_lib.extract_answer, jax.random.fold_in(eval_rng, step),
          batch_size=c.eval.batch_size, prompt_len=c.rollout.prompt_len, fmt=exp.fmt, k=c.eval.k,
          mesh=exp.mesh)
    m["time/eval_s"] = time.time() - t0
    log.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in m.items()})
    return m

  # Rows after the restored step are recomputed by this run; with no checkpoint, all of them (step 0 too).
  writer = metrics_lib.MetricsWriter(workdir, c.train.num_steps, initial_step=start,
                                     keep_through=start if restored is not None else -1,
                                     console=c.train.progress_bar)
  opened.append(writer)
  if start == 0 and "eval_before" not in meta:
    meta["eval_before"] = run_eval(0, state.params)
    writer.write(0, meta["eval_before"])
  last_eval = preempted = None
  guard = SkipGuard(c.train.max_consecutive_skips, lr=c.optim.lr, temperature=c.rollout.temperature)
  rollout_key = jax.random.PRNGKey(c.seed + 2)
  refill_key = jax.random.PRNGKey(c.seed + 3)  # dynamic sampling's extra draws

  def sample(params, examples, key):  # single-turn, or multi-turn episodes with the environment
    if env_spec is not None:
      return multiturn.rollout(rollout_fn, params, examples, exp.tokenizer, runner, key,
                               group_size=c.grpo.group_size, prompt_len=c.rollout.prompt_len, fmt=exp.fmt,
                               spec=env_spec, mesh=exp.mesh)
    return rollout_lib.rollout(rollout_fn, params, examples, exp.tokenizer, runner, key,
                               group_size=c.grpo.group_size, prompt_len=c.rollout.prompt_len, fmt=exp.fmt,
                               mesh=exp.mesh)

  prefetch = None  # rollout.off_policy_steps = 1: the next rollout runs while this update runs
  if c.rollout.off_policy_steps:
    prefetch = async_lib.OneStepOff()
    opened.append(prefetch)
  preemption.in_loop = True
  for step in range(start, c.train.num_steps):
    t0 = time.time()
    done = step + 1
    saves = done % c.checkpoint.every == 0 or done == c.train.num_steps
    policy = trainer.policy_params(state.params)  # LoRA: the adapters merged into the base

    def draw(i, step=step, params=policy):  # this step's i-th batch of prompts; 0: the plain rollout
      key = (jax.random.fold_in(rollout_key, step) if i == 0
             else jax.random.fold_in(jax.random.fold_in(refill_key, step), i))
      return sample(params, next(exp.iterator), key)

    refill_metrics = {}
    if c.grpo.dynamic_sampling:
      ro, refill_metrics = rollout_lib.refill_rollout(
          draw, num_groups=c.rollout.prompts_per_step, group_size=c.grpo.group_size,
          max_rounds=c.grpo.dynamic_sampling_max_rounds)
    else:
      ro = prefetch.take() if prefetch is not None else None
      if prefetch is not None:
        refill_metrics = {"rollout/staleness": float(ro is not None)}  # updates since its sampler params
      ro = ro or draw(0)
    t_rollout = time.time() - t0
    if prefetch is not None and not saves:  # never across a checkpoint: a resume redraws the same rollout
      data_before = exp.iterator.get_state()
      examples, key = next(exp.iterator), jax.random.fold_in(rollout_key, done)
      prefetch.start(lambda p, examples=examples, key=key: sample(p, examples, key), policy, data_before)
    del draw, policy  # LoRA: the merged copy is not kept through the update
    t1 = time.time()
    no_valid = not ro.valid_N.any()  # then nothing to learn from: the update is skipped
    train_metrics, prep_metrics = {"update_skipped": 1.0}, {}
    if not no_valid:
      batch = trainer.shard_batch(ro.batch, ro.num_rows)
      batch, prep_metrics = trainer.prepare(state.params, ref_params, batch, ro.rewards_BxG, ro.valid_N)
      state, train_metrics, _ = guarded_update(trainer, state, batch)  # mu x minibatches, one program
    t_train = time.time() - t1
    if c.grpo.ref_reset_every and done % c.grpo.ref_reset_every == 0 and ref_params is not None:
      ref_params = jax.tree.map(lambda x: x.copy(), state.params)  # iterative GRPO (DeepSeekMath §4.1.4)
    metrics = {**train_metrics, **jax.device_get(prep_metrics), **ro.reward_metrics, **ro.metrics,
               **refill_metrics, "time/rollout_s": t_rollout, "time/train_s": t_train, "time/step_s": time.time() - t0,
               "throughput/completion_tokens_per_s": ro.metrics["completion_tokens"] / max(t_rollout, 1e-9)}
    evaluated = None
    if c.eval.every and (done % c.eval.every == 0 or done == c.train.num_steps):
      last_eval = evaluated = run_eval(done, state.params)
      metrics.update(last_eval)
    writer.write(done, metrics)
    writer.advance()
    if c.train.sample_every and done % c.train.sample_every == 0:
      writer.write_samples(done, rollout_lib.sample_table(ro, c.train.num_samples_logged))
    stop = preemption.should_stop(done) and done < c.train.num_steps
    if saves or stop:
      meta["data"] = exp.iterator.get_state()
      if prefetch is not None and prefetch.in_flight:  # a SIGTERM stop: its prompts are drawn again on resume
        meta["data"] = prefetch.data_state
        prefetch.drop()
      ckpt.save(done, state, meta, ref_params if _ref_in_checkpoint(c, trainer) else None,
                metrics=evaluated)
    ckpt.check()  # a failed asynchronous write stops the run here, not at the next save
    guard.update(done, train_metrics["update_skipped"] > 0, train_metrics, no_valid)
    if stop:
      ckpt.wait()
      preempted = done
      log.warning("stopped by SIGTERM at step %d with a checkpoint; rerun the same command to resume", done)
      break
  preemption.in_loop = False
  if prefetch is not None:
    prefetch.close()
  writer.close()
  ckpt.close()  # waits for the last save; raises CheckpointWriteError if it failed
  opened.clear()
  summary = {"eval_before": meta.get("eval_before"), "eval_after": last_eval,
             "sft": meta.get("sft"), "steps": c.train.num_steps, "skipped_steps": guard.total}
  if preempted is not None:
    return {**summary, "preempted": preempted}
  if last_eval is None:
    last_eval = summary["eval_after"] = run_eval(c.train.num_steps, state.params)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    metrics_lib.plot_metrics(os.path.join(workdir, "metrics.jsonl"),
                             os.path.join(workdir, "metrics.png"))
  if c.train.export_hf:
    from grpo_jax import hf
    export_dir = os.path.join(workdir, "hf_export")
    policy = nnx.merge(exp.graphdef, trainer.policy_params(state.params))  # LoRA: merged into the base
    hf.save_pretrained(policy, export_dir)  # collective: every process
    if jax.process_index() == 0:
      exp.tokenizer.save_pretrained(export_dir)  # the vocabulary and chat template beside the weights
  return summary
