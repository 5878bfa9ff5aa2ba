"""``python -m deploy.federated_demo``: a whole consortium on this machine, over TLS, as separate processes.

What it does, in the order a real consortium would:

1. writes a synthetic cohort: 3 hospital sites plus an unseen 4th (real DICOM);
2. ``fedrad-server init`` + ``enroll`` (demo key generation: in real life each
   hospital runs ``fedrad-site keygen``) and fills each bundle's site.yaml;
3. starts ``fedrad-server start`` and three ``fedrad-site start`` processes on
   127.0.0.1 (free ports, TLS, site keys, fleet-only proxy) and trains a few rounds;
4. evaluates the global model (``RUN_DIR/latest.pt``, the file ``fedrad-server
   export`` hands out) and each site's local-only model on every site's held-out
   patients (the same patient split the ClientApp holds out of training) and on
   the unseen site, and prints the AUC table.

Target: under 10 minutes on a 2-core machine (see ``--scale``/``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import math
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
from shared.processes import ProcessSet, executable, free_port

REPO = Path(__file__).resolve().parent.parent
console = Console()


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


def setup(out: Path, scale: float, rounds: int, local_epochs: int, seed: int, strategy: str) -> dict:
    """Cohort, consortium folder, enrolled sites with filled site.yaml files."""
    from shared.synth import write_cohort

    console.rule("[bold]1. Synthetic cohort: 3 hospitals + 1 unseen")
    summaries = write_cohort(out / "cohort", n_sites=3, seed=seed, unseen=1, scale=scale)
    for s in summaries:
        console.print(f"{s.name}: {s.n_images} images, {s.class_counts}")
    console.rule("[bold]2. Consortium: init, enroll (demo keys)")
    port = free_port()
    cdir = out / "consortium"
    init_consortium(cdir, "FedRad Demo", f"127.0.0.1:{port}")
    cfg_path = cdir / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(rounds=rounds, local_epochs=local_epochs, min_sites=3, evaluate_every=rounds, seed=seed,
               wait_for_sites_s=180, round_timeout_s=300, strategy={"name": strategy})
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    site_yaml, unseen = {}, {}
    for s in summaries:
        if s.name.startswith("unseen"):
            unseen[s.name] = s
            continue
        bundle = enroll_site(cdir, s.name).bundle_dir
        site_yaml[s.name] = fill_site_yaml(bundle / "site.yaml", data=s.dicom_dir, labels=s.labels_csv,
                                           cache_dir=out / "cache" / s.name)
        sha = approve_installed(load_site_file(site_yaml[s.name]).work_dir, note="demo")  # = `fedrad-site approve`
        console.print(f"enrolled {s.name}: bundle {bundle}; site approved FedRad code {sha[:16]}…")
    return {"dir": cdir, "port": port, "site_yaml": site_yaml, "unseen": unseen, "config": cfg}


def federate(setup_info: dict, out: Path) -> tuple[int, Path | None, float]:
    """Server + 3 sites as separate processes; returns (server exit code, run dir, seconds)."""
    console.rule("[bold]3. Federated training over TLS on 127.0.0.1")
    cdir, port = setup_info["dir"], setup_info["port"]
    t0 = time.monotonic()
    with ProcessSet(out / "logs") as ps:
        server = ps.start("server", [executable("fedrad-server"), "start", str(cdir), "--listen", f"127.0.0.1:{port}"],
                          env={"COLUMNS": "160"}, cwd=REPO)
        _wait_for_line(server, "listening for sites", 120)
        for name, path in setup_info["site_yaml"].items():
            ps.start(name, [executable("fedrad-site"), "start", "--config", str(path)], env={"COLUMNS": "160"}, cwd=REPO)
        console.print(f"server and {len(setup_info['site_yaml'])} sites started; logs in {out / 'logs'}")
        offset = 0
        while server.poll() is None:
            offset = _follow(server, offset)
            time.sleep(1)
        _follow(server, offset)
        rc = server.returncode
    runs = sorted((cdir / "runs").iterdir()) if (cdir / "runs").is_dir() else []
    return rc, (runs[-1] if runs else None), time.monotonic() - t0


def _held_out_split(site_yaml: Path, model_classes: list[str], image_size: int, seed: int):  # noqa: ANN202
    """(train, held_out) exactly as the ClientApp splits them (same function, same seed)."""
    from client.federated import Task, load_site_data

    d = load_site_data(site_yaml, Task("smallcnn", model_classes, image_size), seed)
    return d.train, d.held_out


def evaluate_all(setup_info: dict, run_dir: Path, rounds: int, local_epochs: int, seed: int) -> dict:
    """AUC of the global model and of each local-only model on every held-out split and the unseen site."""
    import torch

    from shared.config import SiteDataConfig
    from shared.modelfile import load_model_file
    from shared.models import build_model
    from shared.site_data import load_site_dataset
    from shared.training import TrainConfig, train_model
    from shared.tasks.classification.evaluation import auc_score

    console.rule("[bold]4. Evaluation")
    torch.set_num_threads(2)
    glob = load_model_file(run_dir / "latest.pt")
    size = glob.preprocess.image_size
    eval_sets, train_sets = {}, {}
    for name, path in setup_info["site_yaml"].items():
        train_sets[name], eval_sets[f"{name} held-out"] = _held_out_split(path, glob.classes, size, seed)
    for name, s in setup_info["unseen"].items():
        eval_sets[name], _ = load_site_dataset(SiteDataConfig(data=s.dicom_dir, labels=s.labels_csv,
                                                              classes=glob.classes, image_size=size,
                                                              cache_dir=s.path.parent.parent / "cache" / name))
    models = {f"global ({glob.provenance['rounds']} rounds)": glob.model}
    for name, data in train_sets.items():  # same number of epochs the federation gave each site
        model = build_model(glob.architecture, len(glob.classes), size)
        train_model(model, data, TrainConfig(epochs=rounds * local_epochs, seed=seed))
        models[f"local {name}"] = model.eval()

    table = Table(title="AUC: models (rows) on each site's held-out patients and the unseen site (columns)",
                  title_justify="left")
    table.add_column("model")
    for col, data in eval_sets.items():
        table.add_column(f"{col} (n={len(data)})", justify="right")
    results = {}
    for label, model in models.items():
        results[label] = {col: auc_score(model, d) for col, d in eval_sets.items()}
        table.add_row(label, *("-" if math.isnan(v) else f"{v:.3f}" for v in results[label].values()))
    console.print(table)
    return results


def run(out: Path, scale: float, rounds: int, local_epochs: int, seed: int, strategy: str) -> dict:
    t0 = time.monotonic()
    warnings.simplefilter("ignore")
    out = Path(out).resolve()
    if (out / "consortium").exists():
        raise SystemExit(f"{out} already holds a demo; pass another --out or delete it.")
    info = setup(out, scale, rounds, local_epochs, seed, strategy)
    rc, run_dir, fed_s = federate(info, out)
    if rc != 0 or run_dir is None or not (run_dir / "latest.pt").exists():
        raise SystemExit(f"federated run failed (server exit {rc}); see {out / 'logs'} and {info['dir'] / 'logs'}")
    results = evaluate_all(info, run_dir, rounds, local_epochs, seed)
    wall = time.monotonic() - t0
    summary = {"wall_s": round(wall, 1), "federated_s": round(fed_s, 1), "run_dir": str(run_dir),
               "rounds": rounds, "strategy": strategy, "auc": results}
    (out / "federated-demo-results.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"demo wall time {wall:.0f} s (federation {fed_s:.0f} s); global model {run_dir / 'latest.pt'}")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("federated-demo"))
    p.add_argument("--scale", type=float, default=0.4, help="site sizes relative to the synthetic defaults")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=6)
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run(a.out, a.scale, a.rounds, a.local_epochs, a.seed, a.strategy)


if __name__ == "__main__":
    main()
