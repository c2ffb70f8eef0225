"""The paper-ablation runner: every arm x seed of a suite, resumable, then the report.

  python -m grpo_jax.ablate --suite experiments/ablations/all.py [--smoke] [--out DIR] [--report FILE]

A suite is an `experiments/ablations/*.py` module whose `get_config()` is one axis (a ConfigDict with
`name`, `toy`, `base`, `arms`, `claims`, ...) or, for `all.py`, a ConfigDict with `axes` (a tuple of them)
and `report` (the markdown file it regenerates). Each arm runs all its seeds — and all values of its
numeric sweep, if any — in a jitted program (`grpo_jax.toys.program.make_train`, `vmap`ped); arms that
differ only in traced knobs share one program and one call. Each arm's results are written atomically
to `OUT/<axis>/<arm>.npz` with a hash of its settings: a killed sweep re-run with the same command skips
the arms already on disk and continues with the rest. A result whose settings changed, or a file that
does not load, is recomputed. `--smoke` runs every arm for a few steps with two seeds (and a cheaper
compile) into its own directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grpo_jax.toys import make_toy
from grpo_jax.toys.program import KNOBS, Spec, arm_program, make_train, merge_specs, program_base, stack_knobs

RESULTS_VERSION = 1  # bump when the meaning of stored results changes
SMOKE_STEPS, SMOKE_SEEDS = 3, 2
# Smoke programs run three steps: compile time is all that matters, and XLA's optimisations halve it.
FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_llvm_disable_expensive_passes": True}
ARM_KEYS = {"name", "toy_kwargs", "sweep"}  # arm fields that are not settings


def load_suite(path: str) -> ml_collections.ConfigDict:
  """The suite of an `experiments/ablations/*.py` file: a ConfigDict with `axes` and `report`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--suite {path}: no such file (expected experiments/ablations/NAME.py)")
  spec = importlib.util.spec_from_file_location(f"ablation_suite_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--suite {path}: the module has no get_config()")
  config = module.get_config()
  if "axes" in config:
    return config
  return ml_collections.ConfigDict({"axes": (config,), "report": config.get("report", "")})


@dataclasses.dataclass(frozen=True)
class ArmSettings:
  """Everything that determines one arm's results."""

  axis: str
  name: str
  toy_name: str
  toy_kwargs: tuple  # sorted (key, value) pairs
  spec: Spec  # the arm's own static settings
  knob_rows: tuple  # one sorted (knob, value) tuple per sweep value (one row without a sweep)
  sweep_field: str  # "" or the swept knob
  sweep_values: tuple
  seeds: int

  def key(self) -> str:
    blob = json.dumps({"v": RESULTS_VERSION, "toy": self.toy_name, "toy_kwargs": self.toy_kwargs,
                       "spec": dataclasses.asdict(self.spec), "knobs": self.knob_rows, "seeds": self.seeds},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  def sub_arms(self) -> list[str]:
    """Report names: the arm itself, or one `arm[field=value]` per sweep value."""
    if not self.sweep_field:
      return [self.name]
    return [f"{self.name}[{self.sweep_field}={v:g}]" for v in self.sweep_values]

  def toy(self):
    return make_toy(self.toy_name, **dict(self.toy_kwargs))


def _plain(x):
  return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else x


def _hashable(v):
  return tuple(v) if isinstance(v, list) else v


def arm_settings(axis: ml_collections.ConfigDict, arm: ml_collections.ConfigDict, smoke: bool) -> ArmSettings:
  """Resolves `axis.base` + the arm's overrides; errors name the axis, the arm and the bad setting."""
  where = f"axis {axis.name!r}, arm {arm.get('name', '?')!r}"
  allowed = set(inspect.signature(arm_program).parameters)
  merged = dict(_plain(axis.base))
  merged.update({k: _plain(v) for k, v in arm.items() if k not in ARM_KEYS})
  unknown = set(merged) - allowed
  if unknown:
    raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
  if smoke:
    merged["steps"] = SMOKE_STEPS
  toy_kwargs = dict(_plain(axis.get("toy_kwargs", {})) or {})
  toy_kwargs.update(_plain(arm.get("toy_kwargs", {})) or {})
  try:
    toy = make_toy(axis.toy, **toy_kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from e
  if merged.get("supervision") == "process" and not toy.has_process:
    raise ValueError(f"{where}: supervision='process' needs a toy with step rewards (scratchpad), "
                     f"not {axis.toy!r}")
  sweep = _plain(arm.get("sweep", None)) or {}
  field, values = sweep.get("field", ""), tuple(float(v) for v in sweep.get("values", ()))
  if field and (field not in KNOBS or not values):
    raise ValueError(f"{where}: a sweep needs a knob field {KNOBS} and values, got {sweep}")
  rows, specs = [], set()
  for value in values or (None,):
    try:
      spec, knobs = arm_program(**(merged if value is None else {**merged, field: value}))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: {e}") from e
    specs.add(spec)
    rows.append(tuple(sorted(knobs.items())))
  seeds = SMOKE_SEEDS if smoke else int(axis.seeds)
  return ArmSettings(axis.name, arm.name, axis.toy,
                     tuple(sorted((k, _hashable(v)) for k, v in toy_kwargs.items())), specs.pop(),
                     tuple(rows), field, values, seeds)


@functools.lru_cache(maxsize=None)
def compiled_program(toy, spec: Spec, fast: bool):
  """jit(vmap over knob rows [R] of vmap over seeds [S]) of `make_train`, built once per (toy, spec)."""
  seeds_vmapped = jax.vmap(make_train(toy, spec), in_axes=(0, None))
  return _with_compile_options(jax.jit(jax.vmap(seeds_vmapped, in_axes=(None, 0))), fast)


@functools.lru_cache(maxsize=None)
def compiled_eval(toy, fast: bool):
  """jit of `toy.final_metrics` over [R, S] policies with [S] keys (one compile per toy)."""
  per_seed = jax.vmap(toy.final_metrics, in_axes=(0, 0))
  return _with_compile_options(jax.jit(jax.vmap(per_seed, in_axes=(0, None))), fast)


def _with_compile_options(jitted, fast: bool):
  if not fast:
    return jitted
  cache = {}

  def call(*args):
    key = str(jax.tree.map(lambda x: (x.shape, x.dtype), args))
    if key not in cache:
      cache[key] = jitted.lower(*args).compile(compiler_options=FAST_COMPILE)
    return cache[key](*args)
  return call


def run_group(group: list[ArmSettings], fast: bool) -> list[dict[str, np.ndarray]]:
  """Arms of one toy whose Specs merge into one program, run as ONE call vmapped over all their knob
  rows and seeds. Returns per arm {"curve/m": [V, S, steps], "final/m": [V, S], "initial/m": [V, S]}."""
  toy = group[0].toy()
  spec = merge_specs(s.spec for s in group)
  seeds = group[0].seeds
  rows = [dict(r) for s in group for r in s.knob_rows]
  keys_S = jax.vmap(jax.random.key)(jnp.arange(seeds))
  curves, final, params = compiled_program(toy, spec, fast)(keys_S, stack_knobs(rows))
  eval_keys_S = jax.vmap(lambda k: jax.random.fold_in(k, 10**6))(keys_S)
  evaluate = compiled_eval(toy, fast)
  params0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(rows), seeds, *x.shape)), toy.init_params())
  out = {f"curve/{k}": v for k, v in curves.items()}
  out.update({f"final/{k}": v for k, v in final.items()})
  out.update({f"final/{k}": v for k, v in evaluate(params, eval_keys_S).items()})
  out.update({f"initial/{k}": v for k, v in evaluate(params0, eval_keys_S).items()})
  out = {k: np.asarray(jax.device_get(v), np.float32) for k, v in out.items()}
  per_arm, start = [], 0
  for s in group:
    stop = start + len(s.knob_rows)
    per_arm.append({k: v[start:stop] for k, v in out.items()})
    start = stop
  return per_arm


def _groups(pending: list[ArmSettings]) -> list[list[ArmSettings]]:
  """Pending arms grouped by (toy, spec up to max_iterations/use_ref/mismatch), in first-appearance order."""
  groups: dict = {}
  for s in pending:
    base = program_base(s.spec)
    groups.setdefault((s.toy(), base, s.seeds), []).append(s)
  return list(groups.values())


def save_atomic(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
  """Writes `path` so that a reader sees the old file, or the complete new one, never a partial one."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, __meta__=np.asarray(json.dumps(meta)), **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # a failed write leaves neither a partial result nor litter
      os.remove(tmp)


def load_result(path: str, key: str):
  """(arrays, meta) of a stored arm whose settings hash is `key`, else None (missing, stale, corrupt)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as data:
      meta = json.loads(str(data["__meta__"]))
      arrays = {k: data[k] for k in data.files if k != "__meta__"}
  except Exception as e:  # noqa: BLE001 — a truncated or foreign file is recomputed, never trusted
    print(f"  {path}: unreadable ({type(e).__name__}: {e}); recomputing", flush=True)
    return None
  if meta.get("key") != key:
    print(f"  {path}: settings changed since it was written; recomputing", flush=True)
    return None
  return arrays, meta


def run_suite(suite: ml_collections.ConfigDict, out_dir: str, *, smoke: bool = False,
              only: tuple[str, ...] = (), log=print) -> dict:
  """Runs (or loads) every arm of every axis; returns {axis: {"config", "arms": {name: (settings,
  arrays, meta)}}}. Arms still missing are run group by group (`run_group`) and each is written to disk
  as soon as its group finishes."""
  results = {}
  for axis in suite.axes:
    if only and axis.name not in only:
      continue
    arms, pending = {}, []
    for arm in axis.arms:
      settings = arm_settings(axis, arm, smoke)
      path = os.path.join(out_dir, axis.name, f"{arm.name}.npz")
      loaded = load_result(path, settings.key())
      if loaded is None:
        pending.append(settings)
      else:
        log(f"[{axis.name}] {arm.name}: loaded from {path}")
      arms[arm.name] = (settings, *loaded) if loaded else None
    for group in _groups(pending):
      t0 = time.time()
      for settings, arrays in zip(group, run_group(group, fast=smoke)):
        meta = {"key": settings.key(), "wall_s": (time.time() - t0) / len(group),
                "load_avg": os.getloadavg()[0], "sub_arms": settings.sub_arms(), "seeds": settings.seeds,
                "steps": settings.spec.steps, "group": [s.name for s in group]}
        save_atomic(os.path.join(out_dir, axis.name, f"{settings.name}.npz"), arrays, meta)
        arms[settings.name] = (settings, arrays, meta)
      log(f"[{axis.name}] {', '.join(s.name for s in group)}: one program, {len(group)} arm(s) x "
          f"{group[0].seeds} seeds x {group[0].spec.steps} steps in {time.time() - t0:.1f}s")
    results[axis.name] = {"config": axis, "arms": arms}
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m grpo_jax.ablate", description=__doc__.split("\n\n")[0])
  parser.add_argument("--suite", required=True, help="experiments/ablations/NAME.py (all.py: everything)")
  parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_STEPS} steps, {SMOKE_SEEDS} seeds per arm")
  parser.add_argument("--out", default=None, help="results directory (default runs/ablations[_smoke])")
  parser.add_argument("--report", default=None,
                      help="markdown report to write (default: the suite's `report`, else OUT/ablations.md; "
                           "with --smoke or --only always OUT/ablations.md)")
  parser.add_argument("--only", default="", help="comma-separated axis names to run")
  args = parser.parse_args(argv)
  from grpo_jax import ablate_report  # matplotlib is only needed here

  suite = load_suite(args.suite)
  only = tuple(filter(None, args.only.split(",")))
  unknown = set(only) - {a.name for a in suite.axes}
  if unknown:
    parser.error(f"--only: no axis {sorted(unknown)} in {args.suite}; it has {[a.name for a in suite.axes]}")
  out_dir = args.out or ("runs/ablations_smoke" if args.smoke else "runs/ablations")
  # A partial or smoke run never overwrites the committed report.
  partial = args.smoke or only or not suite.get("report")
  report = args.report or (os.path.join(out_dir, "ablations.md") if partial else suite.report)
  t0, load0 = time.time(), os.getloadavg()
  loaded = []
  results = run_suite(suite, out_dir, smoke=args.smoke, only=only,
                      log=lambda msg: (print(msg, flush=True), loaded.append(": loaded from " in msg)))
  run_info = {"wall_s": time.time() - t0, "load_start": load0, "load_end": os.getloadavg(),
              "command": " ".join(["python -m grpo_jax.ablate", *(argv if argv is not None else sys.argv[1:])]),
              "smoke": args.smoke, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
  # The wall time of a run that computed every arm is worth quoting later, when a rerun only loads them.
  full_run_path = os.path.join(out_dir, f"full_run_{os.path.basename(args.suite)}.json")
  if not any(loaded) and not only:
    with open(full_run_path, "w") as f:
      json.dump(run_info, f)
  if os.path.exists(full_run_path) and not only:
    with open(full_run_path) as f:
      run_info["full_run"] = json.load(f)
  ablate_report.write_report(results, report, run_info)
  print(f"wrote {report} ({run_info['wall_s']:.0f}s; load average {load0[0]:.1f} -> "
        f"{run_info['load_end'][0]:.1f})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
