"""The two setups (pip + pyproject, conda + environment.yml) agree, and the documented commands exist."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # a dependency of pytest itself
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, which environment.yml pins

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def environment_yml() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of environment.yml's simple list layout, parsed by hand
    (PyYAML is not a dependency of this project)."""
    conda, pip, in_pip, pip_indent = [], [], False, 0
    for raw in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if in_pip and indent <= pip_indent:
            in_pip = False
        if item == "- pip:":
            in_pip, pip_indent = True, indent
        elif item.startswith("- ") and in_pip:
            pip.append(item[2:].strip())
        elif item.startswith("- ") and indent > 0:
            conda.append(item[2:].strip())
    return conda, pip


def normalized(spec: str) -> str:
    return str(Requirement(spec))


def test_environment_yml_pip_list_equals_pyproject_dependencies_and_extras():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["dev"] + extras["frameworks"]
    _, pip = environment_yml()
    packages = [p for p in pip if not p.startswith("-e")]
    assert sorted(map(normalized, packages)) == sorted(map(normalized, wanted))
    assert "-e ." in pip  # the package itself, editable


def test_environment_yml_pins_python_311():
    conda, _ = environment_yml()
    assert "python=3.11" in conda
    assert "pip" in conda
    low = re.search(r">=\s*([\d.]+)", pyproject()["project"]["requires-python"]).group(1)
    assert Version("3.11") >= Version(low)


def test_torch_range_takes_2_13_and_not_2_14():
    torch_spec = next(Requirement(d) for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    assert torch_spec.specifier.contains("2.13.0") and torch_spec.specifier.contains("2.13.1")
    assert not torch_spec.specifier.contains("2.14.0") and not torch_spec.specifier.contains("2.14.1")
    assert torch_spec.specifier.contains("2.3.0")  # a range, not a point


def test_every_dependency_is_a_range_not_a_pin():
    project = pyproject()["project"]
    for dep in project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]:
        assert not any(s.operator in ("==", "===") for s in Requirement(dep).specifier), dep


def makefile_targets() -> dict[str, str]:
    """target -> its recipe text."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z][\w-]*)\s*:(?!=)", line)
        if match:
            current = match.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line + "\n"
        elif line.strip() and not line.startswith("\t"):
            current = None
    return targets


def test_makefile_has_lab_and_test_targets():
    targets = makefile_targets()
    assert "lab" in targets and "jupyter lab" in targets["lab"]
    assert "test" in targets
    assert "LOSSREDUCE_FAST=1" in targets["test"] and "pytest" in targets["test"]
    assert "LOSSREDUCE_THREADS=1" in targets["test"] and 'not browser' in targets["test"]


def test_readme_documents_make_lab_and_make_test():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make lab" in readme
    assert "make test" in readme


def test_ci_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert "make test" in commands
    assert script.startswith("#!") and os.access(ROOT / ".ci" / "run", os.X_OK)
