"""Every ablation axis; regenerates docs/ablations.md and docs/ablations/*.png.

  python -m grpo_jax.ablate --suite experiments/ablations/all.py            # ~15-30 min on 2 CPU cores
  python -m grpo_jax.ablate --suite experiments/ablations/all.py --smoke    # every arm, 3 steps (tests)
"""
import importlib.util
import os

import ml_collections as mc

AXES = ("std_norm", "loss_agg", "clip_higher", "gspo", "kl", "zero_var", "overlong", "group_size", "rft",
        "majk", "rollout_correction", "objectives")  # one experiments/ablations/<name>.py per axis, in report order


def _axis(name: str) -> mc.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"ablation_axis_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.axes = tuple(_axis(name) for name in AXES)  # the axis configs, each from its own file
  c.report = "docs/ablations.md"  # the markdown report this suite regenerates (plots in docs/ablations/)
  return c
