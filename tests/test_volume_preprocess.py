"""Volume → model input (shared/imaging/volume_preprocess.py): resampling keeps patient coordinates, CT windows, MR."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from shared.imaging.volume_geometry import VolumeGeometry, resampled_geometry, slice_stack_geometry, to_canonical
from shared.imaging.volume_preprocess import (
    WINDOW_PRESETS,
    CTWindow,
    VolumeParams,
    normalise_mr,
    preprocess_volume,
    resample,
    window_ct,
)


def _blob_volume(geometry: VolumeGeometry, centre_lps: np.ndarray, radius_mm: float = 4.0) -> np.ndarray:
    """A smooth bright ball around ``centre_lps`` (mm), so its centroid is well defined at any voxel size."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij"), axis=-1)
    d2 = np.sum((geometry.index_to_patient(idx) - centre_lps) ** 2, axis=-1)
    return (1000.0 * np.exp(-d2 / (2 * (radius_mm / 2) ** 2))).astype(np.float32)


def _centroid_lps(volume: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    idx = np.argwhere(volume > 0.05 * volume.max())
    weights = volume[tuple(idx.T)]
    return geometry.index_to_patient((idx * weights[:, None]).sum(axis=0) / weights.sum())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.5, 2.0), (1.5, 1.5, 1.5)])
def test_resampling_keeps_a_markers_patient_coordinate(spacing: tuple[float, float, float]) -> None:
    # an oblique-ish FFS acquisition brought to canonical order, then resampled
    geom = slice_stack_geometry((-1, 0, 0, 0, 1, 0), (30.0, -20.0, 50.0), (0, 0, -2.5), (0.8, 0.7), (16, 40, 36))
    marker = np.array([18.3, 2.1, 31.7])
    vol, cgeom = to_canonical(_blob_volume(geom, marker), geom)
    out, ogeom = resample(vol, cgeom, spacing)
    assert out.dtype == np.float32 and ogeom.spacing == pytest.approx(spacing)
    assert out.shape == ogeom.shape
    np.testing.assert_allclose(ogeom.affine[:3, 3], cgeom.affine[:3, 3])  # the first voxel centre stays
    np.testing.assert_allclose(ogeom.directions, cgeom.directions, atol=1e-12)
    half_voxel = np.linalg.norm(np.asarray(spacing)) / 2
    assert np.linalg.norm(_centroid_lps(out, ogeom) - marker) < half_voxel
    # the grid spans no further than the old one: its last voxel centre lies within the old grid
    last = ogeom.index_to_patient(np.asarray(ogeom.shape) - 1)
    assert np.all(cgeom.patient_to_index(last) <= np.asarray(cgeom.shape) - 1 + 1e-6)


def test_resampled_geometry_rejects_nonsense_spacing() -> None:
    geom = slice_stack_geometry((1, 0, 0, 0, 1, 0), (0, 0, 0), (0, 0, 1), (1, 1), (4, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        resampled_geometry(geom, (1.0, 0.0, 1.0))


def test_label_maps_resample_by_nearest_neighbour_and_keep_their_dtype() -> None:
    geom = slice_stack_geometry((1, 0, 0, 0, 1, 0), (0, 0, 0), (0, 0, 1.0), (1.0, 1.0), (20, 20, 20))
    labels = np.zeros(geom.shape, np.uint8)
    labels[5:15, 4:12, 8:18] = 2
    labels[10:12, 10:12, 10:12] = 1
    out, ogeom = resample(labels, geom, (2.0, 2.0, 2.0), labels=True)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2}
    # every output voxel carries the label of the input voxel at its centre
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in ogeom.shape), indexing="ij"), axis=-1)
    src = np.rint(geom.patient_to_index(ogeom.index_to_patient(idx))).astype(int)
    np.testing.assert_array_equal(out, labels[src[..., 0], src[..., 1], src[..., 2]])


def test_resampling_to_the_same_spacing_is_a_copy() -> None:
    geom = slice_stack_geometry((1, 0, 0, 0, 1, 0), (0, 0, 0), (0, 0, 2.0), (1.0, 1.0), (3, 4, 5))
    vol = np.arange(60, dtype=np.float32).reshape(geom.shape)
    out, ogeom = resample(vol, geom, (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, vol)
    assert out is not vol and ogeom == geom


@pytest.mark.parametrize(
    ("preset", "hu", "expected"),
    [
        ("soft_tissue", [-1000, -160, 40, 240, 1000], [0.0, 0.0, 0.5, 1.0, 1.0]),
        ("lung", [-1350, -600, 150], [0.0, 0.5, 1.0]),
        ("bone", [-500, 400, 1300], [0.0, 0.5, 1.0]),
        ("brain", [0, 40, 80, 60], [0.0, 0.5, 1.0, 0.75]),
    ],
)
def test_ct_window_presets_map_known_hu_to_known_values(preset: str, hu: list[float], expected: list[float]) -> None:
    level, width = WINDOW_PRESETS[preset]
    out = window_ct(np.asarray(hu, np.float32), level, width)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_a_custom_window_and_params_validation() -> None:
    params = VolumeParams(ct_window=CTWindow(level=100, width=200))
    assert params.window() == (100, 200)
    assert VolumeParams(ct_window="lung").window() == (-600.0, 1500.0)
    assert VolumeParams().cache_tag() != VolumeParams(target_spacing_mm=(1, 1, 1)).cache_tag()
    with pytest.raises(ValidationError):
        VolumeParams(ct_window="liver")
    with pytest.raises(ValidationError):
        VolumeParams(target_spacing_mm=(1.0, -1.0, 1.0))
    with pytest.raises(ValidationError):
        CTWindow(level=0, width=0)


def test_mr_normalisation_maps_background_to_0_and_the_body_to_0_1() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(5, 2, (20, 32, 32)).clip(0).astype(np.float32)  # background noise
    vol[4:16, 8:24, 8:24] = rng.normal(300, 40, (12, 16, 16))  # the body
    vol[10, 16, 16] = 5000  # one hot voxel must not set the scale
    out = normalise_mr(vol)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.median(out[4:16, 8:24, 8:24]) == pytest.approx(300 / 400, abs=0.1)  # body spread over [0, 1]
    assert np.percentile(out[:3], 99) < 0.05  # background near 0
    np.testing.assert_array_equal(normalise_mr(np.full((4, 4, 4), 7.0)), 0.0)


def test_preprocess_volume_resamples_then_windows_ct_and_normalises_mr() -> None:
    geom = slice_stack_geometry((1, 0, 0, 0, 1, 0), (0, 0, 0), (0, 0, 2.0), (1.0, 1.0), (8, 10, 10))
    hu = np.full(geom.shape, 40.0, np.float32)
    out, ogeom = preprocess_volume(hu, geom, "CT", VolumeParams(target_spacing_mm=(1.0, 2.0, 2.0)))
    assert ogeom.shape == (15, 5, 5) and np.allclose(out, 0.5)
    mr, _ = preprocess_volume(np.abs(hu - np.arange(10)), geom, "MR", VolumeParams())
    assert mr.min() >= 0 and mr.max() <= 1
