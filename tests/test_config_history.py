"""The configs a run was trained under: config.json is the first, a changed resume adds config.<step>.json."""

import json
import os

from grpo_jax import config as config_lib
from grpo_jax import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**changes):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  for key, value in changes.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def test_history_of_changed_resumes(tmp_path, capsys, caplog):
  workdir = str(tmp_path)
  loop._record_config(workdir, _config(), 0)  # first start
  first = open(tmp_path / "config.json").read()
  assert json.loads(first)["grpo"]["beta"] == 0.0

  loop._record_config(workdir, _config(), 20)  # same config: nothing to say, nothing written
  assert capsys.readouterr().err == "" and sorted(os.listdir(workdir)) == ["config.json"]

  loop._record_config(workdir, _config(grpo__beta=0.04, train__num_steps=80), 20)
  err = capsys.readouterr().err
  assert err.startswith("WARNING: resuming") and "at step 20" in err
  assert "config.json -> config.20.json" in err
  assert "grpo.beta: 0.0 -> 0.04" in err and "train.num_steps: 60 -> 80" in err and err.count(" -> ") == 3
  assert "grpo.beta: 0.0 -> 0.04" in caplog.text  # logged too
  assert open(tmp_path / "config.json").read() == first  # never overwritten by a resume
  assert json.load(open(tmp_path / "config.20.json"))["grpo"]["beta"] == 0.04

  # The next resume compares with the latest recorded config, not the first one.
  loop._record_config(workdir, _config(grpo__beta=0.04, train__num_steps=80), 40)
  assert capsys.readouterr().err == "" and not os.path.exists(tmp_path / "config.40.json")
  loop._record_config(workdir, _config(grpo__beta=0.04, train__num_steps=100), 40)
  err = capsys.readouterr().err
  assert "config.20.json -> config.40.json" in err and "train.num_steps: 80 -> 100" in err
  assert "grpo.beta" not in err

  # Resumed from an older checkpoint (the newer ones were corrupt): compared with what step 20 ran.
  loop._record_config(workdir, _config(grpo__beta=0.04, train__num_steps=80), 30)
  assert capsys.readouterr().err == "" and not os.path.exists(tmp_path / "config.30.json")

  # A fresh start (no checkpoint left) records afresh: the old history belonged to deleted checkpoints.
  loop._record_config(workdir, _config(optim__lr=1e-3), 0)
  assert sorted(os.listdir(workdir)) == ["config.json"]
  assert json.load(open(tmp_path / "config.json"))["optim"]["lr"] == 1e-3
