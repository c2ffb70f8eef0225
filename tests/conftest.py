"""Every test sees 8 fake CPU devices (set before jax is imported)."""
import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """`(workdir, CompletedProcess)` of one uninterrupted tiny default-experiment CLI run, shared by
  tests/test_loop.py and the soak tests (tests/soak/harness.py holds its flags)."""
  from soak import harness
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  proc = harness.run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc
