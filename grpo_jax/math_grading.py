"""Grading a model's final answer against a gold answer (host Python, no JAX).

`extract_answer` finds the final answer in a completion; `math_equal` compares it with the gold answer by
normalized string, then exact numeric value, then symbolically (math-verify when installed, else sympy) in a
killable worker process, so that no input (``9^{9^{9^{9}}}``, 100k characters) can hang training.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- answer extraction
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


def extract_boxed(text: str) -> str | None:
  """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces balanced; None if absent."""
  start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
  if start < 0:
    return None
  i = text.index("{", start) + 1
  depth = 1
  for j in range(i, len(text)):  # a linear scan: regexes cannot balance braces
    if text[j] in "{}":
      depth += 1 if text[j] == "{" else -1
      if depth == 0:
        return text[i:j].strip()
  return None


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
  """The final answer in a completion: last ``\\boxed{}``, else GSM8K ``#### n``, else the last
  ``<answer>...</answer>`` content, else (if ``last_number``) the last number in the text; None if none."""
  boxed = extract_boxed(text)
  if boxed is not None:
    return boxed
  if "####" in text:
    tail = text[text.rfind("####") + 4:].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    number = re.match(r"\$?\s*(" + _NUMBER_RE.pattern + ")", line)  # "#### $72 dollars" -> "72"
    return number[1] if number else line or None
  end = text.rfind("</answer>")
  begin = text.rfind("<answer>", 0, end) if end >= 0 else -1
  if begin >= 0:  # rfind, not a lazy regex: a regex is quadratic on thousands of unclosed tags
    return text[begin + len("<answer>"):end].strip()
  if last_number:
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None
  return None


def _normalize(s: str) -> str:
  """Strip LaTeX/formatting noise that never changes an answer's value."""
  s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
  for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
           ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\$", ""), ("$", ""), ("^\\circ", ""),
           ("^{\\circ}", ""), (" ", "")):
    s = s.replace(old, new)
  return s.rstrip(".")


def parse_number(s: str) -> tuple[Fraction, bool] | None:
  """Exact value of a plain numeric answer: ``1,234``, ``-2.5``, ``3/4``, ``\\frac{1}{2}``, ``50%`` (after
  `_normalize`). Returns (value, had_percent_sign) or None if ``s`` is not a plain number."""
  percent = s.endswith("%")
  s = s.removesuffix("\\%").removesuffix("%")
  if len(s) > 200:  # far beyond any real answer; keeps Fraction() away from 4300-digit int limits
    return None
  try:
    if m := re.fullmatch(r"(-?)\\frac(?:\{(-?\d+)\}|(\d))(?:\{(-?\d+)\}|(\d))", s):  # \frac{1}{2}, \frac12
      value = Fraction(int(m[2] or m[3]), int(m[4] or m[5])) * (-1 if m[1] else 1)
    elif m := re.fullmatch(r"(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?)", s):
      value = Fraction(m[1]) / Fraction(m[2])
    elif re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", s):
      value = Fraction(s.replace(",", ""))
    else:
      return None
  except (ZeroDivisionError, ValueError):
    return None
  return value, percent


def _numbers_equal(gold: Fraction, pred: Fraction) -> bool:
  if gold == pred:
    return True
  if gold.denominator == 1 and pred.denominator == 1:
    return False  # integers compare exactly: 1000001 is not 1000000
  # A decimal can only approximate a repeating fraction (0.333333333 vs 1/3).
  return abs(gold - pred) <= Fraction(1, 10**8) * max(abs(gold), abs(pred))


# ------------------------------------------------------------------------------------- symbolic comparison
_SYMBOLIC_MAX_CHARS = 500
# Nested powers (9^{9^{9}}), 4+ digit exponents and big factorials are never needed by real answers but can
# make sympy compute astronomically large integers; they are rejected before any parsing happens.
_EXPENSIVE_RE = re.compile(r"(?:\^|\*\*)\s*[{(][^})]*(?:\^|\*\*)"  # 9^{9^{9}}, 9**(9**9)
              r"|(?:\^|\*\*)\s*\d+\s*(?:\^|\*\*)"  # 9^9^9
              r"|(?:\^|\*\*)\s*[{(]?\s*-?\d{4,}"  # 2^{10000}
              r"|\d{3,}\s*!"  # 1000!
              r"|!\s*[)}\]]*\s*!"  # (99!)!, 5!!
              r"|(?:\^|\*\*)[^()]*[)}]\s*!")  # (10^{10})!


def _sympy_equal(gold: str, pred: str) -> bool:
  """Fallback when math-verify is not installed: simplify(gold - pred) == 0 on a small LaTeX subset."""
  import sympy
  from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                      standard_transformations)

  def to_sympy(s: str):
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    for old, new in (("\\pi", "pi"), ("\\cdot", "*"), ("\\times", "*"), ("{", "("), ("}", ")")):
      s = s.replace(old, new)
    # parse_expr eval()s its input: admit only arithmetic, sqrt, pi and one-letter symbols, no attributes.
    if (not re.fullmatch(r"[0-9a-z+\-*/^(). ]*", s) or re.search(r"(?<!\d)\.|\.(?!\d)", s)
        or set(re.findall(r"[a-z]{2,}", s)) - {"sqrt", "pi"}):
      raise ValueError(f"unsupported expression {s!r}")
    return parse_expr(s, transformations=standard_transformations + (implicit_multiplication_application,
                                     convert_xor))
  return sympy.simplify(to_sympy(gold) - to_sympy(pred)) == 0


def _symbolic_worker_main() -> None:
  """Child-process loop: one JSON line [gold, pred, timeout_s] in, one JSON bool out. Runs on the child's
  main thread, where math-verify's SIGALRM timeouts work."""
  protocol_out = sys.stdout.buffer
  sys.stdout = sys.stderr  # a stray print() in a library must not corrupt the protocol
  try:
    import resource  # cap memory so a huge integer fails fast instead of swapping the host
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
  except (ImportError, ValueError, OSError):
    pass
  try:
    from math_verify import parse, verify
  except Exception:  # noqa: BLE001 - not installed, or broken (e.g. an antlr version clash)
    parse = verify = None
  protocol_out.write(b'"ready"\n')
  protocol_out.flush()
  for line in sys.stdin.buffer:
    gold, pred, timeout_s = json.loads(line)
    secs = max(1, math.ceil(timeout_s))
    try:
      result = bool(verify(parse("\\boxed{" + gold + "}", parsing_timeout=secs),
                 parse("\\boxed{" + pred + "}", parsing_timeout=secs), timeout_seconds=secs)
             if verify else _sympy_equal(gold, pred))
    except Exception:  # noqa: BLE001 - any parse failure means "not shown equal"
      result = False
    protocol_out.write(b"true\n" if result else b"false\n")
    protocol_out.flush()


class _SymbolicWorker:
  """A long-lived child Python process that answers symbolic comparisons under a hard timeout.

  Why a process: sympy can run for minutes (or exhaust memory) on hostile input, a Python thread cannot be
  interrupted, and math-verify's own SIGALRM timeout works only on the main thread while rewards run in
  worker threads. A process can be killed; it is then respawned in the background for the next call.
  It is started with ``subprocess`` (fork+exec of this file), not ``multiprocessing``, so the user's
  ``__main__`` is never re-imported and no JAX threads are forked.
  """

  _STARTUP_TIMEOUT_S = 60.0

  def __init__(self):
    self._proc: subprocess.Popen | None = None
    self._ready = False
    self._buf = b""
    self._lock = threading.Lock()
    self._warned = False
    atexit.register(self._kill)

  def _spawn(self) -> None:
    # One BLAS thread: on a 200-core host the default per-thread buffers alone would exceed the memory cap.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    self._proc = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__), "--symbolic-worker"],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                   env=env)
    self._ready, self._buf = False, b""

  def _kill(self) -> None:
    if self._proc is not None and self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()
    self._proc = None

  def _readline(self, timeout_s: float) -> bytes | None:
    deadline = time.monotonic() + timeout_s
    fd = self._proc.stdout.fileno()
    while b"\n" not in self._buf:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        return None
      chunk = os.read(fd, 65536)
      if not chunk:
        return None  # the child died (e.g. hit its memory cap)
      self._buf += chunk
    line, self._buf = self._buf.split(b"\n", 1)
    return line

  def equal(self, gold: str, pred: str, timeout_s: float) -> bool | None:
    """True/False, or None when the comparison timed out or the worker failed."""
    # A caller that the reward runner cancelled releases the worker within one comparison (timeout_s).
    if not self._lock.acquire(timeout=2 * timeout_s + 0.5):
      return None  # a runaway caller holds the worker; give up rather than queue behind it
    try:
      if self._proc is None or self._proc.poll() is not None:
        self._spawn()
      if not self._ready:
        if self._readline(self._STARTUP_TIMEOUT_S) != b'"ready"':
          raise RuntimeError("symbolic worker did not start")
        self._ready = True
      self._proc.stdin.write(json.dumps([gold, pred, timeout_s]).encode() + b"\n")
      self._proc.stdin.flush()
      line = self._readline(timeout_s)
      if line is None:
        raise TimeoutError(f"symbolic comparison exceeded {timeout_s}s")
      return json.loads(line)
    except (OSError, ValueError, RuntimeError, TimeoutError) as e:  # timeout, dead or unstartable child
      if not self._ready and not self._warned:  # failed before any comparison: say so once, loudly
        self._warned = True
        logger.warning("the symbolic math worker (%s) failed to start (%s); answers that are not plain "
                "numbers will be graded as wrong", sys.executable, e)
      logger.debug("symbolic comparison of %.80r vs %.80r failed: %s", gold, pred, e)
      self._kill()
      try:
        self._spawn()  # warm up the replacement while the caller moves on
      except OSError:
        pass
      return None
    except BaseException:  # cancelled mid-request (the reward runner gave up): the reply would desync
      self._kill()
      raise
    finally:
      self._lock.release()


_WORKER = _SymbolicWorker()


def math_equal(gold: str, pred: str | None, *, timeout_s: float = 1.0) -> bool:
  """Whether ``pred`` equals ``gold``: string equality after normalization, then exact numeric comparison
  (commas, $, %, fractions, decimals), then symbolic (math-verify or sympy) in a killable worker process
  bounded by ``timeout_s``. Too-long or exponent-bomb answers are never parsed symbolically."""
  if pred is None:
    return False
  gold_norm, pred_norm = _normalize(gold), _normalize(pred)
  if gold_norm == pred_norm:
    return True
  g, p = parse_number(gold_norm), parse_number(pred_norm)
  if g is not None and p is not None:
    return _numbers_equal(g[0], p[0]) or (p[1] and _numbers_equal(g[0], p[0] / 100))
  if (max(len(gold), len(pred)) > _SYMBOLIC_MAX_CHARS or _EXPENSIVE_RE.search(gold_norm)
      or _EXPENSIVE_RE.search(pred_norm)):
    return False
  # The un-normalized text goes to the symbolic parser: dropping spaces would turn "\pi r" into "\pir".
  return bool(_WORKER.equal(gold.strip(), pred.strip(), timeout_s))


if __name__ == "__main__" and sys.argv[1:] == ["--symbolic-worker"]:
  _symbolic_worker_main()
