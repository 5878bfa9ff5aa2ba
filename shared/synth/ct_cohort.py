"""Write synthetic CT sites as PACS-style DICOM exports, with SEG or RTSTRUCT labels and a manifest.

Layout (mirrors the radiograph cohort's ``site-<k>/dicom/<PatientID>/<study>/``)::

    OUT/manifest.json                       the whole cohort (format :data:`MANIFEST_FORMAT`)
    OUT/site-1/manifest.json                that site's share (a site folder describes itself)
    OUT/site-1/dicom/<PatientID>/ST<hash>/SE0001/IMG0001.dcm   scout (junk: localizer), if the site exports them
                                         /SE0002/IMG0001.dcm … the axial series (Enhanced CT: one file)
                                         /SE0003/…             junk copy with a slice missing (first patient)
                                         /SE0004/…             junk copy with a slice doubled (second patient)
                                         /SE0900/SEG0001.dcm   labels as DICOM SEG, or
                                         /SE0901/RS0001.dcm    labels as RTSTRUCT (the site profile chooses)

Files are ``IMG0001.dcm`` or ``IMG0001`` (per site). Each patient has one study with one
labelled axial series; the phantom parameters of every patient are in the manifest
(:meth:`~shared.synth.ct_phantom.CTPhantom.from_dict` rebuilds ground truth anywhere).

The manifest: ``format``, ``modality`` ("CT"), ``seed``, ``size``, ``labels`` (name → value),
``sites`` (name, unseen, profile: every :class:`CTSiteProfile` field), ``patients`` (site,
patient_id, patient_index, phantom) and ``series``, one record per image series with the same
fields for all: site, unseen, patient_id, study_uid, frame_of_reference_uid, position,
series_uid, series_number, description, sop_class_uid, encoding, transfer_syntax, dir and
files (relative to ``<site>/dicom/``), n_frames, kernel, rescale [slope, intercept],
padding_hu, geometry (orientation, pixel_spacing, slice_spacing, slice_thickness, shape,
first_position, affine: the [slice, row, column] stack in instance order → LPS mm, as
:func:`~shared.imaging.volume_geometry.slice_stack_geometry` builds it; for a junk copy the
full acquisition it was cut from; none for a localizer), label (format SEG or RTSTRUCT, path,
series_uid, sop_uid, present: which segments are non-empty; none for junk) and junk (a
:data:`~shared.synth.ct_junk.JUNK_REASONS` code, or none).
Everything is a pure function of ``seed`` (UIDs too), so the same call writes
byte-identical files.

On the command line: ``fedrad-site synth OUT --modality ct``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from shared.synth.ct_acquisition import SliceGrid, axial_grid, encode_hu, outside_fov, reconstruct
from shared.synth.ct_junk import DUPLICATE_SLICE, LOCALIZER, MISSING_SLICE, build_localizer, junk_order
from shared.synth.ct_phantom import LABELS, CTPhantom, sample_ct_patient
from shared.synth.ct_profiles import CTSiteProfile, ct_cohort_profiles
from shared.synth.ct_series_writer import CTSeriesMeta, CTStudyMeta, build_ct_slices, build_enhanced_ct
from shared.synth.dicom_writer import write_dicom

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fedrad-synth-ct/1"
DEFAULT_SIZE = 48
MIN_SIZE, MAX_SIZE = 16, 128
MIN_PATIENTS = 2  # the junk copies go to the first two patients
SERIES_NUMBERS = {LOCALIZER: 1, "axial": 2, MISSING_SLICE: 3, DUPLICATE_SLICE: 4, "SEG": 900, "RTSTRUCT": 901}
LABEL_FILE = {"SEG": "SEG0001", "RTSTRUCT": "RS0001"}


@dataclass(frozen=True)
class CTSiteSummary:
    """What was written for one CT site (its manifest entries included)."""

    name: str  # folder name, e.g. "site-1" or "unseen-1"
    path: Path
    profile: str
    unseen: bool
    n_patients: int
    n_series: int  # every image series, junk included (not the label objects)
    n_junk: int
    encoding: str
    label_format: str
    bytes: int = 0
    seconds: float = 0.0
    patients: tuple[dict, ...] = field(default_factory=tuple, repr=False)
    series: tuple[dict, ...] = field(default_factory=tuple, repr=False)

    @property
    def dicom_dir(self) -> Path:
        return self.path / "dicom"


def _rng(seed: int, profile: CTSiteProfile, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(f"ct:{profile.name}".encode()), *extra])


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["fedrad-synth-ct", *(str(p) for p in parts)])


def profile_record(profile: CTSiteProfile) -> dict:
    """The manifest's description of a site profile (JSON-ready)."""
    d = asdict(profile)
    d["transfer_syntax"] = str(profile.transfer_syntax)
    d["bits_stored"] = profile.bits_stored
    return d


def _grid_record(grid: SliceGrid) -> dict:
    return {
        "orientation": list(grid.orientation),
        "pixel_spacing": list(grid.pixel_spacing),
        "slice_spacing": round(grid.spacing, 4),
        "slice_thickness": grid.thickness,
        "shape": [grid.n_slices, grid.rows, grid.columns],
        "first_position": [float(v) for v in grid.positions[0]],
        "affine": grid.geometry().affine.round(4).tolist(),  # [slice, row, column] in instance order → LPS mm
    }


class _SiteWriter:
    """Writes one site's patients; collects their manifest records."""

    def __init__(self, out_dir: Path, profile: CTSiteProfile, seed: int, size: int, unseen: bool) -> None:
        self.site = out_dir.name  # the folder: what "site" means in the manifest (a profile name may differ)
        self.dicom_dir = out_dir / "dicom"
        self.profile, self.seed, self.size, self.unseen = profile, seed, size, unseen
        self.suffix = ".dcm" if profile.dcm_suffix else ""
        self.bytes = 0
        self.patients: list[dict] = []
        self.series: list[dict] = []

    def _write(self, rel: Path, ds: Dataset) -> str:
        self.bytes += write_dicom(self.dicom_dir / rel, ds)
        return rel.as_posix()

    def _acquire(self, rng: np.random.Generator, pidx: int) -> tuple[CTPhantom, SliceGrid, np.ndarray, dict]:
        """Draw the patient, place the scan, reconstruct and encode: (phantom, grid, stored pixels, label masks)."""
        p = self.profile
        shape = p.matrix(self.size)
        origin = (rng.uniform(-10.0, 10.0), rng.uniform(-15.0, 15.0), rng.uniform(-400.0, -100.0))
        scan_z = float(rng.uniform(-20.0, 10.0))  # scan centre in the phantom's frame (0 = liver dome)
        half = 0.8 * (shape[0] - 1) * p.slice_spacing_mm / 2
        phantom = sample_ct_patient(rng, p.lesions, (scan_z - half, scan_z + half), origin)
        centre = (round(rng.uniform(-8.0, 8.0), 1), round(rng.uniform(-8.0, 8.0), 1), phantom.origin[2] + scan_z)
        grid = axial_grid(
            p.position(pidx), shape, p.fov_mm, p.slice_spacing_mm, p.slice_thickness_mm, centre, p.reverse_scan
        )
        hu = reconstruct(phantom, grid, p.kernel, rng)
        lo, hi = p.stored_range
        stored = encode_hu(hu, p.rescale_slope, p.rescale_intercept, lo, hi, np.int16 if p.signed else np.uint16)
        if p.circular_fov:
            stored[:, outside_fov(grid, p.fov_mm)] = round((p.padding_hu - p.rescale_intercept) / p.rescale_slope)
        return phantom, grid, stored, phantom.masks(grid.points())

    def _study(self, rng: np.random.Generator, pidx: int) -> CTStudyMeta:
        p, seed = self.profile, self.seed
        pid = f"{p.id_prefix}{(seed * 7919 + (pidx + 1) * 104729) % 10**7:07d}"
        birth = date(1935, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 65)))
        when = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 5)))
        return CTStudyMeta(
            patient_id=pid,
            patient_name=f"SYNTHETIC^{p.id_prefix}{pidx + 1:04d}",
            birth_date=birth.strftime("%Y%m%d"),
            sex="F" if rng.random() < 0.5 else "M",
            study_uid=_uid(seed, p.name, pid, "study"),
            accession=f"{p.id_prefix}{seed % 1000:03d}{pidx + 1:06d}",
            study_date=when.strftime("%Y%m%d"),
            study_time=f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
            study_id="1",
            frame_of_reference_uid=_uid(seed, p.name, pid, "frame-of-reference"),
        )

    def patient(self, pidx: int, n_patients: int) -> None:
        """One patient's study: scout (if the site exports them), labelled axial series, junk copies."""
        rng = _rng(self.seed, self.profile, pidx)
        position = self.profile.position(pidx)
        phantom, grid, stored, masks = self._acquire(rng, pidx)
        study = self._study(rng, pidx)
        pid, study_uid = study.patient_id, study.study_uid
        study_dir = Path(pid) / ("ST" + hashlib.sha1(study_uid.encode()).hexdigest()[:8].upper())
        self.patients.append(
            {"site": self.site, "patient_id": pid, "patient_index": pidx, "phantom": phantom.to_dict()}
        )
        base = {
            "site": self.site,
            "unseen": self.unseen,
            "patient_id": pid,
            "study_uid": study_uid,
            "frame_of_reference_uid": study.frame_of_reference_uid,
            "position": position,
        }
        if self.profile.localizers:
            self._localizer(phantom, grid, study, study_dir, position, base)
        sources, files = self._axial(stored, grid, study, study_dir, position, "axial", None)
        label = self._label(sources, grid, masks, study, study_dir)
        self.series.append(self._record(base, "axial", sources[0], grid, files, label, None))
        junk = ([MISSING_SLICE] if pidx == 0 else []) + ([DUPLICATE_SLICE] if pidx == min(1, n_patients - 1) else [])
        for reason in junk:
            order = junk_order(reason, grid.n_slices)
            sources, files = self._axial(stored, grid, study, study_dir, position, reason, order)
            self.series.append(self._record(base, reason, sources[0], grid, files, None, reason))

    def _series_meta(self, study: CTStudyMeta, kind: str, n_files: int, description: str) -> CTSeriesMeta:
        tag = (self.seed, self.profile.name, study.patient_id, kind)
        return CTSeriesMeta(
            series_uid=_uid(*tag, "series"),
            series_number=SERIES_NUMBERS[kind],
            description=description,
            sop_uids=tuple(_uid(*tag, "instance", i) for i in range(n_files)),
            irradiation_uid=_uid(*tag, "irradiation"),
        )

    def _localizer(
        self, phantom: CTPhantom, grid: SliceGrid, study: CTStudyMeta, study_dir: Path, position: str, base: dict
    ) -> None:
        meta = self._series_meta(study, LOCALIZER, 2, "SCOUT")
        centre = np.array([grid.centre[0], grid.centre[1], float(np.mean(grid.positions[:, 2]))])
        dss = build_localizer(phantom, self.size, centre, self.profile, study, meta, position)
        folder = study_dir / f"SE{meta.series_number:04d}"
        files = [self._write(folder / f"IMG{i + 1:04d}{self.suffix}", ds) for i, ds in enumerate(dss)]
        self.series.append(
            {
                **base,
                "series_uid": meta.series_uid,
                "series_number": meta.series_number,
                "description": meta.description,
                "sop_class_uid": str(dss[0].SOPClassUID),
                "encoding": "classic",
                "transfer_syntax": str(dss[0].file_meta.TransferSyntaxUID),
                "dir": folder.as_posix(),
                "files": files,
                "n_frames": len(dss),
                "kernel": str(dss[0].ConvolutionKernel),
                "rescale": [float(dss[0].RescaleSlope), float(dss[0].RescaleIntercept)],
                "padding_hu": None,
                "geometry": None,  # two projections, no slice stack
                "label": None,
                "junk": LOCALIZER,
            }
        )

    def _axial(
        self,
        stored: np.ndarray,
        grid: SliceGrid,
        study: CTStudyMeta,
        study_dir: Path,
        position: str,
        kind: str,
        order: list[int] | None,
    ) -> tuple[list[Dataset], list[str]]:
        p = self.profile
        n = grid.n_slices if order is None else len(order)
        enhanced = p.encoding == "enhanced"
        description = f"AXIAL {p.slice_thickness_mm:g}mm {p.kernel.name}"
        meta = self._series_meta(study, kind, 1 if enhanced else n, description)
        folder = study_dir / f"SE{meta.series_number:04d}"
        if enhanced:
            dim_uid = _uid(self.seed, p.name, study.patient_id, kind, "dimension-organization")
            sources = [build_enhanced_ct(stored, grid, p, study, meta, position, dim_uid, order)]
        else:
            sources = build_ct_slices(stored, grid, p, study, meta, position, order)
        files = [self._write(folder / f"IMG{i + 1:04d}{self.suffix}", ds) for i, ds in enumerate(sources)]
        return sources, files

    def _label(
        self,
        sources: list[Dataset],
        grid: SliceGrid,
        masks: dict[str, np.ndarray],
        study: CTStudyMeta,
        study_dir: Path,
    ) -> dict:
        fmt = self.profile.label_format
        tag = (self.seed, self.profile.name, study.patient_id, fmt)
        series_uid, sop_uid = _uid(*tag, "series"), _uid(*tag, "instance")
        if fmt == "SEG":
            from shared.synth.ct_seg_writer import build_ct_segmentation  # highdicom: seconds to import

            ds: Dataset = build_ct_segmentation(sources, masks, series_uid, sop_uid, _uid(*tag, "dimension"))
        else:
            from shared.synth.rtstruct_writer import build_rtstruct

            ds = build_rtstruct(sources, grid, list(range(grid.n_slices)), masks, series_uid, sop_uid)
        rel = study_dir / f"SE{SERIES_NUMBERS[fmt]:04d}" / f"{LABEL_FILE[fmt]}{self.suffix}"
        path = self._write(rel, ds)
        present = {name: bool(m.any()) for name, m in masks.items()}
        return {"format": fmt, "path": path, "series_uid": series_uid, "sop_uid": sop_uid, "present": present}

    def _record(
        self,
        base: dict,
        kind: str,
        first: Dataset,
        grid: SliceGrid,
        files: list[str],
        label: dict | None,
        junk: str | None,
    ) -> dict:
        p = self.profile
        n_frames = int(getattr(first, "NumberOfFrames", 1)) if p.encoding == "enhanced" else len(files)
        return {
            **base,
            "series_uid": str(first.SeriesInstanceUID),
            "series_number": int(first.SeriesNumber),
            "description": str(first.SeriesDescription),
            "sop_class_uid": str(first.SOPClassUID),
            "encoding": p.encoding,
            "transfer_syntax": str(first.file_meta.TransferSyntaxUID),
            "dir": str(Path(files[0]).parent.as_posix()),
            "files": files,
            "n_frames": n_frames,
            "kernel": p.kernel.name,
            "rescale": [p.rescale_slope, p.rescale_intercept],
            "padding_hu": p.padding_hu if p.circular_fov else None,
            "geometry": _grid_record(grid),  # junk copies: the full acquisition they were cut from
            "label": label,
            "junk": junk,
        }


def write_ct_site(
    out_dir: Path,
    profile: CTSiteProfile,
    n_patients: int,
    seed: int,
    size: int = DEFAULT_SIZE,
    *,
    unseen: bool = False,
    overwrite: bool = False,
) -> CTSiteSummary:
    """Write ``n_patients`` CT studies of one site into ``out_dir`` (dicom/ and manifest.json).

    Refuses to write into an existing non-empty ``out_dir/dicom`` unless ``overwrite`` (then only that
    folder and the site's manifest are replaced)."""
    if n_patients < MIN_PATIENTS:
        raise ValueError(f"{profile.name}: n_patients must be at least {MIN_PATIENTS}, got {n_patients}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}] voxels, got {size}")
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    if dicom_dir.exists() and any(dicom_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{dicom_dir} already holds files; delete it, choose another output folder, or pass overwrite"
            )
        shutil.rmtree(dicom_dir)
    t0 = time.perf_counter()
    writer = _SiteWriter(out_dir, profile, seed, size, unseen)
    for pidx in range(n_patients):
        writer.patient(pidx, n_patients)
    summary = CTSiteSummary(
        name=out_dir.name,
        path=out_dir,
        profile=profile.name,
        unseen=unseen,
        n_patients=n_patients,
        n_series=len(writer.series),
        n_junk=sum(s["junk"] is not None for s in writer.series),
        encoding=profile.encoding,
        label_format=profile.label_format,
        bytes=writer.bytes,
        seconds=time.perf_counter() - t0,
        patients=tuple(writer.patients),
        series=tuple(writer.series),
    )
    _dump(out_dir / MANIFEST, _manifest(seed, size, [summary], [profile]))
    return summary


def _site_entry(s: CTSiteSummary, profile: CTSiteProfile) -> dict:
    return {"name": s.name, "unseen": s.unseen, "profile": profile_record(profile)}


def _manifest(seed: int, size: int, sites: list[CTSiteSummary], profiles: list[CTSiteProfile]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "modality": "CT",
        "seed": seed,
        "size": size,
        "labels": dict(LABELS),
        "label_rule": "segments overlap (lesion lies inside liver or lung); in a label map the higher value wins",
        "paths": "series dir/files and label path are relative to <site>/dicom/",
        "sites": [_site_entry(s, p) for s, p in zip(sites, profiles)],
        "patients": [pt for s in sites for pt in s.patients],
        "series": [se for s in sites for se in s.series],
    }


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def write_ct_cohort(
    out: Path,
    n_sites: int = 3,
    seed: int = 0,
    unseen: int = 1,
    patients_per_site: int | None = None,
    size: int = DEFAULT_SIZE,
    *,
    overwrite: bool = False,
) -> list[CTSiteSummary]:
    """Write ``n_sites`` training CT sites (``site-<k>``) and ``unseen`` held-out ones (``unseen-<k>``).

    ``patients_per_site``: default each profile's own (6); ``size``: columns of every image (rows and
    slice counts follow each profile's fractions). Writes ``OUT/manifest.json`` for the whole cohort."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profiles = ct_cohort_profiles(n_sites, unseen, seed)
    summaries = []
    for profile in profiles:
        n = profile.default_patients if patients_per_site is None else patients_per_site
        held_out = profile.name.startswith("unseen-")
        summaries.append(
            write_ct_site(out / profile.name, profile, n, seed, size, unseen=held_out, overwrite=overwrite)
        )
    _dump(out / MANIFEST, _manifest(seed, size, summaries, profiles))
    return summaries


def read_manifest(path: Path) -> dict:
    """A cohort's or site's manifest (``path``: the JSON file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    return json.loads(path.read_text(encoding="utf-8"))


def phantom_of(manifest: dict, patient_id: str) -> CTPhantom:
    """Rebuild a patient's phantom (ground truth at any LPS point) from a manifest."""
    for pt in manifest["patients"]:
        if pt["patient_id"] == patient_id:
            return CTPhantom.from_dict(pt["phantom"])
    raise KeyError(f"no patient {patient_id!r} in the manifest")
