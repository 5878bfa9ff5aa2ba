"""Tiny CT series for the volume tests: one patient-space phantom, written as real DICOM in any acquisition.

A :class:`Phantom` is an HU volume on an axis-aligned LPS grid in canonical order (z, y, x) with an asymmetric
marker. :func:`acquire` samples it as a scanner in a given patient position and slice order would store it
(``[slice, row, column]`` plus the DICOM geometry); the writers put that on disk as one file per slice or as one
Enhanced CT object. Whatever the acquisition, assembling the files must give back the phantom exactly.
(Test fixtures only; the synthetic cohort writer lives in ``shared/synth``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.imaging.volume_geometry import VolumeGeometry, slice_stack_geometry

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
# ImageOrientationPatient of the classic axial patient positions (row direction, column direction).
POSITIONS = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}
MARKER_HU = 3000.0


@dataclass(frozen=True)
class Phantom:
    hu: np.ndarray  # (nz, ny, nx) float32, canonical order
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin: tuple[float, float, float]  # LPS (x, y, z) of voxel [0, 0, 0]
    marker: tuple[int, int, int]  # canonical index of the marker voxel

    @property
    def geometry(self) -> VolumeGeometry:
        affine = np.eye(4)
        affine[:3, 0] = (0.0, 0.0, self.spacing[0])
        affine[:3, 1] = (0.0, self.spacing[1], 0.0)
        affine[:3, 2] = (self.spacing[2], 0.0, 0.0)
        affine[:3, 3] = self.origin
        return VolumeGeometry(self.hu.shape, affine, "1.2.3.4")

    @property
    def marker_lps(self) -> np.ndarray:
        return self.geometry.index_to_patient(self.marker)


def phantom(
    shape: tuple[int, int, int] = (10, 12, 14),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.7),
    origin: tuple[float, float, float] = (-20.0, 10.0, -5.0),
    marker: tuple[int, int, int] = (2, 3, 9),
) -> Phantom:
    """Ramps along every axis (so any flip or swap shows) plus one bright marker voxel."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    hu = -1000.0 + 37.0 * z + 11.0 * y + 5.0 * x
    hu[marker] = MARKER_HU
    return Phantom(hu.astype(np.float32), spacing, origin, marker)


@dataclass(frozen=True)
class Acquisition:
    stack: np.ndarray  # [slice, row, column] HU
    orientation: tuple[float, ...]
    first_position: np.ndarray
    step: np.ndarray
    pixel_spacing: tuple[float, float]

    def position(self, k: int) -> np.ndarray:
        return self.first_position + k * self.step


def acquire(ph: Phantom, patient_position: str = "HFS", descending: bool = False) -> Acquisition:
    """The phantom as stored by an axial acquisition in ``patient_position``, slices ascending or descending in z."""
    iop = POSITIONS[patient_position]
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    nz, ny, nx = ph.hu.shape
    dz, dy, dx = ph.spacing
    lo = np.asarray(ph.origin, dtype=np.float64)
    hi = lo + np.array([(nx - 1) * dx, (ny - 1) * dy, (nz - 1) * dz])
    slice_dir = np.array([0.0, 0.0, -1.0 if descending else 1.0])
    # the first pixel sits at the grid corner each direction starts from
    first = np.where((row_dir + col_dir + slice_dir) < 0, hi, lo)
    shape = (nz, ny, nx)  # columns run along x (row direction ±x), rows along y
    geom = slice_stack_geometry(iop, first, slice_dir * dz, (dy, dx), shape)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    where = np.rint(ph.geometry.patient_to_index(geom.index_to_patient(idx))).astype(int)
    stack = ph.hu[where[..., 0], where[..., 1], where[..., 2]]
    return Acquisition(stack, iop, first, slice_dir * dz, (dy, dx))


def _base(sop_class: str, series: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientID, ds.PatientName = "VOL001", "Volume^Test"
    ds.StudyInstanceUID = series["study"]
    ds.SeriesInstanceUID = series["series"]
    ds.FrameOfReferenceUID = series["for"]
    ds.Modality = "CT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def new_series() -> dict[str, str]:
    return {"study": generate_uid(), "series": generate_uid(), "for": generate_uid()}


def stored(hu: np.ndarray, slope: float = 1.0, intercept: float = -1024.0) -> np.ndarray:
    values = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    assert values.min() >= 0 and values.max() <= 65535, "HU outside what uint16 stores with this rescale"
    return values.astype(np.uint16)


def write_classic(
    folder: Path,
    acq: Acquisition,
    *,
    series: dict[str, str] | None = None,
    slope: Sequence[float] | float = 1.0,
    intercept: float = -1024.0,
    patient_position: str = "HFS",
    tweak: Callable[[int, Dataset], None] | None = None,
    seed: int = 0,
) -> list[Path]:
    """One CT Image file per slice, under shuffled file names, InstanceNumber deliberately unrelated to position,
    a SliceThickness that is not the spacing; ``tweak(k, ds)`` edits slice ``k`` before it is written."""
    series = series or new_series()
    folder.mkdir(parents=True, exist_ok=True)
    n = acq.stack.shape[0]
    rng = np.random.default_rng(seed)
    names = rng.permutation(n)
    slopes = [slope] * n if isinstance(slope, (int, float)) else list(slope)
    paths = []
    for k in range(n):
        ds = _base(CT_IMAGE, series)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = patient_position
        ds.ImagePositionPatient = [f"{v:.4f}" for v in acq.position(k)]
        ds.ImageOrientationPatient = list(acq.orientation)
        ds.PixelSpacing = list(acq.pixel_spacing)
        ds.SliceThickness = 5.0  # not the spacing: the planner must use the positions
        ds.InstanceNumber = int(names[k]) + 1
        ds.ImageComments = f"slice {k}"  # lets a test find the file holding slice k
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k], intercept
        ds.Rows, ds.Columns = acq.stack.shape[1:]
        ds.PixelData = stored(acq.stack[k], slopes[k], intercept).tobytes()
        if tweak is not None:
            tweak(k, ds)
        path = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    order = rng.permutation(n)
    return [paths[i] for i in order]  # the caller sees files in no particular order


def _item(**values) -> DicomSequence:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return DicomSequence([ds])


def write_enhanced(
    path: Path,
    acq: Acquisition,
    *,
    series: dict[str, str] | None = None,
    frame_order: Sequence[int] | None = None,
    per_frame_rescale: bool = False,
    intercept: float = -1024.0,
    extra_frames: Sequence[tuple[int, np.ndarray]] = (),
) -> Path:
    """The acquisition as one Enhanced CT object; frames stored in ``frame_order`` (slice indices).

    Orientation and pixel measures are shared; positions per frame; the rescale shared, or per frame when
    ``per_frame_rescale``. ``extra_frames``: (slice index, HU) pairs appended at an existing position."""
    series = series or new_series()
    order = list(range(acq.stack.shape[0]) if frame_order is None else frame_order)
    frames = [(k, acq.stack[k]) for k in order] + list(extra_frames)
    ds = _base(ENHANCED_CT, series)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = acq.stack.shape[1:]
    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=list(acq.orientation))
    shared.PixelMeasuresSequence = _item(PixelSpacing=list(acq.pixel_spacing), SliceThickness=5.0)
    shared.CTImageFrameTypeSequence = _item(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"])
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = _item(RescaleIntercept=intercept, RescaleSlope=1.0, RescaleType="HU")
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    items, pixels = [], []
    for n, (k, hu) in enumerate(frames):
        item = Dataset()
        item.PlanePositionSequence = _item(ImagePositionPatient=[f"{v:.4f}" for v in acq.position(k)])
        item.FrameContentSequence = _item(InStackPositionNumber=n + 1)
        if per_frame_rescale:
            item.PixelValueTransformationSequence = _item(
                RescaleIntercept=intercept - k, RescaleSlope=1.0, RescaleType="HU"
            )
        items.append(item)
        pixels.append(stored(hu, 1.0, intercept - k if per_frame_rescale else intercept))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    ds.PixelData = np.stack(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
