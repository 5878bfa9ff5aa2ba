"""Wrap a synthetic image's ground-truth masks in a DICOM Segmentation (SEG) with highdicom.

highdicom builds the whole object (segment descriptions, functional groups, the
reference to the source image, 1-bit packing); this module only chooses the
codes and makes the result reproducible. Choices, and why:

* ``BINARY`` with two segments, 1 = ``nodule``, 2 = ``lung``, both always described.
  Empty frames are *kept* (``omit_empty_frames=False``): an image without a nodule
  carries an explicit all-zero nodule frame, which says "looked, found none"
  rather than "not annotated". It also keeps every synthetic SEG a 2-frame object,
  which the classification scanner rejects as ``multi-frame`` instead of reading a
  single 1-bit frame as if it were a radiograph.
* The source image is handed to highdicom without its PixelSpacing. For a
  projection image (no Frame of Reference) highdicom 0.28 then writes no Pixel
  Measures; with PixelSpacing it writes Pixel Measures without SliceThickness,
  which the standard allows there but which highdicom's own reader
  (``segread``) rejects. The SEG frames correspond pixel for pixel to the source
  (SpatialLocationsPreserved YES), so the spacing is the source image's.
* highdicom stamps creation times and a fresh Dimension Organization UID; they are
  pinned to the image's study date/time and a seeded UID so the same cohort call
  writes byte-identical SEGs, as it does images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from shared.synth.masks import SEGMENT_LABELS

SERIES_NUMBER = 900  # away from the image series (1), as PACS viewers sort series by number
_ALGORITHM = hd.AlgorithmIdentificationSequence(
    name="fedrad-synth", version="1", family=codes.cid7162.ArtificialIntelligence
)
_CODES = {  # label → (segmented property category, segmented property type), SNOMED CT
    "nodule": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Nodule),
    "lung": (codes.SCT.AnatomicalStructure, codes.SCT.Lung),
}


def segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """The two synthetic segments, numbered in :data:`SEGMENT_LABELS` order."""
    return [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=_CODES[label][0],
            segmented_property_type=_CODES[label][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_ALGORITHM,
        )
        for i, label in enumerate(SEGMENT_LABELS)
    ]


def _source_metadata(image: Dataset) -> Dataset:
    """The image's header without pixels or PixelSpacing (see the module docstring)."""
    meta = Dataset()
    for elem in image:
        if elem.keyword not in ("PixelData", "PixelSpacing"):
            meta.add(elem)
    meta.file_meta = image.file_meta
    return meta


def build_segmentation(
    image: Dataset, masks: Mapping[str, np.ndarray], series_uid: str, sop_uid: str, dimension_uid: str
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``image`` holding ``masks[label]`` (bool, image Rows×Columns) for every segment label."""
    stacked = np.stack([masks[label] for label in SEGMENT_LABELS], axis=-1)[None].astype(np.uint8)
    return synthetic_binary_seg(
        [_source_metadata(image)], stacked, segment_descriptions(), series_uid, sop_uid, dimension_uid
    )


def synthetic_binary_seg(
    sources: Sequence[Dataset],
    stacked: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
    series_uid: str,
    sop_uid: str,
    dimension_uid: str,
) -> hd.seg.Segmentation:
    """A reproducible BINARY ground-truth SEG of ``sources`` (radiograph and CT cohorts alike).

    ``stacked``: uint8 [frame, row, column, segment]. Every frame is kept; creation times follow the first
    source's study date/time and the Dimension Organization UID is ``dimension_uid``, so the same cohort call
    writes the same bytes."""
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(descriptions),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="FedRad",
        manufacturer_model_name="fedrad-synth",
        software_versions="1",
        device_serial_number="synthetic",
        content_description="Synthetic ground truth (FedRad test cohort)",
        content_label="GROUND_TRUTH",
        content_date=first.StudyDate,
        content_time=first.StudyTime,
        omit_empty_frames=False,
    )
    seg.SeriesDescription = "SYNTHETIC SEGMENTATION"
    seg.InstanceCreationDate, seg.InstanceCreationTime = first.StudyDate, first.StudyTime
    for item in seg.ContributingEquipmentSequence:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{first.StudyDate}{first.StudyTime}"
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    return seg
