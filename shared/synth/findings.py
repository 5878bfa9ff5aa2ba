"""Synthetic multi-label chest findings and their CheXpert-style labels (``fedrad-site synth --task multilabel``).

Four findings, each drawn on the anatomy's render grid (:mod:`shared.synth.anatomy`) before the scanner
sees it, so every scanner look applies to them as to the anatomy:

* ``effusion``: fluid at a lung base, a dense layer with a meniscus rising towards the chest wall;
* ``nodule``: the anatomy generator's own faint round blob(s);
* ``cardiomegaly``: a heart shadow wider and taller than the normal one, eating into the lower lung fields;
* ``consolidation``: a patchy airspace opacity (smooth irregular blob) inside one lung.

Findings are a patient's (every study of one patient shows the same ones); prevalence differs by site
(:func:`finding_prevalence`), as case mix does between an ICU-heavy hospital and an outpatient clinic. Each
study's label row is what a report-mining labeller would write: ``1``, ``0``, ``-1`` (uncertain: more often
for a present finding, and at some sites more than others) or blank (not mentioned: mostly absent findings).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from shared.synth.anatomy import RENDER, Patient, _add_blob, _bandpass_noise, _grid, _inside, _pick_in_lung, _sig
from shared.synth.profiles import SiteProfile

FINDINGS = ("effusion", "nodule", "cardiomegaly", "consolidation")
# Per site: prevalence of each finding (in FINDINGS order) and how often its readers hedge (uncertain factor).
SITE_FINDINGS: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "site-1": ((0.35, 0.25, 0.20, 0.30), 1.0),  # a large hospital with an ICU: effusions, consolidations
    "site-2": ((0.15, 0.40, 0.35, 0.15), 1.6),  # an outpatient clinic: nodules, cardiomegaly; hedging reports
    "site-3": ((0.25, 0.30, 0.45, 0.20), 0.6),  # a cardiology centre
    "site-4": ((0.30, 0.20, 0.25, 0.35), 1.0),
    "site-5": ((0.20, 0.35, 0.30, 0.25), 1.2),
    "unseen-1": ((0.30, 0.25, 0.30, 0.25), 1.0),
}
P_UNCERTAIN = (0.04, 0.12)  # P(-1 | absent), P(-1 | present), times the site's factor
P_BLANK = (0.12, 0.03)  # P(blank | absent), P(blank | present): an unmentioned finding is usually absent


def finding_prevalence(profile: SiteProfile) -> tuple[tuple[float, ...], float]:
    """(prevalence per finding, uncertainty factor) of a site; a derived site (site-6, …) gets its own draw."""
    if profile.name in SITE_FINDINGS:
        return SITE_FINDINGS[profile.name]
    rng = np.random.default_rng(zlib.crc32(profile.name.encode()))
    return tuple(float(v) for v in rng.uniform(0.15, 0.45, size=len(FINDINGS))), float(rng.uniform(0.6, 1.6))


def draw_findings(rng: np.random.Generator, prevalence: tuple[float, ...], nodule: bool) -> dict[str, bool]:
    """Which findings a patient has; ``nodule`` comes from the cohort's plan (it fixes the anatomy's blobs)."""
    present = {f: bool(rng.random() < p) for f, p in zip(FINDINGS, prevalence, strict=True)}
    present["nodule"] = nodule
    return present


def label_cells(rng: np.random.Generator, present: dict[str, bool], uncertain_factor: float) -> dict[str, str]:
    """One study's label row: ``1``/``0``, ``-1`` (uncertain) or blank (unknown), per finding."""
    cells = {}
    for f in FINDINGS:
        k = int(present[f])
        u = rng.random()
        if u < P_UNCERTAIN[k] * uncertain_factor:
            cells[f] = "-1"
        elif u < P_UNCERTAIN[k] * uncertain_factor + P_BLANK[k]:
            cells[f] = ""
        else:
            cells[f] = str(k)
    return cells


def _strength(difficulty: float) -> float:
    """Contrast factor of the findings: 1 at the default difficulty 0.5, more at 0, less at 1."""
    return float(np.clip(1.5 - difficulty, 0.3, 1.5))


def add_findings(patient: Patient, rng: np.random.Generator, present: dict[str, bool], difficulty: float) -> None:
    """Draw the present findings (but the nodule, already drawn) into ``patient.image`` in place."""
    X, Y = _grid(RENDER)
    lung = patient.lung
    img = patient.image
    k = _strength(difficulty)
    if present.get("cardiomegaly"):
        cx, cy = float(rng.uniform(0.10, 0.18)), float(rng.uniform(0.22, 0.30))
        rx, ry = float(rng.uniform(0.42, 0.52)), float(rng.uniform(0.30, 0.36))
        heart = _sig((1.0 - ((X - cx) / rx) ** 2 - ((Y - cy) / ry) ** 2) / 0.12)
        img += (k * float(rng.uniform(0.20, 0.28)) * heart * (lung + 0.25)).astype(np.float32)
    if present.get("effusion"):
        rows = np.flatnonzero(lung.max(axis=1) > 0.5)
        bottom = float((rows.max() + 0.5) / RENDER * 2 - 1) if rows.size else 0.4
        sides = [-1.0, 1.0] if rng.random() < 0.3 else [float(rng.choice([-1.0, 1.0]))]
        for side in sides:
            level = bottom - float(rng.uniform(0.22, 0.38))
            meniscus = level - 0.25 * np.clip(np.abs(X) - 0.35, 0.0, None)  # fluid climbs the lateral wall
            fluid = _sig((Y - meniscus) / 0.03) * (_sig(side * X / 0.02))
            img += (k * float(rng.uniform(0.28, 0.36)) * fluid * lung).astype(np.float32)
    if present.get("consolidation"):
        x, y = _pick_in_lung(rng, _inside(lung, 0.9))
        r = float(rng.uniform(0.16, 0.26))
        blob = np.exp(-(((X - x) ** 2 + (Y - y) ** 2) / (2 * r * r)))
        patchy = np.clip(0.6 + 0.4 * _bandpass_noise(rng, RENDER, 2.0, 8.0), 0.0, None)
        img += (k * float(rng.uniform(0.20, 0.28)) * blob * patchy * lung).astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):  # satellite patches
            dx, dy = rng.normal(0.0, r * 0.6, size=2)
            _add_blob(img, x + float(dx), y + float(dy), r * 0.5, r * 0.4, float(rng.uniform(0, math.pi)), 0.05 * k)
