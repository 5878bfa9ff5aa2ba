"""Series a careful CT reader must reject, as real exports hold them: scouts, gaps, doubled slices.

Reason codes (recorded per series in the cohort manifest, :data:`JUNK_REASONS`):

* ``localizer``: the scout (topogram) of a study: CT Image Storage with ImageType
  ``ORIGINAL\\PRIMARY\\LOCALIZER``, two projection images (frontal and lateral), so
  planes of different orientations and no slice stack;
* ``missing-slice``: a second copy of the study's axial acquisition with one slice in
  the middle absent (a file lost on export, or a frame absent in an Enhanced CT);
* ``duplicate-slice``: a copy with one slice written twice (two SOP instances, or two
  frames, at the same position), as when an export is merged twice.

The copies reuse the axial series' stored pixels and geometry, with their own series and
instance UIDs and series numbers, so nothing but the defect tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from shared.synth.ct_phantom import CTPhantom
from shared.synth.ct_profiles import CTSiteProfile
from shared.synth.ct_series_writer import CTSeriesMeta, CTStudyMeta, common_header, ds_str

LOCALIZER, MISSING_SLICE, DUPLICATE_SLICE = "localizer", "missing-slice", "duplicate-slice"
JUNK_REASONS: tuple[str, ...] = (LOCALIZER, MISSING_SLICE, DUPLICATE_SLICE)
LOCALIZER_LENGTH_MM = 600.0  # scanned length (z) and width of a scout
WATER_MU_PER_MM = 0.019  # linear attenuation of water at CT energies
PROJECTION_SAMPLES = 48


def junk_order(reason: str, n_slices: int) -> list[int]:
    """Which grid slices a junk copy writes, in instance order: one dropped, or one repeated, in the middle."""
    mid = n_slices // 2
    if reason == MISSING_SLICE:
        return [k for k in range(n_slices) if k != mid]
    if reason == DUPLICATE_SLICE:
        return [*range(mid + 1), mid, *range(mid + 1, n_slices)]
    raise ValueError(f"no slice order for junk reason {reason!r}")


@dataclass(frozen=True)
class Projection:
    """One scout image's plane: the image's row and column directions and the direction it projects along."""

    name: str
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    through: tuple[float, float, float]


PROJECTIONS = (
    Projection("AP", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    Projection("LAT", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
)


def render_projection(
    phantom: CTPhantom, proj: Projection, size: int, centre: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """(stored uint16 image, ImagePositionPatient, pixel spacing) of one scout through ``centre`` (LPS mm)."""
    px = round(LOCALIZER_LENGTH_MM / size, 4)
    row_dir, col_dir, through = (np.asarray(v) for v in (proj.row_dir, proj.col_dir, proj.through))
    ipp = np.round(centre - row_dir * px * (size - 1) / 2 - col_dir * px * (size - 1) / 2, 3)
    idx = np.arange(size, dtype=np.float64)
    plane = ipp + idx[:, None, None] * px * col_dir + idx[None, :, None] * px * row_dir  # (rows, cols, 3)
    depth = np.linspace(-250.0, 250.0, PROJECTION_SAMPLES)
    pts = plane[:, :, None, :] + depth[None, None, :, None] * through
    mu = np.clip(phantom.hu(pts) + 1000.0, 0.0, None) / 1000.0 * WATER_MU_PER_MM
    line_integral = mu.sum(axis=-1) * (depth[1] - depth[0])
    return np.clip(np.rint(line_integral * 400.0), 0, 4095).astype(np.uint16), ipp, px


def build_localizer(
    phantom: CTPhantom,
    size: int,
    centre: np.ndarray,
    profile: CTSiteProfile,
    study: CTStudyMeta,
    series: CTSeriesMeta,
    position: str,
) -> list[Dataset]:
    """The scout series of a study: one CT Image per :data:`PROJECTIONS` entry, ImageType LOCALIZER."""
    out = []
    for number, (proj, sop_uid) in enumerate(zip(PROJECTIONS, series.sop_uids), start=1):
        img, ipp, px = render_projection(phantom, proj, size, centre)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        common_header(ds, profile, study, series)
        ds.PatientPosition = position
        ds.ScanOptions = "SURVIEW"
        ds.SliceThickness = "1"
        ds.KVP = "120"
        ds.ConvolutionKernel = "SCOUT"
        ds.AcquisitionNumber = number
        ds.AcquisitionDate, ds.AcquisitionTime = study.study_date, study.study_time
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [ds_str(v) for v in ipp]
        ds.ImageOrientationPatient = [ds_str(v) for v in (*proj.row_dir, *proj.col_dir)]
        ds.PixelSpacing = [ds_str(px), ds_str(px)]
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"  # line integrals, not HU
        ds.WindowCenter = "1200"
        ds.WindowWidth = "2400"
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.ImageComments = f"SYNTHETIC SCOUT {proj.name} - not a patient - FedRad test cohort"
        ds.set_pixel_data(img, "MONOCHROME2", 12, generate_instance_uid=False)
        out.append(ds)
    return out
