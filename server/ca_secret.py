"""Where the CA key's passphrase comes from: a file (0600), the env var naming that file, or a prompt.

Why a file and not an argument or an env var holding the secret: command lines and environments are
visible to other local users (``ps``, ``/proc/PID/environ``) and land in shell history; a file readable
only by the coordinator is not, and scripts (cron renewals) can use it without a terminal.
"""

from __future__ import annotations

import stat
from pathlib import Path

import typer

from server.pki import PkiError

PASSPHRASE_ENV = "FEDRAD_CA_PASSPHRASE_FILE"
MIN_LENGTH = 12  # PKCS#8 under BestAvailableEncryption is 2,048 PBKDF2 rounds: the passphrase must carry the strength
STRONG_HINT = "make one with `openssl rand -base64 32 > FILE && chmod 600 FILE`"

PassphraseFileOpt = typer.Option(
    None,
    "--ca-passphrase-file",
    envvar=PASSPHRASE_ENV,
    help="File (mode 0600) holding the CA key's passphrase; also read from $" + PASSPHRASE_ENV + ".",
)
PassphrasePromptOpt = typer.Option(False, "--ca-passphrase-prompt", help="Ask for the CA key's passphrase.")
CaKeyOpt = typer.Option(
    None, "--ca-key", help="The CA key where it is kept outside DIR/pki (e.g. an offline USB stick)."
)


def read_passphrase_file(path: Path) -> bytes:
    """The passphrase in ``path`` (one trailing newline dropped), refusing a file other users can read."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"CA passphrase file {path} not found.") from None
    except OSError as exc:
        raise PkiError(f"CA passphrase file {path}: cannot read it ({exc.strerror}).") from None
    if mode & 0o077:
        raise PkiError(
            f"CA passphrase file {path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`."
        )
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise PkiError(f"CA passphrase file {path} is empty; {STRONG_HINT}.")
    return data


def get_passphrase(file: Path | None, prompt: bool, *, new: bool = False) -> bytes | None:
    """The passphrase from ``--ca-passphrase-file``/$FEDRAD_CA_PASSPHRASE_FILE or the prompt; None when neither.

    ``new``: it will encrypt a key (init, protect-ca-key), so the prompt asks twice and a short one is refused.
    """
    if file is not None and prompt:
        raise PkiError("give either --ca-passphrase-file (or $" + PASSPHRASE_ENV + ") or --ca-passphrase-prompt.")
    if file is not None:
        secret = read_passphrase_file(file)
        where = str(file)
    elif prompt:
        text = typer.prompt("CA key passphrase", hide_input=True, confirmation_prompt=new, err=True)
        secret, where = text.encode(), "the prompt"
        if not secret:
            raise PkiError("empty CA key passphrase.")
    else:
        return None
    if new and len(secret) < MIN_LENGTH:
        raise PkiError(
            f"the CA key passphrase from {where} has {len(secret)} characters; use at least {MIN_LENGTH} "
            f"({STRONG_HINT})."
        )
    return secret
