"""Is a site's CT/MR export ready for 3D segmentation? The site's checks, before and apart from a run.

Two depths:

* :func:`volume_readiness` (``fedrad-site start``'s data check at a site without a label CSV): headers only.
  It reads every file's header into the volume cache (the first scan of a run then reads no header again),
  plans the series (:func:`shared.imaging.series_plan.plan_series`) and counts the usable CT/MR series and
  the label objects (SEG/RTSTRUCT files, or the rows of the NIfTI manifest ``masks``). No pixel is decoded
  and nothing is preprocessed: the consortium's spacing and window, and its segment names, come with each
  run. None when the export holds no CT/MR image at all (the caller then checks it as radiographs).
* :func:`check_volume_site` (``fedrad-site check --volumes``): the whole path a run takes, at the spacing and
  window given: every clean series assembled, preprocessed and cached, the labels read onto each series' grid
  for the given segment names, every rejected series and label problem with its reason.

Paths and UIDs in the report stay at the site (it is printed there, never sent).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import ConfigError

if TYPE_CHECKING:
    from shared.config import SiteDataConfig
    from shared.imaging.series_scan import ProgressFn

MIN_CASES = 2  # as the task's: a training part and a held-out part


def _data_dir(cfg: SiteDataConfig) -> Path:
    data = Path(cfg.data)
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist or is not a folder (set 'data' in site.yaml)")
    return data


def _label_source(cfg: SiteDataConfig, label_files: list[str]) -> tuple[int, str]:
    """(how many label objects, what they are) for the verdict."""
    if cfg.masks is not None:  # the NIfTI manifest wins over the export's SEG/RTSTRUCT (attach_labels)
        from shared.imaging.volume_labels_nifti import read_volume_mask_manifest

        series = {row.series for row in read_volume_mask_manifest(Path(cfg.masks))}
        return len(series), f"series named in the mask manifest {cfg.masks}"
    return len(label_files), "label object(s) (DICOM SEG / RTSTRUCT)"


def volume_readiness(cfg: SiteDataConfig, on_progress: ProgressFn | None = None) -> tuple[bool, str] | None:
    """(ok, verdict) of the export as CT/MR volumes from headers only; None when it holds no CT/MR image."""
    from shared.imaging.series_plan import plan_series
    from shared.imaging.series_scan import read_headers
    from shared.imaging.volume_store import VolumeStore

    data = _data_dir(cfg)
    _, records, label_files, _, _ = read_headers(data, VolumeStore(cfg.resolved_cache_dir()), on_progress)
    if not records:
        return None
    plans = plan_series(records)
    usable = [p for p in plans if p.usable]
    rejected = Counter(p.reason.value for p in plans if not p.usable)
    n_labels, source = _label_source(cfg, label_files)
    modalities = ", ".join(f"{n} {m}" for m, n in Counter(p.modality.upper() for p in usable).most_common())
    what = (
        f"{len(usable)} usable series ({modalities or 'none'}) of {len(plans)} and {n_labels} {source} in {data}"
        + (f"; rejected series: {', '.join(f'{n} {r}' for r, n in rejected.most_common())}" if rejected else "")
        + " (CT/MR volumes: no label CSV)"
    )
    if len(usable) >= MIN_CASES and n_labels >= MIN_CASES:
        return True, f"ready for 3D segmentation: {what}"
    return False, (
        f"cannot train 3D segmentation: {what}; need at least {MIN_CASES} usable series with labels "
        "(`fedrad-site check --volumes --segments <labels>` lists every series and label problem)"
    )


def check_volume_site(
    cfg: SiteDataConfig,
    labels: list[str],
    *,
    spacing: str = "1.5",
    window: str = "soft_tissue",
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """``fedrad-site check --volumes``: every series scanned as a run scans it (cached at ``spacing`` and
    ``window``), labels matched for ``labels`` when given; the report with ``ok`` and a ``verdict``."""
    from shared.imaging.series_scan import attach_labels, scan_series
    from shared.tasks.segmentation3d.site import volume_params

    data = _data_dir(cfg)
    try:
        params = volume_params(spacing, window)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("task.", "--")) from None
    scan = scan_series(data, params, cfg.resolved_cache_dir(), on_progress=on_progress)
    report: dict[str, Any] = {
        "data": str(data),
        "spacing_mm": list(params.target_spacing_mm),
        "window": str(window),
        **scan.to_json(),
    }
    usable = len(scan.usable)
    if labels:
        found = attach_labels(scan, labels, cfg.masks)
        report["labels"] = found.report
        for row in report["series_list"]:
            row["labels"] = found.sources.get(row["series_uid"], "")
        n = len(found.maps)
        ok = n >= MIN_CASES
        verdict = (
            f"ready for 3D segmentation: {n} of {usable} usable series have a label map with {labels}"
            if ok
            else f"cannot train 3D segmentation: {n} of {usable} usable series have a label map with {labels}, "
            f"need at least {MIN_CASES}"
        )
    else:
        n_labels, source = _label_source(cfg, scan.label_files)
        ok = usable >= MIN_CASES and n_labels >= MIN_CASES
        what = f"{usable} usable series and {n_labels} {source}"
        verdict = (
            f"ready for 3D segmentation: {what}"
            if ok
            else f"cannot train 3D segmentation: {what}; need {MIN_CASES} of each"
        ) + " (add --segments to match the labels to the series)"
    report.update(ok=ok, verdict=verdict)
    return report
