"""A resolved config printed with the comments of the file that defines it (`--print_config`).

The comments are read from the config module's source, not kept at run time: the comment of
``c.grpo.beta = 0.0  # KL coefficient`` is "KL coefficient". A field assigned inside ``dict(...)`` /
``ConfigDict(...)`` / ``{...}`` takes the comment on the line of its keyword. A comment on the lines right
above an assignment counts when the line has none. Configs that build on another one in their own
directory (``import default``, as the experiments do) inherit its comments; their own win.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize

import ml_collections


def _line_comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
  """(trailing comments by line, comments alone on their line by line)."""
  trailing, alone = {}, {}
  code_lines = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      line = tok.start[0]
      (trailing if line in code_lines else alone)[line] = tok.string.lstrip("#").strip()
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  return trailing, alone


def _attribute_path(node) -> list[str] | None:
  """``c.a.b`` -> ["a", "b"] (the root name dropped); None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return parts[::-1] if isinstance(node, ast.Name) and parts else None


def _dict_items(node) -> list[tuple[str, ast.AST, int]] | None:
  """(key, value, line) of a ``dict(k=v)``, ``{"k": v}`` or ``ConfigDict(<one of those>)`` literal."""
  if isinstance(node, ast.Dict):
    return [(k.value, v, k.lineno) for k, v in zip(node.keys, node.values)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)]
  if isinstance(node, ast.Call):
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name == "dict":
      return [(kw.arg, kw.value, kw.value.lineno) for kw in node.keywords if kw.arg]
    if name in ("ConfigDict", "FrozenConfigDict") and node.args:
      return _dict_items(node.args[0])
  return None


def _file_comments(path: str, seen: set[str]) -> dict[str, str]:
  path = os.path.abspath(path)
  if path in seen or not os.path.isfile(path):
    return {}
  seen.add(path)
  with open(path, encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source, filename=path)
  trailing, alone = _line_comments(source)

  def comment_at(line: int, above: bool) -> str | None:
    if line in trailing:
      return trailing[line]
    block = []
    while above and line - 1 in alone:
      line -= 1
      block.insert(0, alone[line])
    return " ".join(block) or None

  comments: dict[str, str] = {}
  # Inherited first (a base config next to this one), so that this file's comments override them.
  for node in ast.walk(tree):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
    for name in names:
      comments.update(_file_comments(os.path.join(os.path.dirname(path), *name.split(".")) + ".py", seen))

  def visit(key: str, value, line: int, above: bool):
    if (text := comment_at(line, above)) is not None:
      comments[key] = text
    items = _dict_items(value)
    if items:
      lines = [item_line for _, _, item_line in items]
      for sub, sub_value, item_line in items:
        if lines.count(item_line) == 1:  # a comment shared by several fields on one line is nobody's
          visit(f"{key}.{sub}", sub_value, item_line, False)

  for node in ast.walk(tree):
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        if (parts := _attribute_path(target)) is not None:
          visit(".".join(parts), node.value, node.lineno, True)
  return comments


def source_comments(path: str) -> dict[str, str]:
  """``{"grpo.beta": "KL coefficient ...", ...}`` for the config file at ``path``."""
  return _file_comments(path, set())


def _leaves(config, prefix: str = ""):
  """(dotted key, value, is_node) in definition order; empty dicts are leaves."""
  for key in config.keys():
    value = config[key]
    full = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      yield full, value, True
      yield from _leaves(value, full + ".")
    else:
      yield full, value, False


def _format_value(value) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    return repr(value.to_dict())
  return repr(value)


def describe(config: ml_collections.ConfigDict, path: str) -> str:
  """One line per key, ``key = value  # comment``, values as resolved (overrides included). A
  sub-config's own comment is a ``# key: comment`` line above its keys."""
  comments = source_comments(path)
  rows = []
  for key, value, is_node in _leaves(config):
    if is_node:
      if key in comments:
        rows.append((f"# {key}: {comments[key]}", None))
      continue
    rows.append((f"{key} = {_format_value(value)}", comments.get(key)))
  width = min(44, max((len(text) for text, c in rows if c is not None), default=0))
  lines = [f"# {path}: every key, its value and its comment; override one with --config.KEY=VALUE"]
  for text, comment in rows:
    lines.append(text if comment is None else f"{text.ljust(width)}  # {comment}")
  return "\n".join(lines)
