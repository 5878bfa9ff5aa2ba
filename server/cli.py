"""``fedrad-server``: the consortium coordinator's command line.

Commands arrive with the consortium work (init, enroll, start, status, export);
for now it reports its version so deploy scripts can probe the install.
"""

from __future__ import annotations

import typer

from shared.cli_support import handle_errors, out

app = typer.Typer(
    name="fedrad-server",
    help="FedRad consortium server: create a consortium, enroll sites, run federated training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
