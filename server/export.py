"""``fedrad-server export DIR --out model.pt [--best]``: hand out the global model.

The global model is already a self-describing FedRad model file (same format
as a local one), so export is verify-then-copy: the file is loaded (hash and
architecture checked) before it is written, so a truncated checkpoint is never
handed to a hospital.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from server.checkpoints import CheckpointError, RunDir
from server.consortium import load_consortium
from server.coordinator import CURRENT_RUN_JSON, STATE_DIR, last_run_dir, read_json
from shared.config import ConfigError
from shared.intensity import HistogramEqualize
from shared.modelfile import load_model_file
from shared.tasks import get_task

_ROUND = re.compile(r"^round-(\d+)\.pt$")


def pick_model(run_dir: Path, best: bool) -> Path:
    """``best.pt``, or the run's published model: ``averaged.pt`` where the run averages its last rounds
    (``average_last_rounds``, and ``state.json`` names it for the last finished round), else ``latest.pt``
    (which falls back to the highest ``round-XXXX.pt``)."""
    if best:
        path = run_dir / "best.pt"
        if not path.is_file():
            raise ConfigError(f"{path}: no best model yet (it needs a round with federated evaluation); drop --best.")
        return path
    averaged = _current_average(run_dir)
    if averaged is not None:
        return averaged
    if (run_dir / "latest.pt").is_file():
        return run_dir / "latest.pt"
    rounds = sorted((int(m.group(1)), p) for p in run_dir.glob("round-*.pt") if (m := _ROUND.match(p.name)))
    if not rounds:
        raise ConfigError(f"{run_dir}: no global model yet (no round has finished).")
    return rounds[-1][1]


def _current_average(run_dir: Path) -> Path | None:
    """``averaged.pt`` when ``state.json`` records it for its last finished round (never a stale one)."""
    try:
        state = RunDir(run_dir).state() or {}
    except CheckpointError as exc:  # which model the run publishes is unknown: say so rather than guess
        raise ConfigError(str(exc)) from None
    averaged = state.get("averaged") or {}
    path = run_dir / str(averaged.get("file", ""))
    rounds = averaged.get("rounds") or [None, None]
    return path if averaged.get("file") and path.is_file() and rounds[-1] == state.get("last_round") else None


def export_model(
    directory: Path,
    out: Path,
    *,
    best: bool = False,
    run_dir: Path | None = None,
    fmt: str = "pt",
    benchmark: Path | None = None,
    crossval: Path | None = None,
) -> dict:
    """Write the chosen global model of the current/last run to ``out`` (as ``fmt``) with a model card; return what was done.

    ``pt`` copies the verified FedRad model file; ``torchscript`` / ``onnx``
    write a standalone graph checked against it (:mod:`server.export_formats`).
    The card (:mod:`server.model_card`) goes beside ``out`` as ``<out>.md``.
    """

    from server.export_formats import FORMATS, export_graph
    from server.model_card import enrolled_sites, model_card

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    directory = Path(directory).resolve()
    load_consortium(directory)
    if run_dir is None:
        current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON)
        run_dir = Path(current["run_dir"]) if current and current.get("run_dir") else last_run_dir(directory)
    if run_dir is None or not Path(run_dir).is_dir():
        raise ConfigError(f"{directory}: no run folder under runs/; train first with `fedrad-server start`.")
    src = pick_model(Path(run_dir), best)
    loaded = load_model_file(src)
    task = get_task(loaded.task)
    refusal = task.unsupported("onnx") if fmt != "pt" else None
    if refusal:
        raise ConfigError(f"--format {fmt}: {refusal}; {src.name} is a {loaded.task} model: use --format pt")
    if fmt == "onnx" and any(
        isinstance(m, HistogramEqualize) for m in loaded.model.modules()
    ):  # searchsorted: no ONNX op
        raise ConfigError(
            f"--format onnx: {src.name} is a {loaded.architecture} model, and ONNX has no operator for its "
            "histogram-equalisation input layer; use --format torchscript (same probabilities) or pt"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gap = None
    if fmt == "pt":
        shutil.copyfile(src, out)
        what = "FedRad model file (load with shared.modelfile.load_model_file)"
    else:
        shape = task.input_shape(loaded.preprocess.image_size)
        gap = export_graph(
            loaded.model, loaded.preprocess.image_size, fmt, out, activation=task.probabilities, shape=shape
        )
        dims = ", ".join(["1", *["S"] * (len(shape) - 1)])
        what = (
            f"{fmt} graph: float32 images (N, {dims}) → {task.exported_output()}; max gap to the checkpoint {gap:.1e}"
        )
    bench = _read_json_option("--benchmark", benchmark, "results.json", ("matrix", "columns"))
    cross = _read_json_option("--crossval", crossval, "crossval.json", ("matrix", "sites"))
    card = out.with_name(out.name + ".md")
    card.write_text(model_card(loaded, Path(run_dir), {out.name: what}, enrolled_sites(directory), bench, cross))
    return {
        "source": str(src),
        "out": str(out),
        "format": fmt,
        "model_card": str(card),
        "max_gap": gap,
        "weights_sha256": loaded.weights_sha256,
        "rounds": loaded.provenance.get("rounds"),
        "trained_by": loaded.provenance.get("trained_by"),
        "architecture": loaded.architecture,
        "classes": loaded.classes,
    }


def _read_json_option(option: str, path: Path | None, what: str, keys: tuple[str, ...]) -> dict | None:
    """The JSON file an option names, or None; a file that is not the expected kind is a ConfigError."""
    import json

    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{option} {path}: not a readable {what} ({exc})") from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ConfigError(f"{option} {path}: not a {what} (needs {', '.join(keys)})")
    return data
