"""The benchmark's report: ``report.html`` with two PNG charts, from ``results.json`` alone."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_TITLES = {"auc": "ROC AUC", "dice-mean": "Dice (mean over labels)"}


def _test_sets(results: dict) -> str:
    """Each test set's size, and for a training site whether it is its held-out patients or its test export."""
    kinds = results.get("test_sets", {})
    return ", ".join(f"{c} {n}" + (f" ({kinds[c]})" if c in kinds else "") for c, n in results["test_sizes"].items())


def metric_title(results: dict, metric: str | None = None) -> str:
    """How the report names a metric (``results['metric']`` by default; older results.json are AUC)."""
    metric = metric or results.get("metric", "auc")
    return METRIC_TITLES.get(metric, metric.replace("dice-", "Dice ") if metric.startswith("dice-") else metric)


def chart_name(results: dict) -> str:
    """``auc-by-model.png`` or ``dice-by-model.png``."""
    return f"{results.get('metric', 'auc').split('-')[0]}-by-model.png"


def _fmt(cell: dict | None) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    return f"{cell['mean']:.3f} ± {cell['sd']:.3f}" if cell.get("n", 0) > 1 else f"{cell['mean']:.3f}"


def _levers_sentence(
    w: dict | None, lead: str = "With levers on top (AdaBN, fine-tuning, equalisation, scanner augmentation)"
) -> str:
    if not w:
        return ""
    return (
        f" {lead}, <b>{html.escape(w['best_federated'])}</b>: {w['ratio_to_pooled']} × pooled; "
        f"beats local-only on own test sets {html.escape(str(w['beats_local_on_own_test']))}, on unseen "
        f"{html.escape(str(w['beats_local_on_unseen']))}."
    )


def paired_rows(results: dict) -> list[list[str]]:
    """The paired per-seed differences as table rows: model − against, column, mean [95 % CI], wins, per seed."""
    rows = []
    for p in results.get("paired") or []:
        ci = f" [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" if p.get("ci95") else ""
        mean = "–" if p["mean"] is None else f"{p['mean']:+.3f}{ci}"
        rows.append(
            [
                p["model"],
                p["against"],
                p["column"],
                mean,
                f"{p['wins']}/{p['n']}",
                "yes" if p["measurable"] else "no",
                " ".join(f"{d:+.3f}" for d in p["per_seed"]),
            ]
        )
    return rows


def lever_notes(results: dict) -> list[str]:
    """One sentence per lever row kind present in ``results``: what the row is and what it is paired with."""
    cfg, models = results["config"], list(results["models"])
    notes = {
        "+ AdaBN": '"+ AdaBN": the model with BatchNorm statistics re-estimated on each unseen site\'s own images '
        "(no labels), against the model without, at the unseen sites.",
        "+ finetune": f'"+ finetune": each training site\'s model after {cfg.get("finetune_epochs", 0)} more epoch(s) '
        "on its own training patients at a tenth of the learning rate (beyond the matched budget); at "
        "unseen sites it is the model without.",
        "+ equalize": '"+ equalize": the same arm with the model\'s histogram-equalisation input layer (smallcnn-eq; '
        "same budget), against the arm without it, at the training sites and the unseen ones.",
        "+ scanner-aug": '"+ scanner-aug": the same arm with every site\'s training images randomly re-imaged as '
        "another scanner might (exposure field, collimator borders, blur, contrast curve, noise; "
        f"strength {cfg.get('scanner_augment_lever', 0)}; same budget), against the arm without it; "
        '"+ equalize + scanner-aug" also against "+ equalize", for what the augmentation adds.',
        "+ momentum": f'"+ momentum": the same strategy with the server stepping with momentum '
        f"{cfg.get('server_momentum_lever', 0)} on the averaged update (Flower's FedAvgM; same budget), "
        "against the strategy without it.",
        "+ carried optimizer": '"+ carried optimizer": the same strategy with each site\'s AdamW moments carried from '
        "its previous round instead of a fresh optimizer every round (site_optimizer: carry; "
        'kept at the site; same budget), against the strategy without it; "+ momentum + '
        'carried optimizer" also against "+ momentum".',
        "+ round average": f'"+ round average": the same run\'s published model taken as the mean of its last '
        f"{cfg.get('average_rounds', 0)} rounds' global models instead of the last one "
        "(average_last_rounds; no extra training), against the run's last model.",
    }
    return [text for key, text in notes.items() if any(key in m for m in models)]


PAIRED_HEADER = ["model", "against", "test set", "mean difference [95 % CI]", "seeds ahead", "measurable", "per seed"]


def bar_chart(results: dict, path: Path) -> Path:
    """Mean score over site test sets (± sd over seeds) and the score on each unseen site, per model."""
    models = list(results["models"])
    unseen = [c for c in results["columns"] if not c.endswith(" test")]
    series = [("site test sets (mean)", [results["models"][m]["site_mean"] for m in models])]
    series += [(u, [results["matrix"][m][u] for m in models]) for u in unseen]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(models) + 2), 4))
    width = 0.8 / len(series)
    for i, (label, cells) in enumerate(series):
        xs = [j + i * width for j in range(len(models))]
        ax.bar(xs, [c["mean"] or 0 for c in cells], width, yerr=[c["sd"] or 0 for c in cells], label=label, capsize=2)
    pooled = results["models"].get("pooled", {}).get("site_mean", {}).get("mean")
    if pooled:
        ax.axhline(pooled, color="grey", linestyle="--", linewidth=1, label="pooled (site mean)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, rotation=30, ha="right")
    ax.set_ylim(0.4 if results.get("metric", "auc") == "auc" else 0.0, 1.0)
    ax.set_ylabel(metric_title(results))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heat_map(results: dict, path: Path) -> Path:
    """The cross-site matrix: models (rows) × test sites (columns), mean score over seeds."""
    models, cols = list(results["matrix"]), results["columns"]
    values = [[(results["matrix"][m].get(c) or {}).get("mean") or float("nan") for c in cols] for m in models]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 3, 0.45 * len(models) + 1.5))
    low = 0.5 if results.get("metric", "auc") == "auc" else 0.0
    im = ax.imshow(values, cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(
                j,
                i,
                "–" if v != v else f"{v:.2f}",
                ha="center",
                va="center",
                color="white" if v < low + 0.6 * (1 - low) else "black",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, label=metric_title(results))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _summary_html(models: dict, esc) -> str:  # noqa: ANN001 - html.escape
    """A label's summary: per model the site-test mean ± sd, its ratio to pooled and each unseen site."""
    unseen = list(next(iter(models.values()))["unseen"]) if models else []
    head = "".join(f"<th>{esc(u)}</th>" for u in unseen)
    rows = "".join(
        f"<tr><td>{esc(m)}</td><td>{_fmt(r['site_mean'])}</td><td>{r['ratio_to_pooled'] or '–'}</td>"
        + "".join(f"<td>{_fmt(r['unseen'][u])}</td>" for u in unseen)
        + "</tr>"
        for m, r in models.items()
    )
    return f"<table><tr><th>model</th><th>site test sets</th><th>× pooled</th>{head}</tr>{rows}</table><p></p>"


def write_report(results: dict, out: Path) -> Path:
    """``report.html`` (tables + the two charts) next to ``results.json``."""
    out = Path(out)
    bar, heat = bar_chart(results, out / chart_name(results)), heat_map(results, out / "cross-site-matrix.png")
    cfg, cols = results["config"], results["columns"]
    esc = html.escape
    title = esc(metric_title(results))
    label_models = results.get("metric_models") or {}
    per_label = "".join(
        f"<h3>{esc(metric_title(results, metric))}</h3>"
        + (_summary_html(label_models[metric], esc) if metric in label_models else "")
        + f"<table><tr><th>model</th>{''.join(f'<th>{esc(c)}</th>' for c in cols)}</tr>"
        + "".join(
            f"<tr><td>{esc(m)}</td>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in cols) + "</tr>"
            for m, row in matrix_.items()
        )
        + "</table>"
        for metric, matrix_ in (results.get("metric_matrices") or {}).items()
    )
    kind = cfg.get("task_type") or "classification"
    size = cfg["image_size"]
    task = (
        f"{'3D ' if kind == 'segmentation3d' else ''}segmentation of {esc(', '.join(cfg.get('labels') or []))}"
        if kind.startswith("segmentation")
        else "multilabel classification"
        if kind == "multilabel"
        else "classification"
    )
    if cfg.get("task_options"):
        task += f" ({esc(', '.join(f'{k} {v}' for k, v in cfg['task_options'].items()))})"
    shape = f"{size}³ patches" if kind == "segmentation3d" else f"{size}×{size}"
    rows = "".join(
        f"<tr><td>{esc(m)}</td><td>{_fmt(r['site_mean'])}</td><td>{r['ratio_to_pooled'] or '–'}</td>"
        + "".join(f"<td>{_fmt(r['unseen'][u])}</td>" for u in r["unseen"])
        + "</tr>"
        for m, r in results["models"].items()
    )
    unseen = [c for c in cols if not c.endswith(" test")]
    matrix = "".join(
        f"<tr><td>{esc(m)}</td>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in cols) + "</tr>"
        for m, row in results["matrix"].items()
    )
    paired = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in paired_rows(results))
    v = results.get("verdict", {})
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>FedRad generalization benchmark</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Generalization across hospitals</h1>
<p>{esc(results["engine"])}. {cfg["seeds"]} seed(s); matched budget: {cfg["rounds"]} rounds × {cfg["local_epochs"]} local
epochs federated = {cfg["rounds"] * cfg["local_epochs"]} epochs for pooled and local-only models. Model {esc(cfg["model"])},
{shape}, {task}. Test sets (images): {esc(_test_sets(results))}. {title} mean ± sd over seeds.</p>
<h2>Summary</h2>
<p>Best federated strategy: <b>{esc(str(v.get("best_federated")))}</b>, {v.get("ratio_to_pooled")} × pooled mean {title} over site
test sets. Beats each site's local-only model on that site's test set: {esc(str(v.get("beats_local_on_own_test")))};
on the unseen site(s): {esc(str(v.get("beats_local_on_unseen")))}.{_levers_sentence(v.get("with_levers"))}{_levers_sentence(v.get("for_unseen"), "Best federated model at the unseen site(s)")}</p>
<table><tr><th>model</th><th>mean {title}, site test sets</th><th>× pooled</th>{"".join(f"<th>{esc(u)}</th>" for u in unseen)}</tr>{rows}</table>
<p><img src="{bar.name}" alt="{title} by model"></p>
<h2>Cross-site matrix (rows: models, columns: test sites)</h2>
<table><tr><th>model</th>{"".join(f"<th>{esc(c)}</th>" for c in cols)}</tr>{matrix}</table>
<p><img src="{heat.name}" alt="cross-site matrix"></p>
<h2>Paired differences, seed by seed</h2>
<p>Both models of a row share each seed's split, initial weights and shuffling, so their difference per seed is
sharper than the two means ± sd. Measurable: the 95 % interval (Student's t over seeds) excludes 0.
{esc(" ".join(lever_notes(results)))}</p>
<table><tr>{"".join(f"<th>{esc(h)}</th>" for h in PAIRED_HEADER)}</tr>{paired}</table>{"<h2>Per segment label</h2>" + per_label if per_label else ""}
<p>FedBN is scored at each training site with that site's own normalisation layers and at unseen sites with the averaged ones.
Seconds per arm: {esc(str(results.get("seconds")))}.</p></body></html>"""
    path = out / "report.html"
    path.write_text(doc)
    return path
