"""A site's CT/MR export → :class:`VolumeCases`: the one place the 3D task meets the site's data.

:func:`load_volume_cases` scans the export as series (:func:`shared.imaging.series_scan.scan_series`: each clean
series assembled once, canonical S-P-L, resampled to the consortium's spacing, windowed to [0, 1] and cached as
uint16), reads the labels onto each series' grid (:func:`shared.imaging.series_scan.attach_labels`: the export's
SEG/RTSTRUCT objects, or the NIfTI manifest named by site.yaml's ``masks``), and returns the labelled series as
cases read patch by patch from the cache (nothing of the site's volumes is held in memory).

The consortium's two preprocessing settings arrive as task options in one written form each
(:func:`spacing_option`, :func:`window_option`), so they travel unchanged in run configs and model files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from shared.imaging.pack import SCALE

if TYPE_CHECKING:
    from shared.config import SiteDataConfig
    from shared.imaging.volume_preprocess import VolumeParams
    from shared.tasks.segmentation3d.dataset import VolumeCases

MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0


def spacing_option(value: str) -> str:
    """``"2"`` or ``"3x1.5x1.5"`` (also with commas or spaces) → its one written form; ValueError otherwise."""
    parts = [p for p in re.split(r"[x,\s]+", str(value).strip().lower()) if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 3) or not all(MIN_SPACING_MM <= n <= MAX_SPACING_MM for n in numbers):
        raise ValueError(
            f"task.spacing must be one voxel size in mm or three (S, P, L), each {MIN_SPACING_MM}-{MAX_SPACING_MM}, "
            f"e.g. 1.5 or [3, 1.5, 1.5]; got {value!r}"
        )
    return "x".join(f"{n:g}" for n in (numbers * 3 if len(numbers) == 1 else numbers))


def window_option(value: str) -> str:
    """A CT window preset name or ``level/width`` in HU → its one written form; ValueError otherwise."""
    from shared.imaging.volume_preprocess import WINDOW_PRESETS

    text = str(value).strip().lower().replace("-", "_") if "/" not in str(value) else str(value).strip()
    if text in WINDOW_PRESETS:
        return text
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", text)
    if match and float(match.group(2)) > 0:
        return f"{float(match.group(1)):g}/{float(match.group(2)):g}"
    raise ValueError(
        f"task.window must be a CT window preset ({', '.join(WINDOW_PRESETS)}) or 'level/width' in HU, "
        f"e.g. -600/1500; got {value!r}"
    )


def volume_params(spacing: str, window: str) -> VolumeParams:
    """The preprocessing the consortium's ``spacing`` and ``window`` options describe."""
    from shared.imaging.volume_preprocess import CTWindow, VolumeParams

    sizes = tuple(float(v) for v in spacing_option(spacing).split("x"))
    win = window_option(window)
    if "/" in win:
        level, width = (float(v) for v in win.split("/"))
        return VolumeParams(target_spacing_mm=sizes, ct_window=CTWindow(level=level, width=width))
    return VolumeParams(target_spacing_mm=sizes, ct_window=win)


def load_volume_cases(
    cfg: SiteDataConfig, labels: list[str], spacing: str = "1.5", window: str = "soft_tissue"
) -> VolumeCases:
    """The site's labelled series for segments ``labels`` (value k of a label map = ``labels[k - 1]``), at the
    consortium's ``spacing`` and ``window``; unusable series and label problems are what ``fedrad-site check
    --volumes`` reports (:func:`shared.tasks.segmentation3d.check.check_volume_site`)."""
    from shared.imaging.series_scan import attach_labels, scan_series
    from shared.tasks.segmentation3d.dataset import VolumeCases

    scan = scan_series(Path(cfg.data), volume_params(spacing, window), cfg.resolved_cache_dir())
    found = attach_labels(scan, labels, cfg.masks)
    cases = [e for e in scan.usable if e.series_uid in found.maps and e.image is not None and e.geometry]
    return VolumeCases.from_arrays(
        images=[e.image for e in cases],
        label_maps=[found.maps[e.series_uid] for e in cases],
        spacing=[e.geometry.spacing for e in cases],
        labels=labels,
        groups=[e.patient_id or e.study_uid or e.series_uid for e in cases],
        case_ids=[e.folder or e.series_uid for e in cases],
        intensity_scale=1.0 / float(SCALE),
    )
