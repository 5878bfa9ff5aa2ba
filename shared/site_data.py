"""One call from a site's configuration to a QC report and a trainable dataset.

``check_site`` scans the export and joins the labels; ``load_site_dataset``
does the same and points the dataset at the cached images (nothing is loaded:
:class:`shared.packed.PackedImages`). The report (``SiteCheck.to_json``)
holds counts, relative paths and keys the site already owns, nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.config import ConfigError, SiteDataConfig
from shared.imaging import EXPLANATIONS, Reason, ScanResult, scan_site
from shared.imaging.scan import ProgressFn
from shared.labels import JoinResult, join_labels, read_labels, record_key
from shared.packed import from_scan
from shared.tasks.classification.dataset import SiteDataset

MIN_CLASSES_TO_TRAIN = 2


@dataclass
class SiteCheck:
    """The outcome of scanning and label-joining one site."""

    config: SiteDataConfig
    scan: ScanResult
    join: JoinResult

    def class_counts(self) -> dict[str, int]:
        counts = Counter(idx for _, idx in self.join.matched)
        return {c: counts.get(i, 0) for i, c in enumerate(self.config.classes)}

    @property
    def ok(self) -> bool:
        return sum(1 for n in self.class_counts().values() if n > 0) >= MIN_CLASSES_TO_TRAIN

    def verdict(self) -> str:
        counts = self.class_counts()
        present = [c for c, n in counts.items() if n > 0]
        if self.ok:
            return f"ready to train: {sum(counts.values())} labelled images in {len(present)} classes"
        return (
            f"cannot train: labelled usable images in {len(present)} class(es) {present}, "
            f"need at least {MIN_CLASSES_TO_TRAIN} of {self.config.classes}"
        )

    def to_json(self) -> dict:
        usable = self.scan.usable
        rejected = self.scan.rejected
        by_reason = Counter(r.reason for r in rejected)
        return {
            "ok": self.ok,
            "verdict": self.verdict(),
            "data": str(self.config.data),
            "labels_file": str(self.config.labels),
            "key": self.config.key,
            "images": {"files": len(self.scan.records), "usable": len(usable), "rejected": len(rejected)},
            "classes": self.class_counts(),
            "rejected": [{"path": r.path, "reason": r.reason, "detail": r.detail} for r in rejected],
            "rejected_by_reason": {
                reason: {"count": n, "explanation": EXPLANATIONS[Reason(reason)]}
                for reason, n in by_reason.most_common()
            },
            "labels": {
                "rows": self.join.rows,
                "matched": len(self.join.matched),
                "problems": [p.to_dict() for p in self.join.problems],
            },
            "unlabelled_images": len(self.join.unlabelled),
            "unlabelled": self.join.unlabelled,
            "modalities": dict(Counter(r.header.modality or "?" for r in usable).most_common()),
            "manufacturers": dict(Counter(r.header.manufacturer or "?" for r in usable).most_common()),
            "matrix_sizes": dict(Counter(f"{r.header.rows}x{r.header.columns}" for r in usable).most_common()),
            "bits_stored": {str(k): v for k, v in Counter(r.header.bits_stored for r in usable).most_common()},
            "photometric": dict(Counter(r.header.photometric for r in usable).most_common()),
            "transfer_syntaxes": dict(Counter(r.header.transfer_syntax for r in usable).most_common()),
            "cache": {
                "folder": str(self.scan.cache.root) if self.scan.cache.root else None,
                "hits": self.scan.cache.hits,
                "decoded": self.scan.cache.decoded,
                "warning": self.scan.cache.warning,
            },
        }


def check_site(config: SiteDataConfig, on_progress: ProgressFn | None = None, workers: int | None = None) -> SiteCheck:
    """Scan the export and join labels. Raises ConfigError for a missing folder or unusable label file."""
    data = Path(config.data)
    if not data.exists():
        raise ConfigError(f"data folder {data} does not exist (set --data or 'data' in site.yaml)")
    if not data.is_dir():
        raise ConfigError(f"data folder {data} is not a folder")
    if config.labels is None:
        raise ConfigError(
            f"no label CSV: set 'labels' in site.yaml or pass --labels; classification needs one "
            f"(a segmentation-only site's labels are the DICOM SEGs in {data}, used by segmentation "
            "runs and models only)"
        )
    rows = read_labels(Path(config.labels), config.key, config.label_column)
    scan = scan_site(data, config.preprocess(), config.resolved_cache_dir(), on_progress, workers)
    return SiteCheck(config=config, scan=scan, join=join_labels(scan.records, rows, config.key, config.classes))


def check_label_free_site(config: SiteDataConfig) -> tuple[bool, str]:
    """(ok, verdict) of a site without a label CSV (a segmentation-only site) before it joins: an export of
    CT/MR series is checked as volumes from their headers
    (:func:`shared.tasks.segmentation3d.check.volume_readiness`: usable series and their SEG/RTSTRUCT or NIfTI
    labels), any other as radiographs with DICOM SEGs (:func:`shared.tasks.segmentation.data.check_seg_export`).
    The segment names come with each run, so neither matches segments (``fedrad-site check --segments`` does)."""
    from shared.tasks.segmentation.data import check_seg_export
    from shared.tasks.segmentation3d.check import volume_readiness

    volumes = volume_readiness(config)
    return volumes if volumes is not None else check_seg_export(config)


def build_dataset(check: SiteCheck) -> SiteDataset:
    """Every matched image as a dataset, (N, 1, *one array's shape), its images read from the cache on demand."""
    size = check.config.image_size
    records = [rec for rec, _ in check.join.matched]
    # the rank is the data's (its modality's): (S, S) for a radiograph, (D, S, S) for a volume; (S, S) if empty
    images = from_scan(check.scan, records, (size, size), workers=check.config.data_workers)
    labels, groups, keys, paths = [], [], [], []
    for rec, label in check.join.matched:
        labels.append(label)
        # Patients group the split; without a PatientID each study (or image) is its own group.
        groups.append(rec.header.patient_id or rec.header.study_instance_uid or rec.path)
        keys.append(record_key(rec, check.config.key))
        paths.append(rec.path)
    return SiteDataset(
        images=images,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=list(check.config.classes),
        groups=groups,
        keys=keys,
        paths=paths,
    )


def load_site_dataset(
    config: SiteDataConfig,
    on_progress: ProgressFn | None = None,
    workers: int | None = None,
) -> tuple[SiteDataset, SiteCheck]:
    check = check_site(config, on_progress, workers)
    return build_dataset(check), check
