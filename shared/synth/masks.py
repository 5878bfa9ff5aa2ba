"""Ground-truth masks of a synthetic image, on the pixel grid of the written DICOM image.

Why here and not in the SEG writer: only the renderer knows where an acquisition put
the anatomy. The image is rendered on the ``RENDER`` grid, shifted by the positioning
jitter, cut by the collimator and bilinearly upsampled to the native matrix; the masks
take exactly the same shift and the same upsampling, so a mask pixel lies over the
written pixel that shows it. Masks label what the film shows: anatomy under the
collimator blades (white, unexposed border) is outside every mask.
"""

from __future__ import annotations

import math

import numpy as np

from shared.synth.anatomy import RENDER, Exposure, Patient, _shift, collimation_field, upsample

#: Segment order of every synthetic SEG (segment number = index + 1).
SEGMENT_LABELS: tuple[str, ...] = ("nodule", "lung")


def _native_coords(matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised X, Y of native pixel centres; the renderer's bilinear upsampling keeps this mapping."""
    c = ((np.arange(matrix, dtype=np.float64) + 0.5) / matrix) * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def anatomy_masks(patient: Patient, exposure: Exposure, matrix: int) -> dict[str, np.ndarray]:
    """``{"nodule": mask, "lung": mask}``, boolean (matrix, matrix), for one :class:`Exposure` of ``patient``.

    The lung field is the renderer's soft mask, shifted and upsampled like the image and cut at
    0.5 (its sigmoid edge). Nodules are the exact ellipses the renderer drew, evaluated at the
    native pixel centres (sharper than upsampling a 128-grid mask); several nodules share the one
    ``nodule`` mask. An image without a nodule gets an all-false ``nodule`` mask.
    """
    inside = collimation_field(exposure.margins) if exposure.margins is not None else None
    lung = _shift(patient.lung, exposure.dy, exposure.dx)
    if inside is not None:
        lung = lung * inside
    lung_mask = upsample(np.ascontiguousarray(lung, dtype=np.float32), matrix) >= 0.5

    X, Y = _native_coords(matrix)
    ox, oy = 2.0 * exposure.dx / RENDER, 2.0 * exposure.dy / RENDER  # the shift in normalised units
    nodule = np.zeros((matrix, matrix), dtype=bool)
    for nod in patient.nodules:
        xp, yp = X - (nod.x + ox), Y - (nod.y + oy)
        c, s = math.cos(nod.theta), math.sin(nod.theta)
        u = (xp * c + yp * s) / nod.rx
        v = (-xp * s + yp * c) / nod.ry
        nodule |= u * u + v * v <= 1.0
    if inside is not None:
        nodule &= upsample(inside.astype(np.float32), matrix) >= 0.5
    return {"nodule": nodule, "lung": lung_mask}
