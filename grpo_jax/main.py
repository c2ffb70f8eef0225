"""Command line: `python -m grpo_jax.main --config experiments/NAME.py [--config.a.b=v ...] --workdir DIR`.

Trains, evaluates and checkpoints into DIR, and resumes from DIR when it holds a checkpoint. Overrides use
ml-collections syntax (`--config.grpo.beta=0.04`). `--print_config` prints every key of the resolved
config with its value and its comment from the config file, and exits. A bad command line or config (an
unknown key, a value of the wrong type, a missing file, a failed check) is one `error:` line on stderr
that names the key and the fix, with exit status 2. Multi-host: pass `--coordinator host:port
--num_processes N --process_id i` (or `--tpu_auto` on Cloud TPU) and run the same command on every host.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots (required to train).")
flags.DEFINE_bool("print_config", False, "Print every config key with its value and comment, then exit.")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator address host:port.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("tpu_auto", False, "Discover the multi-host Cloud TPU topology automatically.")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/grpo_jax/xla"),
                    "JAX persistent compilation cache directory ('' disables it): a restarted or "
                    "repeated run skips XLA compilation.")
flags.DEFINE_bool("fresh_start", False, "Start from scratch when the workdir's checkpoints are all unusable "
                  "(otherwise the run refuses); the unusable ones are moved to checkpoints/corrupt/.")
FLAGS = flags.FLAGS

USAGE_ERROR = 2  # the status of every command-line or config error
_HELP = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull")
_KEYS_HINT = "--print_config lists every key"


def fail(message: str):
  """One line on stderr, exit status 2: the errors a user fixes on the command line or in the config."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _config_path(args: list[str]) -> str | None:
  """The value of --config (both `--config=F` and `--config F`)."""
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(args):
      return args[i + 1]
  return None


def _unknown_override(args: list[str], path: str) -> str:
  """Names the first `--config.a.b` override whose key the config lacks, with close matches."""
  from grpo_jax import config as config_lib
  config = config_lib.load_config(path)
  for arg in args:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, done = config, []
    for part in key.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = f"config.{'.'.join(done)}" if done else "the config"
        close = difflib.get_close_matches(part, keys, n=3)
        hint = ("did you mean " + ", ".join("--config." + ".".join(done + [c]) for c in close) + "? "
                if close else "")
        kind = "has no key" if keys else "is not a sub-config, it has no key"
        return (f"--config.{key}: {where} {kind} {part!r} in {path}; {hint}"
                f"{_KEYS_HINT}")
      node, done = node[part], done + [part]
  return f"an override names a key that {path} does not have; {_KEYS_HINT}"


def _parse(argv: list[str]) -> list[str]:
  """absl flag parsing with every failure turned into one `error:` line (absl prints usage and tracebacks)."""
  args = argv[1:]
  if any(a in _HELP for a in args):
    _print_help(argv)
    sys.exit(0)
  path = _config_path(args)
  if path is None:
    fail("--config is required: python -m grpo_jax.main --config experiments/default.py --workdir DIR")
  if os.path.isfile(path):  # (ml-collections also takes FILE:ARG, passed to get_config as is)
    from grpo_jax import config as config_lib
    try:  # first on its own, so that an error in the file is not taken for a bad override below
      config_lib.load_config(path)
    except Exception as e:  # noqa: BLE001 - one line that names the file and the error
      fail(f"--config {path}: could not load it: {type(e).__name__}: {e}")
  elif not os.path.isfile(path.rsplit(":", 1)[0]):
    fail(f"--config: no file {path!r} (an experiments/*.py file with a get_config())")
  try:
    rest = FLAGS(argv)
  except flags.Error as e:  # absl: unknown flag, a value of the wrong type, ...
    fail(f"{e}; {_KEYS_HINT}" if "--config." in str(e) else f"{e} (python -m grpo_jax.main --help)")
  except (AttributeError, KeyError):  # ml_collections: an override of a key the config lacks
    fail(_unknown_override(args, path))
  try:
    FLAGS.config  # noqa: B018 - a FILE:ARG config is imported here
  except Exception as e:  # noqa: BLE001
    fail(f"--config {path}: could not load it: {type(e).__name__}: {e}")
  if FLAGS.workdir is None and not FLAGS.print_config:
    fail("--workdir is required: the directory for checkpoints, metrics and plots (--workdir runs/NAME)")
  return rest


def _print_help(argv: list[str]):
  print(__doc__.strip())
  print("\nflags:")
  print(FLAGS.module_help(sys.modules[__name__]).strip() or FLAGS.main_module_help())
  path = _config_path(argv[1:])
  if path and os.path.isfile(path):
    from grpo_jax import config as config_lib
    from grpo_jax import config_doc
    try:
      print("\n" + config_doc.describe(config_lib.load_config(path), path))
    except Exception as e:  # noqa: BLE001 - help must not fail on a broken config
      print(f"\n(config {path} could not be loaded: {type(e).__name__}: {e})")
  else:
    print("\nconfig keys: --config FILE --print_config lists every key of FILE with its value and comment "
          "(so does --config FILE --help)")


def main(argv):
  del argv
  from grpo_jax import config as config_lib
  if FLAGS.print_config:
    from grpo_jax import config_doc
    print(config_doc.describe(FLAGS.config, config_flags.get_config_filename(FLAGS["config"])))
    return
  from grpo_jax import sharding
  sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  auto=FLAGS.tpu_auto)
  import jax
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  def config_error(e):
    where = config_flags.get_config_filename(FLAGS["config"])
    fix = (f"set --config.{e.key}=VALUE or change it in {where}" if e.key else f"change {where}")
    fail(f"{e} ({fix}; {_KEYS_HINT})")

  try:
    config_lib.validate(FLAGS.config, jax.device_count())  # before the heavy imports: fail fast
  except config_lib.ConfigError as e:
    config_error(e)
  from grpo_jax import loop  # imported after jax.distributed is up
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
  try:
    summary = loop.train(FLAGS.config, FLAGS.workdir, fresh_start=FLAGS.fresh_start)
  except config_lib.ConfigError as e:
    config_error(e)
  except loop.Preempted as e:
    print(e)
    sys.exit(143)
  except loop.STOP_ERRORS as e:  # each says what happened and what to do: one line, no traceback
    sys.exit(f"error: {e}")  # exit 1: the run stopped (2 is for usage and config errors)
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
  app.run(main, flags_parser=_parse)
