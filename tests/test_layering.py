"""The package's layering, as written in dlm/__init__.py's docstring, holds for every import.

A module may import from its own layer or the layers below. Imports inside functions count too:
a lazy import that points up is still a dependency that points up.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dlm

PACKAGE = Path(dlm.__file__).parent
ROOT_EXPORTS = {"load": "dlm.inference", "Pipeline": "dlm.inference", "pipeline": "dlm.text_pipeline",
                "DlmError": "dlm.errors"}


def layers_from_docstring() -> dict[str, int]:
    """'layer 2: config data …' lines of the package docstring → {component: 2, …}."""
    table = {}
    for number, names in re.findall(r"^\s*layer (\d+): (.+)$", dlm.__doc__, flags=re.MULTILINE):
        for name in names.split():
            table[name] = int(number)
    return table


def component(module: str) -> str:
    """dlm.train.trainer → 'train'; dlm.errors → 'errors'."""
    parts = module.split(".")
    assert parts[0] == "dlm" and len(parts) > 1, module
    return parts[1]


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dlm module) for every import of a dlm module in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("dlm.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "dlm":  # from dlm import inference; from dlm import load (the root's re-exports)
                found += [(node.lineno, ROOT_EXPORTS.get(alias.name, f"dlm.{alias.name}"))
                          for alias in node.names if alias.name != "__version__"]
            elif name.startswith("dlm."):
                found.append((node.lineno, name))
    return found


def upward_imports(source: str, module: str, layers: dict[str, int]) -> list[str]:
    own = layers[component(module)]
    problems = []
    for line, target in imported_modules(source, module):
        if component(target) not in layers:
            problems.append(f"{module}:{line} imports {target}, which is in no layer")
        elif layers[component(target)] > own:
            problems.append(f"{module}:{line} (layer {own}) imports {target} (layer {layers[component(target)]})")
    return problems


def package_modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        if name != "dlm.__init__":  # the package root re-exports from above, lazily: it is the façade
            modules.append((name.removesuffix(".__init__"), path))
    return modules


def test_the_docstring_names_every_component_once() -> None:
    layers = layers_from_docstring()
    assert len(layers) >= 20
    components = {component(name) for name, _ in package_modules()}
    assert components - set(layers) == set(), "add these to the layer table in dlm/__init__.py"
    assert set(layers) - components == set(), "the layer table names components that do not exist"


def test_no_import_points_up() -> None:
    layers = layers_from_docstring()
    problems = [p for name, path in package_modules() for p in upward_imports(path.read_text(), name, layers)]
    assert problems == []


@pytest.mark.parametrize(("module", "source", "upward"), [
    ("dlm.model.transformer", "from dlm.train.trainer import train", True),
    ("dlm.eval.judges", "def f():\n    from dlm.cli import main", True),  # lazy imports count
    ("dlm.sampling.base", "from . import config\nfrom ..inference import load", True),  # relative ones too
    ("dlm.inference", "from dlm import run_folder, sampling", False),
    ("dlm.eval.likelihood", "from dlm import __version__, DlmError", False),
    ("dlm.sampling.denoiser", "from dlm import load", True),  # the root's lazy re-export lives in layer 4
    ("dlm.train.trainer", "import dlm.objectives.mdlm", False),
])
def test_the_checker_catches_an_upward_import(module: str, source: str, upward: bool) -> None:
    assert bool(upward_imports(source, module, layers_from_docstring())) == upward


@pytest.mark.parametrize("code", [
    "import dlm",
    "import dlm.cli, sys; sys.argv = ['dlm', '--help']\ntry:\n    dlm.cli.main()\nexcept SystemExit:\n    pass",
    "from dlm.config import RunConfig; from dlm.presets import get_preset; get_preset('tiny')",
])
def test_light_entry_points_do_not_load_torch(code: str) -> None:
    probe = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
