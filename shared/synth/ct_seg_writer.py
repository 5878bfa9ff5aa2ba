"""Wrap a synthetic CT series' ground truth in a DICOM Segmentation (SEG) with highdicom.

One BINARY segment per structure, numbered as the phantom's labels
(:data:`~shared.synth.ct_phantom.LABELS`: 1 liver, 2 lung, 3 spine, 4 lesion). Segments
overlap where the phantom's structures do (a lesion lies inside its liver or lung; the
higher segment number wins when they are merged into one label map).
Every segment is described and every frame kept (``omit_empty_frames=False``): a patient
without lesions carries an explicit all-empty ``lesion`` segment, "looked, found none".

The source is either the classic series (one frame per slice file, in the order given)
or one Enhanced CT object (one frame per source frame); highdicom writes the plane
positions, the derivation references and the 1-bit packing. Creation times and the
Dimension Organization UID are pinned so the same cohort call writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from shared.synth.ct_phantom import LABELS, SEGMENT_NAMES
from shared.synth.seg_writer import synthetic_binary_seg

_ALGORITHM = hd.AlgorithmIdentificationSequence(
    name="fedrad-synth-ct", version="1", family=codes.cid7162.ArtificialIntelligence
)
#: segment name → (segmented property category, segmented property type), SNOMED CT
SEGMENT_CODES = {
    "liver": (codes.SCT.AnatomicalStructure, codes.SCT.Liver),
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    "lung": (codes.SCT.AnatomicalStructure, codes.SCT.Lung),
    "spine": (codes.SCT.AnatomicalStructure, codes.SCT.Spine),
}


def ct_segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """The four synthetic CT segments, segment number = label value."""
    return [
        hd.seg.SegmentDescription(
            segment_number=LABELS[name],
            segment_label=name,
            segmented_property_category=SEGMENT_CODES[name][0],
            segmented_property_type=SEGMENT_CODES[name][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_ALGORITHM,
        )
        for name in SEGMENT_NAMES
    ]


def build_ct_segmentation(
    sources: Sequence[Dataset],
    masks: Mapping[str, np.ndarray],
    series_uid: str,
    sop_uid: str,
    dimension_uid: str,
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``sources`` holding ``masks[name]`` (bool [frame, row, column]) for every segment.

    ``sources``: the classic series' slice datasets (frame ``k`` of the masks is ``sources[k]``) or a
    one-element list with an Enhanced CT dataset (frame ``k`` is its frame ``k + 1``)."""
    stacked = np.stack([masks[name] for name in SEGMENT_NAMES], axis=-1).astype(np.uint8)
    seg = synthetic_binary_seg(sources, stacked, ct_segment_descriptions(), series_uid, sop_uid, dimension_uid)
    seg.SeriesDate, seg.SeriesTime = sources[0].StudyDate, sources[0].StudyTime
    return seg
