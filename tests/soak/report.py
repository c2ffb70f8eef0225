"""Regenerates docs/reliability.md: `python -m tests.soak.report --write docs/reliability.md`.

1. Runs every soak test (tests/soak, the slow full kill soak included) with GRPO_SOAK_RECORD set, so the
   tests append their figures (kills, storage faults, NaN steps, hostile inputs and grading times, configs
   and rows tried) to a JSON-lines file, and summarizes them in a table.
2. For each protection in `tests.soak.mutations`, copies the tree, removes the protection (a one-line
   change) and runs the tests that guard it: each must fail. `--no-mutations` skips this part.
About 40 minutes on 2 busy CPU cores (the kill soak about 8, the mutations about 25).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tests.soak import harness
from tests.soak.mutations import MUTATIONS

ROOT = harness.ROOT
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info", ".pytest_cache")


def _pytest(args, cwd, env, timeout=5400):
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=timeout)
  summary = next((line for line in reversed(proc.stdout.splitlines()) if " in " in line and (
      "passed" in line or "failed" in line or "error" in line)), proc.stdout[-200:])
  summary = summary.strip("= ")
  reason = next((line[1:].strip() for line in proc.stdout.splitlines() if line.startswith("E  ")), "")
  if reason:  # the first failed assertion or error: that the tests fail for the right reason
    summary += f"; `{reason[:110].replace('|', '/').replace('`', chr(39))}`"
  return proc.returncode, summary, time.time() - t0, proc.stdout


def run_soak(record_path: str):
  env = dict(os.environ, GRPO_SOAK_RECORD=record_path, GRPO_SOAK_FULL="1", PYTHONPATH=ROOT)
  rc, summary, seconds, out = _pytest(["tests/soak", "-m", "slow or not slow"], ROOT, env)
  if rc:
    print(out[-6000:])
  return rc, summary, seconds


def run_mutation(m: dict) -> dict:
  with tempfile.TemporaryDirectory(prefix="grpo_mutant_") as tmp:
    tree = os.path.join(tmp, "tree")
    shutil.copytree(ROOT, tree, ignore=COPY_IGNORE)
    path = os.path.join(tree, m["file"])
    text = open(path).read()
    count = text.count(m["old"])
    if count != 1:
      return {**m, "result": f"NOT APPLIED ({count} matches)", "summary": "", "seconds": 0.0}
    open(path, "w").write(text.replace(m["old"], m["new"]))
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("GRPO_SOAK_RECORD", None)
    rc, summary, seconds, _ = _pytest(["-x", "-m", "slow or not slow", *m["tests"]], tree, env)
  result = {0: "NOT CAUGHT (tests pass)", 1: "caught (tests fail)"}.get(rc, f"ERROR (pytest exit {rc})")
  return {**m, "result": result, "summary": summary, "seconds": seconds}


def figures(records: list[dict]) -> list[tuple[str, str]]:
  by = collections.defaultdict(list)
  for r in records:
    by[r["figure"]].append(r)
  kills = [o for r in by["kills"] for o in r["outcomes"] if o["killed"]]
  chains = by["kills"]
  phases = collections.Counter(o["point"].split("#")[0].split(" ")[0] for o in kills)
  sigterm = [o["seconds"] for o in kills if o["point"] == "SIGTERM"]
  storage = by["storage"]
  nan = by["nan"]
  hostile = by["hostile"]
  worst = max(hostile, key=lambda r: r["seconds"]) if hostile else {"seconds": 0.0, "input": "-"}
  configs = by["configs"][0] if by["configs"] else {"tried": 0, "invalid": 0}
  rows = by["rows"][0] if by["rows"] else {"tried": 0, "files": 0}
  identical = all(r["identical"] for r in chains)
  return [
      ("kills survived with identical metrics.jsonl (SIGKILL + SIGTERM, restarted each time)",
       f"**{len(kills) if identical else 0}/{len(kills)}** in {len(chains)} chains; by phase: "
       + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))),
      ("SIGTERM: checkpoint written and exit 143", f"{len(sigterm)}/{len(sigterm)}, "
       f"{max(sigterm, default=0):.1f} s at most after the signal (bound: the step in progress + one "
       "synchronous save; tested < 60 s and <= 1 extra step)"),
      ("storage faults survived (clear error or fallback, last good checkpoint kept)",
       f"**{sum(r['survived'] for r in storage)}/{len(storage)}**: " + "; ".join(r["fault"] for r in storage)),
      ("NaN/Inf steps contained (update skipped, state unchanged, no NaN checkpoint)",
       f"**{sum(r.get('steps', 1) for r in nan)}** steps in {len(nan)} cases: "
       + "; ".join(r["case"] for r in nan)),
      ("hostile reward functions and completions tried, all contained",
       f"**{sum(r['contained'] for r in hostile)}/{len(hostile)}**; worst grading time "
       f"{worst['seconds']:.2f} s ({worst['input']})"),
      ("invalid configs tried (each a ConfigError naming the key, none uncontrolled)",
       f"**{configs['invalid']}** invalid of {configs['tried']} drawn (hypothesis + the issue-16 list)"),
      ("dataset rows tried (each kept or counted by reason and line, none uncontrolled)",
       f"**{rows['tried']}** rows in {rows['files']} generated JSON-lines/Parquet files"),
      ("concurrent runs on one workdir", "; ".join(r["case"] for r in by["lock"]) or "-"),
  ]


def render(fig, soak, mutations) -> str:
  rc, summary, seconds = soak
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "grpo_jax", "tests"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
  lines = [
      "# Reliability soak",
      "",
      "Regenerated by `python -m tests.soak.report --write docs/reliability.md` (about 40 min on 2 CPU cores;",
      "`--no-mutations` for the figures alone). The tests are in `tests/soak/`; CI runs all of them except",
      "the full kill soak (`-m slow` or `GRPO_SOAK_FULL=1` runs it).",
      "",
      f"Measured {datetime.date.today()} at commit {commit}{' + uncommitted changes' if dirty else ''}: "
      f"`pytest tests/soak -m 'slow or not slow'`: {summary} ({seconds / 60:.1f} min"
      f"{'' if rc == 0 else ', FAILED'}).",
      "",
      "| what | figure |",
      "|---|---|",
      *[f"| {a} | {b} |" for a, b in fig],
      "",
  ]
  if mutations:
    caught = sum(m["result"].startswith("caught") for m in mutations)
    lines += [
        "## Every protection is tested: removing it fails its test",
        "",
        f"Each row removes one protection in a copy of the tree (`tests/soak/mutations.py`) and runs the "
        f"tests named there: **{caught}/{len(mutations)} caught**.",
        "",
        "| protection | removed by changing (file) | tests run | result |",
        "|---|---|---|---|",
    ]
    for m in mutations:
      tests = ", ".join(t.split("::")[-1] for t in m["tests"])
      lines.append(f"| {m['name']} | `{m['file']}` | {tests} | {m['result']}: {m['summary']} |")
    lines.append("")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--write", help="the markdown file to (re)write; default: print")
  parser.add_argument("--no-mutations", action="store_true", help="skip removing each protection")
  parser.add_argument("--only", help="run only the mutations whose name contains this (for a check; do not "
                      "--write the result)")
  parser.add_argument("--no-soak", action="store_true", help="skip the soak run (figures left empty)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    record = os.path.join(tmp, "figures.jsonl")
    soak = (0, "not run", 0.0) if args.no_soak else run_soak(record)
    records = [json.loads(line) for line in open(record)] if os.path.exists(record) else []
  mutations = []
  if not args.no_mutations:
    for m in MUTATIONS:
      if args.only and args.only not in m["name"]:
        continue
      mutations.append(run_mutation(m))
      print(f"{mutations[-1]['result']:<28} {m['name']} ({mutations[-1]['seconds']:.0f} s)", flush=True)
  text = render(figures(records), soak, mutations)
  if args.write:
    open(os.path.join(ROOT, args.write) if not os.path.isabs(args.write) else args.write, "w").write(text)
  print(text)
  return 0 if soak[0] == 0 and all(m["result"].startswith("caught") for m in mutations) else 1


if __name__ == "__main__":
  sys.exit(main())
