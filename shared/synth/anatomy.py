"""Numpy rendering of synthetic chest radiographs with optional faint nodules.

Why this shape: the task must be hard for the *right* reasons. A nodule is a
faint round blob, and the lung fields are full of things that look a little
like one (rib crossings, vessel branches, end-on vessel dots, clavicles), so a
model needs many examples to separate them: a small site's local model is
clearly worse than one trained on the pooled cohort.

Coordinates are normalised: X, Y in [-1, 1], X to the image right (patient
left on a PA film), Y downwards. All anatomy is rendered on a fixed
``RENDER``×``RENDER`` grid (cheap; it is 2× the 64×64 model input), blurred and
noised there, then bilinearly upsampled to the scanner's native matrix where
fine detector grain and the contrast curve are applied. Intensities follow the
MONOCHROME2 display convention: dense (bone, soft tissue, nodule) is bright.

A patient's anatomy (:class:`Patient`) is sampled once and re-used for each of
their studies with a small positioning jitter, so images of one patient are
correlated, which is why patient-grouped splits matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shared.synth.profiles import REFERENCE_LOOK, ScannerLook, SiteProfile

RENDER = 128  # side of the anatomy grid; every native matrix is upsampled from it

#: Default ``difficulty`` (mean nodule contrast 0.165, see :func:`nodule_contrast`). Measured with
#: the project's SmallCNN on 64×64 inputs (shared.training defaults, augmentation on; ROC AUC on
#: 300 held-out site-3 images, 2 seeds): trained on ~600 pooled images of site-1/2/3 for 15 epochs,
#: 0.89-0.96 (site-1: 0.91-0.93, unseen-1: 0.71-0.75); trained on site-3's 42 images alone for
#: 30 epochs, 0.52-0.57. A mean contrast of 0.136 (difficulty ≈ 0.63) dropped pooled to ≈ 0.72.
DEFAULT_DIFFICULTY = 0.5

# Nodule semi-major axis in normalised units (the image width is 2), and the minor/major ratio:
# the mean radius sqrt(rx·ry) is at least 0.088·sqrt(0.8)·32 = 2.5 px on a 64×64 input.
NODULE_RADIUS = (0.088, 0.135)
NODULE_ASPECT = (0.8, 1.0)


@dataclass(frozen=True)
class Nodule:
    """One nodule: centre (normalised coords), semi-axes, orientation (rad), peak contrast."""

    x: float
    y: float
    rx: float
    ry: float
    theta: float
    contrast: float


@dataclass
class Patient:
    """A patient's anatomy on the render grid, re-used across their studies."""

    image: np.ndarray  # (RENDER, RENDER) float32, display intensities before the scanner
    lung: np.ndarray  # (RENDER, RENDER) float32 soft lung-field mask in [0, 1]
    nodules: tuple[Nodule, ...]

    @property
    def has_nodule(self) -> bool:
        return bool(self.nodules)


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")  # X varies along columns, Y along rows


@lru_cache(maxsize=16)
def _freq2(n: int) -> np.ndarray:
    """Squared spatial frequency (cycles/pixel) on the rfft2 grid."""
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    return fy * fy + fx * fx


@lru_cache(maxsize=32)
def _gauss_tf(n: int, sigma_px: float) -> np.ndarray:
    return np.exp(-2.0 * math.pi**2 * sigma_px**2 * _freq2(n)).astype(np.float32)


def _filter(img: np.ndarray, tf: np.ndarray) -> np.ndarray:
    return np.fft.irfft2(np.fft.rfft2(img) * tf, s=img.shape).astype(np.float32)


def _bandpass_noise(rng: np.random.Generator, n: int, s_lo: float, s_hi: float) -> np.ndarray:
    """White noise band-passed between Gaussian scales s_lo < s_hi (pixels), unit variance."""
    tf = _gauss_tf(n, s_lo) - _gauss_tf(n, s_hi)
    out = _filter(rng.standard_normal((n, n), dtype=np.float32), tf)
    return out / (out.std() + 1e-8)


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@lru_cache(maxsize=8)
def _lerp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing (align_corners=False), edge-clamped."""
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(src)
    i0 = np.clip(base.astype(np.intp), 0, n_in - 1)
    i1 = np.clip(base.astype(np.intp) + 1, 0, n_in - 1)
    w1 = (src - base).astype(np.float32)
    return i0, i1, w1


def upsample(img: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a square image to n×n with row gathers (no BLAS: deterministic, thread-free)."""
    i0, i1, w = _lerp_index(n, img.shape[0])
    w = w[:, None]
    r0, r1 = img.take(i0, axis=0), img.take(i1, axis=0)
    rows = np.ascontiguousarray((r0 + (r1 - r0) * w).T)
    c0, c1 = rows.take(i0, axis=0), rows.take(i1, axis=0)
    return np.ascontiguousarray((c0 + (c1 - c0) * w).T)


@lru_cache(maxsize=1)
def _grain_bank() -> np.ndarray:
    """A fixed bank of unit white noise; each image takes a random crop (drawing fresh native-size
    Gaussian noise would cost more than rendering the whole image)."""
    return np.random.default_rng(20240611).standard_normal((1024, 1024), dtype=np.float32)


def _grain(rng: np.random.Generator, n: int) -> np.ndarray:
    bank = _grain_bank()
    r, c = (int(v) for v in rng.integers(0, bank.shape[0] - n, size=2))
    crop = bank[r : r + n, c : c + n]
    return crop.T if rng.random() < 0.5 else crop


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by whole pixels, repeating the edge (no wrap-around)."""
    if dy == 0 and dx == 0:
        return img
    p = max(abs(dy), abs(dx))
    padded = np.pad(img, p, mode="edge")
    n0, n1 = img.shape
    return padded[p - dy : p - dy + n0, p - dx : p - dx + n1]


# ----------------------------------------------------------------------------- anatomy


def nodule_contrast(difficulty: float) -> float:
    """Mean nodule peak contrast for a difficulty: 0.28 at 0, 0.165 at 0.5, 0.05 at 1.

    Display units, in which lung fields are ≈ 0.25, soft tissue ≈ 0.6 and a rib adds ≈ 0.06;
    each nodule draws its own contrast within ±30 % of the mean.
    """
    d = float(np.clip(difficulty, 0.0, 1.2))
    return 0.28 - 0.23 * d


def _lung_fields(X: np.ndarray, Y: np.ndarray, p: dict) -> np.ndarray:
    """Soft mask of both lungs: apex, lateral wall, mediastinum/heart border, diaphragm dome."""
    right = X >= 0  # image right = patient left (heart side)

    def side(left_val: float, right_val: float) -> np.ndarray:
        return np.where(right, np.float32(left_val), np.float32(right_val))

    ax = np.abs(X)
    yt, yb = side(p["yt_l"], p["yt_r"]), side(p["yb_l"], p["yb_r"])
    t = np.clip((Y - yt) / (yb - yt), 0.0, 1.2)
    lat = p["lat"] * (0.42 + 0.58 * np.sqrt(np.sin(np.clip(t / 0.62, 0.0, 1.0) * (math.pi / 2))))
    heart = side(p["heart_l"], p["heart_r"]) * np.exp(-(((t - 0.88) / 0.28) ** 2))
    med = p["med"] + heart
    u = (ax - 0.5 * (p["med"] + p["lat"])) / (0.5 * (p["lat"] - p["med"]))
    dia = yb + p["dome"] * u * u  # diaphragm dome: highest mid-lung, lower at the costophrenic angle
    e = 0.018
    return (_sig((lat - ax) / e) * _sig((ax - med) / e) * _sig((Y - yt) / e) * _sig((dia - Y) / e)).astype(np.float32)


def _ribs(X: np.ndarray, Y: np.ndarray, p: dict) -> np.ndarray:
    """Posterior and (fainter) anterior rib families as periodic bands, bright cortical rims."""
    ax = np.abs(X)
    out = np.zeros_like(X)
    for curve, y0, sp, th, w in (
        (-0.25 * ax + 0.75 * ax * ax, p["rib_y0"], p["rib_sp"], 0.42, 1.0),  # posterior
        (-0.45 * ax, p["rib_y0"] + 0.32, p["rib_sp"] * 1.15, 0.30, 0.45),  # anterior, oblique
    ):
        phase = (Y - curve - y0) / sp
        keep = (phase > 0) & (phase < 10)
        c = np.cos(2 * math.pi * phase)
        band = _sig((c - math.cos(math.pi * th)) / 0.06)
        rim = np.exp(-(((c - math.cos(math.pi * th)) / 0.12) ** 2))  # cortex is denser than marrow
        out += w * keep * (0.75 * band + 0.35 * rim)
    chest = _sig((p["lat"] + 0.07 - ax) / 0.03) * _sig((ax - 0.07) / 0.02) * _sig((Y - p["yt_r"] + 0.12) / 0.03)
    return (out * chest).astype(np.float32)


def _clavicles(X: np.ndarray, Y: np.ndarray, p: dict) -> np.ndarray:
    """Two bony bands from the sternal notch running laterally and up."""
    ax = np.abs(X)
    x0, y0, x1, y1 = 0.08, p["clav_y"], 0.72, p["clav_y"] - p["clav_rise"]
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((ax - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d = np.hypot(ax - (x0 + t * dx), Y - (y0 + t * dy))
    return _sig((0.045 - d) / 0.01).astype(np.float32)


def _add_blob(img: np.ndarray, x: float, y: float, rx: float, ry: float, theta: float, amp: float) -> None:
    """Add ``amp`` × the projected density of an ellipsoid, sqrt(1 - r²), in place.

    Only the bounding box is touched; the edge is softened later by the scanner blur.
    """
    n = img.shape[0]
    X, Y = _grid(n)
    r = max(rx, ry)
    lo_c = max(0, int(((x - r) + 1) / 2 * n) - 1)
    hi_c = min(n, int(((x + r) + 1) / 2 * n) + 2)
    lo_r = max(0, int(((y - r) + 1) / 2 * n) - 1)
    hi_r = min(n, int(((y + r) + 1) / 2 * n) + 2)
    if lo_c >= hi_c or lo_r >= hi_r:
        return
    Xp, Yp = X[lo_r:hi_r, lo_c:hi_c] - x, Y[lo_r:hi_r, lo_c:hi_c] - y
    c, s = math.cos(theta), math.sin(theta)
    u = (Xp * c + Yp * s) / rx
    v = (-Xp * s + Yp * c) / ry
    img[lo_r:hi_r, lo_c:hi_c] += amp * np.sqrt(np.clip(1.0 - (u * u + v * v), 0.0, None))


def _pick_in_lung(rng: np.random.Generator, candidates: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """A random point among candidate (row, col) pixels, in normalised coordinates."""
    ys, xs = candidates
    i = int(rng.integers(ys.size))
    jitter = rng.uniform(-0.5, 0.5, size=2)
    return float((xs[i] + 0.5 + jitter[0]) / RENDER * 2 - 1), float((ys[i] + 0.5 + jitter[1]) / RENDER * 2 - 1)


def _inside(lung: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    cand = np.nonzero(lung >= margin)
    return cand if cand[0].size else np.nonzero(lung >= lung.max() * 0.5)


def sample_patient(
    rng: np.random.Generator,
    has_nodule: bool,
    difficulty: float = DEFAULT_DIFFICULTY,
    look: ScannerLook = REFERENCE_LOOK,
) -> Patient:
    """Draw one patient's anatomy (and nodules if ``has_nodule``) on the render grid.

    ``look`` carries the site's population/positioning differences (inspiration depth,
    heart size on AP films); everything else about the site is applied later by :func:`expose`.
    """
    n = RENDER
    X, Y = _grid(n)

    def u(lo: float, hi: float) -> float:  # Python floats keep arrays float32 (NumPy scalars would upcast)
        return float(rng.uniform(lo, hi))

    insp = look.inspiration  # > 0: shallower breath, diaphragm higher
    p = {
        "yt_r": u(-0.74, -0.64),
        "lat": u(0.76, 0.88),
        "med": u(0.10, 0.15),
        "yb_r": u(0.34, 0.48) - insp,
        "heart_l": u(0.22, 0.36) * look.heart_scale,
        "heart_r": u(0.03, 0.09) * look.heart_scale,
        "dome": u(0.10, 0.20),
        "rib_sp": u(0.13, 0.16),
        "clav_y": u(-0.66, -0.56),
        "clav_rise": u(0.06, 0.16),
    }
    p["yt_l"] = p["yt_r"] + u(-0.02, 0.03)
    p["yb_l"] = p["yb_r"] + u(0.02, 0.07)  # left hemidiaphragm lower
    p["rib_y0"] = p["yt_r"] - u(0.05, 0.12)
    cx = u(-0.04, 0.04)
    Xc = X - cx

    lung = _lung_fields(Xc, Y, p)
    ax = np.abs(Xc)
    body_w = u(0.84, 0.96) - 0.6 * _sig((-0.8 - Y) / 0.06) - 0.12 * _sig((-0.55 - Y) / 0.08)  # neck, shoulders
    body = _sig((body_w - ax) / 0.025)
    thick = np.sqrt(np.clip(1.0 - (Xc / (body_w + 0.05)) ** 2, 0.0, 1.0))  # tissue path length
    spine = _sig((0.075 - ax) / 0.015) * (0.85 + 0.15 * np.cos(2 * math.pi * (Y / p["rib_sp"])))
    heart = _sig((1.0 - (((Xc - 0.12) / 0.33) ** 2 + ((Y - 0.22) / 0.28) ** 2)) / 0.1)

    img = (0.06 + body * (0.50 * thick + 0.10)).astype(np.float32)
    img += body * (0.06 * spine + 0.05 * heart)
    lung_dark = u(0.30, 0.40)
    # lungs are darkest mid-field; apices and bases overlap more soft tissue
    apex_base = 0.08 * np.exp(-(((Y - p["yt_r"]) / 0.18) ** 2)) + 0.06 * _sig((Y - p["yb_r"] + 0.1) / 0.08)
    img -= lung * (lung_dark - apex_base)
    img += body * u(0.045, 0.075) * _ribs(Xc, Y, p) * (0.6 + 0.4 * lung)
    img += body * u(0.10, 0.14) * _clavicles(Xc, Y, p)

    # vessels: ridges of band-passed noise, denser and thicker towards the hila
    hilum = np.exp(-(((ax - 0.28) / 0.35) ** 2 + ((Y + 0.05) / 0.55) ** 2))
    fine = _bandpass_noise(rng, n, 0.8, 3.0)
    coarse = _bandpass_noise(rng, n, 1.6, 5.0)
    vessels = np.exp(-((fine / 0.22) ** 2)) * (0.35 + 0.65 * hilum) + np.exp(-((coarse / 0.2) ** 2)) * hilum
    img += lung * u(0.05, 0.07) * vessels
    img += lung * 0.012 * _bandpass_noise(rng, n, 0.6, 1.5)  # parenchymal texture
    # end-on vessels: small round dots, the main nodule look-alikes (smaller than any nodule)
    inner = _inside(lung, 0.8)
    for _ in range(int(rng.poisson(14))):
        x, y = _pick_in_lung(rng, inner)
        r = u(0.02, 0.05)
        _add_blob(img, x, y, r, r * u(0.8, 1.0), 0.0, u(0.02, 0.06))

    nodules: list[Nodule] = []
    if has_nodule:
        mean_c = nodule_contrast(difficulty)
        deep = _inside(lung, 0.97)
        for _ in range(2 if rng.random() < 0.2 else 1):
            x, y = _pick_in_lung(rng, deep)
            r = u(*NODULE_RADIUS)
            nod = Nodule(x, y, r, r * u(*NODULE_ASPECT), u(0, math.pi), mean_c * u(0.7, 1.3))
            _add_blob(img, nod.x, nod.y, nod.rx, nod.ry, nod.theta, nod.contrast)
            nodules.append(nod)
    return Patient(image=img.astype(np.float32), lung=lung, nodules=tuple(nodules))


# ----------------------------------------------------------------------------- scanner


def _bias_field(rng: np.random.Generator, look: ScannerLook) -> np.ndarray:
    """Smooth multiplicative field: the site's fixed heel-effect gradient plus a random low-order part."""
    X, Y = _grid(RENDER)
    a, b, c, d = (float(v) for v in rng.normal(0.0, 0.5, size=4))
    gx, gy = look.heel
    field = gx * X + gy * Y + 0.5 * (a * X + b * Y + c * (X * X + Y * Y - 0.66) + d * X * Y)
    return (1.0 + look.bias * field).astype(np.float32)


def _curve(img: np.ndarray, look: ScannerLook) -> np.ndarray:
    """The vendor's processing LUT: gamma then a normalised sigmoid (identity at gamma 1, gain 0)."""
    out = np.clip(img, 0.0, 1.0)
    if abs(look.gamma - 1.0) > 1e-6:
        out = out**look.gamma
    k = look.sigmoid_gain
    if k > 1e-3:
        m = look.sigmoid_mid
        lo, hi = _sig(np.float32(-k * m)), _sig(np.float32(k * (1.0 - m)))
        out = (_sig(k * (out - m)) - lo) / (hi - lo)
    return out


@dataclass(frozen=True)
class Exposure:
    """Where one acquisition put the anatomy: positioning shift and collimator margins (render grid).

    Kept so ground-truth masks (:mod:`shared.synth.masks`) land exactly where the written
    pixels show the anatomy; the image itself never needs it.
    """

    dy: int = 0  # rows the anatomy moved down
    dx: int = 0  # columns the anatomy moved right
    margins: tuple[float, float, float, float] | None = None  # left, right, top, bottom, in render pixels


def collimation_field(margins: tuple[float, float, float, float]) -> np.ndarray:
    """Soft (RENDER, RENDER) field, 1 inside the collimated (exposed) area and 0 under the blades."""
    n = RENDER
    X = np.arange(n, dtype=np.float32)
    inside = _sig((X - margins[0]) / 0.7)[None, :] * _sig((n - margins[1] - X) / 0.7)[None, :]
    return inside * (_sig((X - margins[2]) / 0.7) * _sig((n - margins[3] - X) / 0.7))[:, None]


def expose_with_geometry(
    patient: Patient, rng: np.random.Generator, look: ScannerLook, matrix: int, jitter_px: int = 0
) -> tuple[np.ndarray, Exposure]:
    """:func:`expose`, also returning the :class:`Exposure` geometry it drew (same random stream)."""
    img = patient.image
    dy = dx = 0
    if jitter_px:
        dy, dx = (int(v) for v in rng.integers(-jitter_px, jitter_px + 1, size=2))
        img = _shift(img, dy, dx)
    if look.blur_px > 0.05:
        img = _filter(img, _gauss_tf(RENDER, round(look.blur_px, 3)))
    img = img * _bias_field(rng, look)
    margins = None
    if look.collimation > 0:  # unexposed border: no attenuation recorded → white after processing
        m = [float(v) * look.collimation * RENDER for v in rng.uniform(0.6, 1.4, size=4)]
        margins = (m[0], m[1], m[2], m[3])
        inside = collimation_field(margins)
        img = img * inside + 0.97 * (1.0 - inside)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look.noise)
    img = upsample(_curve(img, look), matrix)  # the LUT is smooth: applying it on the 128-grid is cheaper
    if look.grain > 0:
        img += _grain(rng, matrix) * np.float32(look.grain)
    return np.clip(img, 0.0, 1.0, out=img), Exposure(dy, dx, margins)


def expose(
    patient: Patient, rng: np.random.Generator, look: ScannerLook, matrix: int, jitter_px: int = 0
) -> np.ndarray:
    """One acquisition of ``patient`` on a scanner: positioning jitter, collimation, blur, bias,
    noise, native matrix, detector grain, contrast curve. Returns (matrix, matrix) float32 in [0, 1]."""
    return expose_with_geometry(patient, rng, look, matrix, jitter_px)[0]


def render_image(
    rng: np.random.Generator,
    profile: SiteProfile,
    has_nodule: bool,
    difficulty: float = DEFAULT_DIFFICULTY,
    shift: float = 1.0,
) -> np.ndarray:
    """A single synthetic radiograph as a site's scanner would show it, before DICOM encoding.

    Returns (profile.matrix, profile.matrix) float32 in [0, 1], MONOCHROME2 orientation.
    """
    look = profile.look(shift)
    patient = sample_patient(rng, has_nodule, difficulty, look)
    return expose(patient, rng, look, profile.matrix)
