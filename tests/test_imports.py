"""No import cycles between jaxssl's modules: each imports only modules
below it (every import counts, also those under `TYPE_CHECKING` and inside
functions)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "jaxssl"


def _modules() -> dict:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set:
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in modules:
          found.add(full)
        elif base in modules:
          found.add(base)
  found.discard(name)
  return found


def _cycles(graph: dict) -> list:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  modules = _modules()
  graph = {m: _imports(m, p, modules) for m, p in modules.items()}
  assert len(graph) > 50 and "jaxssl.step" in graph["jaxssl.train"]
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
      ["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []
