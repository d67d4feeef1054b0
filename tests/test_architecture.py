"""The module graph of keras_deit and conversion (ARCHITECTURE.md): no import circle but the
documented lazy imports, and keras_deit reaches conversion only through them.

Read from the source with `ast` (every import, at module level or inside a function), so it
costs no framework import.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_deit", "conversion")

# (importer, imported): the imports that would close a circle, each done inside a function, on
# first use, with a comment saying why.
LAZY = {
    ("keras_deit.models.base", "conversion"),  # from_pretrained: conversion builds the models
    ("keras_deit.models.base", "conversion.writers"),  # save_pretrained: the same reason
    ("keras_deit.cli", "conversion.cli"),  # `keras-deit convert`
    ("keras_deit.config", "keras_deit.presets"),  # DeiTConfig.from_preset: presets build configs
    ("keras_deit.bridges", "conversion.keras_hub_bridge"),  # kd.to_keras_hub / from_keras_hub
}


def _modules():
    """{module name: path} of every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
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


def test_the_lazy_imports_are_inside_functions_and_keras_deit_reaches_conversion_only_so():
    graph = _graph()
    for importer, imports in graph.items():
        for imported, lazy in imports:
            if (importer, imported) in LAZY:
                assert lazy, f"{importer} imports {imported} at module level"
            elif importer.startswith("keras_deit"):
                assert not imported.startswith("conversion"), (importer, imported)
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
