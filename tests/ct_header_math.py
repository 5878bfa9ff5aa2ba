"""Test-only: where a written CT frame's pixels lie, from its DICOM header alone, by plain arithmetic.

Deliberately independent of the writer's code (no SliceGrid, no VolumeGeometry): if the
writer and this file disagree about IPP/IOP/PixelSpacing, the synthetic cohort's headers lie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom


@dataclass
class Frame:
    """One image plane as its header describes it, with its pixels in HU (padding as NaN)."""

    sop_uid: str
    frame_number: int | None  # 1-based frame of an Enhanced CT object; None for a single-frame file
    ipp: np.ndarray  # (3,)
    iop: np.ndarray  # (6,)
    spacing: tuple[float, float]  # (row spacing, column spacing)
    thickness: float
    hu: np.ndarray  # (rows, columns) float64

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.iop[:3], self.iop[3:])

    def centres(self) -> np.ndarray:
        """(rows, columns, 3) LPS mm of every pixel centre: IPP + col·Δc·X + row·Δr·Y."""
        rows, cols = self.hu.shape
        r = np.arange(rows, dtype=np.float64)[:, None, None]
        c = np.arange(cols, dtype=np.float64)[None, :, None]
        x, y = self.iop[:3], self.iop[3:]
        return self.ipp + c * self.spacing[1] * x + r * self.spacing[0] * y

    def to_pixel(self, pts: np.ndarray) -> np.ndarray:
        """(k, 3) LPS mm in the plane → (k, 2) fractional (column, row)."""
        d = np.asarray(pts, dtype=np.float64) - self.ipp
        return np.column_stack([d @ self.iop[:3] / self.spacing[1], d @ self.iop[3:] / self.spacing[0]])


def _floats(v) -> np.ndarray:
    return np.array([float(x) for x in v], dtype=np.float64)


def _hu(arr: np.ndarray, slope: float, intercept: float, padding: int | None) -> np.ndarray:
    out = arr.astype(np.float64) * slope + intercept
    if padding is not None:
        out[arr == padding] = np.nan
    return out


def read_frames(paths: list[Path]) -> list[Frame]:
    """Every frame of a series' files, in file (and frame) order."""
    frames = []
    for path in paths:
        ds = pydicom.dcmread(path)
        padding = int(ds.PixelPaddingValue) if "PixelPaddingValue" in ds else None
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            pvt = shared.PixelValueTransformationSequence[0]
            measures = shared.PixelMeasuresSequence[0]
            iop = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
            pixels = ds.pixel_array
            for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                frames.append(
                    Frame(
                        ds.SOPInstanceUID,
                        i + 1,
                        _floats(item.PlanePositionSequence[0].ImagePositionPatient),
                        iop,
                        tuple(_floats(measures.PixelSpacing)),
                        float(measures.SliceThickness),
                        _hu(pixels[i], float(pvt.RescaleSlope), float(pvt.RescaleIntercept), padding),
                    )
                )
        else:
            frames.append(
                Frame(
                    ds.SOPInstanceUID,
                    None,
                    _floats(ds.ImagePositionPatient),
                    _floats(ds.ImageOrientationPatient),
                    tuple(_floats(ds.PixelSpacing)),
                    float(ds.SliceThickness),
                    _hu(ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept), padding),
                )
            )
    return frames


def series_paths(root: Path, record: dict) -> list[Path]:
    """The files of a manifest series record (paths are relative to <site>/dicom/)."""
    return [root / record["site"] / "dicom" / f for f in record["files"]]
