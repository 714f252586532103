"""Dependencies point down: ``streamlearn.connectors`` (source folder ``connectors/``) imports the rest of
``streamlearn``, never the reverse, and no import cycle.

The one exception is the ``streamlearn connect`` registration: ``streamlearn.cli._register_connect``
imports ``streamlearn.connectors.cli`` lazily, when the parser is built.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streamlearn", "connectors")
#: the package each source folder installs as (pyproject.toml, ``package-dir``)
INSTALLED_AS = {"streamlearn": "streamlearn", "connectors": "streamlearn.connectors"}
#: (file, enclosing function) of every import of ``connectors`` allowed under streamlearn/.
ALLOWED_CONNECTORS_IMPORTS = {("streamlearn/cli.py", "_register_connect")}


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[:1] = INSTALLED_AS[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, enclosing function or None) for every import statement in ``path``.

    ``from a import b`` yields ``a`` and ``a.b`` (b may be a module); relative imports are resolved
    against the file's package; ``importlib.import_module("x")`` / ``__import__("x")`` with a literal
    name count too.
    """
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            scope = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, func
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join(base + ([child.module] if child.module else []))
                yield module, func
                for alias in child.names:
                    yield f"{module}.{alias.name}", func
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and (getattr(child.func, "attr", None) == "import_module"
                       or getattr(child.func, "id", None) in ("__import__", "import_module"))):
                yield child.args[0].value, func
            yield from visit(child, scope)

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), None)


def _hits(package: str, target: str) -> set[tuple[str, str | None]]:
    return {(str(path.relative_to(ROOT)), func)
            for path in _files(package)
            for module, func in _imports(path)
            if module == target or module.startswith(target + ".")}


def test_the_import_scanner_sees_every_kind_of_import(tmp_path, monkeypatch):
    pkg = tmp_path / "streamlearn" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("import streamlearn.connectors.x\nfrom streamlearn.connectors import y\n"
                              "from .. import z\n"
                              "def f():\n    import importlib\n"
                              "    importlib.import_module('streamlearn.connectors.w')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = {(m, f) for m, f in _imports(pkg / "m.py")}
    assert {("streamlearn.connectors.x", None), ("streamlearn.connectors", None), ("streamlearn.connectors.y", None),
            ("streamlearn.z", None), ("streamlearn.connectors.w", "f")} <= found


def test_streamlearn_imports_connectors_only_in_the_cli_hook():
    assert _hits("streamlearn", "streamlearn.connectors") == ALLOWED_CONNECTORS_IMPORTS


def test_connectors_never_import_the_streamlearn_cli():
    assert _hits("connectors", "streamlearn.cli") == set()


def test_every_module_imports_alone_without_a_cycle():
    # One fresh interpreter; before each module every streamlearn/connectors module is forgotten, so
    # each is imported as the first of its packages (third-party modules stay loaded, for speed).
    names = sorted(_module_name(p) for package in PACKAGES for p in _files(package) if p.name != "__main__.py")
    assert "streamlearn.kafka.labels" in names and "streamlearn.connectors.cli" in names and "streamlearn.cli" in names
    script = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("streamlearn", "connectors")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{name}:\n{tb}" for name, tb in failed.items())
