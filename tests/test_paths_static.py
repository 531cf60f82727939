"""No local-only file calls on user paths: every module of artv_jax reads and writes through
epath and artv_jax.paths, so that gs:// works, apart from an explicit allowlist."""
import ast
import collections
import pathlib

import artv_jax

PACKAGE = pathlib.Path(artv_jax.__file__).parent
# Calls that only reach this host's filesystem (fully qualified, after resolving imports).
FORBIDDEN = {"open", "io.open", "os.makedirs", "os.listdir", "os.scandir", "os.walk",
             "os.path.abspath", "os.path.exists", "os.path.isdir", "os.path.isfile",
             "os.path.getsize", "os.remove", "os.unlink", "os.rmdir", "os.replace", "os.rename"}
FORBIDDEN_MODULES = ("shutil", "glob", "pathlib")
# (module, enclosing function) -> why its local-only calls are right.
ALLOWED = {
    ("artv_jax/paths.py", "resolve"): "the helper itself: abspath of a path known to be local",
    ("artv_jax/paths.py", "write_atomic"): "the helper itself: writes its local temporary file",
    ("artv_jax/paths.py", "_copy_tree"): "the helper itself: the local-to-local copy",
    ("artv_jax/parallel.py", "_on_cloud_tpu_vm"): "this host's device files, not a user path",
}


def _imports(tree: ast.Module) -> dict[str, str]:
  """Local name -> the qualified name it is bound to by the module's imports."""
  names = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        names[alias.asname or alias.name.split(".")[0]] = (
            alias.name if alias.asname else alias.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
  return names


def _qualified(func: ast.expr, imports: dict[str, str]) -> str | None:
  """``os.path.exists`` for a call of ``os.path.exists`` (or of ``exists`` imported from
  ``os.path``); None for calls on anything but a name."""
  attributes = []
  while isinstance(func, ast.Attribute):
    attributes.append(func.attr)
    func = func.value
  if not isinstance(func, ast.Name):
    return None
  return ".".join([imports.get(func.id, func.id)] + attributes[::-1])


def _forbidden(name: str) -> bool:
  return name in FORBIDDEN or name.split(".")[0] in FORBIDDEN_MODULES


class _Calls(ast.NodeVisitor):
  """(enclosing function, line, qualified name) of every forbidden call."""

  def __init__(self, imports: dict[str, str]):
    self.imports, self.scope, self.found = imports, [], []

  def _visit_scope(self, node):
    self.scope.append(node.name)
    self.generic_visit(node)
    self.scope.pop()

  visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_scope

  def visit_Call(self, node: ast.Call):
    name = _qualified(node.func, self.imports)
    if name is not None and _forbidden(name):
      self.found.append((".".join(self.scope) or "<module>", node.lineno, name))
    self.generic_visit(node)


def offenders() -> dict[str, list[str]]:
  """module -> 'function (line N): call' for each forbidden call outside ALLOWED."""
  found = collections.defaultdict(list)
  for file in sorted(PACKAGE.rglob("*.py")):
    module = file.relative_to(PACKAGE.parent).as_posix()
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    calls = _Calls(_imports(tree))
    calls.visit(tree)
    for function, line, name in calls.found:
      if (module, function.split(".")[-1]) not in ALLOWED and (module, function) not in ALLOWED:
        found[module].append(f"{function} (line {line}): {name}()")
  return dict(found)


def test_user_paths_go_through_epath():
  found = offenders()
  assert not found, (
      "local-only file calls (use etils.epath / artv_jax.paths, or add a reason to ALLOWED):\n"
      + "\n".join(f"  {module}:\n" + "".join(f"    {call}\n" for call in calls)
                  for module, calls in found.items()))


def test_every_allowlist_entry_is_still_needed():
  stale = []
  for module, function in ALLOWED:
    tree = ast.parse((PACKAGE.parent / module).read_text(encoding="utf-8"))
    calls = _Calls(_imports(tree))
    calls.visit(tree)
    if not any(f.split(".")[-1] == function or f == function for f, _, _ in calls.found):
      stale.append(f"{module}: {function}")
  assert not stale, f"ALLOWED entries without a local-only call: {stale}"


def test_the_checker_sees_aliases_and_from_imports():
  source = ("import os.path as p\nfrom shutil import rmtree\nfrom pathlib import Path\n"
            "def f(x):\n  p.exists(x); rmtree(x); Path(x); open(x); x.open()\n")
  tree = ast.parse(source)
  calls = _Calls(_imports(tree))
  calls.visit(tree)
  assert [name for _, _, name in calls.found] == [
      "os.path.exists", "shutil.rmtree", "pathlib.Path", "open"]
