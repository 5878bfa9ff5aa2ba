"""The modality seam: what kind of DICOM object a site's export holds, and how it becomes a model input.

A :class:`Modality` is one kind of imaging data FedRad can train on. Today there is one,
``planar`` (single-frame projection radiographs, :mod:`shared.imaging.planar`). A modality has

* ``name``: its registry key (``"planar"``);
* ``rank``: the dimensions of one preprocessed array, 2 for planar images (S, S), 3 for
  volumes (D, S, S). Code downstream never assumes it: the ingest cache records each shard's
  row shape and :func:`shared.site_data.build_dataset` reads whatever shape it finds;
* ``check(ds, header)``: which objects it accepts; returns for an accepted object, raises
  the :class:`~shared.imaging.reasons.Rejection` saying why not otherwise;
* ``decode(ds, header)`` → a decoded object (pixels plus what is left to apply; it carries
  ``.modality``, the name), and ``preprocess(decoded, params)`` → float32 array of ``rank`` dims
  in [0, 1] (the cache stores it as uint16: :mod:`shared.imaging.pack`);
* ``reasons``: the reason codes its ``check`` and ``decode`` can raise.

:func:`read_image` is the one path from file bytes to a decoded object: generic DICOM parsing and
the rejections every modality shares (not DICOM, DICOMDIR, SEG, no pixel data:
:mod:`shared.imaging.dicom_reader`), then the first registered modality that accepts the object
(:func:`select`); when none does, the last one's rejection is the file's reason (the most general
modality, ``planar``, is tried last), so with ``planar`` alone every verdict is what it always was. :func:`preprocess` sends a decoded object to
its own modality. :mod:`shared.imaging.scan` calls only these two.

CT/MR series do not come through here: one model input spans many files, so they have their own path,
:mod:`shared.imaging.series_scan` (headers → series plans → assembled, canonical volumes → one cached array per
series). Adding another one-file-one-input modality touches exactly: its module beside
:mod:`shared.imaging.planar` (checks, decoder, preprocessing, ``name``, ``rank``, ``reasons``), ``MODALITIES``
here (before ``planar``: the more specific modality is tried first), and :mod:`shared.imaging.reasons` for new codes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pydicom

from shared.config import PreprocessConfig
from shared.imaging.dicom_reader import ImageHeader, check_image_object, parse_dataset, read_header
from shared.imaging.planar import PLANAR
from shared.imaging.reasons import Reason, Rejection


class Modality(Protocol):
    """One kind of imaging data (see the module docstring)."""

    name: str
    rank: int
    reasons: frozenset[Reason]

    def check(self, ds: pydicom.Dataset, header: ImageHeader) -> None: ...

    def decode(self, ds: pydicom.Dataset, header: ImageHeader) -> Any: ...

    def preprocess(self, decoded: Any, params: PreprocessConfig) -> np.ndarray: ...


MODALITIES: dict[str, Modality] = {m.name: m for m in (PLANAR,)}  # the order select() tries them: most general last


def get(name: str) -> Modality:
    """The registered modality ``name``."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown imaging modality {name!r}; registered: {', '.join(MODALITIES)}") from None


def select(ds: pydicom.Dataset, header: ImageHeader) -> Modality:
    """The first registered modality that accepts the object; raises the last one's :class:`Rejection` if none does."""
    last: Rejection | None = None
    for modality in MODALITIES.values():
        try:
            modality.check(ds, header)
            return modality
        except Rejection as rej:
            last = rej
    assert last is not None, "no imaging modality registered"
    raise last


def read_image(raw: bytes) -> tuple[ImageHeader, Any]:
    """Bytes of one file → (header, decoded pixels of its modality). Raises :class:`Rejection` for anything unusable."""
    ds = parse_dataset(raw)
    header = read_header(ds)
    try:
        check_image_object(ds, header)
        return header, select(ds, header).decode(ds, header)
    except Rejection as rej:
        rej.header = header  # keeps the keys so a label pointing at this file says "image-rejected"
        raise


def preprocess(decoded: Any, params: PreprocessConfig) -> np.ndarray:
    """A decoded object → its model input (float32, ``rank`` dims), by the modality that decoded it."""
    return get(decoded.modality).preprocess(decoded, params)
