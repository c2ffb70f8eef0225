"""The ablation runner: the smoke run of every arm and its report, resuming an interrupted sweep, stale and
corrupt results, atomic writes, config errors, and the statistics behind the verdicts."""
import os
import re

import ml_collections as mc
import numpy as np
import pytest

from grpo_jax import ablate, ablate_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = os.path.join(ROOT, "experiments", "ablations", "all.py")
LOSS_AGG = os.path.join(ROOT, "experiments", "ablations", "loss_agg.py")


def test_ci95_and_verdict_rule():
  mean, half = ablate_report.ci95([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5 and half == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
  assert ablate_report.ci95([1.0, np.nan, 3.0]) == pytest.approx((2.0, 12.706205 * np.sqrt(2) / np.sqrt(2)))
  v = ablate_report.verdict
  assert v(1.0, 0.5, +1) == v(-1.0, 0.5, -1) == ablate_report.REPRODUCED
  assert v(-1.0, 0.5, +1) == v(1.0, 0.5, -1) == ablate_report.CONTRADICTED
  assert v(0.2, 0.5, +1) == v(0.2, 0.5, -1) == ablate_report.NOT_VISIBLE
  assert v(0.2, 0.5, 0) == ablate_report.REPRODUCED and v(1.0, 0.5, 0) == ablate_report.CONTRADICTED


FAST_AXES = ("std_norm", "overlong", "rft")  # T0, T3, T2: every toy family and knob kind, three programs


def _check_smoke_report(out, axes):
  text = open(os.path.join(out, "ablations.md")).read()
  verdicts = re.findall(r"\| \*\*(reproduced|not visible at this scale|contradicted)\*\* \|", text)
  assert len(verdicts) == 2 * sum(len(a.claims) for a in axes)  # in the summary and in the axis section
  for axis in axes:
    assert f"## {axis.name}\n" in text
    png = os.path.join(out, "ablations", f"{axis.name}.png")
    assert 5_000 < os.path.getsize(png) < 300_000
    for arm in axis.arms:
      with np.load(os.path.join(out, axis.name, f"{arm.name}.npz")) as data:
        for col in axis.table:
          metric, at = col.split(":")
          kind = "initial" if at in ("initial", "gain") else "curve"
          assert f"{kind}/{metric}" in data.files or f"final/{metric}" in data.files, (axis.name, col)
        curve = data[f"curve/{axis.curves[0]}"]
        assert curve.shape[1:] == (ablate.SMOKE_SEEDS, ablate.SMOKE_STEPS) and np.isfinite(curve).all()


def test_smoke_run_and_report(tmp_path):
  """`--smoke` on three axes (one program each): every arm of them, the report, the plots."""
  out = str(tmp_path / "smoke")
  assert ablate.main(["--suite", ALL, "--smoke", "--out", out, "--only", ",".join(FAST_AXES)]) == 0
  _check_smoke_report(out, [a for a in ablate.load_suite(ALL).axes if a.name in FAST_AXES])


@pytest.mark.slow  # ~2.5 min of CPU (20 programs to compile): every arm of every axis
def test_smoke_runs_every_arm(tmp_path):
  out = str(tmp_path / "smoke_all")
  assert ablate.main(["--suite", ALL, "--smoke", "--out", out]) == 0
  _check_smoke_report(out, ablate.load_suite(ALL).axes)


def _fast_suite():
  axes = {a.name: a for a in ablate.load_suite(ALL).axes}
  return mc.ConfigDict({"axes": (axes["std_norm"], axes["overlong"]), "report": ""})


def _run(out, suite, **kw):
  return ablate.run_suite(suite, out, smoke=True, log=lambda *_: None, **kw)


def test_resume_after_an_interrupted_sweep(tmp_path, monkeypatch):
  """Interrupt the sweep after its first program: rerunning skips the stored arms, runs the rest, and the
  results equal those of a sweep that was never interrupted."""
  suite = _fast_suite()  # two axes, one program each (shared with test_smoke_run_and_report)
  clean = _run(str(tmp_path / "clean"), suite)
  real = ablate.run_group
  calls = []

  def interrupt_second(group, fast):
    calls.append([s.name for s in group])
    if len(calls) == 2:
      raise KeyboardInterrupt  # as a Ctrl-C (or kill) in the middle of the sweep
    return real(group, fast)

  out = str(tmp_path / "resumed")
  monkeypatch.setattr(ablate, "run_group", interrupt_second)
  with pytest.raises(KeyboardInterrupt):
    _run(out, suite)
  first = [a.name for a in suite.axes[0].arms]
  assert sorted(os.listdir(os.path.join(out, "std_norm"))) == sorted(f"{a}.npz" for a in first)
  assert not os.path.exists(os.path.join(out, "overlong"))  # nothing partial or temporary
  mtimes = {a: os.path.getmtime(os.path.join(out, "std_norm", f"{a}.npz")) for a in first}

  calls.clear()
  monkeypatch.setattr(ablate, "run_group", lambda g, fast: calls.append([s.name for s in g]) or real(g, fast))
  resumed = _run(out, suite)
  assert calls == [[a.name for a in suite.axes[1].arms]]
  assert {a: os.path.getmtime(os.path.join(out, "std_norm", f"{a}.npz")) for a in first} == mtimes
  for axis in ("std_norm", "overlong"):
    for name, (_, arrays, _) in clean[axis]["arms"].items():
      for key, value in arrays.items():
        np.testing.assert_allclose(resumed[axis]["arms"][name][1][key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{axis}/{name} {key}")


def test_stale_or_corrupt_results_are_recomputed(tmp_path, monkeypatch):
  suite = _fast_suite()
  suite.axes = suite.axes[:1]  # std_norm
  out = str(tmp_path / "r")
  _run(out, suite)
  real, calls = ablate.run_group, []
  monkeypatch.setattr(ablate, "run_group", lambda g, fast: calls.append([s.name for s in g]) or real(g, fast))
  _run(out, suite)
  assert calls == []  # everything on disk and current
  with open(os.path.join(out, "std_norm", "dr_grpo.npz"), "wb") as f:
    f.write(b"PK\x03\x04 truncated")
  changed = _fast_suite()
  changed.axes = changed.axes[:1]
  changed.axes[0].arms[3].lr = 1.0  # a changed setting makes the stored result stale
  _run(out, changed)
  assert calls == [["dr_grpo", "batch_std"]]


def test_save_atomic_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
  path = str(tmp_path / "axis" / "arm.npz")
  ablate.save_atomic(path, {"curve/x": np.ones((1, 2, 3))}, {"key": "old"})

  def broken_savez(f, **arrays):
    f.write(b"PK\x03\x04 partial")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", broken_savez)
  with pytest.raises(OSError):
    ablate.save_atomic(path, {"curve/x": np.zeros((1, 2, 3))}, {"key": "new"})
  arrays, meta = ablate.load_result(path, "old")
  assert meta["key"] == "old" and arrays["curve/x"].sum() == 6
  assert os.listdir(os.path.dirname(path)) == ["arm.npz"]


def test_config_errors_name_the_axis_arm_and_key():
  axis = ablate.load_suite(LOSS_AGG).axes[0]
  bad = mc.ConfigDict(dict(name="typo", estimater="grpo"))
  with pytest.raises(ValueError, match=r"axis 'loss_agg', arm 'typo'.*estimater"):
    ablate.arm_settings(axis, bad, smoke=True)
  with pytest.raises(ValueError, match=r"arm 'p'.*process.*scratchpad"):
    ablate.arm_settings(axis, mc.ConfigDict(dict(name="p", supervision="process")), smoke=True)
  with pytest.raises(ValueError, match=r"arm 'k'.*kl_placement='inside'"):
    ablate.arm_settings(axis, mc.ConfigDict(dict(name="k", kl_placement="inside")), smoke=True)
  with pytest.raises(FileNotFoundError, match="no_such.py"):
    ablate.load_suite("experiments/ablations/no_such.py")


def test_rollout_correction_and_objectives_axes_group_into_their_programs():
  """All six mismatch/correction arms differ only in knobs (one program, the mismatch path compiled in);
  the objectives axis needs one program per loss type, each running μ = 1 and μ = 4."""
  axes = {a.name: a for a in ablate.load_suite(ALL).axes}
  settings = {name: [ablate.arm_settings(axes[name], arm, smoke=False) for arm in axes[name].arms]
              for name in ("rollout_correction", "objectives")}
  (group,) = ablate._groups(settings["rollout_correction"])
  assert len(group) == 6 and ablate.merge_specs(s.spec for s in group).mismatch
  knobs = {s.name: dict(s.knob_rows[0]) for s in group}
  assert knobs["on_policy"]["sampler_temperature"] == 1.0 and knobs["mismatch"]["sampler_temperature"] > 1
  assert knobs["mismatch_mis_seq"]["rollout_is_sequence"] == 1.0 and knobs["mismatch_sampler_old"]["rescore_old"] == 0
  groups = ablate._groups(settings["objectives"])
  assert [sorted(s.name for s in g) for g in groups] == [[f"{t}_mu1", f"{t}_mu4"] for t in ("grpo", "cispo", "gmpo")]
  assert [ablate.merge_specs(s.spec for s in g).max_iterations for g in groups] == [4, 4, 4]
  assert not any(s.spec.mismatch for s in settings["objectives"])
