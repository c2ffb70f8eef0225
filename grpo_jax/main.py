"""Command line: `python -m grpo_jax.main --config experiments/NAME.py [--config.a.b=v ...] --workdir DIR`.

Trains, evaluates and checkpoints into DIR, and resumes from DIR when it holds a checkpoint. Overrides use
ml-collections syntax (`--config.grpo.beta=0.04`); an unknown key or a value of the wrong type is an
error that names the key. Multi-host: pass `--coordinator host:port --num_processes N --process_id i`
(or `--tpu_auto` on Cloud TPU) and run the same command on every host.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator address host:port.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("tpu_auto", False, "Discover the multi-host Cloud TPU topology automatically.")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/grpo_jax/xla"),
                    "JAX persistent compilation cache directory ('' disables it): a restarted or "
                    "repeated run skips XLA compilation.")
flags.DEFINE_bool("fresh_start", False, "Start from scratch when the workdir's checkpoints are all unusable "
                  "(otherwise the run refuses); the unusable ones are moved to checkpoints/corrupt/.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from grpo_jax import sharding
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  auto=FLAGS.tpu_auto)
  if FLAGS.compilation_cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  from grpo_jax import loop  # imported after jax.distributed is up
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
  try:
    summary = loop.train(FLAGS.config, FLAGS.workdir, fresh_start=FLAGS.fresh_start)
  except loop.Preempted as e:
    print(e)
    sys.exit(143)
  except loop.STOP_ERRORS as e:  # each says what happened and what to do: one line, no traceback
    sys.exit(f"error: {e}")
  if summary.get("preempted") is not None:
    print(f"stopped by SIGTERM after step {summary['preempted']} with a checkpoint in {FLAGS.workdir}; "
          "run the same command to resume")
    sys.exit(143)  # 128 + SIGTERM: not finished (a job controller must restart it, not mark it done)
  before = (summary.get("eval_before") or {}).get("eval/accuracy")
  after = (summary.get("eval_after") or {}).get("eval/accuracy")
  print(json.dumps(summary, indent=2))
  if before is not None and after is not None:
    print(f"held-out greedy accuracy: before GRPO {100 * before:.1f}%  ->  after GRPO "
          f"{100 * after:.1f}%  ({100 * (after - before):+.1f} points)")
  print(f"metrics, plot and checkpoints in {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
