"""The LPS geometry contract every CT/MR module shares (shared/imaging/volume_geometry.py)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.imaging.volume_geometry import VolumeGeometry, slice_stack_geometry, to_canonical

# ImageOrientationPatient for the four classic axial patient positions (row dir, column dir).
POSITIONS = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
}


@pytest.mark.parametrize("position", sorted(POSITIONS))
@pytest.mark.parametrize("descending", [False, True])
def test_a_marker_lands_at_the_same_patient_point_whatever_the_position(position: str, descending: bool) -> None:
    shape = (6, 5, 4)
    step = (0.0, 0.0, -2.5 if descending else 2.5)
    geom = slice_stack_geometry(POSITIONS[position], (10.0, -20.0, 30.0), step, (0.8, 0.6), shape, "1.2.3")
    vol = np.zeros(shape, np.float32)
    vol[1, 3, 2] = 1.0  # an asymmetric marker
    marker_lps = geom.index_to_patient((1, 3, 2))

    canon, cgeom = to_canonical(vol, geom)
    found = np.argwhere(canon == 1.0)[0]
    np.testing.assert_allclose(cgeom.index_to_patient(found), marker_lps, atol=1e-9)
    # canonical: every axis grows towards S, P, L in that order, with the acquisition's spacing
    np.testing.assert_allclose(cgeom.directions, np.eye(3)[::-1], atol=1e-12)
    np.testing.assert_allclose(sorted(cgeom.spacing), sorted((2.5, 0.8, 0.6)))
    np.testing.assert_allclose(cgeom.patient_to_index(marker_lps), found, atol=1e-9)


def test_a_sagittal_stack_becomes_axial_order() -> None:
    # sagittal MR: rows run anterior→posterior (+y), columns run superior→inferior (-z), slices step to the left
    geom = slice_stack_geometry((0, 1, 0, 0, 0, -1), (-40.0, -50.0, 60.0), (1.5, 0, 0), (1.0, 1.0), (3, 7, 9))
    vol = np.arange(np.prod(geom.shape), dtype=np.float32).reshape(geom.shape)
    canon, cgeom = to_canonical(vol, geom)
    assert canon.shape == (7, 9, 3)
    for idx in [(0, 0, 0), (2, 6, 8), (1, 3, 4)]:
        value = vol[idx]
        where = np.argwhere(canon == value)[0]
        np.testing.assert_allclose(cgeom.index_to_patient(where), geom.index_to_patient(idx), atol=1e-9)


def test_an_oblique_stack_keeps_its_rotation() -> None:
    c, s = np.cos(0.2), np.sin(0.2)
    geom = slice_stack_geometry((c, s, 0, -s, c, 0), (0, 0, 0), (0, 0, 3.0), (0.5, 0.5), (4, 4, 4))
    canon, cgeom = to_canonical(np.zeros(geom.shape), geom)
    assert canon.shape == (4, 4, 4)
    assert np.all(np.diag(cgeom.directions[::-1]) > 0.9)  # nearest axes, rotation kept, nothing resampled


def test_bad_affine_is_refused() -> None:
    with pytest.raises(ValueError, match="4x4"):
        VolumeGeometry((1, 1, 1), np.eye(3))
