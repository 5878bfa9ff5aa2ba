"""The code fingerprint sites approve covers exactly what the Flower App bundle (FAB) ships."""

from __future__ import annotations

import ast
import io
import shutil
import tomllib
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk, build_fab_from_files

from server.superlink import stage_app
from shared.code_identity import CODE_PACKAGES, NOT_SHIPPED, code_files, code_sha256, installed_root

ROOT = installed_root()  # the repository (tests run from the source tree)
FAB_META = {"pyproject.toml", ".info/CONTENT"}


def _fab_code(fab: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        return sorted(set(z.namelist()) - FAB_META)


def _fingerprinted(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in code_files(root)]


def test_fingerprint_files_are_the_files_of_a_fab_built_from_the_repository() -> None:
    """``flwr build``/``flwr run .`` from the repo applies pyproject's fab-include/fab-exclude."""
    files: dict[str, Path | bytes] = {"pyproject.toml": ROOT / "pyproject.toml"}
    for pkg in CODE_PACKAGES:  # every file of the packages, not only *.py: the FAB rules must drop the rest
        files.update({p.relative_to(ROOT).as_posix(): p for p in (ROOT / pkg).rglob("*") if p.is_file()})
    fab, _ = build_fab_from_files(files)
    shipped = _fab_code(fab)
    assert shipped == _fingerprinted(ROOT)
    assert not [f for f in shipped if f.startswith("shared/synth/")]
    assert "client/app.py" in shipped and "server/app.py" in shipped


def test_pyproject_fab_exclude_names_the_folders_the_fingerprint_leaves_out() -> None:
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["fab-exclude"] == [f"{folder}/**" for folder in NOT_SHIPPED]
    assert app["fab-include"] == [f"{pkg}/**/*.py" for pkg in CODE_PACKAGES]


def test_a_staged_app_builds_into_a_fab_of_exactly_the_fingerprinted_files(tmp_path: Path) -> None:
    staged = stage_app(tmp_path / "app", ROOT)
    assert _fab_code(build_fab_from_disk(staged)) == _fingerprinted(ROOT) == _fingerprinted(staged)
    assert not (staged / "shared" / "synth").exists()


def test_synthetic_cohort_code_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    copy = tmp_path / "code"
    for pkg in CODE_PACKAGES:
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_sha256(copy)
    synth = copy / "shared" / "synth" / "__init__.py"
    synth.write_text(synth.read_text() + "\n# changed\n")
    assert code_sha256(copy) == before
    app = copy / "client" / "app.py"
    app.write_text(app.read_text() + "\n# changed\n")
    assert code_sha256(copy) != before


def _imported_modules(module: str) -> set[str]:
    """FedRad modules ``module`` imports, at module level or inside functions (lazily)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in CODE_PACKAGES:
            continue
        for i in range(1, len(parts) + 1):  # the package chain, and "from pkg import module" names
            base = ROOT / Path(*parts[:i])
            if (base / "__init__.py").is_file() or base.with_suffix(".py").is_file():
                found.add(".".join(parts[:i]))
    return found


def test_the_client_and_server_apps_import_only_shipped_code() -> None:
    """A module missing from the FAB would silently come from the site's installed package (version skew)."""
    reached, todo = {"client.app", "server.app"}, ["client.app", "server.app"]
    while todo:
        for dep in _imported_modules(todo.pop()) - reached:
            reached.add(dep)
            todo.append(dep)
    shipped = set(_fingerprinted(ROOT))
    as_files = {
        m: m.replace(".", "/") + ("/__init__.py" if (ROOT / m.replace(".", "/")).is_dir() else ".py") for m in reached
    }
    assert not [m for m in reached if m == "shared.synth" or m.startswith("shared.synth.")]
    assert sorted(m for m, f in as_files.items() if f not in shipped) == []
