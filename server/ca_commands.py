"""``fedrad-server renew-server-cert | renew-ca-cert | protect-ca-key``: the CA's upkeep, one command each.

Why commands and not a Python call in the runbook: a coordinator renews a certificate every two years
and under time pressure (``status`` warns 30 days ahead); the command reads the passphrase the same way
``init`` does, keeps the certificate's names and says what to do next.
"""

from __future__ import annotations

from pathlib import Path

import typer

from server.ca_secret import CaKeyOpt, PassphraseFileOpt, PassphrasePromptOpt, get_passphrase
from shared.cli_support import err, handle_errors, out

DirArg = typer.Argument(..., help="Consortium folder (made by `fedrad-server init`).")


def warn_unencrypted_ca_key(directory: Path, key_path: Path | None = None) -> None:
    """The loud, once-per-command warning that the consortium's root of trust sits on disk in clear."""
    from server.enrollment import pki_dir

    key_path = key_path or pki_dir(directory) / "ca.key"
    err.print(
        f"[bold yellow]WARNING: the CA private key {key_path} is NOT encrypted.[/]\n"
        "[yellow]Whoever reads it can issue a server certificate that every hospital trusts. Fine for a demo; "
        f"for a real consortium run `fedrad-server protect-ca-key {directory} --ca-passphrase-prompt` "
        "(or create it with `fedrad-server init ... --ca-passphrase-file FILE`) and keep ca.key offline "
        "(docs/coordinator.md).[/]",
        highlight=False,
    )


def _ca_key_path(directory: Path, ca_key: Path | None) -> Path:
    from server.enrollment import pki_dir

    return Path(ca_key) if ca_key is not None else pki_dir(directory) / "ca.key"


def _warn_if_clear(directory: Path, ca_key: Path | None) -> None:
    from server.pki import key_is_encrypted

    path = _ca_key_path(directory, ca_key)
    if path.is_file() and not key_is_encrypted(path):
        warn_unencrypted_ca_key(directory, path)


def _server_names(directory: Path, extra: list[str]) -> list[str]:
    """The names the server certificate keeps: consortium.yaml's host, the current certificate's, and ``extra``."""
    from server.consortium import load_consortium
    from server.enrollment import pki_dir
    from server.pki import LOOPBACK_NAMES, certificate_names

    names = [load_consortium(directory).host]
    current = pki_dir(directory) / "server.crt"
    if current.is_file():
        names += [n for n in certificate_names(current) if n not in LOOPBACK_NAMES]
    return list(dict.fromkeys([*names, *extra]))


@handle_errors
def renew_server_cert(
    directory: Path = DirArg,
    host: list[str] | None = typer.Option(None, "--host", help="An extra name or IP hospitals dial (repeatable)."),
    days: int = typer.Option(825, "--days", min=1, max=825, help="Lifetime in days (capped by the CA's)."),
    ca_key: Path | None = CaKeyOpt,
    ca_passphrase_file: Path | None = PassphraseFileOpt,
    ca_passphrase_prompt: bool = PassphrasePromptOpt,
) -> None:
    """Re-issue the server certificate and key (same names, new expiry); sites need nothing new."""
    from server.enrollment import pki_dir
    from server.pki import issue_server_cert

    passphrase = get_passphrase(ca_passphrase_file, ca_passphrase_prompt)
    names = _server_names(directory, host or [])
    tls = issue_server_cert(pki_dir(directory), names, days=days, passphrase=passphrase, ca_key=ca_key)
    _warn_if_clear(directory, ca_key)
    _print_expiry(tls.server_cert, "server certificate")
    out.print(f"  names: {', '.join(names)} (+ 127.0.0.1, localhost)")
    out.print("  restart `fedrad-server start` to serve it; sites keep working (they pin the CA, not this certificate)")


@handle_errors
def renew_ca_cert(
    directory: Path = DirArg,
    days: int = typer.Option(3650, "--days", min=1, help="Lifetime in days of the renewed CA certificate."),
    ca_key: Path | None = CaKeyOpt,
    ca_passphrase_file: Path | None = PassphraseFileOpt,
    ca_passphrase_prompt: bool = PassphrasePromptOpt,
) -> None:
    """Re-sign the CA certificate with the same key (new expiry), re-issue the server certificate under it
    and put the new ca.crt in every site bundle."""
    from server.enrollment import BUNDLES_DIR, load_registry, pki_dir
    from server.pki import CA_CERT, issue_server_cert, renew_ca_cert
    from shared.atomic import write_atomic

    passphrase = get_passphrase(ca_passphrase_file, ca_passphrase_prompt)
    sites = load_registry(directory)
    names = _server_names(directory, [])
    ca_cert = renew_ca_cert(pki_dir(directory), days=days, passphrase=passphrase, ca_key=ca_key)
    tls = issue_server_cert(pki_dir(directory), names, passphrase=passphrase, ca_key=ca_key)
    _warn_if_clear(directory, ca_key)
    bundles = [b for b in (Path(directory) / BUNDLES_DIR / n for n in sorted(sites)) if b.is_dir()]
    for bundle in bundles:
        write_atomic(bundle / CA_CERT, ca_cert.read_bytes())
    _print_expiry(ca_cert, "CA certificate")
    _print_expiry(tls.server_cert, "server certificate")
    out.print(
        f"  send each site its new {CA_CERT} ({len(bundles)} bundle(s) updated under {Path(directory) / BUNDLES_DIR}) "
        "before the old one expires; the old one keeps working until then (same key)"
    )


@handle_errors
def protect_ca_key(
    directory: Path = DirArg,
    ca_key: Path | None = CaKeyOpt,
    ca_passphrase_file: Path | None = PassphraseFileOpt,
    ca_passphrase_prompt: bool = PassphrasePromptOpt,
) -> None:
    """Encrypt an unencrypted CA key in place with a passphrase (for consortia created without one)."""
    from server.enrollment import pki_dir
    from server.pki import PkiError, protect_ca_key

    passphrase = get_passphrase(ca_passphrase_file, ca_passphrase_prompt, new=True)
    if passphrase is None:
        raise PkiError("protect-ca-key needs a passphrase: --ca-passphrase-file FILE or --ca-passphrase-prompt.")
    path = protect_ca_key(pki_dir(directory), passphrase, ca_key=ca_key)
    out.print(f"CA key {path} is now encrypted; keep it (and the passphrase, apart from it) offline")


def _print_expiry(cert_path: Path, what: str) -> None:
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
    out.print(f"{what} {cert_path} renewed, valid until {not_after:%Y-%m-%d}")


def register(app: typer.Typer) -> None:
    """Add the CA commands to ``fedrad-server``."""
    app.command("renew-server-cert")(renew_server_cert)
    app.command("renew-ca-cert")(renew_ca_cert)
    app.command("protect-ca-key")(protect_ca_key)
