"""A site's DICOM export and multi-label CSV → a :class:`MultilabelDataset`, its check, and the patient split.

The images come from the same scan and tensor cache as classification's
(:func:`shared.imaging.scan.scan_site`), so a site already checked is not
decoded again; the labels from :mod:`shared.tasks.multilabel.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.config import ConfigError, SiteDataConfig
from shared.imaging.scan import ProgressFn, ScanResult, scan_site
from shared.labels import JoinResult, record_key
from shared.packed import from_scan
from shared.splits import stratified_group_split
from shared.tasks.multilabel.dataset import MultilabelDataset
from shared.tasks.multilabel.labels import FindingJoin, join_finding_labels, read_finding_labels

MIN_CASES = 2


@dataclass
class MultilabelCheck:
    """The outcome of scanning one site and joining its multi-label CSV."""

    config: SiteDataConfig
    findings: list[str]
    scan: ScanResult
    join: FindingJoin

    def counts(self) -> dict[str, dict[str, int]]:
        """Per finding: positive / negative / uncertain / unknown labelled usable images."""
        out = {f: {"positive": 0, "negative": 0, "uncertain": 0, "unknown": 0} for f in self.findings}
        for _, values in self.join.matched:
            for f, v in zip(self.findings, values, strict=True):
                kind = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}.get(v, "unknown")
                out[f][kind] += 1
        return out

    @property
    def trainable(self) -> list[str]:
        """Findings with both a positive and a negative certain label here."""
        return [f for f, c in self.counts().items() if c["positive"] and c["negative"]]

    @property
    def ok(self) -> bool:
        return len(self.join.matched) >= MIN_CASES and bool(self.trainable)

    def verdict(self) -> str:
        n = len(self.join.matched)
        if self.ok:
            return f"ready to train: {n} labelled images, {len(self.trainable)} of {len(self.findings)} findings with positive and negative labels"
        return (
            f"cannot train: {n} labelled usable images and no finding of {self.findings} with both a positive and a "
            f"negative label; need at least {MIN_CASES} images and one such finding"
        )

    def to_json(self) -> dict:
        """``fedrad-site check``'s report: the classification check's keys, with ``findings`` for ``classes``."""
        from shared.site_data import SiteCheck

        join = JoinResult(
            [(r, 0) for r, _ in self.join.matched], self.join.problems, self.join.unlabelled, self.join.rows
        )
        report = SiteCheck(self.config, self.scan, join).to_json()
        counts = self.counts()
        report.update(
            ok=self.ok,
            verdict=self.verdict(),
            classes={f: c["positive"] for f, c in counts.items()},
            findings=counts,
        )
        return report


def check_multilabel_site(
    cfg: SiteDataConfig, findings: list[str], on_progress: ProgressFn | None = None, workers: int | None = None
) -> MultilabelCheck:
    """Scan the export and join the multi-label CSV; ConfigError for a missing folder or an unusable label file."""
    data = Path(cfg.data)
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist or is not a folder (set --data or 'data' in site.yaml)")
    if cfg.labels is None:
        raise ConfigError("no label CSV: a multi-label site needs one (set 'labels' in site.yaml or pass --labels)")
    rows = read_finding_labels(Path(cfg.labels), cfg.key, findings)
    scan = scan_site(data, cfg.preprocess(), cfg.resolved_cache_dir(), on_progress, workers)
    return MultilabelCheck(cfg, list(findings), scan, join_finding_labels(scan.records, rows, cfg.key))


def build_multilabel_dataset(check: MultilabelCheck, uncertain: str = "ignore") -> MultilabelDataset:
    """Every matched image with its finding values, the images read from the cache on demand."""
    size = check.config.image_size
    matched = check.join.matched
    images = from_scan(check.scan, [rec for rec, _ in matched], (size, size), workers=check.config.data_workers)
    groups, keys, paths = [], [], []
    for rec, _ in matched:
        groups.append(rec.header.patient_id or rec.header.study_instance_uid or rec.path)
        keys.append(record_key(rec, check.config.key))
        paths.append(rec.path)
    values = np.array([v for _, v in matched], dtype=np.float32).reshape(len(matched), len(check.findings))
    return MultilabelDataset(
        images=images,
        values=torch.from_numpy(values),
        findings=list(check.findings),
        uncertain=uncertain,
        groups=groups,
        keys=keys,
        paths=paths,
    )


def load_multilabel_site(
    cfg: SiteDataConfig, findings: list[str], uncertain: str = "ignore", on_progress: ProgressFn | None = None
) -> tuple[MultilabelDataset, MultilabelCheck]:
    check = check_multilabel_site(cfg, findings, on_progress)
    return build_multilabel_dataset(check, uncertain), check


def split_multilabel(
    data: MultilabelDataset, fraction: float, seed: int
) -> tuple[MultilabelDataset, MultilabelDataset]:
    """(train, held-out) by patient, stratified by the positive status of the site's rarest finding and the
    number of positive findings (0, 1, 2+), so both parts see positives of the finding that has fewest."""
    labels, mask = data.certain()
    positive = labels * mask
    counts = positive.sum(0)
    present = np.flatnonzero(counts > 0)
    rare = int(present[np.argmin(counts[present])]) if present.size else 0
    strata = (3 * positive[:, rare] + np.minimum(positive.sum(1), 2)).tolist() if len(data) else []
    train_idx, val_idx = stratified_group_split(strata, data.groups, fraction, seed)
    return data.subset(train_idx.tolist()), data.subset(val_idx.tolist())
