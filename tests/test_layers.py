"""Who may import whom, read statically (ast) from every .py file: the layers stay apart.

``server/`` and ``client/`` never import ``benchmarks/`` or ``deploy/`` (measurement and launchers sit on
top of the product, not inside it); ``server/`` never imports ``client/`` and ``client/`` never imports
``server/`` (each side ships to a different machine); ``shared/`` imports none of them. Relative imports
are resolved against the file's package. Any exception is listed, by file and package, in
KNOWN_EXCEPTIONS, so a new one fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, set[str]] = {
    "server": {"benchmarks", "deploy", "client"},
    "client": {"benchmarks", "deploy", "server"},
    "shared": {"benchmarks", "deploy", "client", "server"},
}

# (importing file relative to the repo, forbidden top-level package it imports): known layer breaks, not yet fixed.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def imported_packages(path: Path, root: Path = REPO) -> set[str]:
    """Top-level packages a file imports anywhere (module level or inside functions, also under TYPE_CHECKING)."""
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..pkg import y: resolve against this file's package
                package = list(path.relative_to(root).parts[:-1])
                base = package[: len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    tops.add(parts[0])
            elif node.module:
                tops.add(node.module.split(".")[0])
    return tops


def violations() -> set[tuple[str, str]]:
    found = set()
    for layer, banned in FORBIDDEN.items():
        for path in sorted((REPO / layer).rglob("*.py")):
            for top in imported_packages(path) & banned:
                found.add((path.relative_to(REPO).as_posix(), top))
    return found


def test_every_layer_has_files_to_check() -> None:
    for layer in FORBIDDEN:
        assert list((REPO / layer).rglob("*.py")), layer


def test_no_layer_imports_what_sits_above_or_beside_it() -> None:
    new = violations() - KNOWN_EXCEPTIONS
    assert not new, "layer breaks (file, package it must not import):\n" + "\n".join(
        f"  {f} imports {p}" for f, p in sorted(new)
    )


def test_known_exceptions_are_still_real() -> None:
    """A fixed exception is removed from the list, so it cannot come back unnoticed."""
    stale = KNOWN_EXCEPTIONS - violations()
    assert not stale, f"no longer imported, remove from KNOWN_EXCEPTIONS: {sorted(stale)}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import benchmarks.scale\n", {"benchmarks"}),
        ("from deploy.loopback import REPO\n", {"deploy"}),
        ("def f():\n    from client import cli\n", {"client"}),
        ("from . import strategies\n", {"server"}),
        ("from ..client import cli\n", {"client"}),
    ],
)
def test_imports_are_found_wherever_they_are_written(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "server" / "x.py"
    path.parent.mkdir()
    path.write_text(source)
    assert imported_packages(path, root=tmp_path) == expected


def test_only_the_tasks_compare_a_task_name() -> None:
    """The task seam: outside ``shared/tasks/`` code asks the task (``shared.tasks.get_task``) instead of comparing
    its name, so a new task is a new folder, not a hunt for ``if task == ...`` branches."""
    import re

    by_name = re.compile(r"""(==|!=)\s*['"](classification|segmentation|multilabel|detection)['"]""")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for wing in ("shared", "client", "server")
        for path in sorted((REPO / wing).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if by_name.search(line) and not path.is_relative_to(REPO / "shared" / "tasks")
    ]
    assert not found, "compare a task's name outside shared/tasks/:\n" + "\n".join(found)
