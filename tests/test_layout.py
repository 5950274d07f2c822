"""The house's layering, read from the source: data_pipelines stands on its own, models know no
config, mesh or I/O, conversion never reaches into training, and no two modules import each
other through any chain (an import circle)."""
import ast
import os

from helpers import ROOT

PACKAGES = ("vismae_jax", "data_pipelines")


def module_imports() -> dict[str, set[str]]:
  """{module: the project modules it imports at module level}."""
  modules = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          modules[dotted.removesuffix(".__init__")] = path
  graph = {}
  for module, path in modules.items():
    tree = ast.parse(open(path).read())
    found = set()
    for node in tree.body:  # module level only: a lazy import inside a function is no circle
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGES):
        found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                  else node.module for a in node.names}
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names if a.name.startswith(PACKAGES)}
    graph[module] = {m for m in found if m in modules and m != module}
  return graph


GRAPH = module_imports()


def test_data_pipelines_import_nothing_from_the_library():
  wrong = {m: sorted(i for i in imports if i.startswith("vismae_jax"))
           for m, imports in GRAPH.items() if m.startswith("data_pipelines")}
  assert not {m: i for m, i in wrong.items() if i}


def test_models_and_conversion_stay_below_training():
  for module, imports in GRAPH.items():
    if module.startswith("vismae_jax.models"):
      assert all(i.startswith("vismae_jax.models") for i in imports), (module, imports)
    if module.startswith("vismae_jax.convert"):
      assert not any(i.startswith("vismae_jax.train") for i in imports), (module, imports)


def test_no_import_circle():
  """Depth-first search for a back edge; the failure names the circle."""
  state, path = {}, []

  def visit(module):
    state[module] = "open"
    path.append(module)
    for imported in sorted(GRAPH[module]):
      if state.get(imported) == "open":
        raise AssertionError(" -> ".join(path[path.index(imported):] + [imported]))
      if imported not in state:
        visit(imported)
    path.pop()
    state[module] = "done"

  for module in sorted(GRAPH):
    if module not in state:
      visit(module)
  assert len(state) == len(GRAPH) > 40
