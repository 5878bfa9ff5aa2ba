"""``fedrad-server``: the consortium coordinator's command line.

``init`` creates a consortium folder (CA, server certificate, documented
consortium.yaml); ``renew-server-cert``, ``renew-ca-cert`` and
``protect-ca-key`` look after the CA (server/ca_commands.py); ``enroll``
registers a site's public key and writes its bundle; ``start`` runs the server and one federated run to its verdict;
``status``, ``dashboard`` (a read-only web page) and ``export`` read the consortium folder; ``track`` (re)sends a run to
the experiment trackers. Exit codes: 0 success,
1 the answer is "no" (sites missing, run failed), 2 bad invocation or
configuration, 3 internal error.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from server.ca_secret import PassphraseFileOpt, PassphrasePromptOpt
from shared.cli_support import EXIT_NO, cli_app, err, handle_errors, out
from shared.dashboard.cli_options import HostOpt, TlsCertOpt, TlsKeyOpt, TokenFileOpt

app = cli_app(
    "fedrad-server",
    "FedRad consortium server: create a consortium, enroll sites, run federated training.",
)


@app.callback()
def _root() -> None:
    """FedRad consortium server."""


@app.command()
@handle_errors
def version() -> None:
    """Print the installed FedRad and Flower versions."""
    from importlib.metadata import version as v

    out.print(f"fedrad {v('fedrad')} (flwr {v('flwr')}, torch {v('torch')})")


DirArg = typer.Argument(..., help="Consortium folder (made by `fedrad-server init`).")


@app.command()
@handle_errors
def init(
    directory: Path = DirArg,
    name: str = typer.Option(..., "--name", help="Consortium name (recorded in every global model)."),
    address: str = typer.Option(..., "--address", help="HOST:PORT hospitals will dial (public name of this server)."),
    ca_passphrase_file: Path | None = PassphraseFileOpt,
    ca_passphrase_prompt: bool = PassphrasePromptOpt,
) -> None:
    """Create a consortium: private CA, server certificate (SANs: HOST, 127.0.0.1, localhost), consortium.yaml.

    With --ca-passphrase-file or --ca-passphrase-prompt the CA key is written encrypted (without: demos only)."""
    from server.ca_commands import warn_unencrypted_ca_key
    from server.ca_secret import get_passphrase
    from server.enrollment import init_consortium, pki_dir
    from server.pki import certificate_names

    passphrase = get_passphrase(ca_passphrase_file, ca_passphrase_prompt, new=True)
    cfg = init_consortium(directory, name, address, ca_passphrase=passphrase)
    names = certificate_names(pki_dir(directory) / "server.crt")
    out.print(f"consortium [bold]{cfg.name}[/] created in {directory}")
    out.print(f"  server certificate for: {', '.join(names)}")
    state = "encrypted" if passphrase else "[bold yellow]NOT encrypted[/]"
    out.print(f"  CA private key: {pki_dir(directory) / 'ca.key'}, {state} (keep it offline; never share it)")
    out.print(f"  settings: {directory / 'consortium.yaml'} (edit, then enroll sites)")
    if passphrase is None:
        warn_unencrypted_ca_key(directory)


@app.command()
@handle_errors
def enroll(
    directory: Path = DirArg,
    site: str = typer.Argument(..., help="Site name, e.g. hospital-a."),
    public_key: Path | None = typer.Option(
        None,
        "--public-key",
        help="The site's site.pub from `fedrad-site keygen`. Without it a key is generated (demo only).",
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace an enrolled site's key (key rotation)."),
) -> None:
    """Register a site's public key and write its bundle to DIR/bundles/SITE/."""
    from server.enrollment import enroll_site

    def warn_demo_key() -> None:
        err.print(
            "[bold yellow]WARNING: generating the site's private key on the server. This is for demos only:[/]\n"
            "[yellow]in a real consortium the hospital runs `fedrad-site keygen` and sends only site.pub, "
            "so the private key never leaves the hospital.[/]",
            highlight=False,
        )

    res = enroll_site(directory, site, public_key, replace=replace, on_generate=warn_demo_key)
    out.print(f"site [bold]{site}[/] enrolled, key fingerprint {res.site.fingerprint}")
    out.print(f"  confirm this fingerprint with the site out of band (phone), then send {res.bundle_dir}")
    if res.private_key is not None:
        out.print(f"  [yellow]demo key: {res.private_key} is in the bundle; hand it over securely[/]")
    out.print("  a running server picks the key up at its next `fedrad-server start`")


ListenOpt = typer.Option(None, "--listen", help="HOST:PORT to bind for sites (default 0.0.0.0:<port of address>).")


def _session(directory: Path, opts, console):  # noqa: ANN001, ANN202 - coordinator types imported lazily
    """One coordinator session (start or stats); a "no" from it is exit code 1 with its message."""
    from server.coordinator import CoordinatorError
    from server.coordinator import start as start_session

    try:
        return start_session(directory, opts, console)
    except CoordinatorError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_NO) from None


def _show_result_file(result, name: str, what: str, as_json: bool, render) -> None:  # noqa: ANN001 - SessionResult, view fn
    """A stats/crossval session's JSON file: printed with --json, else rendered; missing (run failed) is exit 1."""
    path = result.run_dir / name
    if not result.ok or not path.is_file():
        err.print(f"[bold red]no {what}:[/] run {result.run_id} {result.status} {result.details}", highlight=False)
        raise typer.Exit(EXIT_NO)
    data = json.loads(path.read_text())
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data, out)


@app.command()
@handle_errors
def start(
    directory: Path = DirArg,
    resume: bool = typer.Option(False, "--resume", help="Continue the last run from its last finished round."),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Resume the last run if it did not complete, else start a new one (for systemd/docker restarts).",
    ),
    listen: str | None = ListenOpt,
    dashboard_port: int | None = typer.Option(
        None,
        "--dashboard-port",
        min=1,
        max=65535,
        help="Also serve the read-only dashboard (`fedrad-server dashboard`) on 127.0.0.1:PORT while the run lasts.",
    ),
) -> None:
    """Start the server, wait for the sites, run the federated training and report its real status."""
    from server.coordinator import StartOptions

    opts = StartOptions(resume=resume, auto_resume=auto_resume, listen=listen, dashboard_port=dashboard_port)
    result = _session(directory, opts, out)
    colour = "green" if result.ok else "red"
    out.print(f"run {result.run_id}: [bold {colour}]{result.status}[/] {result.details}".rstrip(), highlight=False)
    out.print(f"checkpoints and metrics: {result.run_dir}")
    if not result.ok:
        raise typer.Exit(EXIT_NO)


@app.command()
@handle_errors
def stats(
    directory: Path = DirArg,
    listen: str | None = ListenOpt,
    as_json: bool = typer.Option(False, "--json", help="Print stats.json on stdout instead of the table."),
) -> None:
    """Start the server and ask every site for data statistics (counts per class, manufacturer, intensity)."""
    from server.coordinator import StartOptions
    from server.statistics import STATS_FILE
    from server.stats_view import render_statistics

    result = _session(directory, StartOptions(listen=listen, mode="stats"), err if as_json else out)
    _show_result_file(result, STATS_FILE, "statistics", as_json, render_statistics)


@app.command()
@handle_errors
def crossval(
    directory: Path = DirArg,
    model: Path | None = typer.Option(
        None,
        "--model",
        help="A FedRad model file (default: the last run's published "
        "model: averaged.pt where it averages its last rounds, else latest.pt).",
    ),
    listen: str | None = ListenOpt,
    as_json: bool = typer.Option(False, "--json", help="Print crossval.json on stdout instead of the table."),
) -> None:
    """Start the server and evaluate the global model and consenting sites' local models at every site (no training)."""
    from server.coordinator import StartOptions, last_run_dir
    from server.crossval import CROSSVAL_FILE
    from server.crossval_view import render_crossval
    from shared.config import ConfigError

    if model is None:
        from server.export import pick_model

        last = last_run_dir(directory)
        model = pick_model(last, best=False) if last is not None else None
        if model is None or not model.is_file():
            raise ConfigError(f"{directory}: no trained run with a latest.pt; give --model PATH")
    result = _session(
        directory, StartOptions(listen=listen, mode="crossval", crossval_model=model), err if as_json else out
    )
    _show_result_file(result, CROSSVAL_FILE, "cross-site results", as_json, render_crossval)


@app.command()
@handle_errors
def status(
    directory: Path = DirArg,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Sites enrolled and online, current or last run, its round and last metrics."""
    from server.status import collect_status, render_status, status_problems

    st = collect_status(directory)
    if as_json:
        print(json.dumps(st, indent=2, default=str))
    else:
        render_status(st, out)
    if any(level == "error" for level, _ in status_problems(st)):
        raise typer.Exit(EXIT_NO)  # an expired certificate: monitoring sees a failure, not a green check


@app.command()
@handle_errors
def dashboard(
    directory: Path = DirArg,
    host: str = HostOpt,
    port: int = typer.Option(8350, "--port", min=1, max=65535, help="TCP port."),
    tls_cert: Path | None = TlsCertOpt,
    tls_key: Path | None = TlsKeyOpt,
    token_file: Path | None = TokenFileOpt,
    benchmark: list[Path] = typer.Option(
        [],
        "--benchmark",
        help="A `fedrad-bench generalization` results.json to show (repeatable; DIR/benchmarks/*/ are always shown).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the page model once as JSON and exit."),
) -> None:
    """Serve a read-only web page of the consortium: sites, the current run live, curves, past runs, checkpoints,
    data statistics and benchmark results (built from the files in DIR; it changes nothing)."""
    from server.dashboard import CoordinatorPage

    if as_json:
        print(json.dumps(CoordinatorPage(directory, benchmarks=benchmark).page(), indent=2, allow_nan=False))
        return
    from shared.dashboard.cli_options import serve_from_cli

    serve_from_cli(lambda: CoordinatorPage(directory, benchmarks=benchmark), host, port, tls_cert, tls_key, token_file)


@app.command()
@handle_errors
def export(
    directory: Path = DirArg,
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write the model file (.pt)."),
    best: bool = typer.Option(False, "--best", help="The best round by federated AUC instead of the latest."),
    run_dir: Path | None = typer.Option(None, "--run", help="A run folder (default: the current/last run)."),
    fmt: str = typer.Option("pt", "--format", help="pt (FedRad model file), torchscript or onnx."),
    benchmark: Path | None = typer.Option(
        None, "--benchmark", help="A benchmark results.json (`fedrad-bench generalization`) for the model card."
    ),
    crossval: Path | None = typer.Option(
        None, "--crossval", help="A crossval.json: per-site AUC with CIs in the card."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was exported as JSON."),
) -> None:
    """Write the published (or best) global model, verified, to OUT, with a model card (OUT.md).

    The published model is the last round's, or the mean of the last rounds' where the consortium sets
    average_last_rounds."""
    from server.export import export_model

    info = export_model(
        directory, out_path, best=best, run_dir=run_dir, fmt=fmt, benchmark=benchmark, crossval=crossval
    )
    if as_json:
        print(json.dumps(info, indent=2))
        return
    gap = f", max gap to checkpoint {info['max_gap']:.1e}" if info["max_gap"] is not None else ""
    out.print(
        f"exported {info['source']} -> {info['out']} as {info['format']} (rounds {info['rounds']}, "
        f"sha256 {info['weights_sha256'][:16]}…{gap}); model card {info['model_card']}"
    )


@app.command()
@handle_errors
def track(
    directory: Path = DirArg,
    run_dir: Path | None = typer.Option(None, "--run", help="A run folder (default: the current/last run)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was sent as JSON."),
) -> None:
    """Send a run's rounds, run config and model card to consortium.yaml's trackers (MLflow, TensorBoard).

    `start` already does this every round; use `track` when a tracker was down, or was added after the run.
    Idempotent: a round a tracker already holds is not sent again."""
    from rich.markup import escape

    from server.tracking import track_run

    report = track_run(directory, run_dir, say=lambda line: err.print(f"[yellow]{escape(line)}[/]", highlight=False))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            state = f"[red]failed[/]: {escape(r['error'])}" if r["error"] else "[green]ok[/]"
            out.print(
                f"{name}: {state}; {r['sent']} round(s) sent, holds rounds up to {r['last_round']}", highlight=False
            )
    if any(r["error"] for r in report.values()):
        raise typer.Exit(EXIT_NO)


def _register_ca_commands() -> None:
    from server.ca_commands import register

    register(app)


_register_ca_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
