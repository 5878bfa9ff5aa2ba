"""``python -m deploy.federated_demo``: a whole consortium on this machine, over TLS, as separate processes.

What it does, in the order a real consortium would:

1. writes a synthetic cohort: 3 hospital sites plus an unseen 4th (real DICOM);
2. ``fedrad-server init`` + ``enroll`` (demo key generation: in real life each
   hospital runs ``fedrad-site keygen``) and fills each bundle's site.yaml;
3. starts ``fedrad-server start`` and three ``fedrad-site start`` processes on
   127.0.0.1 (free ports, TLS, site keys, fleet-only proxy) and trains a few rounds;
4. evaluates the global model (``RUN_DIR/latest.pt``, the file ``fedrad-server
   export`` hands out) and each site's local-only model (trained on the same
   patients the ClientApp trains on) on every site's separate test export
   (``site-<k>/test/``: other patients of the same scanner, ``--test-images``
   each) and on the unseen site, and prints the AUC table: every cell with its n
   and a 95 % stratified-bootstrap CI, and one line saying what the table shows.

``--out`` may be reused: a folder this demo wrote (it holds the marker file
``.fedrad-demo``) is cleared first, after stopping any process a killed earlier
run left behind; a foreign non-empty folder is refused. Every process the demo
starts runs one torch/BLAS thread (``shared.processes.child_env``), and so does
the demo's own evaluation.

Target: under 10 minutes on a 2-core machine (see ``--scale``/``--rounds``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.approval import approve_installed
from client.site_config import fill_site_yaml, load_site_file
from server.enrollment import enroll_site, init_consortium
from shared.processes import ProcessSet, executable, exit_on_sigterm, free_port, is_running, proc_id

REPO = Path(__file__).resolve().parent.parent
console = Console()
MARKER = ".fedrad-demo"  # {"pid", "start"} of the demo that wrote the folder: it may be cleared and reused
PROCESSES = ".fedrad-demo-processes.json"  # [[pid, start time], ...] the demo started (stopped by the next run)
LEGACY_ENTRIES = {"cohort", "consortium", "cache", "logs", "federated-demo-results.json"}  # a pre-marker demo
N_BOOTSTRAP = 1000
ONE_CLASS = "n/a (one class)"


class ForeignFolder(SystemExit):
    """``--out`` is a non-empty folder this demo did not write, or a demo is still running in it."""


def _is_demo_folder(out: Path) -> bool:
    """A folder this demo wrote: the marker, or (written before the marker existed) only the demo's entries."""
    if (out / MARKER).is_file():
        return True
    names = {p.name for p in out.iterdir()}
    return bool(names) and names <= LEGACY_ENTRIES and (out / "consortium" / "consortium.yaml").is_file()


def _stop_leftovers(out: Path, timeout: float = 5.0) -> int:
    """Stop the processes an earlier run in ``out`` recorded and left running (it was killed); returns how many.

    A process counts only if its pid *and* start time match the record, so a reused pid is never signalled.
    """
    try:
        idents = [tuple(map(int, x)) for x in json.loads((out / PROCESSES).read_text())]
    except (OSError, ValueError, TypeError):
        return 0
    left = [i for i in idents if is_running(i)]
    alive = left
    for sig, wait in ((signal.SIGINT, timeout / 2), (signal.SIGTERM, timeout / 2), (signal.SIGKILL, 2.0)):
        alive = [i for i in alive if is_running(i)]
        for pid, _ in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(is_running(i) for i in alive):
            time.sleep(0.05)
    return len(left)


def prepare_out(out: Path) -> Path:
    """Make ``out`` ready for a fresh demo and mark it as ours; returns it resolved.

    Missing or empty: created. Written by this demo (see :func:`_is_demo_folder`): processes a killed earlier
    run left behind are stopped, then its contents are deleted. A demo still running there, or a non-empty
    folder the demo did not write, is refused (:class:`ForeignFolder`) and nothing is touched.
    """
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ForeignFolder(f"{out} is a file, not a folder; pass another --out.")
    if out.is_dir() and any(out.iterdir()):
        if not _is_demo_folder(out):
            raise ForeignFolder(
                f"{out} is not empty and was not written by this demo; pass another --out or delete it."
            )
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            mark = json.loads((out / MARKER).read_text())
            owner = (int(mark["pid"]), int(mark["start"]))
            if owner[0] != os.getpid() and is_running(owner):
                raise ForeignFolder(
                    f"a demo (pid {owner[0]}) is still running in {out}; wait for it, stop it, or pass another --out."
                )
        stopped = _stop_leftovers(out)
        if stopped:
            console.print(f"stopped {stopped} process(es) left running by an earlier demo in {out}")
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        console.print(f"cleared the previous demo in {out}")
    out.mkdir(parents=True, exist_ok=True)
    me = proc_id(os.getpid())
    (out / MARKER).write_text(
        json.dumps(
            {"pid": os.getpid(), "start": me[1] if me else None, "written_by": "python -m deploy.federated_demo"}
        )
        + "\n"
    )
    return out


def _record_processes(out: Path, ps: ProcessSet) -> None:
    """Write every process started so far (and its descendants) so a later run can stop what a kill left."""
    (out / PROCESSES).write_text(json.dumps(sorted(ps.all_procs())))


def _wait_for_line(proc, text: str, timeout: float) -> None:  # noqa: ANN001 - ManagedProcess
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.name} did not get to {text!r}:\n{proc.log_tail()}")
        time.sleep(0.2)


def _follow(proc, offset: int) -> int:  # noqa: ANN001 - print the server's new output lines
    data = proc.log_path.read_bytes()[offset:]
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode(errors="replace").splitlines():
        if line.strip() and not line.startswith("==="):
            console.print(f"  [dim]server[/] {escape(line.strip())}", highlight=False)
    return offset + end


def write_demo_cohort(out: Path, scale: float, seed: int, test_images: int) -> list:
    """3 training sites (``scale`` × their default sizes) each with a ``test_images`` test export, and an unseen
    site of ``test_images`` images: every column of the table is scored on the same number of images."""
    from shared.synth import write_cohort
    from shared.synth.cohort import MIN_SITE_IMAGES, cohort_profiles, write_site

    summaries = write_cohort(out, n_sites=3, seed=seed, unseen=0, scale=scale, test_images=test_images)
    for profile in cohort_profiles(0, 1, seed):
        n = test_images or max(MIN_SITE_IMAGES, int(round(profile.default_size * scale)))
        summaries.append(write_site(out / profile.name, profile, n, seed))
    return summaries


def setup(out: Path, scale: float, rounds: int, local_epochs: int, seed: int, strategy: str, test_images: int) -> dict:
    """Cohort, consortium folder, enrolled sites with filled site.yaml files."""
    from shared.synth.cohort import TEST_EXPORT

    console.rule("[bold]1. Synthetic cohort: 3 hospitals (each with a test export) + 1 unseen")
    summaries = write_demo_cohort(out / "cohort", scale, seed, test_images)
    for s in summaries:
        console.print(f"{s.name}: {s.n_images} images, {s.class_counts}")
    tests = {s.name.split("/")[0]: s for s in summaries if s.name.endswith(f"/{TEST_EXPORT}")}
    summaries = [s for s in summaries if "/" not in s.name]
    console.rule("[bold]2. Consortium: init, enroll (demo keys)")
    port = free_port()
    cdir = out / "consortium"
    init_consortium(cdir, "FedRad Demo", f"127.0.0.1:{port}")
    cfg_path = cdir / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(
        rounds=rounds,
        local_epochs=local_epochs,
        min_sites=3,
        evaluate_every=rounds,
        seed=seed,
        wait_for_sites_s=180,
        round_timeout_s=300,
        strategy={"name": strategy},
    )
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    site_yaml, unseen = {}, {}
    for s in summaries:
        if s.name.startswith("unseen"):
            unseen[s.name] = s
            continue
        bundle = enroll_site(cdir, s.name).bundle_dir
        site_yaml[s.name] = fill_site_yaml(  # threads: 1, as every process the demo runs on this one machine
            bundle / "site.yaml", data=s.dicom_dir, labels=s.labels_csv, cache_dir=out / "cache" / s.name, threads=1
        )
        sha = approve_installed(load_site_file(site_yaml[s.name]).work_dir, note="demo")  # = `fedrad-site approve`
        console.print(f"enrolled {s.name}: bundle {bundle}; site approved FedRad code {sha[:16]}…")
    return {
        "dir": cdir,
        "port": port,
        "site_yaml": site_yaml,
        "unseen": unseen,
        "tests": tests,
        "config": cfg,
        "cache": out / "cache",
    }


def federate(setup_info: dict, out: Path) -> tuple[int, Path | None, float]:
    """Server + 3 sites as separate processes; returns (server exit code, run dir, seconds)."""
    console.rule("[bold]3. Federated training over TLS on 127.0.0.1")
    cdir, port = setup_info["dir"], setup_info["port"]
    t0 = time.monotonic()
    with ProcessSet(out / "logs") as ps:
        server = ps.start(
            "server",
            [executable("fedrad-server"), "start", str(cdir), "--listen", f"127.0.0.1:{port}"],
            env={"COLUMNS": "160"},
            cwd=REPO,
        )
        _wait_for_line(server, "listening for sites", 120)
        for name, path in setup_info["site_yaml"].items():
            ps.start(
                name, [executable("fedrad-site"), "start", "--config", str(path)], env={"COLUMNS": "160"}, cwd=REPO
            )
        console.print(f"server and {len(setup_info['site_yaml'])} sites started; logs in {out / 'logs'}")
        offset, recorded = 0, 0.0
        while server.poll() is None:
            offset = _follow(server, offset)
            if time.monotonic() - recorded > 5:  # Flower's detached children appear over time
                _record_processes(out, ps)
                recorded = time.monotonic()
            time.sleep(1)
        _follow(server, offset)
        rc = server.returncode
    runs = sorted((cdir / "runs").iterdir()) if (cdir / "runs").is_dir() else []
    return rc, (runs[-1] if runs else None), time.monotonic() - t0


def _held_out_split(site_yaml: Path, model_classes: list[str], image_size: int, seed: int):  # noqa: ANN202
    """(train, held_out) exactly as the ClientApp splits them (same function, same seed)."""
    from client.federated import load_site_data
    from shared.tasks import TaskSpec

    d = load_site_data(site_yaml, TaskSpec("classification", tuple(model_classes), "smallcnn", image_size), seed)
    return d.train, d.held_out


def score_cell(model, data, seed: int, n_bootstrap: int = N_BOOTSTRAP) -> dict:  # noqa: ANN001 - torch model, SiteDataset
    """One table cell: n, cases per class, AUC and its 95 % stratified-bootstrap CI (None where undefined)."""
    from shared.metrics import evaluate_predictions
    from shared.tasks.classification.evaluation import predict_proba

    counts = {c: int((data.labels == k).sum()) for k, c in enumerate(data.classes)}
    if len(data) == 0:
        return {"n": 0, "n_per_class": counts, "auc": None, "auc_ci95": None}
    m = evaluate_predictions(
        data.labels.numpy(), predict_proba(model, data.images), data.classes, n_bootstrap=n_bootstrap, seed=seed
    )
    return {k: m[k] for k in ("n", "n_per_class", "auc", "auc_ci95")}


def format_cell(cell: dict, positive: str | None = None) -> str:
    """Three short lines: AUC, its 95 % CI, and n (with the ``positive`` class's count): ``0.912``,
    ``0.87–0.95``, ``n=200 (60+)``. ``n/a (one class)`` where only one class was scored (AUC undefined)."""
    n = int(cell.get("n") or 0)
    pos = (cell.get("n_per_class") or {}).get(positive) if positive else None
    n_line = f"n={n}" + (f" ({pos}+)" if pos is not None else "")
    if n == 0:
        return f"n/a (no images)\n\n{n_line}"
    if cell.get("auc") is None:
        return f"{ONE_CLASS}\n\n{n_line}"
    ci = cell.get("auc_ci95")
    return f"{cell['auc']:.3f}\n" + (f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "no CI") + f"\n{n_line}"


def render_table(results: dict[str, dict[str, dict]]) -> Table:
    """The AUC table: models (rows) × test sets (columns), each cell from :func:`format_cell` (fits 80 columns)."""
    first = next(iter(results.values()), {})
    columns = list(first)
    classes = list(next((c.get("n_per_class") or {} for c in first.values()), {}))
    positive = classes[-1] if classes else None
    plus = f"; + = {positive}" if positive else ""
    table = Table(
        title=f"AUC, its 95 % CI (stratified bootstrap) and n (images scored{plus}) of each model (rows) "
        "on each site's separate test export and the unseen site (columns)",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    for label, row in results.items():
        table.add_row(label, *(format_cell(row[col], positive) for col in columns))
    return table


def _overlap(a: dict, b: dict) -> bool | None:
    """Whether two cells' CIs overlap; None when either has no CI."""
    ca, cb = a.get("auc_ci95"), b.get("auc_ci95")
    if not ca or not cb:
        return None
    return ca[0] <= cb[1] and cb[0] <= ca[1]


def _mean(values: list) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def summary_line(
    results: dict[str, dict[str, dict]], global_label: str, home: dict[str, str], unseen: list[str]
) -> str:
    """One plain sentence: best at home on average (global vs each local model at its own site, CI overlap per
    site) and best at each unseen site (against the runner-up, CI overlap). ``home``: local model → its column."""
    parts = []
    pairs = [
        (results[global_label][col], results[m][col])
        for m, col in home.items()
        if results[global_label][col]["auc"] is not None and results[m][col]["auc"] is not None
    ]
    if not pairs:
        parts.append("at home: AUC undefined (one class) at every site, no comparison")
    else:
        g_home = _mean([g["auc"] for g, _ in pairs])
        l_home = _mean([loc["auc"] for _, loc in pairs])
        best = "the global model" if g_home >= l_home else "the local models"
        overlaps = [_overlap(g, loc) for g, loc in pairs]
        known = [o for o in overlaps if o is not None]
        parts.append(
            f"at home {best} is best on average (global {g_home:.3f} vs each site's own local model "
            f"{l_home:.3f}, mean over {len(pairs)} site tests), CIs overlap at {sum(known)} of {len(known)} "
            "sites"
        )
    for col in unseen:
        ranked = sorted(
            ((cells[col]["auc"], m) for m, cells in results.items() if cells[col]["auc"] is not None), reverse=True
        )
        if not ranked:
            parts.append(f"at {col} AUC is undefined (one class)")
            continue
        (a1, m1), rest = ranked[0], ranked[1:]
        text = f"at {col} {m1} is best (AUC {a1:.3f})"
        if rest:
            a2, m2 = rest[0]
            ov = _overlap(results[m1][col], results[m2][col])
            verdict = {True: "CIs overlap, not a measurable difference", False: "CIs do not overlap", None: "no CI"}[ov]
            text += f", next {m2} at {a2:.3f}: {verdict}"
        parts.append(text)
    return "Reading: " + "; ".join(parts) + "."


def evaluate_all(setup_info: dict, run_dir: Path, rounds: int, local_epochs: int, seed: int) -> dict:
    """AUC (n, 95 % CI) of the global model and of each local-only model on every site's test export (its
    held-out patients where there is none) and on the unseen site."""
    import torch

    from shared.config import SiteDataConfig
    from shared.modelfile import load_model_file
    from shared.models import build_model
    from shared.processes import apply_thread_limit
    from shared.site_data import load_site_dataset
    from shared.training import TrainConfig, train_model

    console.rule("[bold]4. Evaluation")
    apply_thread_limit(1)  # one thread, as every process the demo starts (FEDRAD_TORCH_THREADS may say more)
    glob = load_model_file(run_dir / "latest.pt")
    size = glob.preprocess.image_size

    def load(name: str, s) -> object:  # noqa: ANN001 - SiteSummary
        cfg = SiteDataConfig(
            data=s.dicom_dir,
            labels=s.labels_csv,
            classes=glob.classes,
            image_size=size,
            cache_dir=setup_info["cache"] / name.replace("/", "-"),
        )
        return load_site_dataset(cfg)[0]

    eval_sets, train_sets, home = {}, {}, {}
    for name, path in setup_info["site_yaml"].items():
        train_sets[name], held_out = _held_out_split(path, glob.classes, size, seed)
        test = setup_info["tests"].get(name)
        col = f"{name} test" if test is not None else f"{name} held-out"
        eval_sets[col] = load(f"{name}/test", test) if test is not None else held_out
        home[f"local {name}"] = col
    for name, s in setup_info["unseen"].items():
        eval_sets[name] = load(name, s)
    global_label = f"global ({glob.provenance['rounds']} rounds)"
    models = {global_label: glob.model}
    for name, data in train_sets.items():  # same number of epochs the federation gave each site
        torch.manual_seed(seed)  # the initial weights too: the same table on every run
        model = build_model(glob.architecture, len(glob.classes), size)
        train_model(model, data, TrainConfig(epochs=rounds * local_epochs, seed=seed))
        models[f"local {name}"] = model.eval()

    results = {
        label: {col: score_cell(model, d, seed) for col, d in eval_sets.items()} for label, model in models.items()
    }
    console.print(render_table(results))
    line = summary_line(results, global_label, home, list(setup_info["unseen"]))
    console.print(line, highlight=False, markup=False, soft_wrap=True)
    return {"cells": results, "summary": line}


def run(
    out: Path, scale: float, rounds: int, local_epochs: int, seed: int, strategy: str, test_images: int = 200
) -> dict:
    t0 = time.monotonic()
    warnings.simplefilter("ignore")
    out = prepare_out(out)
    info = setup(out, scale, rounds, local_epochs, seed, strategy, test_images)
    rc, run_dir, fed_s = federate(info, out)
    if rc != 0 or run_dir is None or not (run_dir / "latest.pt").exists():
        raise SystemExit(f"federated run failed (server exit {rc}); see {out / 'logs'} and {info['dir'] / 'logs'}")
    results = evaluate_all(info, run_dir, rounds, local_epochs, seed)
    wall = time.monotonic() - t0
    summary = {
        "wall_s": round(wall, 1),
        "federated_s": round(fed_s, 1),
        "run_dir": str(run_dir),
        "rounds": rounds,
        "strategy": strategy,
        "test_images": test_images,
        "n_bootstrap": N_BOOTSTRAP,
        "auc": results["cells"],
        "summary": results["summary"],
    }
    (out / "federated-demo-results.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"demo wall time {wall:.0f} s (federation {fed_s:.0f} s); global model {run_dir / 'latest.pt'}")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=Path("federated-demo"),
        help="output folder; a previous demo's folder is cleared and reused, a foreign one refused",
    )
    p.add_argument("--scale", type=float, default=0.4, help="site sizes relative to the synthetic defaults")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=6)
    p.add_argument(
        "--test-images",
        type=int,
        default=200,
        help="images in each site's separate test export and in the unseen site (0: score held-out "
        "patients, as before)",
    )
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    exit_on_sigterm()  # a SIGTERM still stops the server and sites (ProcessSet cleanup)
    run(a.out, a.scale, a.rounds, a.local_epochs, a.seed, a.strategy, a.test_images)


if __name__ == "__main__":
    main()
