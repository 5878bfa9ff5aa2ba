"""One DICOM object on its own: the verdict the site's scan would give it, before it joins the export.

Why: a storage node (``fedrad-site receive``) sees objects one at a time and must keep out what the scan would
reject, with the scan's reason codes. Nothing here is a new check; it routes the object to the checks its kind
already has:

* **labels** (Modality SEG or RTSTRUCT): accepted as they are; the segmentation tasks match them to images;
* **CT/MR** (the volume path, :mod:`shared.imaging.series_scan`): the object-level checks
  (:func:`~shared.imaging.dicom_reader.check_image_object`), then the series checks that look at one slice alone
  (:mod:`shared.imaging.series_checks`: multi-frame objects that are no volume, colour, missing geometry of a slice
  that is not a localizer) and, with ``pixels``, every frame decoded as assembly decodes it. Whether the slices
  make a volume (gaps, spacing, orientation) is a verdict on the whole series: ``check --volumes`` gives it;
* **everything else** (the planar path, :mod:`shared.imaging.scan`): the object-level checks, the modality's check
  (:func:`shared.imaging.modality.select`) and, with ``pixels``, its decoder, exactly as the scan's
  :func:`~shared.imaging.scan.decode_file` runs them.

Every rejection is the :class:`~shared.imaging.reasons.Rejection` the scan would record.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import pydicom

from shared.imaging.dicom_reader import ImageHeader, check_image_object, iter_frames, read_header
from shared.imaging.modality import select
from shared.imaging.reasons import Reason, Rejection
from shared.imaging.series_checks import check_geometry_present, check_grayscale, check_multi_frame
from shared.imaging.series_scan import LABEL_MODALITIES, VOLUME_MODALITIES
from shared.imaging.slice_records import slice_records

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_SOP_CLASSES = frozenset({SEGMENTATION_STORAGE, RTSTRUCT_STORAGE})

Kind = Literal["image", "slice", "label"]


@dataclass(frozen=True)
class ObjectVerdict:
    """An accepted object: what kind it is for FedRad and its header."""

    kind: Kind  # image: a planar model input; slice: part of a CT/MR series; label: SEG or RTSTRUCT
    header: ImageHeader


def object_kind(ds: pydicom.Dataset) -> Kind:
    """Which of the scan's paths the object takes (module docstring)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality in LABEL_MODALITIES or sop_class in LABEL_SOP_CLASSES:
        return "label"
    return "slice" if modality in VOLUME_MODALITIES else "image"


def check_object(ds: pydicom.Dataset, name: str = "", *, pixels: bool = True) -> ObjectVerdict:
    """The verdict for ``ds`` (a parsed object: :func:`~shared.imaging.dicom_reader.parse_dataset`); raises the
    scan's :class:`Rejection` for an object it would not use. ``name`` names the object in a detail."""
    header = read_header(ds)
    kind = object_kind(ds)
    if kind == "label":
        return ObjectVerdict(kind, header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as the scan: pydicom's complaints become reasons, not noise
        try:
            check_image_object(ds, header)
            if kind == "slice":
                _check_slice(ds, header, name, pixels)
            else:
                modality = select(ds, header)
                if pixels:
                    modality.decode(ds, header)
        except Rejection as rej:
            rej.header = header
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a decoder bug (even a Rust panic), as in scan.decode_file
            raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"{type(exc).__name__}: {str(exc)[:160]}") from None
    return ObjectVerdict(kind, header)


def _check_slice(ds: pydicom.Dataset, header: ImageHeader, name: str, pixels: bool) -> None:
    records = slice_records(ds, name)
    check_multi_frame(records)
    check_grayscale(records)
    placed = [r for r in records if not r.is_localizer]  # the planner drops localizers before it needs geometry
    if placed:
        check_geometry_present(placed)
    if pixels:
        for _ in iter_frames(ds, header):
            pass
