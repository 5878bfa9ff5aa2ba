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
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CODE_PACKAGES = ("shared", "client", "server")


def code_files(root: Path) -> list[Path]:
    """The ``*.py`` files of FedRad's packages under ``root``, in a fixed order."""
    root = Path(root)
    files = [p for pkg in CODE_PACKAGES for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts]
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
