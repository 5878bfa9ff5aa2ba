"""Per-site CT scanner profiles: how one hospital acquires, reconstructs, encodes and labels its CT.

As for radiographs (:mod:`shared.synth.profiles`), two kinds of difference:

* **Look**: reconstruction kernel (noise level, blur or edge enhancement), slice
  thickness and spacing, in-plane field of view, and the population (lesion
  prevalence and size). This survives any correct reader: real domain shift.
* **Encoding**: patient position (each changes ImageOrientationPatient and slice
  order), scan direction, stored pixel type and rescale, padding outside the
  reconstruction circle, transfer syntax, classic single-frame or enhanced
  multi-frame, SEG or RTSTRUCT labels, export layout. A correct reader undoes all of it.

All vendors, models, kernels and institutions are fictional.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from shared.synth.ct_phantom import LesionTraits

PatientPosition = Literal["HFS", "FFS", "HFP", "FFP"]
PATIENT_POSITIONS: tuple[str, ...] = ("HFS", "FFS", "HFP", "FFP")
Encoding = Literal["classic", "rle", "jpegls", "enhanced"]
ENCODINGS: tuple[str, ...] = ("classic", "rle", "jpegls", "enhanced")
LabelFormat = Literal["SEG", "RTSTRUCT"]
TRANSFER_SYNTAX: dict[str, UID] = {
    "classic": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "enhanced": ExplicitVRLittleEndian,
}


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel as it shows in the image: noise level, blur, and edge enhancement.

    Blur is in pixels, not mm: synthetic images are 48-64 pixels across (6-9 mm pixels), where a real
    kernel's sub-millimetre point spread would vanish; what survives downsampling of a real scan is how
    smooth or crisp it looks on its own pixel grid."""

    name: str  # ConvolutionKernel as the vendor writes it
    group: str  # ConvolutionKernelGroup (enhanced CT): SOFT_TISSUE, STANDARD, LUNG, BONE, SHARP
    noise_hu: float  # standard deviation of the image noise in a uniform region
    blur_px: float  # Gaussian sigma of the in-plane point spread, in pixels of the written image (see above)
    sharpen: float = 0.0  # unsharp-mask gain (edge overshoot), 0 = none


@dataclass(frozen=True)
class CTSiteProfile:
    """Everything that makes one synthetic CT site's export look like one scanner fleet's."""

    name: str
    institution: str
    manufacturer: str
    model_name: str
    id_prefix: str  # PatientID / AccessionNumber prefix, unique per site
    kernel: Kernel
    slice_spacing_mm: float  # between slice centres (from the positions)
    slice_thickness_mm: float  # reconstructed thickness (may exceed the spacing: overlapping slices)
    fov_mm: float  # reconstruction diameter; PixelSpacing = fov / columns
    positions: tuple[PatientPosition, ...] = ("HFS",)  # cycled over the site's patients
    reverse_scan: bool = False  # True: slices run caudocranial for head-first (craniocaudal for feet-first)
    encoding: Encoding = "classic"
    signed: bool = False  # int16 (BitsStored 16) or uint16 (BitsStored 12)
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    circular_fov: bool = False  # pixels outside the reconstruction circle hold PixelPaddingValue
    padding_hu: float = -2000.0
    label_format: LabelFormat = "SEG"
    lesions: LesionTraits = field(default_factory=LesionTraits)
    kvp: float = 120.0
    localizers: bool = True  # the export includes the scout images of each study
    slice_fraction: float = 1.0  # slices = round(size * slice_fraction)
    rows_fraction: float = 1.0  # rows = round(size * rows_fraction) (columns = size)
    default_patients: int = 6
    dcm_suffix: bool = True  # files named IMG0001.dcm rather than IMG0001

    def __post_init__(self) -> None:
        bad = [p for p in self.positions if p not in PATIENT_POSITIONS]
        if not self.positions or bad:
            raise ValueError(f"CT profile {self.name}: positions must be among {PATIENT_POSITIONS}, got {bad}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"CT profile {self.name}: encoding must be one of {ENCODINGS}")
        if self.label_format not in ("SEG", "RTSTRUCT"):
            raise ValueError(f"CT profile {self.name}: label_format must be SEG or RTSTRUCT")
        if not (0.5 <= self.slice_spacing_mm <= 10 and 0.5 <= self.slice_thickness_mm <= 10):
            raise ValueError(f"CT profile {self.name}: slice spacing and thickness must be 0.5-10 mm")
        if self.rescale_slope <= 0:
            raise ValueError(f"CT profile {self.name}: rescale_slope must be positive")

    @property
    def transfer_syntax(self) -> UID:
        return TRANSFER_SYNTAX[self.encoding]

    @property
    def bits_stored(self) -> int:
        return 16 if self.signed else 12

    @property
    def stored_range(self) -> tuple[int, int]:
        return (-32768, 32767) if self.signed else (0, 4095)

    def position(self, patient_index: int) -> str:
        return self.positions[patient_index % len(self.positions)]

    def matrix(self, size: int) -> tuple[int, int, int]:
        """(slices, rows, columns) for a cohort ``size``."""
        return (
            max(8, round(size * self.slice_fraction)),
            max(8, round(size * self.rows_fraction)),
            size,
        )


CT_SITE_1 = CTSiteProfile(
    name="site-1",
    institution="Northbrook General Hospital (synthetic)",
    manufacturer="Acme Medical",
    model_name="AcmeCT 64",
    id_prefix="NBC",
    kernel=Kernel("B30f", "SOFT_TISSUE", noise_hu=12.0, blur_px=0.9),
    slice_spacing_mm=2.5,
    slice_thickness_mm=2.5,
    fov_mm=380.0,
    positions=("HFS",),
    encoding="classic",
    signed=False,
    rescale_intercept=-1024.0,
    label_format="SEG",
    lesions=LesionTraits(prevalence=0.7, radius_mm=(9.0, 20.0)),
)

CT_SITE_2 = CTSiteProfile(
    name="site-2",
    institution="Riverside Clinic (synthetic)",
    manufacturer="Kestrel Imaging",
    model_name="Kestrel Aquila 16",
    id_prefix="RSC",
    kernel=Kernel("STANDARD", "STANDARD", noise_hu=18.0, blur_px=1.2),
    slice_spacing_mm=5.0,
    slice_thickness_mm=5.0,
    fov_mm=420.0,
    positions=("FFS", "HFS"),
    encoding="rle",
    signed=True,
    rescale_intercept=-1024.0,
    label_format="RTSTRUCT",
    lesions=LesionTraits(prevalence=0.6, radius_mm=(10.0, 24.0), liver_fraction=0.8),
    localizers=False,
    slice_fraction=0.75,
    dcm_suffix=False,
)

CT_SITE_3 = CTSiteProfile(
    name="site-3",
    institution="Hillcrest Community Hospital (synthetic)",
    manufacturer="Borealis Systems",
    model_name="BX-CT Lite",
    id_prefix="HCC",
    kernel=Kernel("SHARP-H", "SHARP", noise_hu=25.0, blur_px=0.5, sharpen=0.4),
    slice_spacing_mm=1.0,
    slice_thickness_mm=1.25,
    fov_mm=400.0,
    positions=("HFP", "HFS"),
    reverse_scan=True,
    encoding="jpegls",
    signed=True,
    rescale_intercept=0.0,
    circular_fov=True,
    label_format="SEG",
    lesions=LesionTraits(prevalence=0.5, radius_mm=(8.0, 16.0), liver_fraction=0.5),
    kvp=100.0,
    rows_fraction=0.875,
)

CT_UNSEEN_1 = CTSiteProfile(
    name="unseen-1",
    institution="St. Elsewhere Imaging Centre (synthetic)",
    manufacturer="Corvid Radiology",
    model_name="Corvid Helix MF",
    id_prefix="SEC",
    kernel=Kernel("LUNG-E", "LUNG", noise_hu=30.0, blur_px=0.5, sharpen=0.6),
    slice_spacing_mm=3.0,
    slice_thickness_mm=3.0,
    fov_mm=360.0,
    positions=("FFP", "HFS"),
    encoding="enhanced",
    signed=False,
    rescale_intercept=-1024.0,
    label_format="SEG",
    lesions=LesionTraits(prevalence=0.6, radius_mm=(8.0, 18.0), liver_fraction=0.4),
    kvp=140.0,
    slice_fraction=0.875,
)

#: Built-in training sites in the order ``write_ct_cohort`` uses them, and the held-out scanners.
CT_TRAINING_PROFILES: tuple[CTSiteProfile, ...] = (CT_SITE_1, CT_SITE_2, CT_SITE_3)
CT_UNSEEN_PROFILES: tuple[CTSiteProfile, ...] = (CT_UNSEEN_1,)
CT_PROFILES: dict[str, CTSiteProfile] = {p.name: p for p in CT_TRAINING_PROFILES + CT_UNSEEN_PROFILES}


def derive_ct_profile(base: CTSiteProfile, name: str, id_prefix: str, seed: int) -> CTSiteProfile:
    """A new site resembling ``base`` with its own kernel noise, slice spacing and lesion prevalence."""
    rng = np.random.default_rng([seed, *name.encode()])
    k = base.kernel
    spacing = float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    return replace(
        base,
        name=name,
        id_prefix=id_prefix,
        institution=f"{name} Hospital (synthetic)",
        kernel=replace(k, noise_hu=round(k.noise_hu * float(rng.uniform(0.8, 1.25)), 2)),
        slice_spacing_mm=spacing,
        slice_thickness_mm=spacing,
        positions=(str(rng.choice(PATIENT_POSITIONS)), "HFS"),
        lesions=replace(base.lesions, prevalence=round(float(rng.uniform(0.4, 0.8)), 3)),
        fov_mm=round(float(rng.uniform(360.0, 420.0)), 1),
    )


def ct_cohort_profiles(n_sites: int = 3, unseen: int = 1, seed: int = 0) -> list[CTSiteProfile]:
    """The training profiles (built-ins first, then derived look-alikes) followed by the unseen ones."""
    if n_sites < 0 or unseen < 0:
        raise ValueError("n_sites and unseen must be >= 0")
    train = [
        CT_TRAINING_PROFILES[k]
        if k < len(CT_TRAINING_PROFILES)
        else derive_ct_profile(CT_TRAINING_PROFILES[k % len(CT_TRAINING_PROFILES)], f"site-{k + 1}", f"X{k + 1}C", seed)
        for k in range(n_sites)
    ]
    held = [
        CT_UNSEEN_PROFILES[k]
        if k < len(CT_UNSEEN_PROFILES)
        else derive_ct_profile(CT_UNSEEN_PROFILES[k % len(CT_UNSEEN_PROFILES)], f"unseen-{k + 1}", f"U{k + 1}C", seed)
        for k in range(unseen)
    ]
    return train + held
