"""Scan a site's CT/MR export: every series usable (its preprocessed volume cached) or rejected with a reason.

The volume counterpart of :mod:`shared.imaging.scan`. One pass:

1. every file's header (never its pixels) becomes slice records (:mod:`shared.imaging.slice_records`), cached by
   content hash in the :class:`~shared.imaging.volume_store.VolumeStore`, so a rescan of an unchanged export
   reads no DICOM; SEG and RTSTRUCT files are set aside as label objects, other objects are counted by modality;
2. the records are grouped and checked as series (:mod:`shared.imaging.series_plan`), still from headers only;
3. each clean series not yet cached is decoded (:func:`shared.imaging.volume.assemble`), preprocessed
   (:func:`shared.imaging.volume_preprocess.preprocess_volume`: target spacing, CT window or MR normalisation) and
   stored as one uint16 array (:mod:`shared.imaging.pack`'s quantization), so memory holds one series at a time.

A series' cache key is the hash of its files' contents and of the preprocessing, so a changed or added slice is a
new series, and a series is never stored half: the store writes whole arrays only. Labels are
:func:`attach_labels`' business (a segmentation task asks for them by segment name).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.imaging.pack import to_pack
from shared.imaging.reasons import EXPLANATIONS, Reason, Rejection
from shared.imaging.scan import list_files
from shared.imaging.series_plan import PlanParams, SeriesKey, SeriesPlan, SeriesRejection, group_key, plan_series
from shared.imaging.slice_records import SliceRecord, read_slice_records
from shared.imaging.volume import assemble, read_dataset
from shared.imaging.volume_geometry import VolumeGeometry
from shared.imaging.volume_preprocess import VolumeParams, preprocess_volume, resample
from shared.imaging.volume_store import StoredArray, VolumeStore

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
VOLUME_MODALITIES = ("CT", "MR")
LABEL_MODALITIES = ("SEG", "RTSTRUCT")
STORE_VERSION = "s1"  # bump when what is stored for a series changes


@dataclass
class SeriesEntry:
    """One series of the export: usable (its model input in the store) or rejected, with every file involved."""

    series_uid: str
    usable: bool
    files: tuple[str, ...]  # relative to the data folder
    modality: str = ""  # the DICOM one: CT or MR
    reason: str = ""
    detail: str = ""
    notes: tuple[str, ...] = ()
    patient_id: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_uids: frozenset[str] = frozenset()
    slices: int = 0
    plane: str = ""  # axial, coronal, sagittal or oblique (how it was acquired)
    native: VolumeGeometry | None = None  # canonical, before resampling (labels are read onto it)
    geometry: VolumeGeometry | None = None  # the model input's grid
    key: str = ""  # the store key of the model input
    image: StoredArray | None = None  # uint16, quantized [0, 1]

    @property
    def folder(self) -> str:
        """The folder holding the series' first file (a NIfTI manifest may name a series by it)."""
        return str(Path(self.files[0]).parent.as_posix()) if self.files else ""

    def summary(self) -> dict:
        """What ``fedrad-site check`` lists for the series (site-local: paths and UIDs stay at the site)."""
        out = {
            "series_uid": self.series_uid,
            "usable": self.usable,
            "modality": self.modality,
            "files": len(self.files),
            "first_file": self.files[0] if self.files else "",
            "slices": self.slices,
        }
        if self.native is not None:
            out["spacing_mm"] = [round(s, 3) for s in self.native.spacing]
            out["shape"] = list(self.native.shape)
            out["acquisition"] = self.plane
        if self.geometry is not None:
            out["model_shape"] = list(self.geometry.shape)
        if not self.usable:
            out.update(reason=self.reason, detail=self.detail)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class FileProblem:
    """A file that is neither a slice of a series nor a label object, or could not be read."""

    path: str
    reason: str
    detail: str


@dataclass
class VolumeScan:
    """The outcome of scanning one export for series."""

    data_dir: Path
    series: list[SeriesEntry]
    label_files: list[str]  # SEG and RTSTRUCT, relative paths
    other_modalities: dict[str, int]  # objects of no volume modality (CR, DX, SR, ...) by Modality
    problems: list[FileProblem]
    store: VolumeStore
    assembled: int = 0
    cached: int = 0

    @property
    def usable(self) -> list[SeriesEntry]:
        return [s for s in self.series if s.usable]

    @property
    def rejected(self) -> list[SeriesEntry]:
        return [s for s in self.series if not s.usable]

    def to_json(self) -> dict:
        by_reason = Counter(s.reason for s in self.rejected)
        return {
            "series": {"found": len(self.series), "usable": len(self.usable), "rejected": len(self.rejected)},
            "modalities": dict(Counter(s.modality or "?" for s in self.usable).most_common()),
            "rejected_by_reason": {
                reason: {"count": n, "explanation": EXPLANATIONS[Reason(reason)]}
                for reason, n in by_reason.most_common()
            },
            "series_list": [s.summary() for s in sorted(self.series, key=lambda s: s.files[:1])],
            "label_files": len(self.label_files),
            "other_objects": self.other_modalities,
            "file_problems": [asdict(p) for p in self.problems],
            "cache": {"assembled": self.assembled, "cached": self.cached, "warning": self.store.warning},
        }


def acquisition_plane(acquisition: VolumeGeometry) -> str:
    """axial, coronal, sagittal or oblique: the patient axis the slices step along (an acquisition-order
    geometry: array axis 0 is the slice axis). For people reading the check, not used by anything."""
    step = np.abs(acquisition.directions[:, 0])  # LPS components of the slice direction
    if step.max() < 0.99:
        return "oblique"
    return ("sagittal", "coronal", "axial")[int(step.argmax())]


# -- headers -----------------------------------------------------------------------------------------
def _records_to_json(records: Sequence[SliceRecord]) -> list[dict]:
    return [asdict(r) for r in records]


def _records_from_json(entries: list[dict]) -> list[SliceRecord]:
    out = []
    for e in entries:
        for name in ("image_type", "position", "orientation", "pixel_spacing"):
            if e.get(name) is not None:
                e[name] = tuple(e[name])
        out.append(SliceRecord(**e))
    return out


def _file_sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_headers(
    data_dir: Path, store: VolumeStore, on_progress: ProgressFn | None = None
) -> tuple[dict[str, str], list[SliceRecord], list[str], Counter, list[FileProblem]]:
    """(path → sha, slice records, label files, other modalities, problems) for every file of the export."""
    files, unlisted = list_files(data_dir)
    problems = [FileProblem(r.path, r.reason, r.detail) for r in unlisted]
    shas: dict[str, str] = {}
    records: list[SliceRecord] = []
    labels: list[str] = []
    others: Counter = Counter()
    for done, path in enumerate(files, 1):
        rel = path.relative_to(data_dir).as_posix()
        try:
            stat = path.stat()
            sha = store.memo_sha(path, stat) or _file_sha(path)
        except OSError as exc:
            problems.append(FileProblem(rel, Reason.UNREADABLE.value, f"cannot read file: {exc.strerror or exc}"))
            continue
        entry = store.header(sha)
        if entry is None:
            entry = _header_entry(path, rel)
            store.remember(path, stat, sha, entry)
        else:
            store.remember(path, stat, sha, entry)  # the path may be new for known content
        shas[rel] = sha
        kind = entry["kind"]
        if kind == "slices":
            records.extend(_records_from_json([dict(e, path=rel) for e in entry["records"]]))
        elif kind == "label":
            labels.append(rel)
        elif kind == "other":
            others[entry["modality"] or "?"] += 1
        else:
            problems.append(FileProblem(rel, entry["reason"], entry["detail"]))
        if on_progress is not None:
            on_progress("headers", done, len(files))
    store.commit()
    return shas, records, labels, others, problems


def _header_entry(path: Path, rel: str) -> dict:
    """What one file is, from its header: slices of a volume, a label object, another object, or a rejection."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            recs = read_slice_records(path, rel)
        except Rejection as rej:
            return {"kind": "rejected", "reason": rej.reason.value, "detail": rej.detail}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a parser bug on one odd file must not stop the site
            return {"kind": "rejected", "reason": Reason.NOT_DICOM.value, "detail": f"{type(exc).__name__}"[:160]}
    modality = (recs[0].modality if recs else "").upper()
    if modality in LABEL_MODALITIES:
        return {"kind": "label", "modality": modality}
    if modality not in VOLUME_MODALITIES or not recs or not recs[0].rows:
        return {"kind": "other", "modality": modality}
    return {"kind": "slices", "records": [{k: v for k, v in r.items() if k != "path"} for r in _records_to_json(recs)]}


# -- series ------------------------------------------------------------------------------------------
def series_key(plan: SeriesPlan, shas: dict[str, str], params: VolumeParams) -> str:
    """The store key of a series' model input: its files' contents, which frames, and the preprocessing."""
    h = hashlib.sha256(f"{STORE_VERSION}|{params.cache_tag()}".encode())
    for s in plan.slices:
        h.update(f"|{shas[s.path]}:{s.frame}".encode())
    return h.hexdigest()[:32]


def _entry_from_plan(
    plan: SeriesPlan | SeriesRejection, records_by_key: dict[SeriesKey, list[SliceRecord]]
) -> SeriesEntry:
    first = (plan.slices[0] if plan.usable else records_by_key[plan.key][0]) if records_by_key.get(plan.key) else None
    entry = SeriesEntry(
        series_uid=plan.key.series_instance_uid,
        usable=plan.usable,
        files=tuple(plan.files),
        modality=(first.modality if first else "").upper(),
        notes=tuple(plan.notes),
        study_uid=first.study_instance_uid if first else "",
        frame_of_reference_uid=plan.key.frame_of_reference_uid,
    )
    if plan.usable:
        entry.slices = len(plan.slices)
        entry.native = plan.canonical_geometry
        entry.plane = acquisition_plane(plan.geometry)
        entry.sop_uids = frozenset(s.sop_instance_uid for s in plan.slices)
    else:
        entry.reason, entry.detail = plan.reason.value, plan.detail
    return entry


def scan_series(
    data_dir: Path,
    params: VolumeParams,
    cache_dir: Path | None = None,
    plan_params: PlanParams | None = None,
    on_progress: ProgressFn | None = None,
    workers: int | None = None,
) -> VolumeScan:
    """Scan ``data_dir`` for CT/MR series; never raises for file content, only for a missing data folder.

    ``workers``: processes assembling series (default :func:`assembly_workers`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist or is not a folder")
    store = VolumeStore(cache_dir)
    shas, records, label_files, others, problems = read_headers(data_dir, store, on_progress)
    by_key: dict[SeriesKey, list[SliceRecord]] = {}
    for rec in records:
        by_key.setdefault(group_key(rec), []).append(rec)
    plans = plan_series(records, plan_params)
    scan = VolumeScan(data_dir, [], label_files, dict(others.most_common()), problems, store)
    todo: list[tuple[SeriesEntry, SeriesPlan]] = []
    for plan in plans:
        entry = _entry_from_plan(plan, by_key)
        scan.series.append(entry)
        if isinstance(plan, SeriesPlan):
            _patient(entry, data_dir)
            entry.key = series_key(plan, shas, params)
            stored = store.get(entry.key, "image")
            if stored is None:
                todo.append((entry, plan))
            else:
                _attach(entry, stored)
                scan.cached += 1
    n_workers = assembly_workers([p for _, p in todo]) if workers is None else max(1, workers)
    built = _build_all([p for _, p in todo], data_dir, params, n_workers)
    for done, ((entry, _), result) in enumerate(zip(todo, built), 1):
        if isinstance(result, Rejection):
            entry.usable, entry.reason, entry.detail = False, result.reason.value, result.detail
        else:
            model_input, meta = result
            _attach(entry, store.put(entry.key, "image", model_input, meta))
            scan.assembled += 1
        if on_progress is not None:
            on_progress("series", done, len(todo))
    return scan


def _attach(entry: SeriesEntry, stored: StoredArray) -> None:
    entry.image = stored
    entry.geometry = VolumeGeometry(stored.shape, np.asarray(stored.meta["affine"]), entry.frame_of_reference_uid)


def build_model_input(plan: SeriesPlan, data_dir: str, params: VolumeParams) -> tuple[np.ndarray, dict] | Rejection:
    """Decode, assemble and preprocess one series: (uint16 model input, store metadata), or why not.

    Runs in worker processes: plain picklable values in and out, never raises for file content."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            volume = assemble(plan, open_dataset=lambda p: read_dataset(str(Path(data_dir) / p)))
            model_input, geometry = preprocess_volume(volume.array, volume.geometry, volume.dicom_modality, params)
    except Rejection as rej:
        return Rejection(rej.reason, rej.detail)  # without its header: it crosses a process boundary
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a decoder bug on one odd series must not stop the site
        return Rejection(Reason.CORRUPT_PIXEL_DATA, f"{type(exc).__name__}: {str(exc)[:160]}")
    meta = {"affine": geometry.affine.tolist(), "frame_of_reference_uid": geometry.frame_of_reference_uid}
    return to_pack(model_input), meta


def assembly_workers(plans: Sequence[SeriesPlan]) -> int:
    """Processes to assemble ``plans`` with: every core this process may use, fewer when memory is short.

    Each worker holds one series at a time: its float32 volume, the resampled copy and the uint16 result, about
    3× the largest series' float32 size; the workers together may use half of the memory now available."""
    import psutil

    from shared.hardware import usable_cores

    if len(plans) < 2:
        return 1
    largest = max(len(p.slices) * p.geometry.shape[1] * p.geometry.shape[2] * 4 for p in plans)
    by_memory = int(psutil.virtual_memory().available * 0.5 // max(3 * largest, 1))
    return max(1, min(usable_cores(), len(plans), by_memory))


def _build_all(plans: list[SeriesPlan], data_dir: Path, params: VolumeParams, workers: int):  # noqa: ANN202
    if workers <= 1:
        for plan in plans:
            yield build_model_input(plan, str(data_dir), params)
        return
    # fork: workers start in milliseconds; they run pydicom, NumPy and SciPy only (as shared.imaging.scan's)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(build_model_input, plans, [str(data_dir)] * len(plans), [params] * len(plans))


def _patient(entry: SeriesEntry, data_dir: Path) -> None:
    """PatientID of the series (the split groups by it): read once from its first file's header."""
    import pydicom

    try:
        ds = pydicom.dcmread(data_dir / entry.files[0], stop_before_pixels=True, specific_tags=["PatientID"])
        entry.patient_id = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # noqa: BLE001 - the header was read before; a vanished file is caught at assembly
        entry.patient_id = ""


# -- labels ------------------------------------------------------------------------------------------
@dataclass
class SeriesLabels:
    """Label maps on the model-input grid of each usable series that has them, and the label report."""

    maps: dict[str, StoredArray] = field(default_factory=dict)  # series uid → uint8 label map
    report: dict = field(default_factory=dict)  # VolumeLabelReport.to_json()
    sources: dict[str, str] = field(default_factory=dict)  # series uid → the label file (or manifest) it came from


def attach_labels(scan: VolumeScan, labels: Sequence[str], manifest: Path | None = None) -> SeriesLabels:
    """Each usable series' labels for ``labels`` (value i + 1 is labels[i]), from the export's SEG/RTSTRUCT
    objects or, when given, the NIfTI manifest; read on the series' native grid (nothing interpolated there),
    then resampled by nearest neighbour to the model input's grid and stored beside it."""
    from shared.imaging.volume_labels import SeriesTarget
    from shared.imaging.volume_labels_match import match_volume_labels
    from shared.imaging.volume_labels_nifti import match_volume_mask_manifest

    usable = [s for s in scan.usable if s.native is not None]
    targets = [SeriesTarget(s.native, s.series_uid, s.sop_uids, s.frame_of_reference_uid, s.folder) for s in usable]
    if manifest is not None:
        report = match_volume_mask_manifest(targets, Path(manifest), list(labels))
    else:
        paths = [scan.data_dir / p for p in scan.label_files]
        report = match_volume_labels(targets, paths, list(labels), scan.data_dir)
    out = SeriesLabels(report=report.to_json())
    out.sources = {uid: r.source for uid, r in report.results.items() if r.label_map is not None}
    names = "|".join(labels)
    for entry in usable:
        label_map = report.label_maps.get(entry.series_uid)
        if label_map is None or entry.geometry is None:  # no labels (reported), or no model input to pair with
            continue
        key = hashlib.sha256(f"{entry.key}|{names}|{hashlib.sha256(label_map.tobytes()).hexdigest()}".encode())
        key_s = key.hexdigest()[:32]
        stored = scan.store.get(key_s, "labels")
        if stored is None:
            assert entry.native is not None and entry.geometry is not None
            resampled = _on_model_grid(label_map, entry.native, entry.geometry)
            stored = scan.store.put(key_s, "labels", resampled.astype(np.uint8), {"series_key": entry.key})
        out.maps[entry.series_uid] = stored
    return out


def _on_model_grid(label_map: np.ndarray, native: VolumeGeometry, model: VolumeGeometry) -> np.ndarray:
    """A native-grid label map on the model input's grid (nearest neighbour), exactly its shape."""
    if native.shape == model.shape and np.allclose(native.affine, model.affine):
        return label_map
    spacing = model.spacing
    resampled, geometry = resample(label_map, native, spacing, labels=True)
    if resampled.shape != model.shape:  # same rule as the image's resampling: shapes agree; guard anyway
        fixed = np.zeros(model.shape, dtype=resampled.dtype)
        common = tuple(slice(0, min(a, b)) for a, b in zip(resampled.shape, model.shape))
        fixed[common] = resampled[common]
        resampled = fixed
    return resampled


__all__ = [
    "FileProblem",
    "SeriesEntry",
    "SeriesLabels",
    "VolumeScan",
    "attach_labels",
    "scan_series",
]
