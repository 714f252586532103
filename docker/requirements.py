"""Print the requirements of ``pyproject.toml`` (with some extras) one per line, for the Dockerfile's dependency layer.

The Dockerfile installs these before it copies the code, so an edit of the code reinstalls nothing;
the package itself then goes in with ``pip install --no-deps``. Usage::

    python docker/requirements.py pyproject.toml mqtt,other-extra > requirements.txt

An extra that ``pyproject.toml`` does not declare is left out with a note on stderr; an extra that
refers to the package itself (``streamlearn[mqtt]``) is expanded, not installed from an index.
"""

from __future__ import annotations

import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The project's dependencies and those of ``extras``, in order, without duplicates.

    >>> project = {"project": {"name": "pkg", "dependencies": ["numpy>=2"],
    ...            "optional-dependencies": {"a": ["paho-mqtt>=2"], "all": ["pkg[a]", "numpy>=2"]}}}
    >>> requirements(project, ["all", "missing"])
    ['numpy>=2', 'paho-mqtt>=2']
    """
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    me = _name(project["name"])
    out: list[str] = []
    seen: set[str] = set()

    def add(reqs):
        for r in reqs:
            if _name(r) == me:  # pkg[x,y]: the extras x and y
                m = re.search(r"\[([^\]]*)\]", r)
                for e in (m.group(1).split(",") if m else []):
                    if e.strip() not in seen:
                        seen.add(e.strip())
                        add(optional.get(e.strip(), []))
            elif r not in out:
                out.append(r)

    add(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            print(f"requirements.py: no extra {extra!r} in pyproject.toml, skipped", file=sys.stderr)
        elif extra not in seen:
            seen.add(extra)
            add(optional[extra])
    return out


def main(argv: list[str]) -> int:
    path, extras = argv[0], [e.strip() for e in (argv[1] if len(argv) > 1 else "").split(",") if e.strip()]
    with open(path, "rb") as fh:
        print("\n".join(requirements(tomllib.load(fh), extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
