"""CT/MR series → one clean volume: decode a planned series straight into a canonical float32 array.

The ``volume`` modality's assembly step. :mod:`shared.imaging.slice_records` reads headers,
:mod:`shared.imaging.series_plan` groups, orders and checks them; :func:`assemble` then decodes each slice once
(:func:`~shared.imaging.dicom_reader.pixel_array` / :func:`~shared.imaging.dicom_reader.iter_frames`, so every
compressed transfer syntax and every decoder failure gets the file-level reason codes), applies that slice's own
rescale (slope/intercept, or its Modality LUT) so CT comes out in Hounsfield units, and writes it into its place.

Memory: the output is allocated once, in canonical order (axis 0 → Superior, 1 → Posterior, 2 → Left:
:mod:`shared.imaging.volume_geometry`), optionally as a ``.npy`` memory map at a path the caller gives; each
decoded slice is written through an acquisition-order view of it, so there is no list of slices and no second
copy, and the file on disk is already in the order models read. Pixel padding (e.g. -2000 outside a CT's field of
view) is kept as stored; CT windowing clips it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from shared.imaging.dicom_reader import ImageHeader, iter_frames, parse_dataset, pixel_array, read_header
from shared.imaging.reasons import Reason, Rejection
from shared.imaging.series_plan import REASONS as PLAN_REASONS
from shared.imaging.series_plan import PlanParams, SeriesKey, SeriesPlan, SeriesRejection, plan_series
from shared.imaging.slice_records import SliceRecord, read_slice_records, slice_records
from shared.imaging.volume_geometry import VolumeGeometry, acquisition_view
from shared.imaging.volume_preprocess import VolumeParams, preprocess_volume

NAME = "volume"
RANK = 3
# Every code planning or assembly can give a series (decoding adds the file-level ones).
REASONS = PLAN_REASONS | frozenset(
    {
        Reason.UNREADABLE,
        Reason.NOT_DICOM,
        Reason.TRUNCATED,
        Reason.CORRUPT_PIXEL_DATA,
        Reason.UNDECODABLE_TRANSFER_SYNTAX,
        Reason.CONSTANT_IMAGE,
    }
)
OpenDataset = Callable[[str], pydicom.Dataset]


def read_dataset(path: str) -> pydicom.Dataset:
    """The whole file, pixels included, parsed as the scan parses it (same reason codes)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise Rejection(Reason.UNREADABLE, f"cannot read file: {exc.strerror or exc}") from None
    return parse_dataset(raw)


@dataclass
class Volume:
    """One assembled series: float32 values in canonical order (CT in HU) and the geometry that places them."""

    modality: ClassVar[str] = NAME  # the FedRad modality (shared.imaging.modality); the DICOM one is dicom_modality
    usable: ClassVar[bool] = True
    array: np.ndarray  # (S, P, L) float32; a np.memmap when assemble() was given a path
    geometry: VolumeGeometry  # canonical: array-order indices → LPS mm
    key: SeriesKey
    dicom_modality: str  # "CT" or "MR"
    files: tuple[str, ...]
    notes: tuple[str, ...] = ()
    study_instance_uid: str = ""


def allocate(shape: tuple[int, ...], out: np.ndarray | str | Path | None) -> np.ndarray:
    """The float32 output: a new array, a new ``.npy`` memory map at a path, or the caller's array (checked)."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if isinstance(out, (str, Path)):
        return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)
    if out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"the output array must be float32 {shape}, got {out.dtype} {out.shape}")
    return out


def assemble(
    plan: SeriesPlan, out: np.ndarray | str | Path | None = None, open_dataset: OpenDataset = read_dataset
) -> Volume:
    """Decode ``plan``'s slices into one canonical volume (see the module docstring).

    ``out``: where the values go (``plan.canonical_geometry.shape``, float32), a path for a ``.npy`` memory map,
    or ``None`` for a new array. ``open_dataset`` reads a file named as the plan names it (default: a path).
    Raises :class:`Rejection` whose detail starts with the file at fault."""
    geometry = plan.canonical_geometry
    target = allocate(geometry.shape, out)
    stack = acquisition_view(target, plan.geometry)  # stack[k] is slice k, written straight into canonical order
    by_file: dict[str, list[tuple[int, SliceRecord]]] = {}
    for index, record in enumerate(plan.slices):
        by_file.setdefault(record.path, []).append((index, record))
    for path, items in by_file.items():
        try:
            _decode_file(open_dataset(path), items, stack)
        except Rejection as rej:
            raise Rejection(rej.reason, f"{path}: {rej.detail}") from None
    lo, hi = float(target.min()), float(target.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, "the volume holds values that are not finite")
    if lo == hi:
        raise Rejection(Reason.CONSTANT_IMAGE, f"every voxel of the volume equals {lo:g}")
    if isinstance(target, np.memmap):
        target.flush()
    return Volume(target, geometry, plan.key, plan.modality, plan.files, plan.notes, plan.slices[0].study_instance_uid)


def _decode_file(ds: pydicom.Dataset, items: list[tuple[int, SliceRecord]], stack: np.ndarray) -> None:
    """Decode the slices ``ds`` holds into their places in ``stack``: the one image, or the planned frames."""
    header = read_header(ds)
    if items[0][1].frame is None:
        for index, record in items:  # one item: repeated SOP instances were dropped by the planner
            _place(pixel_array(ds, header), record, ds, header, stack[index])
        return
    wanted = {record.frame: (index, record) for index, record in items}
    placed = 0
    for frame, arr in enumerate(iter_frames(ds, header)):
        if frame in wanted:
            index, record = wanted[frame]
            _place(arr, record, ds, header, stack[index])
            placed += 1
            if placed == len(wanted):
                return
    raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"fewer frames decoded than the {len(wanted)} planned")


def _place(arr: np.ndarray, record: SliceRecord, ds: pydicom.Dataset, header: ImageHeader, dst: np.ndarray) -> None:
    """Stored values → modality values (HU for CT) in ``dst``, by this slice's own rescale."""
    if arr.shape != dst.shape:
        raise Rejection(
            Reason.CORRUPT_PIXEL_DATA, f"{record.label}: decoded shape {arr.shape}, the series' is {dst.shape}"
        )
    if record.has_modality_lut:  # a non-linear LUT, applied as the header states
        try:
            dst[...] = apply_modality_lut(arr, ds)
        except Exception as exc:
            raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"modality LUT not applicable ({type(exc).__name__})") from None
        return
    np.multiply(arr, np.float32(record.rescale_slope), out=dst, dtype=np.float32, casting="unsafe")
    if record.rescale_intercept:
        np.add(dst, np.float32(record.rescale_intercept), out=dst)


def iter_volumes(paths: Iterable[str | Path], params: PlanParams | None = None) -> Iterator[Volume | SeriesRejection]:
    """Every series among ``paths`` as a :class:`Volume` or a :class:`SeriesRejection`, one at a time.

    Files with no usable header come out as one-file rejections (empty key). Nothing a file holds raises."""
    records: list[SliceRecord] = []
    for path in paths:
        try:
            records.extend(read_slice_records(path))
        except Rejection as rej:
            yield SeriesRejection(SeriesKey("", ""), rej.reason, f"{path}: {rej.detail}", (str(path),))
    for verdict in plan_series(records, params):
        if isinstance(verdict, SeriesRejection):
            yield verdict
            continue
        try:
            yield assemble(verdict)
        except Rejection as rej:
            yield SeriesRejection(verdict.key, rej.reason, rej.detail, verdict.files, verdict.notes)
        except Exception as exc:  # as the scan does: a file's content never crashes the caller
            detail = f"{type(exc).__name__}: {str(exc)[:160]}"
            yield SeriesRejection(verdict.key, Reason.CORRUPT_PIXEL_DATA, detail, verdict.files, verdict.notes)


@dataclass(frozen=True)
class VolumeModality:
    """The ``volume`` modality (rank 3) for :mod:`shared.imaging.modality`: CT/MR series as canonical volumes.

    A volume usually comes from many files, so the scan plans series (:meth:`plan`) and assembles them
    (:meth:`assemble`); ``check``/``decode`` cover the one-file case, an Enhanced CT/MR object. Not registered in
    ``MODALITIES`` yet: registering it makes such objects usable volumes instead of planar's ``multi-frame``."""

    name: str = NAME
    rank: int = RANK
    reasons: frozenset[Reason] = REASONS

    def plan(
        self, records: Iterable[SliceRecord], params: PlanParams | None = None
    ) -> list[SeriesPlan | SeriesRejection]:
        return plan_series(records, params)

    def assemble(self, plan: SeriesPlan, out: np.ndarray | str | Path | None = None, **kw) -> Volume:
        return assemble(plan, out, **kw)

    def check(self, ds: pydicom.Dataset, header: ImageHeader, params: PlanParams | None = None) -> SeriesPlan:
        """Accept one object that is a whole volume (Enhanced CT/MR); raise its :class:`Rejection` otherwise."""
        records = slice_records(ds, header.sop_instance_uid or "object")
        if len(records) == 1 and records[0].frame is None and not records[0].unsupported:
            raise Rejection(Reason.SERIES_TOO_FEW_SLICES, "one slice: slice files become a volume with their series")
        (verdict,) = plan_series(records, params)
        if isinstance(verdict, SeriesRejection):
            raise Rejection(verdict.reason, verdict.detail)
        return verdict

    def decode(self, ds: pydicom.Dataset, header: ImageHeader) -> Volume:
        return assemble(self.check(ds, header), open_dataset=lambda _: ds)

    def preprocess(self, decoded: Volume, params: VolumeParams) -> np.ndarray:
        return preprocess_volume(decoded.array, decoded.geometry, decoded.dicom_modality, params)[0]


VOLUME = VolumeModality()
