"""One fingerprint for FedRad's code, computed the same way on the server and at a site.

A consortium run ships FedRad's Python packages to every site inside a
Flower App bundle (FAB); the site runs whatever the bundle holds. The site
approves code by this fingerprint (``fedrad-site approve``) and the ClientApp
refuses a run whose code it does not find approved, before touching any data.

Why a hash of the sources and not of the FAB file: the FAB also carries
``pyproject.toml`` with the run's settings, which change from run to run,
and Flower's FAB hash is not visible to the ClientApp. The sources are what
executes. ``server.superlink.stage_app`` copies exactly these files, so the
hash of a site's own installation equals the hash of a FAB built from the
same FedRad version.

What is shipped, and so fingerprinted: the ``*.py`` files of ``CODE_PACKAGES``
minus ``NOT_SHIPPED`` (``shared/synth``: synthetic cohorts for demos and tests,
never run at a site) and minus what Flower's FAB builder always drops
(``test_*.py``, ``*_test.py``, ``__pycache__``). ``fab-include`` /
``fab-exclude`` in pyproject.toml's ``[tool.flwr.app]`` say the same for a FAB
built straight from the repository (``flwr build`` / ``flwr run .``);
tests/test_code_identity.py checks that the two lists are equal. This module
cannot read pyproject.toml: an installed site has none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CODE_PACKAGES = ("shared", "client", "server")
NOT_SHIPPED = ("shared/synth",)  # folders under CODE_PACKAGES that stay out of the FAB (pyproject: fab-exclude)


def _shipped(rel: str) -> bool:
    """Whether the ``*.py`` file at POSIX path ``rel`` (relative to the root) goes into the FAB."""
    parts = rel.split("/")
    name = parts[-1]
    if "__pycache__" in parts or name.startswith("test_") or name.endswith("_test.py"):
        return False  # Flower's built-in FAB exclusions
    return not any(rel.startswith(folder + "/") for folder in NOT_SHIPPED)


def code_files(root: Path) -> list[Path]:
    """The ``*.py`` files shipped in the FAB (FedRad's packages under ``root``), in a fixed order."""
    root = Path(root)
    files = [p for pkg in CODE_PACKAGES for p in (root / pkg).rglob("*.py") if _shipped(p.relative_to(root).as_posix())]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_sha256(root: Path) -> str:
    """sha256 over every code file's relative path and bytes (``root`` = the folder holding ``client/``)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in code_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def installed_root() -> Path:
    """The folder holding this installation's ``shared/``, ``client/`` and ``server/``."""
    return Path(__file__).resolve().parent.parent
