"""A segmentation result as a DICOM Segmentation (BINARY) on its source radiograph, one segment per label.

One SEG per source image: a radiograph is one image, and a SEG's frames lie on one source image's pixels. The
model's probability maps (on the model-input grid) are put back onto the source image's pixel grid
(:func:`shared.imaging.planar.to_native_grid`, the inverse of the preprocessing's pad and resample), and each
output's mask is the task's decision there (:meth:`shared.tasks.Task.decide`: probability >= 0.5 for the 2D
segmentation task). Every segment is AUTOMATIC with FedRad's algorithm identification (the weights' SHA-256 as
version); codes come from :func:`client.infer_common.segment_codes`. Empty segments keep their frame, so a reader
sees every label the model has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from client.infer_common import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    SEG_SERIES_DESCRIPTION,
    SERIES_NUMBERS,
    ModelIdentity,
    private_scheme,
    segment_codes,
)
from shared.imaging.planar import to_native_grid


def native_masks(proba: np.ndarray, rows: int, columns: int, decide) -> np.ndarray:  # noqa: ANN001 - the task's
    """(labels, S, S) probabilities of one image → (labels, rows, columns) bool on the source image's pixels,
    decided by ``decide`` (the task's :meth:`~shared.tasks.Task.decide` with the model's threshold)."""
    native = np.stack([to_native_grid(plane, rows, columns) for plane in proba])
    return np.asarray(decide(native[None]))[0].astype(bool)


def segmentation(
    source: Dataset,
    masks: np.ndarray,
    model: ModelIdentity,
    *,
    series_uid: str,
    instance_number: int,
) -> Dataset:
    """The SEG of one source image: ``masks`` (labels, Rows, Columns) bool, in the model's output order."""
    import highdicom as hd

    algorithm = model.seg_algorithm()
    descriptions = []
    for k, label in enumerate(model.outputs):
        category, kind = segment_codes(label)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=k + 1,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=generate_uid(),
                tracking_id=f"FedRad {label}",
            )
        )
    pixels = np.moveaxis(masks.astype(np.uint8), 0, -1)[None]  # (1 frame, rows, columns, segments)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["SEG"],
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.model_name,
        software_versions=model.version,
        device_serial_number=model.version,
        content_description=SEG_SERIES_DESCRIPTION[:64],
        content_label="FEDRAD_AI",
        content_creator_name="FedRad^AI",
        omit_empty_frames=False,
    )
    seg.SeriesDescription = SEG_SERIES_DESCRIPTION
    if "FrameOfReferenceUID" not in seg:  # a projection image: General Image's PatientOrientation (Type 2C)
        seg.PatientOrientation = source.get("PatientOrientation") or ""
    if any(d.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME for d in descriptions):
        seg.CodingSchemeIdentificationSequence = [private_scheme()]
    return seg


def read_masks(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """A SEG written by :func:`segmentation`, read back the way FedRad reads a site's SEG labels
    (:func:`shared.imaging.segmentation.read_segmentation`, highdicom): (source image SOPInstanceUID, segment label
    → (Rows, Columns) bool mask)."""
    from shared.imaging.segmentation import read_segmentation

    seg = read_segmentation(Path(path))
    ((source_sop, masks),) = seg.masks.items()
    return source_sop, masks
