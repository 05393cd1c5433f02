"""The package's layout: no module over 400 code lines, no import cycle, no import up the layers."""

import ast
import io
import os
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "jaxalign")
MAX_CODE_LINES = 400


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


def code_lines(source: str) -> int:
  """Lines holding code: not blank, not only a comment, not inside a docstring."""
  skip = set()
  for node in ast.walk(ast.parse(source)):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
        isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
      skip.update(range(body[0].lineno, body[0].end_lineno + 1))
  code = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
      code.update(range(tok.start[0], tok.end[0] + 1))
  return len(code - skip)


def _imports(name: str, path: str, modules) -> set[str]:
  """jaxalign modules imported by `name`, at any level (function-level imports count too)."""
  out = set()
  pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    out.update(t for t in targets if t in modules and t != name)
  return out


def test_code_line_counter_counts_code_only():
  src = '"""Doc\n\nstring."""\n\n# comment\nx = 1  # trailing\n\n\ndef f():\n  """Doc."""\n  return (1,\n          2)\n'
  assert code_lines(src) == 4  # x = 1, def f():, and the two lines of the return


def test_no_module_over_400_code_lines():
  sizes = {n: code_lines(open(p).read()) for n, p in _modules().items()}
  assert max(sizes.values()) > 100  # the counter sees code
  assert {n: c for n, c in sizes.items() if c > MAX_CODE_LINES} == {}


def test_no_import_cycle_and_no_import_up_the_layers():
  modules = _modules()
  graph = {n: _imports(n, p, modules) for n, p in modules.items()}
  # a package's __init__ importing its own submodules lazily (the trainer registry) is no edge up
  assert "jaxalign.trainers.online" not in graph["jaxalign.trainers"]
  for n, deps in graph.items():
    if not n.startswith("jaxalign.trainers") and n not in ("jaxalign.main", "jaxalign.evaluate"):  # (the CLIs)
      assert not {d for d in deps if d.startswith("jaxalign.trainers")}, n
  state, path = {}, []

  def visit(n):
    state[n] = 1
    path.append(n)
    for d in sorted(graph[n]):
      if d.startswith(n + "."):  # a package importing its own submodule is not a cycle through it
        continue
      assert state.get(d) != 1, "import cycle: " + " -> ".join(path[path.index(d):] + [d])
      if d not in state:
        visit(d)
    path.pop()
    state[n] = 2
  for n in sorted(graph):
    if n not in state:
      visit(n)
