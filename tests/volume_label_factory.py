"""Tiny CT series and the label objects drawn on them (DICOM SEG, RTSTRUCT, NIfTI), for the volume label tests.

The phantom is defined in patient (LPS) millimetres, so the expected label map on the canonical
grid does not depend on the acquisition's patient position or slice order: whatever order the
fixture stores frames, slices or NIfTI axes in, the reader must land every voxel at the same
patient point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import contourpy
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from shared.imaging.volume_geometry import VolumeGeometry, slice_stack_geometry, to_canonical
from shared.imaging.volume_labels import SeriesTarget

# ImageOrientationPatient (row direction, column direction) per acquisition: axial in three patient
# positions, an oblique axial one, and a sagittal stack (rows run feet-wards, slices step to the left) whose slice axis becomes
# canonical axis 2, so no reader may assume that slices are canonical axis 0.
ORIENTATIONS = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "SAG": (0, 1, 0, 0, 0, -1),
    "OBL": (np.cos(0.3), np.sin(0.3), 0, -np.sin(0.3), np.cos(0.3), 0),  # axial turned 17 degrees
}
SHAPE = (10, 24, 20)  # slices, rows, columns
PIXEL_SPACING = (0.8, 0.7)  # row spacing, column spacing (mm)
SLICE_STEP = 2.5
NAMES = ("sphere", "box")  # value 1, value 2 of the phantom


@dataclass
class CtSeries:
    """One written series: its slice headers in stack order, its stack geometry and its canonical target."""

    folder: Path
    slices: list[Dataset]  # stack order: slice k at first_position + k * step
    stack: VolumeGeometry  # [slice, row, column] geometry of ``slices``
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str

    @property
    def target(self) -> SeriesTarget:
        canonical = to_canonical(np.zeros(self.stack.shape, np.uint8), self.stack)[1]
        return SeriesTarget(
            geometry=canonical,
            series_instance_uid=self.series_uid,
            sop_instance_uids=frozenset(str(ds.SOPInstanceUID) for ds in self.slices),
            frame_of_reference_uid=self.frame_of_reference_uid,
            folder=self.folder.name,
        )


def write_ct_series(folder: Path, position: str = "HFS", descending: bool = False) -> CtSeries:
    """10 CT slices of 24×20 pixels in ``position`` (an :data:`ORIENTATIONS` key).

    Axial slices step towards S (towards I when ``descending``); sagittal ones towards L (R)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    iop = ORIENTATIONS[position]
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.abs(np.cross(row_dir, col_dir))
    step = normal * (-SLICE_STEP if descending else SLICE_STEP)
    # the first slice's centre: the same field of view around the phantom for every acquisition
    centre = np.array([0.0, 0.0, 26.0]) - step * (SHAPE[0] - 1) / 2
    first = centre - col_dir * PIXEL_SPACING[0] * (SHAPE[1] - 1) / 2 - row_dir * PIXEL_SPACING[1] * (SHAPE[2] - 1) / 2
    stack = slice_stack_geometry(iop, first, step, PIXEL_SPACING, SHAPE, for_uid)
    rng = np.random.default_rng(0)
    slices = []
    for k in range(SHAPE[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Volume", "PV1", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101010", "1", "ACCV1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.Manufacturer = "TestVendor"
        ds.PatientPosition = position if position in ("HFS", "FFP", "FFS") else "HFS"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in stack.index_to_patient((k, 0, 0))]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_STEP
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP = 120
        ds.PixelData = rng.integers(0, 2000, SHAPE[1:], dtype=np.uint16).tobytes()
        ds.save_as(folder / f"ct{k:02d}.dcm", enforce_file_format=True)
        slices.append(ds)
    return CtSeries(folder, slices, stack, study_uid, series_uid, for_uid)


def shapes(geometry: VolumeGeometry) -> dict[str, np.ndarray]:
    """The two structures on ``geometry``'s voxel centres: a sphere and a box with a square hole, overlapping."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    x, y, z = np.moveaxis(geometry.index_to_patient(idx), -1, 0)
    sphere = (x - 0.5) ** 2 + (y + 2.0) ** 2 + (z - 26.0) ** 2 <= 4.2**2
    box = (x >= 3.0) & (x <= 8.0) & (y >= -9.0) & (y <= 3.0) & (z >= 20.0) & (z <= 33.0)
    hole = (x >= 4.5) & (x <= 6.5) & (y >= -5.0) & (y <= -1.0)
    return {"sphere": sphere, "box": box & ~hole}


def phantom(geometry: VolumeGeometry) -> np.ndarray:
    """uint8 labels on ``geometry``: 1 = sphere, 2 = box; the box wins where they overlap (later label wins)."""
    out = np.zeros(geometry.shape, np.uint8)
    for value, mask in enumerate(shapes(geometry).values(), start=1):
        out[mask] = value
    return out


def expected_labels(series: CtSeries) -> np.ndarray:
    """The phantom on the series' canonical grid (what every reader must return)."""
    return phantom(series.target.geometry)


def segment_description(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def write_seg(
    series: CtSeries,
    path: Path,
    names: Sequence[str] = NAMES,
    *,
    fractional: bool = False,
    shuffle_seed: int | None = 0,
    frame_of_reference_uid: str | None = None,
    z_shift: float = 0.0,
) -> Path:
    """A SEG of the phantom on ``series`` (segment i+1 = ``names[i]``), frames stored in shuffled order.

    ``frame_of_reference_uid`` / ``z_shift`` spoil the SEG (another FoR, frames moved along z) for the problem tests.
    """
    masks = list(shapes(series.stack).values())  # the full shapes: they overlap, the reader's rule decides
    pixels = np.stack([masks[i] for i in range(len(names))], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=series.slices,
        pixel_array=pixels.astype(np.float32) * 0.8 if fractional else pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else "BINARY",
        segment_descriptions=[segment_description(i + 1, name) for i, name in enumerate(names)],
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="FedRad",
        manufacturer_model_name="fedrad-tests",
        software_versions="1",
        device_serial_number="test",
        omit_empty_frames=True,
    )
    ds = pydicom.dcmread(_save(seg, path))
    if shuffle_seed is not None:
        _shuffle_frames(ds, np.random.default_rng(shuffle_seed))
    if frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = frame_of_reference_uid
    if z_shift:
        for group in ds.PerFrameFunctionalGroupsSequence:
            pos = group.PlanePositionSequence[0]
            pos.ImagePositionPatient = [*pos.ImagePositionPatient[:2], float(pos.ImagePositionPatient[2]) + z_shift]
    ds.save_as(path, enforce_file_format=True)
    return path


def _save(seg: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)
    return path


def _shuffle_frames(ds: Dataset, rng: np.random.Generator) -> None:
    """Store the frames (pixels and per-frame groups together) in a random order."""
    n = int(ds.NumberOfFrames)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.BitsAllocated) == 1:
        bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")[: n * rows * cols]
        frames = bits.reshape(n, rows, cols)
    else:
        frames = np.frombuffer(ds.PixelData, np.uint8)[: n * rows * cols].reshape(n, rows, cols)
    order = rng.permutation(n)
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    ds.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
    frames = frames[order]
    if int(ds.BitsAllocated) == 1:
        ds.PixelData = pydicom.pixels.pack_bits(frames.ravel())
    else:
        ds.PixelData = frames.tobytes()


def polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (N, 2) as (row, column) that enclose exactly ``mask``'s true pixel centres (even-odd)."""
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    return [line[:-1, ::-1] - 1.0 for line in lines if len(line) > 3]  # contourpy gives (x=column, y=row), closed


def write_rtstruct(
    series: CtSeries,
    path: Path,
    names: Sequence[str] = NAMES,
    *,
    z_shift: float = 0.0,
    referenced_series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Path:
    """An RTSTRUCT of the phantom: ROI i+1 = ``names[i]``, one CLOSED_PLANAR contour per polygon per slice (LPS mm)."""
    masks = list(shapes(series.stack).values())
    for_uid = frame_of_reference_uid or series.frame_of_reference_uid
    first = series.slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate"):
        setattr(ds, keyword, first.get(keyword))
    for keyword in ("StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", generate_uid(), 901, 1
    ds.Manufacturer, ds.OperatorsName = "FedRad", ""
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "PHANTOM", "20240102", "101010"
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced_series_uid or series.series_uid
    ref_series.ContourImageSequence = [_image_ref(s) for s in series.slices]
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, still used)
    ref_study.ReferencedSOPInstanceUID = series.study_uid
    ref_study.RTReferencedSeriesSequence = [ref_series]
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = for_uid
    ref_for.RTReferencedStudySequence = [ref_study]
    ds.ReferencedFrameOfReferenceSequence = [ref_for]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for i, name in enumerate(names):
        number = i + 1
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, for_uid, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        contours = []
        for k in range(series.stack.shape[0]):
            for poly in polygons(masks[i][k]):
                index = np.column_stack([np.full(len(poly), float(k)), poly])
                points = series.stack.index_to_patient(index)
                points[:, 2] += z_shift
                item = Dataset()
                item.ContourImageSequence = [_image_ref(series.slices[k])]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourData = [float(f"{v:.4f}") for v in points.ravel()]
                contours.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = contours
        ds.ROIContourSequence.append(roi_contour)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(obs)
    ds.ApprovalStatus = "UNAPPROVED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _image_ref(image: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    return ref


def write_nifti(series: CtSeries, path: Path, *, shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Path:
    """The phantom as a NIfTI in the ITK/dcm2niix voxel order (column, row, slice), RAS affine; ``shift_mm`` in LPS."""
    labels = phantom(series.stack)  # [slice, row, column]
    data = np.transpose(labels, (2, 1, 0))  # (i, j, k) = (column, row, slice)
    lps = series.stack.affine[:, [2, 1, 0, 3]].copy()
    lps[:3, 3] += np.asarray(shift_mm, dtype=np.float64)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, ras), str(path))
    return path
