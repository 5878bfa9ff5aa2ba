"""Write real DICOM files in the odd variants hospital exports contain (test fixtures only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def phantom(rows: int = 96, cols: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth float image in [0, 1] with a bright disc, so orientation and inversion can be checked."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = 0.2 + 0.3 * xx / cols  # left dark, right bright
    img[(yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 < (min(rows, cols) / 6) ** 2] = 0.9
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)


def base_dataset(
    sop_uid: str | None = None,
    patient_id: str = "P001",
    study_uid: str | None = None,
    accession: str = "ACC001",
    modality: str = "DX",
    sop_class: str = DX_STORAGE,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "TestVendor"
    return ds


def write_image(
    path: Path,
    image: np.ndarray | None = None,
    *,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    preamble: bool = True,
    **header,
) -> Dataset:
    """Encode ``image`` (float in [0, 1], MONOCHROME2 sense) into stored values and write a DICOM file."""
    image = phantom() if image is None else image
    ds = base_dataset(**header)
    lo = -(2 ** (bits_stored - 1)) if signed else 0
    hi = (2 ** (bits_stored - 1) - 1) if signed else 2**bits_stored - 1
    values = image if photometric == "MONOCHROME2" else 1.0 - image
    stored = np.round(lo + values * (hi - lo)).astype(np.int64)
    allocated = 8 if bits_stored <= 8 else 16
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (allocated, signed)
    ]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelSpacing = [0.2, 0.2]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype(dtype).tobytes()
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.compress(transfer_syntax, stored.astype(dtype))
    elif transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return ds


def write_rgb(path: Path) -> Dataset:
    ds = base_dataset(sop_class=SecondaryCaptureImageStorage, modality="OT")
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_multiframe(path: Path, frames: int = 3) -> Dataset:
    ds = base_dataset()
    arr = (np.random.default_rng(0).random((frames, 64, 64)) * 4095).astype(np.uint16)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_structured_report(path: Path) -> Dataset:
    ds = base_dataset(sop_class=BASIC_TEXT_SR, modality="SR")
    ds.ValueType = "CONTAINER"
    ds.save_as(path, enforce_file_format=True)
    return ds


def truncate(path: Path, keep_fraction: float = 0.6) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep_fraction)])


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
