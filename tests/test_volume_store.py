"""The CT/MR cache (shared/imaging/volume_store.py): whole arrays or nothing, patches read without mapping."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.imaging.volume_store import VolumeStore


def _volume(shape: tuple[int, int, int] = (7, 9, 11)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)


def test_an_array_round_trips_and_patches_are_exact(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    vol = _volume()
    store.put("series-a", "image", vol, {"spacing": [2.0, 1.0, 1.0]})
    again = VolumeStore(tmp_path).get("series-a", "image")  # a new process sees it through the index
    assert again is not None and again.shape == vol.shape and again.meta == {"spacing": [2.0, 1.0, 1.0]}
    np.testing.assert_array_equal(again.read(), vol)
    np.testing.assert_array_equal(again[2:5, 3:9, 4:6], vol[2:5, 3:9, 4:6])
    np.testing.assert_array_equal(again[-2:, :, :1], vol[-2:, :, :1])
    np.testing.assert_array_equal(np.load(tmp_path / "volumes" / "series-a.image.npy"), vol)  # plain .npy
    assert again[3:3, :, :].shape == (0, 9, 11)


def test_a_damaged_file_is_a_miss_not_garbage(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    store.put("s", "labels", _volume().astype(np.uint8), {})
    path = tmp_path / "volumes" / "s.labels.npy"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 5)
    assert VolumeStore(tmp_path).get("s", "labels") is None


def test_header_records_survive_a_new_process(tmp_path: Path) -> None:
    data = tmp_path / "f.dcm"
    data.write_bytes(b"x")
    store = VolumeStore(tmp_path / "cache")
    store.remember(data, data.stat(), "abc", {"series": "1.2"})
    store.commit()
    fresh = VolumeStore(tmp_path / "cache")
    assert fresh.memo_sha(data, data.stat()) == "abc" and fresh.header("abc") == {"series": "1.2"}
    data.write_bytes(b"changed")
    os.utime(data, ns=(1, 1))
    assert fresh.memo_sha(data, data.stat()) is None


def test_an_unwritable_cache_keeps_arrays_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="continuing in memory"):
        store = VolumeStore(blocker / "cache")
    stored = store.put("s", "image", _volume(), {})
    np.testing.assert_array_equal(stored[1:2, :, :], _volume()[1:2])
    assert store.get("s", "image") is stored


def test_partial_indexes_and_numpy_conversion_read_like_an_array(tmp_path: Path) -> None:
    stored = VolumeStore(tmp_path).put("s", "image", _volume(), {})
    np.testing.assert_array_equal(stored[2:4], _volume()[2:4])
    np.testing.assert_array_equal(stored[1:3, 2:5], _volume()[1:3, 2:5])
    np.testing.assert_array_equal(np.array(stored, dtype=np.float32), _volume().astype(np.float32))
