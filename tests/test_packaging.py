"""The two setups (pip + pyproject, conda + environment.yml) agree, and the documented commands exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet  # a dependency of pytest itself
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


def test_environment_yml_python_satisfies_requires_python():
    conda, _ = environment_yml()
    assert "pip" in conda
    pinned = next(c.split("=", 1)[1] for c in conda if c.startswith("python="))
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(pinned)


def test_torch_requirement_is_a_bounded_range_that_the_installed_torch_and_the_readme_agree_with():
    import torch

    torch_spec = next(Requirement(d) for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    operators = {s.operator for s in torch_spec.specifier}
    assert {">=", "<"} <= operators  # a range with both ends, not a point or an open end
    assert torch_spec.specifier.contains(Version(torch.__version__).base_version)
    quoted = re.findall(r"`(torch[<>=][^`]*)`", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert quoted and all(Requirement(q).specifier == torch_spec.specifier for q in quoted)  # README says the same


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


def test_make_lab_adds_allow_root_exactly_when_run_as_root():
    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    lab = next(line for line in dry.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in lab) == (os.geteuid() == 0), lab


# ------------------------------------------------------------------ a plain (non-editable) install, from the wheel


def _tracked_tree(dest: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to `dest`, links kept."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the built wheel installed (no editable link back to the repository); the dependencies
    come from this test environment through a .pth line, so nothing is downloaded."""
    pytest.importorskip("setuptools")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the files to build from")
    tmp = tmp_path_factory.mktemp("wheel")
    tree = _tracked_tree(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(tree)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("lossreduce_demo-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    return wheel, python, site / "lossreduce_demo"


def test_the_wheel_ships_every_data_file(installed):
    import zipfile

    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"lossreduce_demo/data/{p.relative_to(ROOT / 'data').as_posix()}"
               for p in (ROOT / "data").rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)


def _run(python, *args, cwd):
    return subprocess.run([str(python), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, LOSSREDUCE_THREADS="1", LOSSREDUCE_FAST="1"), timeout=300)


def test_an_installed_package_reads_its_data_and_never_writes_into_site_packages(installed, tmp_path):
    _, python, package = installed
    probe = _run(python, "-c", "import lossreduce_demo.notebook as r; print(r.data_path()); "
                 "assert r.check_environment().ok.all()", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == package / "data"  # the installed copy, not the repository's
    before = sorted((p.name, p.stat().st_mtime_ns) for p in package.rglob("*"))
    refused = _run(python, "-m", "lossreduce_demo", "make-data", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: make-data: the shipped data is read-only inside the installed package ({package / 'data'}); "
        "pass --out-dir DIR to write a copy\n")
    copy = _run(python, "-m", "lossreduce_demo", "make-data", "--out-dir", tmp_path / "data", cwd=tmp_path)
    assert copy.returncode == 0, copy.stderr
    for made in (tmp_path / "data").glob("*.jsonl"):
        assert made.read_bytes() == (package / "data" / made.name).read_bytes(), made.name
    assert sorted((p.name, p.stat().st_mtime_ns) for p in package.rglob("*")) == before


@pytest.mark.slow
def test_the_notebooks_that_read_shipped_data_run_from_the_installed_package(installed, tmp_path):
    """Notebooks 00 and 06 open the shipped files (every other one builds its data with lossreduce_demo.synth),
    executed by a kernel of the venv, from a folder outside the repository."""
    _, python, _ = installed
    script = ("import sys, nbformat; from nbclient import NotebookClient\n"
              "for path in sys.argv[1:]:\n"
              "    nb = nbformat.read(path, as_version=4)\n"
              "    NotebookClient(nb, timeout=300, kernel_name='python3').execute()\n")
    names = ["00_start_here.ipynb", "06_your_own_data.ipynb"]
    for name in names:
        shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
    run = _run(python, "-c", script, *names, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def test_notebooks_reach_data_files_only_through_data_path():
    """A path like "data/x.jsonl" or "../data" in a code cell would work in the repository and fail when installed."""
    import json

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert not re.search(r"""["'](\.\./)?data/""", code), path.name


def test_test_module_names_are_unique():
    """pytest (rootdir import mode) cannot collect two test modules with one basename, e.g. tests/x.py and
    tests/browser/x.py: the whole run stops at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
