"""Write a synthetic CT series' ground truth as an RT Structure Set (RTSTRUCT) with pydicom.

Many sites' contours come from treatment-planning or annotation tools that save RTSTRUCT,
not SEG, so a reader must handle both. One ROI per structure, ROI number = label value
(:data:`~shared.synth.ct_phantom.LABELS`). Each slice's mask boundary is traced with
contourpy (matplotlib's contour engine) at level 0.5, which runs through the midpoints
between inside and outside pixel centres, so rasterising the polygon at pixel centres
gives the mask back. Pixel coordinates become patient millimetres through that slice's
own ImagePositionPatient, ImageOrientationPatient and PixelSpacing.

Conventions a reader must follow (as in clinical RTSTRUCTs):

* ``CLOSED_PLANAR`` contours, one per closed boundary, each referencing its slice's
  SOP instance (and frame number, for an Enhanced CT source) in ContourImageSequence;
* a contour inside another contour of the same ROI on the same slice is a hole
  (even-odd rule), e.g. a lung around the liver dome;
* ROIs overlap as the phantom's structures do (``lesion`` lies inside ``liver`` or ``lung``);
* an ROI with no contours (a patient without lesions) is listed with no ContourSequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import contourpy
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage

from shared.synth.ct_acquisition import SliceGrid
from shared.synth.ct_phantom import LABELS, SEGMENT_NAMES

SERIES_NUMBER = 901
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RTReferencedStudySequence conventionally names
INTERPRETED_TYPE = {"liver": "ORGAN", "lesion": "GTV", "lung": "ORGAN", "spine": "ORGAN"}
COLOUR = {"liver": [220, 120, 60], "lesion": [255, 0, 0], "lung": [80, 160, 255], "spine": [240, 240, 200]}


def trace_mask(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundaries of a 2D bool mask as (k, 2) arrays of (column, row) pixel coordinates, unrepeated ends."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)  # every boundary closes inside the padded frame
    gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    out = []
    for line in gen.lines(0.5):
        pts = np.asarray(line, dtype=np.float64) - 1.0  # undo the padding
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        pts = _drop_collinear(pts)
        if len(pts) >= 3:
            out.append(pts)
    return out


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """The closed polygon ``pts`` without the vertices that lie on a straight run (same outline, fewer points)."""
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    a, b = pts - prev, nxt - pts
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return pts[np.abs(cross) > 1e-9]


def pixel_to_patient(points_cr: np.ndarray, position: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """(k, 2) (column, row) pixel coordinates of one slice → (k, 3) LPS mm via IPP, IOP and PixelSpacing."""
    iop = np.asarray(grid.orientation)
    row_dir, col_dir = iop[:3], iop[3:]
    row_mm, col_mm = grid.pixel_spacing
    return (
        np.asarray(position)[None]
        + points_cr[:, :1] * col_mm * row_dir[None]
        + points_cr[:, 1:2] * row_mm * col_dir[None]
    )


def _item(**kw: object) -> Dataset:
    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


def _image_ref(source: Dataset, frame: int | None) -> Dataset:
    ref = _item(ReferencedSOPClassUID=source.SOPClassUID, ReferencedSOPInstanceUID=source.SOPInstanceUID)
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    return ref


def build_rtstruct(
    sources: Sequence[Dataset],
    grid: SliceGrid,
    order: Sequence[int],
    masks: Mapping[str, np.ndarray],
    series_uid: str,
    sop_uid: str,
) -> Dataset:
    """An RTSTRUCT of the series ``sources`` with one ROI per segment of ``masks`` (bool [slice, row, column]).

    ``order[i]`` is the grid slice written as ``sources[i]`` (classic series), or as frame ``i + 1`` of
    ``sources[0]`` when that is a single Enhanced CT object; ``masks`` are indexed by grid slice."""
    first = sources[0]
    multiframe = len(sources) == 1 and int(getattr(first, "NumberOfFrames", 1)) > 1
    refs = [_image_ref(first, i + 1) if multiframe else _image_ref(sources[i], None) for i in range(len(order))]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
        "StudyDescription",
    ):
        setattr(ds, kw, getattr(first, kw))
    ds.InstanceCreationDate, ds.InstanceCreationTime = first.StudyDate, first.StudyTime
    ds.SeriesDate, ds.SeriesTime = first.StudyDate, first.StudyTime
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "SYNTHETIC STRUCTURES"
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.OperatorsName = ""
    ds.Manufacturer = "FedRad"
    ds.ManufacturerModelName = "fedrad-synth"
    ds.SoftwareVersions = "1"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "GROUND_TRUTH"
    ds.StructureSetName = "Synthetic ground truth"
    ds.StructureSetDate, ds.StructureSetTime = first.StudyDate, first.StudyTime
    for_uid = first.FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = [
        _item(
            FrameOfReferenceUID=for_uid,
            RTReferencedStudySequence=[
                _item(
                    ReferencedSOPClassUID=STUDY_COMPONENT_SOP_CLASS,
                    ReferencedSOPInstanceUID=first.StudyInstanceUID,
                    RTReferencedSeriesSequence=[
                        _item(SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=list(refs))
                    ],
                )
            ],
        )
    ]
    ds.StructureSetROISequence = [
        _item(
            ROINumber=LABELS[name],
            ReferencedFrameOfReferenceUID=for_uid,
            ROIName=name,
            ROIGenerationAlgorithm="AUTOMATIC",
        )
        for name in SEGMENT_NAMES
    ]
    roi_contours = []
    for name in SEGMENT_NAMES:
        item = _item(ReferencedROINumber=LABELS[name], ROIDisplayColor=COLOUR[name])
        contours = []
        for i, k in enumerate(order):
            for line in trace_mask(masks[name][k]):
                mm = np.round(pixel_to_patient(line, grid.positions[k], grid), 3)
                contours.append(
                    _item(
                        ContourImageSequence=[refs[i]],
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(mm),
                        ContourNumber=len(contours) + 1,
                        ContourData=[f"{v:.3f}".rstrip("0").rstrip(".") for v in mm.ravel()],
                    )
                )
        if contours:
            item.ContourSequence = contours
        roi_contours.append(item)
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = [
        _item(
            ObservationNumber=LABELS[name],
            ReferencedROINumber=LABELS[name],
            ROIObservationLabel=name,
            RTROIInterpretedType=INTERPRETED_TYPE[name],
            ROIInterpreter="",
        )
        for name in SEGMENT_NAMES
    ]
    return ds
