"""The modality seam (shared/imaging/modality.py): planar is registered, and rank is the data's, not a constant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest

import shared.imaging.modality as modality
from shared.config import PreprocessConfig
from shared.imaging import EXPLANATIONS, Reason, Rejection, scan_site
from shared.imaging.dicom_reader import ImageHeader, pixel_array
from shared.imaging.planar import PLANAR
from tests import dicom_factory as f

PARAMS = PreprocessConfig(image_size=32)


def test_planar_is_registered_with_rank_2_and_explained_reasons() -> None:
    assert modality.get("planar") is PLANAR and PLANAR.rank == 2
    assert PLANAR.reasons <= set(EXPLANATIONS)
    with pytest.raises(ValueError, match="unknown imaging modality"):
        modality.get("ultrasound")


@dataclass
class ToyVolume:
    """A multi-frame object as one (frames, S, S) array: enough to show a rank-3 modality needs no other change."""

    modality: ClassVar[str] = "toy-volume"
    frames: np.ndarray


class ToyVolumeModality:
    name, rank, reasons = "toy-volume", 3, frozenset({Reason.MULTI_FRAME})

    def check(self, ds: pydicom.Dataset, header: ImageHeader) -> None:
        if int(ds.get("NumberOfFrames", 1) or 1) < 2:
            raise Rejection(Reason.MULTI_FRAME, "a volume needs several frames")

    def decode(self, ds: pydicom.Dataset, header: ImageHeader) -> ToyVolume:
        return ToyVolume(pixel_array(ds, header).astype(np.float32))

    def preprocess(self, decoded: ToyVolume, params: PreprocessConfig) -> np.ndarray:
        s = params.image_size
        v = decoded.frames[:, : s * 2 : 2, : s * 2 : 2]
        return (v - v.min()) / (v.max() - v.min())


def _export(tmp_path: Path) -> Path:
    data = tmp_path / "export"
    data.mkdir()
    f.write_image(data / "film.dcm", f.phantom(64, 64))
    f.write_multiframe(data / "cine.dcm", frames=3)
    f.write_rgb(data / "screenshot.dcm")
    return data


def test_planar_alone_rejects_a_multi_frame_object_and_caches_2d_rows(tmp_path: Path) -> None:
    scan = scan_site(_export(tmp_path), PARAMS, tmp_path / "cache", workers=1)
    by_path = {r.path: r for r in scan.records}
    assert by_path["film.dcm"].usable and scan.load_image(by_path["film.dcm"]).shape == (32, 32)
    assert by_path["cine.dcm"].reason == Reason.MULTI_FRAME.value
    assert by_path["screenshot.dcm"].reason == Reason.NOT_GRAYSCALE.value
    (shard,) = scan.cache.shards()
    assert shard["shape"] == [32, 32] and shard["used"] == 1


def test_a_registered_volume_modality_takes_multi_frame_objects_and_the_cache_records_its_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modality, "MODALITIES", {"toy-volume": ToyVolumeModality(), "planar": PLANAR})
    data = _export(tmp_path)
    scan = scan_site(data, PARAMS, tmp_path / "cache", workers=1)
    by_path = {r.path: r for r in scan.records}
    assert by_path["cine.dcm"].usable and scan.load_image(by_path["cine.dcm"]).shape == (3, 32, 32)
    assert by_path["screenshot.dcm"].reason == Reason.NOT_GRAYSCALE.value  # planar, tried last, says why
    # one export may mix array shapes: each shape gets its own shards
    assert sorted(s["shape"] for s in scan.cache.shards()) == [[3, 32, 32], [32, 32]]
    again = scan_site(data, PARAMS, tmp_path / "cache", workers=1)  # from the pack, no decoding
    assert again.cache.decoded == 0 and again.load_image(again.usable[0]).shape == (3, 32, 32)
