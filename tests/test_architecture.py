"""The module graph of keras_deit (ARCHITECTURE.md): no import circle, no module over 700
lines, and every use of a Keras internal in `keras_deit/keras_internals.py`.

Read from the source with `ast` (every import, at module level or inside a function), so it
costs no framework import. The repository's `conversion/` folder is the package
`keras_deit.conversion` (pyproject.toml's package-dir mapping); `keras_deit/conversion/` holds
only its stand-in for source checkouts.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folder -> the package it is installed as.
PACKAGES = {"keras_deit": "keras_deit", "conversion": "keras_deit.conversion"}
STAND_IN = os.path.join(ROOT, "keras_deit", "conversion")

# (importer, imported): imports that would close a circle, each done inside a function with a
# comment saying why. None today: the models import conversion's loaders and writers, which
# import no model, and the config imports the presets' table, which imports no config.
LAZY = set()

MAX_LINES = 700


def _modules():
    """{module name: path} of every module of the package."""
    found = {}
    for folder_name, package in PACKAGES.items():
        top = os.path.join(ROOT, folder_name)
        for folder, _, names in os.walk(top):
            if folder.startswith(STAND_IN):
                continue
            for name in names:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                parts = [package, *os.path.relpath(path, top)[:-3].split(os.sep)]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _imports(path, modules):
    """[(imported module, inside a function)] of the file at `path`, within `modules`."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from package import module` imports the module; `from module import name` the
            # module that holds the name.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        found.extend((name, id(node) in in_function) for name in names if name in modules)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_the_lazy_imports_are_inside_functions():
    graph = _graph()
    for importer, imports in graph.items():
        for imported, lazy in imports:
            if (importer, imported) in LAZY:
                assert lazy, f"{importer} imports {imported} at module level"
    present = {(a, b) for a, imports in graph.items() for b, _ in imports}
    assert LAZY <= present, f"documented lazy imports that are gone: {LAZY - present}"


def test_the_module_graph_has_no_circle():
    graph = {a: {b for b, _ in imports if (a, b) not in LAZY and b != a}
             for a, imports in _graph().items()}
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert len(done) == len(graph)


def test_no_module_is_over_700_lines():
    lengths = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in _modules().items()}
    assert len(lengths) > 50
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


# Keras' private attributes keras-deit reads, and the one module allowed to.
KERAS_PRIVATE_ATTRIBUTES = {"_flatten_layers", "_kernel", "_value", "_layers", "_tracker"}
INTERNALS = "keras_deit.keras_internals"


def _keras_internal_uses(path):
    """[(line, what)] of the Keras internals used in the file at `path`: `keras.src` imports,
    Keras' private attributes, `.call(...)` on another layer, `__dict__` patches."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("keras.src")]
        elif isinstance(node, ast.Attribute) and node.attr in KERAS_PRIVATE_ATTRIBUTES:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id == "self"):
                found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Attribute) and node.attr == "__dict__":
            found.append((node.lineno, "__dict__"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "call"):
            owner = node.func.value
            if not (isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super"):
                found.append((node.lineno, ".call()"))
    return found


def test_every_keras_internal_is_used_in_keras_internals_only():
    outside = {name: uses for name, path in _modules().items() if name != INTERNALS
               for uses in [_keras_internal_uses(path)] if uses}
    assert outside == {}
    assert _keras_internal_uses(_modules()[INTERNALS])  # the check sees them there
