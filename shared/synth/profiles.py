"""Per-site scanner profiles: how one hospital's images look and how its DICOM is encoded.

Two kinds of difference, kept apart on purpose:

* **Look** (:class:`ScannerLook`): contrast curve, noise, blur, bias field,
  collimation, and population/positioning (AP portable films: shallower
  inspiration, bigger heart shadow). This is real domain shift that survives
  any correct loader, and it is what the ``shift`` dial scales: 0 makes every
  site look like :data:`REFERENCE_LOOK`, 1 is the profile as written, 2
  doubles every difference.
* **Encoding**: matrix size, BitsStored, signedness, MONOCHROME1/2,
  Rescale Slope/Intercept, transfer syntax, file layout. A correct loader
  undoes all of it, so it is *not* scaled by ``shift``; it exercises the loader.

All vendors, models and institutions are fictional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

FIELD_OF_VIEW_MM = 430.0  # detector width; PixelSpacing = FOV / matrix


@dataclass(frozen=True)
class ScannerLook:
    """Image-appearance parameters of one site (after applying the ``shift`` dial)."""

    gamma: float = 1.0  # processing LUT exponent (1 = linear)
    sigmoid_gain: float = 0.0  # normalised sigmoid LUT gain (0 = linear)
    sigmoid_mid: float = 0.5
    noise: float = 0.012  # quantum noise std on the 128-grid (survives downsampling to 64)
    grain: float = 0.012  # white detector noise std at the native matrix (cosmetic at 64)
    blur_px: float = 0.7  # detector/scatter blur, Gaussian sigma in 128-grid pixels
    bias: float = 0.0  # strength of the smooth multiplicative bias field
    heel: tuple[float, float] = (0.0, 0.0)  # fixed (x, y) direction of the site's heel-effect gradient
    collimation: float = 0.0  # mean unexposed border width, fraction of the image side
    inspiration: float = 0.0  # diaphragm raised by this much (normalised units; AP supine films)
    heart_scale: float = 1.0  # heart shadow width factor (AP magnification)


REFERENCE_LOOK = ScannerLook()


def _lerp(ref: float, val: float, s: float) -> float:
    return ref + s * (val - ref)


@dataclass(frozen=True)
class SiteProfile:
    """Everything that makes one synthetic site's export look like one real scanner fleet."""

    name: str
    institution: str
    manufacturer: str
    model_name: str
    id_prefix: str  # PatientID / AccessionNumber prefix, unique per site
    modality: Literal["DX", "CR"] = "DX"
    matrix: int = 320
    bits_stored: int = 12
    signed: bool = False
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2"
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    transfer_syntax: str = ExplicitVRLittleEndian
    stored_window: tuple[float, float] = (0.0, 1.0)  # part of the stored-value range the image uses
    view: Literal["PA", "AP"] = "PA"
    look_spec: ScannerLook = field(default_factory=ScannerLook)
    prevalence: float = 0.3  # fraction of images with a nodule
    default_size: int = 150
    dcm_suffix_prob: float = 1.0  # fraction of files named IMG0001.dcm rather than IMG0001
    series_dirs: bool = False  # PACS export nests a series folder under each study

    def __post_init__(self) -> None:
        if not 64 <= self.matrix <= 384:
            raise ValueError(f"profile {self.name}: matrix {self.matrix} must be in [64, 384] (keep files small)")
        if self.bits_stored not in (8, 10, 12, 16):
            raise ValueError(f"profile {self.name}: bits_stored must be 8, 10, 12 or 16")
        if not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"profile {self.name}: prevalence must be in (0, 1)")
        lo, hi = self.stored_window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"profile {self.name}: stored_window must satisfy 0 <= lo < hi <= 1")
        if self.rescale_slope <= 0:
            raise ValueError(f"profile {self.name}: rescale_slope must be positive")

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored == 8 else 16

    @property
    def pixel_spacing_mm(self) -> float:
        return round(FIELD_OF_VIEW_MM / self.matrix, 4)

    @property
    def stored_limits(self) -> tuple[int, int]:
        """(lowest, highest) stored value the image maps to: display 0 and 1 (MONOCHROME2)."""
        b = self.bits_stored
        vmin, vmax = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if self.signed else (0, 2**b - 1)
        lo, hi = self.stored_window
        return int(round(vmin + lo * (vmax - vmin))), int(round(vmin + hi * (vmax - vmin)))

    def look(self, shift: float = 1.0) -> ScannerLook:
        """This site's appearance with every difference from the reference scaled by ``shift``."""
        if not (shift >= 0 and math.isfinite(shift)):
            raise ValueError(f"shift must be a finite number >= 0, got {shift}")
        r, v, s = REFERENCE_LOOK, self.look_spec, float(shift)
        return ScannerLook(
            gamma=math.exp(s * math.log(v.gamma)),
            sigmoid_gain=max(0.0, s * v.sigmoid_gain),
            sigmoid_mid=min(0.9, max(0.1, _lerp(r.sigmoid_mid, v.sigmoid_mid, s))),
            noise=max(0.0, _lerp(r.noise, v.noise, s)),
            grain=max(0.0, _lerp(r.grain, v.grain, s)),
            blur_px=max(0.0, _lerp(r.blur_px, v.blur_px, s)),
            bias=max(0.0, s * v.bias),
            heel=v.heel,
            collimation=min(0.2, max(0.0, s * v.collimation)),
            inspiration=s * v.inspiration,
            heart_scale=max(0.5, _lerp(r.heart_scale, v.heart_scale, s)),
        )


SITE_1 = SiteProfile(
    name="site-1",
    institution="Northbrook General Hospital (synthetic)",
    manufacturer="Acme Medical",
    model_name="AcmeDR 500",
    id_prefix="NB",
    modality="DX",
    matrix=320,
    bits_stored=12,
    transfer_syntax=ExplicitVRLittleEndian,
    stored_window=(0.02, 0.98),
    look_spec=ScannerLook(gamma=0.9, noise=0.010, grain=0.015, blur_px=0.6, bias=0.10, heel=(0.3, 0.0)),
    prevalence=0.30,
    default_size=400,
    dcm_suffix_prob=1.0,
)

SITE_2 = SiteProfile(
    name="site-2",
    institution="Riverside Clinic (synthetic)",
    manufacturer="Kestrel Imaging",
    model_name="KCR-9",
    id_prefix="RS",
    modality="CR",
    matrix=256,
    bits_stored=10,
    photometric="MONOCHROME1",
    rescale_slope=1.0,
    rescale_intercept=0.0,
    transfer_syntax=RLELossless,
    look_spec=ScannerLook(
        gamma=1.15,
        sigmoid_gain=5.0,
        sigmoid_mid=0.45,
        noise=0.018,
        grain=0.02,
        blur_px=1.0,
        bias=0.15,
        heel=(0.0, 0.4),
    ),
    prevalence=0.45,
    default_size=250,
    dcm_suffix_prob=0.0,
    series_dirs=True,
)

SITE_3 = SiteProfile(
    name="site-3",
    institution="Hillcrest Community Hospital (synthetic)",
    manufacturer="Borealis Systems",
    model_name="BX-Lite",
    id_prefix="HC",
    modality="DX",
    matrix=384,
    bits_stored=16,
    signed=True,
    rescale_slope=0.5,
    rescale_intercept=-1024.0,
    transfer_syntax=JPEGLSLossless,
    stored_window=(0.1, 0.8),
    look_spec=ScannerLook(gamma=0.75, noise=0.011, grain=0.02, blur_px=1.2, bias=0.2, heel=(-0.3, 0.2)),
    prevalence=0.45,
    default_size=60,
    dcm_suffix_prob=0.5,
)

SITE_4 = SiteProfile(
    name="site-4",
    institution="Lakeside University Hospital (synthetic)",
    manufacturer="Acme Medical",
    model_name="AcmeDR 700",
    id_prefix="LU",
    modality="DX",
    matrix=384,
    bits_stored=12,
    transfer_syntax=JPEG2000Lossless,
    stored_window=(0.0, 1.0),
    look_spec=ScannerLook(gamma=1.1, noise=0.013, grain=0.012, blur_px=0.8, bias=0.12, heel=(0.0, -0.3)),
    prevalence=0.35,
    default_size=150,
    dcm_suffix_prob=0.8,
)

SITE_5 = SiteProfile(
    name="site-5",
    institution="Meadowvale Regional (synthetic)",
    manufacturer="Kestrel Imaging",
    model_name="KCR-7",
    id_prefix="MV",
    modality="CR",
    matrix=256,
    bits_stored=12,
    signed=True,
    photometric="MONOCHROME1",
    rescale_slope=1.0,
    rescale_intercept=2048.0,
    transfer_syntax=RLELossless,
    stored_window=(0.05, 0.95),
    look_spec=ScannerLook(
        gamma=1.0,
        sigmoid_gain=3.5,
        sigmoid_mid=0.5,
        noise=0.016,
        grain=0.02,
        blur_px=0.9,
        bias=0.15,
        heel=(0.2, 0.2),
    ),
    prevalence=0.40,
    default_size=150,
    dcm_suffix_prob=0.2,
    series_dirs=True,
)

UNSEEN_1 = SiteProfile(
    name="unseen-1",
    institution="St. Elsewhere Portable Imaging (synthetic)",
    manufacturer="Corvid Radiology",
    model_name="MobiCR 2",
    id_prefix="SE",
    modality="CR",
    matrix=320,
    bits_stored=8,
    photometric="MONOCHROME1",
    transfer_syntax=JPEG2000Lossless,
    view="AP",
    look_spec=ScannerLook(
        gamma=1.15,
        sigmoid_gain=4.0,
        sigmoid_mid=0.45,
        noise=0.022,
        grain=0.03,
        blur_px=1.4,
        bias=0.25,
        heel=(0.4, 0.3),
        collimation=0.04,
        inspiration=0.08,
        heart_scale=1.2,
    ),
    prevalence=0.25,
    default_size=200,
    dcm_suffix_prob=0.3,
)

#: Built-in training sites, in the order ``write_cohort`` uses them (site-1 is the large one,
#: site-3 the small one), and the held-out scanners for generalisation tests.
TRAINING_PROFILES: tuple[SiteProfile, ...] = (SITE_1, SITE_2, SITE_3, SITE_4, SITE_5)
UNSEEN_PROFILES: tuple[SiteProfile, ...] = (UNSEEN_1,)
PROFILES: dict[str, SiteProfile] = {p.name: p for p in TRAINING_PROFILES + UNSEEN_PROFILES}

TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless)


def derive_profile(base: SiteProfile, name: str, id_prefix: str, seed: int) -> SiteProfile:
    """A new site resembling ``base`` with its own jittered look and prevalence (for > 5 sites)."""
    rng = np.random.default_rng([seed, *name.encode()])
    v = base.look_spec
    look = replace(
        v,
        gamma=float(v.gamma * math.exp(rng.normal(0, 0.15))),
        noise=float(v.noise * rng.uniform(0.8, 1.25)),
        blur_px=float(v.blur_px * rng.uniform(0.8, 1.25)),
        bias=float(v.bias * rng.uniform(0.7, 1.3)),
        heel=(float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.4, 0.4))),
    )
    return replace(
        base,
        name=name,
        id_prefix=id_prefix,
        institution=f"{name} Hospital (synthetic)",
        look_spec=look,
        prevalence=float(rng.uniform(0.2, 0.5)),
    )
