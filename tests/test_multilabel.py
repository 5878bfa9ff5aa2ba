"""Multi-label findings, unit by unit: the label CSV, the uncertainty policies, the masked loss, the figures, the
keys a site may send (guard, min_count per finding, server validation and aggregation), config and model files.

Everything here is fast (no DICOM, no training); ``tests/test_multilabel_site.py`` trains and evaluates a
synthetic site, ``tests/integration/test_multilabel_federation.py`` runs it federated over TLS.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from client.outbound_guard import guard_reply
from server.app import RunConfigError, RunSettings
from server.consortium import parse_consortium
from server.strategies.metrics import aggregate_metrics
from server.strategies.validation import validate_eval_reply
from shared.config import ConfigError, TaskConfig, parse_model
from shared.modelfile import load_model_file, save_model_file
from shared.tasks import TaskSpec, get_task
from shared.tasks.multilabel.dataset import (
    MultilabelDataset,
    masked_bce,
    nan_masked_bce,
    positive_weights,
    training_targets,
)
from shared.tasks.multilabel.evaluation import evaluate_findings, site_metrics
from shared.tasks.multilabel.labels import join_finding_labels, parse_value, read_finding_labels
from shared.tasks.multilabel.metric_keys import count_key, metric_keys
from tests.test_strategies import reply

FINDINGS = ["effusion", "nodule", "cardiomegaly"]
SPEC = TaskSpec("multilabel", tuple(FINDINGS), "smallcnn", 32, (("uncertain", "ignore"),))
NAN = math.nan


def _csv(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the label CSV
def test_finding_cells_read_as_chexpert_writes_them(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "SOPInstanceUID,Pleural Effusion,nodule,Cardiomegaly\n1.1,1.0,0,-1.0\n1.2,,1,0.0\n1.3,-1,NaN, 1 \n",
    )
    rows = read_finding_labels(path, "SOPInstanceUID", ["pleural_effusion", "nodule", "cardiomegaly"])
    got = [(r.key, r.line, r.values) for r in rows]
    assert [g[:2] for g in got] == [("1.1", 2), ("1.2", 3), ("1.3", 4)]
    assert got[0][2] == (1.0, 0.0, -1.0)
    assert math.isnan(got[1][2][0]) and got[1][2][1:] == (1.0, 0.0)  # blank = unknown; "Pleural Effusion" matched
    assert got[2][2][0] == -1.0 and math.isnan(got[2][2][1]) and got[2][2][2] == 1.0
    assert [parse_value(v) for v in ("2", "yes", "0.5")] == [None, None, None]


def test_a_bad_cell_is_named_by_file_line_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "SOPInstanceUID,effusion,nodule\n1.1,1,0\n1.2,yes,0\n1.3,0,2\n")
    with pytest.raises(ConfigError) as err:
        read_finding_labels(path, "SOPInstanceUID", ["effusion", "nodule"])
    text = str(err.value)
    assert str(path) in text and "2 finding cell(s)" in text
    assert "line 3, column 'effusion': 'yes'" in text and "line 4, column 'nodule': '2'" in text
    assert "-1 (uncertain)" in text


def test_a_missing_or_ambiguous_finding_column_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, "SOPInstanceUID,effusion,label\n1.1,1,normal\n")
    with pytest.raises(ConfigError, match="no column for finding 'nodule'.*found columns"):
        read_finding_labels(path, "SOPInstanceUID", ["effusion", "nodule"])
    both = _csv(tmp_path, "SOPInstanceUID,Lung Opacity,lung-opacity\n1.1,1,1\n", "both.csv")
    with pytest.raises(ConfigError, match="matches several columns"):
        read_finding_labels(both, "SOPInstanceUID", ["lung_opacity"])


class _Header:
    def __init__(self, uid: str) -> None:
        self.sop_instance_uid = uid


class _Record:
    def __init__(self, uid: str, usable: bool = True) -> None:
        self.header, self.path, self.usable, self.reason = _Header(uid), f"{uid}.dcm", usable, "multi-frame"


def test_the_join_reports_conflicts_blank_rows_and_missing_images(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "SOPInstanceUID,effusion,nodule\n1.1,1,0\n1.1,1,0\n1.2,1,0\n1.2,0,0\n1.3,,\n1.4,1,\n1.5,0,1\n1.6,0,0\n",
    )
    rows = read_finding_labels(path, "SOPInstanceUID", ["effusion", "nodule"])
    records = [_Record("1.1"), _Record("1.2"), _Record("1.3"), _Record("1.5", usable=False), _Record("1.7")]
    join = join_finding_labels(records, rows, "SOPInstanceUID")
    assert [(r.path, v) for r, v in join.matched] == [("1.1.dcm", (1.0, 0.0))]  # identical duplicates are fine
    reasons = {p.key: p.reason for p in join.problems}
    assert reasons == {
        "1.2": "conflicting-labels",
        "1.3": "empty-label",
        "1.4": "image-missing",
        "1.5": "image-rejected",
        "1.6": "image-missing",
    }
    assert join.unlabelled == ["1.3.dcm", "1.7.dcm"] and join.rows == 8


# ------------------------------------------------------------------ the uncertainty policy and the masked loss
VALUES = torch.tensor([[1.0, -1.0, NAN], [0.0, -1.0, 1.0], [-1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("policy", "fill"), [("ignore", NAN), ("ones", 1.0), ("zeros", 0.0)], ids=["ignore", "ones", "zeros"]
)
def test_uncertain_labels_train_as_the_consortium_chose(policy: str, fill: float) -> None:
    t = training_targets(VALUES, policy)
    uncertain = VALUES == -1
    assert torch.equal(torch.isnan(t[uncertain]), torch.full((3,), math.isnan(fill)))
    if not math.isnan(fill):
        assert bool((t[uncertain] == fill).all())
    assert torch.isnan(t[0, 2]) and t[1, 2] == 1.0 and t[2, 1] == 0.0  # blank stays unknown, certain stays as is
    with pytest.raises(ValueError, match="ignore, ones, zeros"):
        training_targets(VALUES, "maybe")


def test_masked_bce_is_the_mean_over_known_entries_only() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 3.0, 1.0], [0.1, 0.2, -2.0]], requires_grad=True)
    targets = training_targets(VALUES, "ignore")
    loss = nan_masked_bce()(logits, targets)
    known = ~torch.isnan(targets)
    expected = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert bool((logits.grad[~known] == 0).all()) and bool((logits.grad[known] != 0).all())  # masked: no gradient
    # per-finding positive weight: negatives / positives among the known targets (1 where a side is empty)
    w = positive_weights(targets)
    assert w.tolist() == [1.0, 1.0, 1.0]  # effusion 1+/1-, nodule only a negative, cardiomegaly 1+/1-
    w = positive_weights(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, NAN], [0.0, 1.0]]))
    assert w.tolist() == [3.0, 2.0]
    y = torch.tensor([[1.0, 0.0]])
    weighted = masked_bce(torch.zeros(1, 2), y, torch.ones(1, 2, dtype=torch.bool), torch.tensor([3.0, 2.0]))
    assert weighted.item() == pytest.approx((3 * math.log(2) + math.log(2)) / 2)
    none = masked_bce(logits, torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad  # a batch without one known label: no step, no NaN


def test_the_dataset_keeps_the_written_values_and_rejects_others() -> None:
    data = MultilabelDataset(torch.zeros(3, 1, 8, 8), VALUES.clone(), FINDINGS, "ones", groups=["a", "b", "c"])
    labels, mask = data.certain()
    assert mask.tolist() == [[True, False, False], [True, False, True], [False, True, True]]
    assert data.counts()["nodule"] == {"positive": 0, "negative": 1, "uncertain": 2, "unknown": 0}
    assert data.subset([2, 0]).uncertain == "ones" and data.subset([2, 0]).groups == ["c", "a"]
    assert get_task("multilabel").targets(data)[0, 1] == 1.0  # the task applies the dataset's policy
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        MultilabelDataset(torch.zeros(1, 1, 8, 8), torch.tensor([[2.0, 0.0, 0.0]]), FINDINGS)


# ------------------------------------------------------------------ the figures
def test_figures_use_certain_labels_only_and_average_to_macro_and_micro() -> None:
    rng = np.random.default_rng(0)
    values = rng.choice([1.0, 0.0, -1.0, NAN], p=[0.35, 0.45, 0.1, 0.1], size=(60, 3))
    proba = np.clip(0.5 * np.nan_to_num(values, nan=0.5) + rng.uniform(0, 0.6, size=values.shape), 0, 1)
    m = evaluate_findings(values, proba, FINDINGS, threshold=[0.5, 0.6, 0.7], n_bootstrap=200)
    for i, f in enumerate(FINDINGS):
        certain = (values[:, i] == 1) | (values[:, i] == 0)
        fig = m["per_finding"][f]
        assert fig["auc"] == pytest.approx(roc_auc_score(values[certain, i], proba[certain, i]))
        assert fig["n_positive"] + fig["n_negative"] == certain.sum()
        assert fig["n_uncertain"] == (values[:, i] == -1).sum() and fig["n_unknown"] == np.isnan(values[:, i]).sum()
        assert fig["prevalence"] == pytest.approx(values[certain, i].mean())
        called = proba[certain, i] >= [0.5, 0.6, 0.7][i]
        positive = values[certain, i] == 1
        assert fig["sensitivity"] == pytest.approx(called[positive].mean())
        assert fig["specificity"] == pytest.approx((~called[~positive]).mean())
        low, high = fig["auc_ci95"]
        assert low <= fig["auc"] <= high
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_finding"][f]["auc"] for f in FINDINGS]))
    certain = (values == 1) | (values == 0)
    assert m["auc_micro"] == pytest.approx(roc_auc_score(values[certain], proba[certain]))
    assert m["auc_macro_ci95"][0] <= m["auc_macro"] <= m["auc_macro_ci95"][1]
    no_positive = values.copy()
    no_positive[no_positive[:, 1] == 1, 1] = 0
    m = evaluate_findings(no_positive, proba, FINDINGS, n_bootstrap=0)
    assert m["per_finding"]["nodule"]["auc"] is None and m["auc_macro_findings"] == 2
    assert any("nodule" in w for w in m["warnings"])


# ------------------------------------------------------------------ what a site sends, and the guard
class _Fixed(torch.nn.Module):
    """A 'model' whose logits are the given probabilities' log-odds, looked up by the image's first pixel."""

    def __init__(self, proba: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.logit(torch.tensor(proba, dtype=torch.float32).clamp(1e-4, 1 - 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def _site(n: int, positives: list[int], seed: int = 0) -> tuple[MultilabelDataset, torch.nn.Module]:
    """n cases; finding i positive in the first positives[i] cases, negative in the rest; informative scores."""
    rng = np.random.default_rng(seed)
    values = np.zeros((n, len(positives)), dtype=np.float32)
    for i, k in enumerate(positives):
        values[:k, i] = 1.0
    proba = np.clip(0.3 + 0.4 * values + rng.normal(0, 0.2, values.shape), 0.01, 0.99)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    data = MultilabelDataset(images, torch.from_numpy(values), FINDINGS[: len(positives)])
    return data, _Fixed(proba)


def test_site_metrics_are_per_finding_aggregates_and_the_guard_knows_them() -> None:
    data, model = _site(40, [15, 12, 3])  # cardiomegaly: 3 positives at this site
    m = site_metrics(model, data, seed=0, n_bootstrap=50)
    assert set(m) <= {"num-examples", "loss", *metric_keys(FINDINGS)}
    assert m["auc-effusion-examples"] == 15 and m["auc-nodule-examples"] == 12 and m["auc-cardiomegaly-examples"] == 3
    assert m["auc-macro-examples"] == 3 and m["auc-micro-examples"] == 30  # 30 positive pairs of 120
    assert m["prevalence-nodule"] == pytest.approx(12 / 40)
    g = guard_reply("evaluate", incoming={}, arrays=None, metrics=m, min_count=10, task=SPEC)
    assert not g.violations
    withheld = {d.item.removeprefix("metric:") for d in g.decisions if d.action == "withhold"}
    # min_count applies per finding: cardiomegaly's figures and count stay home, and the macro AUC that averages it
    assert withheld == {k for k in m if "cardiomegaly" in k or k.startswith("auc-macro")}
    assert {"auc-effusion", "auc-effusion-ci-low", "sensitivity-nodule", "prevalence-nodule"} <= set(g.metrics)
    assert g.metrics["auc-micro"] == m["auc-micro"] and "loss" in g.metrics
    strict = guard_reply("evaluate", incoming={}, arrays=None, metrics=m, min_count=13, task=SPEC)
    assert {k for k in strict.metrics if "nodule" in k} == set() and "auc-effusion" in strict.metrics


def test_the_guard_drops_made_up_findings_and_per_case_values() -> None:
    metrics = {
        "num-examples": 40,
        "auc-effusion": 0.8,
        "auc-effusion-examples": 15,
        "auc-heart": 0.7,  # not a finding of this task
        "auc-heart-examples": 15,
        "auc-effusion-case3": 0.9,
        "sensitivity-macro": 0.5,
        "auc-micro-ci-low": 0.4,
        "prevalence-effusion": [0.3, 0.4],
    }
    g = guard_reply("evaluate", incoming={}, arrays=None, metrics=metrics, min_count=10, task=SPEC)
    assert set(g.metrics) == {"num-examples", "auc-effusion", "auc-effusion-examples"}
    assert {d.item for d in g.violations} == {f"metric:{k}" for k in metrics} - {f"metric:{k}" for k in g.metrics}
    other = guard_reply(
        "evaluate",
        incoming={},
        arrays=None,
        metrics=metrics,
        task=TaskSpec("classification", ("a", "b"), "smallcnn", 32),
    )
    assert "auc-effusion" not in other.metrics  # no multilabel keys outside a multilabel task
    assert count_key("auc-examples") is False and count_key("auc-ci-low") is False  # classification's own keys


def test_the_server_validates_and_aggregates_per_finding_metrics() -> None:
    site_a = {
        "num-examples": 40,
        "auc-effusion": 0.9,
        "auc-effusion-examples": 15,
        "auc-effusion-ci-low": 0.8,
        "auc-effusion-ci-high": 0.95,
        "prevalence-effusion": 0.375,
        "auc-macro": 0.8,
        "auc-macro-examples": 12,
    }
    site_b = {"num-examples": 20, "auc-effusion": 0.6, "auc-effusion-examples": 10, "prevalence-effusion": 0.5}
    clean, problem = validate_eval_reply(reply(1, None, site_a).content, SPEC)
    assert problem is None and clean == site_a
    bad = validate_eval_reply(reply(1, None, {**site_b, "prevalence-effusion": 1.5}).content, SPEC)[1]
    assert "must lie in [0, 1]" in bad
    assert (
        "must not be negative"
        in validate_eval_reply(reply(1, None, {**site_b, "auc-effusion-examples": -1}).content)[1]
    )
    out = aggregate_metrics([reply(1, None, site_a).content, reply(2, None, site_b).content])
    assert out["auc-effusion"] == pytest.approx((0.9 * 15 + 0.6 * 10) / 25) and out["auc-effusion-examples"] == 25
    assert out["prevalence-effusion"] == pytest.approx((0.375 * 40 + 0.5 * 20) / 60)
    assert (
        out["auc-macro"] == pytest.approx(0.8) and "auc-effusion-ci-low" not in out
    )  # a site's own interval is never averaged


# ------------------------------------------------------------------ the consortium's description, run config, model files
def test_consortium_yaml_describes_a_multilabel_task(tmp_path: Path) -> None:
    base = {"name": "ML", "address": "127.0.0.1:9443", "rounds": 1}
    cfg = parse_consortium({**base, "task": {"type": "multilabel", "findings": FINDINGS, "uncertain": "ones"}})
    spec = cfg.task.spec()
    assert spec.outputs == tuple(FINDINGS) and dict(spec.options) == {"uncertain": "ones"}
    run = cfg.to_run_config(run_dir=tmp_path / "run")
    assert run["findings"] == ",".join(FINDINGS) and run["task-options"] == "uncertain=ones" and run["classes"] == ""
    settings = RunSettings.from_run_config(run)
    assert settings.task == spec and settings.task.options == spec.options
    with pytest.raises(RunConfigError, match="task-options"):
        RunSettings.from_run_config({**run, "task-options": "uncertain=maybe"})
    with pytest.raises(RunConfigError, match="task-options.*not used by a classification task"):
        RunSettings.from_run_config({**run, "task-type": "classification", "classes": "a,b", "findings": ""})
    default = parse_consortium({**base, "task": {"type": "multilabel", "findings": ["effusion"]}}).task.spec()
    assert dict(default.options) == {"uncertain": "ignore"}  # one finding is a task too
    import yaml

    from client.site_config import SiteFileConfig
    from server.enrollment import site_yaml_template

    bundle = SiteFileConfig.model_validate(yaml.safe_load(site_yaml_template(cfg, "st-a")))
    assert bundle.findings == FINDINGS  # the site bundle's site.yaml names the columns `check` and `start` read


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"type": "multilabel"}, "needs its findings"),
        ({"type": "multilabel", "findings": ["pleural-effusion"]}, "letters, digits"),
        ({"type": "multilabel", "findings": ["macro"]}, "not ci, examples, macro, micro"),
        ({"type": "multilabel", "findings": ["a", "a"]}, "unique"),
        ({"type": "multilabel", "findings": ["a"], "uncertain": "maybe"}, "ignore, ones, zeros"),
        ({"type": "multilabel", "findings": ["a"], "classes": ["x", "y"]}, "task.classes is not used"),
        ({"type": "classification", "uncertain": "ones"}, "task.uncertain is not used by a classification task"),
    ],
)
def test_consortium_yaml_errors_name_the_key(task: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model(TaskConfig, task, "consortium.yaml")


def test_a_multilabel_model_file_carries_findings_thresholds_and_policy(tmp_path: Path) -> None:
    spec = TaskConfig(type="multilabel", findings=FINDINGS, image_size=32, uncertain="zeros").spec()
    model = spec.build_model()
    path = tmp_path / "m.pt"
    common = dict(architecture="smallcnn", arch_kwargs={}, **spec.model_file_outputs())
    from shared.config import PreprocessConfig

    pre = PreprocessConfig(image_size=32)
    save_model_file(
        path,
        model,
        preprocess=pre,
        threshold=[0.4, 0.5, 0.6],
        provenance={"trained_by": "t", "kind": "local"},
        **common,
    )
    loaded = load_model_file(path)
    assert (loaded.task, loaded.outputs, loaded.classes) == ("multilabel", FINDINGS, [])
    assert loaded.threshold == [0.4, 0.5, 0.6] and loaded.task_options == {"uncertain": "zeros"}
    assert (
        loaded.spec == spec and loaded.spec.options == (("uncertain", "zeros"),) and loaded.task_mismatch(SPEC) is None
    )
    assert tuple(loaded.model(torch.zeros(2, 1, 32, 32)).shape) == (2, 3)
    with pytest.raises(ValueError, match="one probability in \\[0, 1\\] per output"):
        save_model_file(
            path, model, preprocess=pre, threshold=[0.4, 0.5], provenance={"trained_by": "t", "kind": "local"}, **common
        )
    assert "multilabel smallcnn" in loaded.task_mismatch(TaskSpec("classification", ("a", "b"), "smallcnn", 32))


def test_site_yaml_findings_follow_the_tasks_naming_rules(tmp_path: Path) -> None:
    from shared.config import SiteDataConfig

    with pytest.raises(ConfigError, match="site.yaml: key 'findings'.*matches pleural_effusion"):
        parse_model(SiteDataConfig, {"data": str(tmp_path), "findings": ["Pleural Effusion"]}, "site.yaml")
    assert parse_model(SiteDataConfig, {"data": str(tmp_path), "findings": FINDINGS}, "site.yaml").findings == FINDINGS
