"""The package's structure: no import cycle, the numpy core without TensorFlow, every command line in cli.py."""

import ast
import os
import subprocess
import sys

import pytest

import ptycho_callbacks

pytestmark = pytest.mark.core

PACKAGE = "ptycho_callbacks"
ROOT = os.path.dirname(ptycho_callbacks.__file__)

PURE_MODULES = ("record", "stats", "physics", "render", "run_dir", "stages", "nan.events", "hparams", "compare",
                "callbacks.loss_discovery", "ptychopinn", "figures")
"""The numpy core: what the report, its statistics and the NaN events need, testable without TensorFlow
(and without matplotlib, which `figures` imports only to draw)."""


def _modules():
    """{module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3]
                module = relative.replace(os.sep, ".").removesuffix(".__init__")
                found[module] = os.path.join(folder, name)
    return found


def _imports(module, path, known):
    """The package modules `module` imports, at its top or inside a function."""
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
            prefix = ".".join(part for part in (origin, node.module or "") if part) if node.level else node.module
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        targets.update(name for name in names if name in known and name != module)
    return targets


def _graph():
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def test_the_parser_of_imports_sees_what_it_should():
    graph = _graph()
    assert "ptycho_callbacks.run" in graph["ptycho_callbacks.callbacks.base"]
    assert "ptycho_callbacks.nan.events" in graph["ptycho_callbacks.nan.guard"]
    assert "ptycho_callbacks.nan.replay" in graph["ptycho_callbacks.cli"]  # an import inside a function


def test_no_module_takes_part_in_an_import_cycle():
    graph = _graph()
    cycles = []

    def visit(module, path):
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(module)

    done = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    # A package's __init__ that names its submodules lazily (strings) imports none of them.
    assert cycles == []


def test_only_the_demo_and_the_stand_in_itself_import_sim():
    graph = _graph()
    users = sorted(module for module, targets in graph.items()
                   if any(target.startswith(f"{PACKAGE}.sim") for target in targets)
                   and not module.startswith(f"{PACKAGE}.sim"))
    assert users == [f"{PACKAGE}.demo"]


def test_the_numpy_core_imports_no_tensorflow():
    names = [f"{PACKAGE}.{module}" for module in PURE_MODULES]
    code = ("import sys\n" + "".join(f"import {name}\n" for name in names)
            + "heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'matplotlib') if m in sys.modules)\n"
              "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"the numpy core imported {result.stdout.strip()}"


def test_every_command_line_is_in_cli():
    parsers = sorted(module for module, path in _modules().items()
                     if "ArgumentParser(" in open(path, encoding="utf-8").read())
    assert parsers == [f"{PACKAGE}.cli"]


def test_the_run_directory_s_file_names_are_spelled_in_run_dir_only():
    spelled = sorted(module for module, path in _modules().items()
                     if any(f'"{name}"' in open(path, encoding="utf-8").read()
                            for name in ("record.json", "report.md", "nan_forensics", "manifest.json")))
    assert spelled == [f"{PACKAGE}.run_dir"]
