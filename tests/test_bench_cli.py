"""``fedrad-bench`` (``python -m benchmarks.cli``): every benchmark is a subcommand; ``fedrad-server`` keeps none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.cli import SCRIPTS
from benchmarks.cli import app as bench_cli

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = [
    "generalization",
    "scale",
    "overhead",
    "privacy",
    "secagg",
    "compression",
    "ingest",
    "training",
    "throughput",
    "levers",
    "scale-sweep",
    "proxy-attacks",
    "audit-append",
    "cache-memory",
    "volume-inference",
    "volume-memory",
    "ingest-fullsize",
    "big-model",
    "backbones",
    "pacs-fetch",
    "pacs-receive",
]
runner = CliRunner()


def test_module_help_lists_every_subcommand() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    assert set(SUBCOMMANDS) <= listed, proc.stdout


def test_fedrad_server_no_longer_benchmarks() -> None:
    from server.cli import app as server_cli

    for command in ("benchmark", "simulate"):
        res = runner.invoke(server_cli, [command, "--help"])
        assert res.exit_code == 2, (command, res.output)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_subcommands_pass_their_arguments_through(name: str) -> None:
    """``--help`` reaches the script's own argparse (exit 0, its options); a wrong option is its exit 2."""
    res = runner.invoke(bench_cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert f"usage: fedrad-bench {name}" in res.output
    res = runner.invoke(bench_cli, [name, "--no-such-option"])
    assert res.exit_code == 2 and "--no-such-option" in res.output, res.output


def test_generalization_refuses_a_bad_invocation_with_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(
        bench_cli,
        ["generalization", "--sites", str(tmp_path), "--strategies", "fedsgd", "--out", str(tmp_path / "out")],
    )
    assert res.exit_code == 2 and "fedsgd" in res.output, res.output
    res = runner.invoke(bench_cli, ["generalization", "--sites", str(tmp_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "at least 2 training sites" in res.output, res.output


def test_generalization_refuses_bad_task_options_with_exit_2(tmp_path: Path) -> None:
    base = ["generalization", "--sites", str(tmp_path / "a"), "--sites", str(tmp_path / "b"), "--out", str(tmp_path)]
    base += ["--task", "segmentation3d", "--labels", "liver,lesion"]
    res = runner.invoke(bench_cli, [*base, "--task-options", "spacing"])
    assert res.exit_code == 2 and "name=value" in res.output, res.output
    res = runner.invoke(bench_cli, [*base, "--task-options", "spacing=0"])
    assert res.exit_code == 2 and "task.spacing" in res.output, res.output
    res = runner.invoke(bench_cli, [*base, "--task-options", "colour=red"])
    assert res.exit_code == 2 and "task.colour" in res.output, res.output


def test_figure_tables_written_to_a_file_are_not_cut_to_80_columns(tmp_path: Path) -> None:
    """A benchmark's twelve-column table, saved to a file, keeps its figures (rich alone would print "…")."""
    script = (
        "from rich.table import Table\n"
        "from shared.cli_support import report_console\n"
        "t = Table(*[f'column {i}' for i in range(12)])\n"
        "t.add_row(*[f'{1234.5 + i:.1f}' for i in range(12)])\n"
        "report_console().print(t)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO)
    with (tmp_path / "out.txt").open("w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, env=env, check=True, cwd=REPO)
    text = (tmp_path / "out.txt").read_text()
    assert "…" not in text
    assert all(f"{1234.5 + i:.1f}" in text for i in range(12))
    narrow = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "COLUMNS": "60"}, check=True
    )
    assert "…" in narrow.stdout  # COLUMNS still decides
