"""A model card (Markdown) for an exported global model: what it is for, how it was made, how well it does.

Built only from what the coordinator holds: the model file's provenance, the
run's ``metrics.jsonl`` (aggregate federated evaluation on the sites' held-out
patients) and, if given, a benchmark's ``results.json`` (per-site and
unseen-site AUC, or Dice per label for segmentation, over seeds). Sites are named, never described further.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.modelfile import LoadedModel
from shared.tasks import get_task


def enrolled_sites(consortium_dir: Path) -> list[str]:
    """Site names from the consortium's enrollment registry (names only: nothing else about a site goes on the card)."""
    from server.enrollment import load_registry

    try:
        return sorted(load_registry(Path(consortium_dir)))
    except Exception:  # noqa: BLE001 - a card without site names beats no export
        return []


def start_line(start: dict | None) -> str:
    """Where round 1's weights came from (``task.init_weights``; :mod:`shared.start_weights`), in one line."""
    if not start:
        return "* initial weights: random (the architecture's own initialisation; nothing pretrained)"
    if start.get("kind") == "fedrad-model":
        return (
            f"* initial weights: FedRad model `{Path(str(start.get('file'))).name}` "
            f"(weights sha256 `{str(start.get('weights_sha256'))[:16]}…`, trained by {start.get('trained_by')})"
        )
    unplaced = list(start.get("unplaced") or {})
    share = start.get("params_placed", 0) / start["params"] if start.get("params") else 0.0
    head = start.get("head") or []
    fresh = all(k in (start.get("left_at_init") or []) for k in head)
    return (
        f"* initial weights: the state dict `{Path(str(start.get('file'))).name}` (file sha256 "
        f"`{str(start.get('file_sha256'))[:16]}…`), imported: {start.get('placed')} of {start.get('tensors')} tensors "
        f"({share:.1%} of the parameters)"
        + ("; first convolution: the file's RGB filters summed into one channel" if start.get("first_conv") else "")
        + (f"; head ({', '.join(head)}) trained from a fresh init" if head and fresh else "")
        + (
            f"; {len(unplaced)} file key(s) not used: {', '.join(unplaced[:4])}{' …' if len(unplaced) > 4 else ''}"
            if unplaced
            else ""
        )
    )


def model_card(
    model: LoadedModel,
    run_dir: Path | None,
    files: dict[str, str],
    sites: list[str],
    benchmark: dict | None = None,
    crossval: dict | None = None,
) -> str:
    """The card's Markdown text."""
    prov, pre = model.provenance, model.preprocess
    kind = get_task(model.task)
    extra = prov.get("extra") or {}
    from server.checkpoints import read_metrics

    rows = read_metrics(run_dir) if run_dir is not None else []  # a run still writing: its torn last line is skipped
    evals = [r for r in rows if r.get("eval")]
    last = evals[-1] if evals else None
    privacy = extra.get("privacy")
    lines = [
        f"# Model card: {prov.get('trained_by', 'FedRad consortium')} global model",
        "",
        "## Intended use",
        f"Research and decision support: {kind.intended_use(model.outputs)}. "
        + "Not a medical device; a clinician reads every image. "
        "Validate on local data (`fedrad-site evaluate`) before any use at a new site.",
        "",
        "## Model",
        f"* architecture `{model.architecture}`, input {'×'.join(map(str, kind.input_shape(pre.image_size)))}, "
        "output " + kind.describe_output(),
        f"* weights sha256 `{model.weights_sha256}`"
        + (f"; operating threshold {model.threshold}" if model.threshold is not None else ""),
        f"* preprocessing: {kind.preprocessing_note(pre.image_size, model.task_options)} "
        f"({json.dumps(pre.model_dump())})",
        *(f"* {line}" for line in kind.card_preprocessing(model.task_options)),
        *(
            [f"* task settings: {', '.join(f'{k} {v}' for k, v in sorted(model.task_options.items()))}"]
            if model.task_options
            else []
        ),
        *(f"* file `{name}`: {what}" for name, what in files.items()),
        "",
        "## Training",
        f"* federated, {prov.get('rounds')} round(s), strategy {extra.get('strategy', '?')}, seed {extra.get('seed', '?')}; "
        f"created {prov.get('created')}, FedRad {prov.get('fedrad_version')}",
        *(
            [
                f"* published weights: the mean of the global models of rounds {extra['averaged_rounds'][0]}–"
                f"{extra['averaged_rounds'][1]} (average_last_rounds)"
            ]
            if extra.get("averaged_rounds")
            else []
        ),
        start_line(extra.get("init_weights")),
        f"* training sites: {', '.join(sites) if sites else 'not recorded in this folder'}",
        f"* sites per round: {sorted({r.get('sites_answered') for r in rows}) if rows else '?'}",
        "* differential privacy: "
        + (
            f"ε = {privacy.get('epsilon')} at δ = {privacy.get('delta')}, noise multiplier "
            f"{privacy.get('noise_multiplier')}, clipping norm {privacy.get('clipping_norm')}"
            if privacy
            else "none"
        ),
        "",
        "## Performance",
    ]
    if last:
        e = last["eval"]
        lines.append(
            f"* federated evaluation, round {last['round']}, sites' held-out patients pooled ({e.get('num-examples')} "
            f"cases): {kind.summarize(e, model.outputs)}. "
            "Sites send aggregates only, so this figure has no per-site breakdown or interval."
        )
    else:
        lines.append("* no federated evaluation recorded for this run")
    if crossval:
        from server.crossval_view import metric_cell

        metric = crossval.get("metric", "auc")
        lines += [
            "",
            f"Per-site evaluation (`fedrad-server crossval`, {crossval.get('time', '?')}): {metric} with each site's "
            "own 95 % bootstrap interval on its held-out patients (n):",
            "",
            "| model | " + " | ".join(crossval["sites"]) + " |",
            "|---" * (len(crossval["sites"]) + 1) + "|",
        ]
        for m, row in crossval["matrix"].items():
            cells = [
                row.get(s, {}).get("error", "")[:40] or metric_cell(row.get(s, {}), metric) for s in crossval["sites"]
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if benchmark:  # a segmentation benchmark (metric dice-mean) also has one matrix per label (metric_matrices)
        matrices = {benchmark.get("metric", "auc"): benchmark["matrix"], **(benchmark.get("metric_matrices") or {})}
        for metric, matrix in matrices.items():
            name = (
                "AUC"
                if metric == "auc"
                else "Dice, mean over labels"
                if metric == "dice-mean"
                else metric.replace("dice-", "Dice ")
            )
            lines += [
                "",
                f"Benchmark ({benchmark.get('engine')}, {benchmark['config']['seeds']} seeds, {name} mean ± sd over seeds):",
                "",
                "| model | " + " | ".join(benchmark["columns"]) + " |",
                "|---" * (len(benchmark["columns"]) + 1) + "|",
            ]
            for m, row in matrix.items():
                cells = [
                    f"{row[c]['mean']:.3f} ± {row[c]['sd']:.3f}" if row[c]["mean"] is not None else "–"
                    for c in benchmark["columns"]
                ]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Known limitations",
        "* Trained on the consortium's sites only; scanners, populations and protocols not among them may see lower accuracy "
        "(the benchmark's unseen-site column is the best estimate).",
        f"* Inputs must be preprocessed exactly as above ({kind.preprocessing_note(pre.image_size, model.task_options)}); "
        "raw DICOM pixel values give meaningless outputs.",
        *(
            [
                "* The threshold was chosen on validation data (Youden's J); a site should recalibrate it for its own prevalence."
            ]
            if model.threshold is not None
            else []
        ),
    ]
    return "\n".join(lines) + "\n"
