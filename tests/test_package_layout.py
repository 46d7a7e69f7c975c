"""The package's import graph runs one way: core -> data -> model -> training / inference ->
evaluation -> tools -> commands. A module may import its own layer and the layers before it."""

import ast
import os
import subprocess
import sys

import pytest

import difffccf_jax

PACKAGE_DIR = os.path.dirname(difffccf_jax.__file__)
LAYERS = {  # sub-package (or top-level module) -> rank; higher ranks may import lower ones
    "errors": 0, "files": 0, "color": 0, "parallel": 0, "config_cli": 0, "config_versions": 0,
    "compilation": 0, "pipeline": 0, "pyramid": 0, "colour_difference": 0,
    "functional_region": 0,
    "data": 1, "model": 2, "training": 3, "inference": 3, "evaluation": 4, "tools": 5,
    "benchmark": 5, "commands": 6, "cli": 7,
}


def imported_units(path):
    """The difffccf_jax units (sub-packages or top-level modules) that a module imports."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "difffccf_jax":
                continue
            if len(parts) > 1:
                units.add(parts[1])
            else:
                units.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "difffccf_jax" and len(parts) > 1:
                    units.add(parts[1])
    return units


def modules():
    for folder, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, PACKAGE_DIR).split(os.sep)
                unit = relative[0] if len(relative) > 1 else relative[0][:-3]
                if unit != "__init__":
                    yield unit, path


@pytest.mark.parametrize("unit, path", sorted(modules()))
def test_imports_point_down_the_layers(unit, path):
    assert unit in LAYERS, f"{path}: place it in a layer of LAYERS"
    upward = {other for other in imported_units(path)
              if other in LAYERS and LAYERS[other] > LAYERS[unit]}
    parallel_layers = {other for other in imported_units(path) if other != unit
                       and LAYERS.get(other) == LAYERS[unit] and LAYERS[unit] > 0}
    assert not upward and not parallel_layers, (
        f"{path} ({unit}) imports {sorted(upward | parallel_layers)}")


def test_a_module_importing_upwards_is_caught(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from difffccf_jax.training import losses\n"
                      "from difffccf_jax import color\nimport difffccf_jax.tools.demo\n")
    assert imported_units(str(module)) == {"training", "color", "tools"}


@pytest.mark.multiprocess
def test_the_evaluator_imports_without_jax():
    """`difffccf evaluate` scores image files with NumPy alone: importing it costs no JAX start."""
    script = ("import sys, difffccf_jax.evaluation.scoring, difffccf_jax.evaluation.metrics\n"
              "print(sorted(name for name in sys.modules if name.split('.')[0] == 'jax'))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
