"""An analytic trunk phantom in LPS patient millimetres: HU and labels at any point, for synthetic CT.

Why analytic: a scanner profile may sample the same patient on any grid (spacing,
orientation, origin, patient position), and the ground truth must be the same
anatomy wherever it is sampled. So the phantom is a handful of ellipsoids and
elliptic cylinders evaluated at arbitrary LPS points (DICOM's patient coordinates:
+x Left, +y Posterior, +z Superior), never a voxel array.

Anatomy (around the liver dome, ``z = 0`` in the phantom's own frame, which sits at
:attr:`CTPhantom.origin` in the patient coordinates of the scan):
body (elliptic cylinder: subcutaneous fat shell around soft tissue), two lungs,
heart, liver (two lobes, under the right lung), spine (vertebral bodies with discs
between them, posterior arch, spinal canal) and 0–4 lesions, each inside the liver
or a lung.

Labels (:data:`LABELS`; segment number = label value in every SEG and ROI number in
every RTSTRUCT):

====  ========  ===================================================================
 0    (none)    air, fat, soft tissue, heart, discs, canal
 1    liver     the liver, *including* the lesions inside it
 2    lung      both lungs, *including* the nodules inside them
 3    spine     bone of the vertebrae (bodies and arches; not the discs)
 4    lesion    liver lesions and lung nodules
====  ========  ===================================================================

The structures are drawn the way a clinician outlines organs (a liver contour goes
around its tumours), so ``lesion`` overlaps ``liver`` or ``lung`` and nothing else
overlaps. Where segments overlap the higher number wins (:meth:`CTPhantom.label_map`:
a lesion voxel is 4), which is also what FedRad's volume label reader does when a
task lists the names in this order (:mod:`shared.imaging.volume_labels`: the later
name in the task's list wins). A task that wants only the liver and its tumours asks
for ``["liver", "lesion"]`` and gets 1 and 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

LABELS: dict[str, int] = {"liver": 1, "lung": 2, "spine": 3, "lesion": 4}
SEGMENT_NAMES: tuple[str, ...] = tuple(LABELS)  # in label-value order: nested structures last (they win overlaps)

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0
HEART_HU = 45.0
LUNG_HU = -850.0
BONE_HU = 700.0
DISC_HU = 80.0
CANAL_HU = 15.0


@dataclass(frozen=True)
class Ellipsoid:
    """Points ``p`` with ``|R^T (p - centre) / semi| <= 1``; ``rotation`` columns are the axes (phantom frame)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def inside(self, p: np.ndarray) -> np.ndarray:
        q = (p - np.asarray(self.centre)) @ np.asarray(self.rotation) / np.asarray(self.semi)
        return np.einsum("...i,...i->...", q, q) <= 1.0


@dataclass(frozen=True)
class Lesion:
    """One lesion: an ellipsoid clipped to its host organ, with its own density."""

    shape: Ellipsoid
    hu: float
    organ: str  # "liver" or "lung"


@dataclass(frozen=True)
class CTPhantom:
    """One synthetic patient's trunk. All lengths in mm, in the phantom frame unless said otherwise."""

    origin: tuple[float, float, float]  # where the phantom frame's (0, 0, 0) lies in the scan's LPS coordinates
    body: tuple[float, float]  # outer semi-axes (x, y) of the body's elliptic cross-section
    fat_mm: float
    lungs: tuple[Ellipsoid, Ellipsoid]
    heart: Ellipsoid
    liver: tuple[Ellipsoid, Ellipsoid]
    spine_y: float  # centre of the vertebral bodies (x = 0)
    vertebra_radius: float
    vertebra_period: float  # body + disc height
    disc_mm: float
    vertebra_phase: float
    liver_hu: float
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)

    # ------------------------------------------------------------------ evaluation

    def structures(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean masks of every labelled structure at LPS ``points`` (..., 3), plus the unlabelled tissues."""
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        bx, by = self.body
        body = (x / bx) ** 2 + (y / by) ** 2 <= 1.0
        ix, iy = bx - self.fat_mm, by - self.fat_mm
        inner = (x / ix) ** 2 + (y / iy) ** 2 <= 1.0
        thorax = (x / (ix - 12.0)) ** 2 + (y / (iy - 12.0)) ** 2 <= 1.0  # inside the chest wall

        r2 = x**2 + (y - self.spine_y) ** 2
        in_disc = np.mod(z - self.vertebra_phase, self.vertebra_period) < self.disc_mm
        column = r2 <= self.vertebra_radius**2
        arch_y = self.spine_y + self.vertebra_radius + 10.0
        arch = ((x / 22.0) ** 2 + ((y - arch_y) / 9.0) ** 2 <= 1.0) & ~in_disc
        canal = x**2 + (y - (self.spine_y + self.vertebra_radius + 6.0)) ** 2 <= 7.0**2
        spine = ((column & ~in_disc) | arch) & ~canal & inner
        disc = column & in_disc & inner

        liver = (self.liver[0].inside(p) | self.liver[1].inside(p)) & inner & ~column
        heart = self.heart.inside(p) & thorax & ~liver
        lung = (self.lungs[0].inside(p) | self.lungs[1].inside(p)) & thorax & ~liver & ~heart & ~column & ~arch
        lesion = np.zeros(x.shape, dtype=bool)
        lesion_hu = np.zeros(x.shape, dtype=np.float32)
        for les in self.lesions:
            host = liver if les.organ == "liver" else lung
            m = les.shape.inside(p) & host
            lesion |= m
            lesion_hu[m] = les.hu
        return {
            "body": body,
            "inner": inner,
            "spine": spine,
            "disc": disc,
            "canal": canal & inner,
            "liver": liver,
            "heart": heart,
            "lung": lung,
            "lesion": lesion,
            "lesion_hu": lesion_hu,
        }

    def hu(self, points: np.ndarray) -> np.ndarray:
        """Noise-free attenuation (HU, float32) at LPS ``points`` (..., 3)."""
        s = self.structures(points)
        out = np.full(s["body"].shape, AIR_HU, dtype=np.float32)
        out[s["body"]] = FAT_HU
        out[s["inner"]] = SOFT_HU
        out[s["heart"]] = HEART_HU
        out[s["lung"]] = LUNG_HU
        out[s["liver"]] = self.liver_hu
        out[s["disc"]] = DISC_HU
        out[s["canal"]] = CANAL_HU
        out[s["spine"]] = BONE_HU
        out[s["lesion"]] = s["lesion_hu"][s["lesion"]]
        return out

    def masks(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """``{segment name: bool mask}`` at LPS ``points``, in :data:`SEGMENT_NAMES` order (overlapping, see module)."""
        s = self.structures(points)
        return {name: s[name] for name in SEGMENT_NAMES}

    def label_map(self, points: np.ndarray) -> np.ndarray:
        """uint8 labels (:data:`LABELS`) at LPS ``points``; where segments overlap the higher value wins."""
        return label_map_from_masks(self.masks(points))

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        """JSON-ready parameters; :meth:`from_dict` rebuilds the identical phantom."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CTPhantom:
        def ell(e: dict) -> Ellipsoid:
            return Ellipsoid(tuple(e["centre"]), tuple(e["semi"]), tuple(tuple(r) for r in e["rotation"]))

        return cls(
            origin=tuple(d["origin"]),
            body=tuple(d["body"]),
            fat_mm=d["fat_mm"],
            lungs=(ell(d["lungs"][0]), ell(d["lungs"][1])),
            heart=ell(d["heart"]),
            liver=(ell(d["liver"][0]), ell(d["liver"][1])),
            spine_y=d["spine_y"],
            vertebra_radius=d["vertebra_radius"],
            vertebra_period=d["vertebra_period"],
            disc_mm=d["disc_mm"],
            vertebra_phase=d["vertebra_phase"],
            liver_hu=d["liver_hu"],
            lesions=tuple(Lesion(ell(les["shape"]), les["hu"], les["organ"]) for les in d["lesions"]),
        )


def label_map_from_masks(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Overlapping segment masks → one uint8 label map; the higher value (later in :data:`SEGMENT_NAMES`) wins."""
    first = next(iter(masks.values()))
    out = np.zeros(first.shape, dtype=np.uint8)
    for name in SEGMENT_NAMES:
        out[masks[name]] = LABELS[name]
    return out


@dataclass(frozen=True)
class LesionTraits:
    """How a site's patients' lesions are drawn (sites' populations differ)."""

    prevalence: float = 0.6  # fraction of patients with at least one lesion
    max_count: int = 3
    radius_mm: tuple[float, float] = (8.0, 20.0)
    liver_fraction: float = 0.7  # of lesions, the share in the liver (the rest are lung nodules)
    liver_contrast_hu: tuple[float, float] = (-45.0, -20.0)  # lesion minus liver (hypodense metastases)
    lung_hu: tuple[float, float] = (-60.0, 40.0)


def _rotation(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return tuple(tuple(float(v) for v in row) for row in q)


def _r(v: float) -> float:
    return round(float(v), 3)


def sample_ct_patient(
    rng: np.random.Generator,
    traits: LesionTraits = LesionTraits(),
    z_window: tuple[float, float] = (-60.0, 60.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> CTPhantom:
    """Draw one patient: body size, organ positions and lesions vary with ``rng``.

    ``z_window`` (phantom frame, mm) is the part of the trunk the scan will cover: lesions are
    placed there (a clinical scan covers the region it was ordered for)."""
    bx = _r(rng.uniform(135.0, 170.0))
    by = _r(rng.uniform(95.0, 120.0))
    fat = _r(rng.uniform(8.0, 22.0))
    lungs = tuple(
        Ellipsoid(
            (_r(side * bx * rng.uniform(0.40, 0.48)), _r(by * rng.uniform(0.0, 0.12)), _r(rng.uniform(85.0, 100.0))),
            (_r(bx * rng.uniform(0.36, 0.42)), _r(by * rng.uniform(0.62, 0.70)), _r(rng.uniform(115.0, 130.0))),
        )
        for side in (-1.0, 1.0)  # patient's right (−x), then left
    )
    heart = Ellipsoid(
        (_r(bx * rng.uniform(0.08, 0.16)), _r(-by * rng.uniform(0.25, 0.35)), _r(rng.uniform(55.0, 70.0))),
        (_r(bx * rng.uniform(0.26, 0.32)), _r(by * rng.uniform(0.32, 0.40)), _r(rng.uniform(50.0, 60.0))),
    )
    dome = rng.uniform(-5.0, 5.0)
    right_lobe = Ellipsoid(
        (_r(-bx * rng.uniform(0.28, 0.34)), _r(-by * rng.uniform(0.0, 0.1)), _r(dome - 60.0)),
        (_r(bx * rng.uniform(0.50, 0.58)), _r(by * rng.uniform(0.60, 0.70)), 65.0),
    )
    left_lobe = Ellipsoid(
        (_r(bx * rng.uniform(0.05, 0.15)), _r(-by * rng.uniform(0.30, 0.40)), _r(dome - 40.0)),
        (_r(bx * rng.uniform(0.30, 0.40)), _r(by * rng.uniform(0.25, 0.32)), _r(rng.uniform(30.0, 40.0))),
    )
    vr = _r(rng.uniform(14.0, 19.0))
    phantom = CTPhantom(
        origin=tuple(_r(v) for v in origin),
        body=(bx, by),
        fat_mm=fat,
        lungs=lungs,  # type: ignore[arg-type]
        heart=heart,
        liver=(right_lobe, left_lobe),
        spine_y=_r(by * rng.uniform(0.42, 0.48)),
        vertebra_radius=vr,
        vertebra_period=_r(rng.uniform(28.0, 34.0)),
        disc_mm=_r(rng.uniform(5.0, 7.0)),
        vertebra_phase=_r(rng.uniform(0.0, 30.0)),
        liver_hu=_r(rng.uniform(50.0, 70.0)),
    )
    if rng.random() >= traits.prevalence:
        return phantom
    n = int(rng.integers(1, traits.max_count + 1))
    lesions = []
    for _ in range(n):
        organ = "liver" if rng.random() < traits.liver_fraction else "lung"
        centre = _point_in(phantom, organ, rng, z_window)
        if centre is None:
            continue
        radius = rng.uniform(*traits.radius_mm)
        semi = tuple(_r(radius * rng.uniform(0.8, 1.2)) for _ in range(3))
        if organ == "liver":
            hu = phantom.liver_hu + rng.uniform(*traits.liver_contrast_hu)
        else:
            hu = rng.uniform(*traits.lung_hu)
        lesions.append(Lesion(Ellipsoid(centre, semi, _rotation(rng)), _r(hu), organ))  # type: ignore[arg-type]
    return replace(phantom, lesions=tuple(lesions))


def _point_in(
    phantom: CTPhantom, organ: str, rng: np.random.Generator, z_window: tuple[float, float]
) -> tuple[float, float, float] | None:
    """A point of ``organ`` inside ``z_window`` (phantom frame), by rejection sampling; None if the organ is not there."""
    bx, by = phantom.body
    lo, hi = z_window
    pts = np.column_stack(
        [rng.uniform(-bx, bx, 400), rng.uniform(-by, by, 400), rng.uniform(lo, hi, 400)]
    ) + np.asarray(phantom.origin)
    ok = phantom.structures(pts)[organ]
    if not ok.any():
        return None
    p = pts[int(np.flatnonzero(ok)[0])] - np.asarray(phantom.origin)
    return (_r(p[0]), _r(p[1]), _r(p[2]))
