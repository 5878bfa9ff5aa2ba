"""Write synthetic sites as PACS-style DICOM exports with a label manifest.

Layout of one site (what a hospital's IT would hand over)::

    OUT/site-1/dicom/<PatientID>/<study dir>/[<series dir>/]IMG0001[.dcm]
    OUT/site-1/labels.csv   SOPInstanceUID,label,AccessionNumber,StudyInstanceUID,path

With ``task="segmentation"`` each image also gets a DICOM SEG next to it
(``SEG0001[.dcm]`` beside ``IMG0001[.dcm]``) holding its ``nodule`` and ``lung``
ground truth (see :mod:`shared.synth.seg_writer`); images, labels.csv and every
random draw are the same as for the default ``task="classification"``.
With ``task="multilabel"`` the patients also have effusion, cardiomegaly and
consolidation at the site's own prevalences, and labels.csv has one column per
finding instead of ``label`` (1, 0, -1 uncertain, blank; :mod:`shared.synth.findings`).

Each patient has 1–3 studies (one image each) of the *same* anatomy with a
small positioning jitter and the same label, so images of one patient are
correlated and only patient-grouped splits give honest validation numbers.
Everything is a pure function of ``seed`` (UIDs too: ``generate_uid`` with
deterministic entropy), so the same call writes byte-identical files.

On the command line: ``fedrad-site synth OUT``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
import time
import zlib
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.uid import generate_uid

from shared.synth.anatomy import DEFAULT_DIFFICULTY, expose_with_geometry, sample_patient
from shared.synth.dicom_writer import ImageMeta, build_dataset, encode_pixels, write_dicom
from shared.synth.findings import FINDINGS, add_findings, draw_findings, finding_prevalence, label_cells
from shared.synth.masks import anatomy_masks
from shared.synth.profiles import TRAINING_PROFILES, UNSEEN_PROFILES, SiteProfile, derive_profile

CLASSES = ("normal", "nodule")
LABEL_COLUMNS = ("SOPInstanceUID", "label", "AccessionNumber", "StudyInstanceUID", "path")
STUDIES_PER_PATIENT = (1, 2, 3)
STUDIES_P = (0.45, 0.35, 0.20)
FOLLOW_UP_JITTER_PX = 3  # positioning jitter between a patient's studies, on the 128 render grid
MIN_SITE_IMAGES = 4
TEST_EXPORT = "test"  # site-<k>/test/: a site's separate test export (write_cohort's test_images)
TEST_SEED_OFFSET = 7777  # its patients: other seeds' patients, other accession numbers (seed % 1000)
Task = Literal["classification", "segmentation", "multilabel"]
TASKS: tuple[str, ...] = ("classification", "segmentation", "multilabel")
EXPORT_LABELLED: frozenset[str] = frozenset({"segmentation"})  # tasks whose labels are DICOM SEGs beside the images
PER_FINDING: frozenset[str] = frozenset({"multilabel"})  # tasks whose labels.csv has one column per finding


@dataclass(frozen=True)
class SiteSummary:
    """What was written for one site."""

    name: str  # folder name, e.g. "site-1" or "unseen-1"
    path: Path  # the site folder (holds dicom/ and labels.csv)
    profile: str
    n_images: int
    n_patients: int
    class_counts: dict[str, int] = field(default_factory=dict)
    transfer_syntax: str = ""
    bytes: int = 0
    seconds: float = 0.0

    @property
    def dicom_dir(self) -> Path:
        return self.path / "dicom"

    @property
    def labels_csv(self) -> Path:
        return self.path / "labels.csv"


def _rng(seed: int, profile: SiteProfile, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(profile.name.encode()), *extra])


def _plan(rng: np.random.Generator, n_images: int, prevalence: float) -> list[tuple[int, bool]]:
    """(studies, has_nodule) per patient: sizes sum to ``n_images``, nodule images ≈ prevalence."""
    sizes: list[int] = []
    while sum(sizes) < n_images:
        k = int(rng.choice(STUDIES_PER_PATIENT, p=STUDIES_P))
        sizes.append(min(k, n_images - sum(sizes)))
    if len(sizes) == 1 and n_images >= 2:  # both classes need a patient each
        sizes = [n_images - 1, 1]
    target = int(round(prevalence * n_images))
    target = min(max(target, 1), n_images - 1) if n_images >= 2 else target
    sick = [False] * len(sizes)
    count = 0
    for i in rng.permutation(len(sizes)):
        if count + sizes[i] <= target:
            sick[i] = True
            count += sizes[i]
    if count == 0 and n_images >= 2:  # every patient was bigger than the target: take the smallest
        i = int(np.argmin(sizes))
        sick[i] = True
    return list(zip(sizes, sick))


def _uid(*parts: object):
    return generate_uid(entropy_srcs=["fedrad-synth", *(str(p) for p in parts)])


def write_site(
    out_dir: Path,
    profile: SiteProfile,
    n_images: int,
    seed: int,
    difficulty: float = DEFAULT_DIFFICULTY,
    shift: float = 1.0,
    *,
    overwrite: bool = False,
    task: Task = "classification",
) -> SiteSummary:
    """Write ``n_images`` DICOM files of one site into ``out_dir`` (dicom/ and labels.csv).

    Refuses to write into an existing non-empty ``out_dir/dicom`` unless ``overwrite``
    (then only that folder and labels.csv are replaced). ``task="segmentation"`` adds a
    SEG beside every image (counted in ``bytes``, not in ``n_images``).
    """
    if n_images < 1:
        raise ValueError(f"{profile.name}: n_images must be at least 1, got {n_images}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    write_seg = _seg_writer() if task in EXPORT_LABELLED else None
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    if dicom_dir.exists() and any(dicom_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{dicom_dir} already holds files; delete it, choose another output folder, or pass overwrite"
            )
        shutil.rmtree(dicom_dir)
    t0 = time.perf_counter()
    look = profile.look(shift)
    findings = finding_prevalence(profile) if task in PER_FINDING else None  # (prevalences, uncertainty factor)
    nodules = findings[0][FINDINGS.index("nodule")] if findings else profile.prevalence
    plan = _plan(_rng(seed, profile), n_images, nodules)
    rows: list[dict[str, str]] = []
    total_bytes = 0
    study_no = 0
    for pidx, (n_studies, sick) in enumerate(plan):
        prng = _rng(seed, profile, pidx)
        pid = f"{profile.id_prefix}{(seed * 7919 + (pidx + 1) * 104729) % 10**7:07d}"
        patient = sample_patient(prng, sick, difficulty, look)
        present = draw_findings(prng, findings[0], sick) if findings else None
        if present:
            add_findings(patient, prng, present, difficulty)
        birth = date(1930, 1, 1) + timedelta(days=int(prng.integers(0, 365 * 70)))
        first = date(2019, 1, 1) + timedelta(days=int(prng.integers(0, 365 * 5)))
        sex = "F" if prng.random() < 0.5 else "M"
        for j in range(n_studies):
            study_no += 1
            study_uid = _uid(seed, profile.name, pid, "study", j)
            meta = ImageMeta(
                patient_id=pid,
                patient_name=f"SYNTHETIC^{profile.id_prefix}{pidx + 1:04d}",
                birth_date=birth.strftime("%Y%m%d"),
                sex=sex,
                study_uid=study_uid,
                series_uid=_uid(seed, profile.name, pid, "series", j),
                sop_uid=_uid(seed, profile.name, pid, "image", j),
                accession=f"{profile.id_prefix}{seed % 1000:03d}{study_no:07d}",
                study_date=(first + timedelta(days=int(prng.integers(30, 400)) * j)).strftime("%Y%m%d"),
                study_time=f"{int(prng.integers(7, 20)):02d}{int(prng.integers(0, 60)):02d}{int(prng.integers(0, 60)):02d}",
                study_id=str(j + 1),
                kvp=float(prng.choice([110, 115, 120, 125])) if profile.view == "PA" else 90.0,
            )
            img, exposure = expose_with_geometry(
                patient, prng, look, profile.matrix, jitter_px=FOLLOW_UP_JITTER_PX if j else 1
            )
            ds = build_dataset(encode_pixels(img, profile), profile, meta)
            study_dir = "ST" + hashlib.sha1(study_uid.encode()).hexdigest()[:8].upper()
            rel = Path(pid) / study_dir
            if profile.series_dirs:
                rel = rel / "SE0001"
            rel = rel / ("IMG0001.dcm" if prng.random() < profile.dcm_suffix_prob else "IMG0001")
            total_bytes += write_dicom(dicom_dir / rel, ds)
            if write_seg is not None:  # draws no random numbers: the images stay those of classification
                seg = write_seg(
                    ds,
                    anatomy_masks(patient, exposure, profile.matrix),
                    _uid(seed, profile.name, pid, "seg-series", j),
                    _uid(seed, profile.name, pid, "seg", j),
                    _uid(seed, profile.name, pid, "seg-dimensions", j),
                )
                total_bytes += write_dicom(dicom_dir / rel.with_name(rel.name.replace("IMG", "SEG")), seg)
            row = {
                "SOPInstanceUID": meta.sop_uid,
                "label": CLASSES[int(sick)],
                "AccessionNumber": meta.accession,
                "StudyInstanceUID": study_uid,
                "path": rel.as_posix(),
            }
            if present:  # one column per finding, as the study's report was labelled, instead of one label
                del row["label"]
                row.update(label_cells(prng, present, findings[1]))
            rows.append(row)
    columns = ([c for c in LABEL_COLUMNS if c != "label"] + list(FINDINGS)) if findings else list(LABEL_COLUMNS)
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if findings:  # certain positives per finding
        counts = {f: sum(r[f] == "1" for r in rows) for f in FINDINGS}
    else:
        counts = {c: sum(r["label"] == c for r in rows) for c in CLASSES}
    return SiteSummary(
        name=out_dir.name,
        path=out_dir,
        profile=profile.name,
        n_images=len(rows),
        n_patients=len(plan),
        class_counts=counts,
        transfer_syntax=profile.transfer_syntax.name,
        bytes=total_bytes,
        seconds=time.perf_counter() - t0,
    )


def _seg_writer():
    """The SEG builder, imported on first use: highdicom takes seconds to import and classification never needs it."""
    from shared.synth.seg_writer import build_segmentation

    return build_segmentation


def cohort_profiles(n_sites: int = 3, unseen: int = 1, seed: int = 0) -> list[SiteProfile]:
    """The training profiles (built-ins first, then derived look-alikes) followed by the unseen ones."""
    if n_sites < 0 or unseen < 0:
        raise ValueError("n_sites and unseen must be >= 0")
    train = [
        TRAINING_PROFILES[k]
        if k < len(TRAINING_PROFILES)
        else derive_profile(TRAINING_PROFILES[k % len(TRAINING_PROFILES)], f"site-{k + 1}", f"X{k + 1}", seed)
        for k in range(n_sites)
    ]
    held = [
        UNSEEN_PROFILES[k]
        if k < len(UNSEEN_PROFILES)
        else derive_profile(UNSEEN_PROFILES[k % len(UNSEEN_PROFILES)], f"unseen-{k + 1}", f"U{k + 1}", seed)
        for k in range(unseen)
    ]
    return train + held


def write_cohort(
    out: Path,
    n_sites: int = 3,
    seed: int = 0,
    unseen: int = 1,
    scale: float = 1.0,
    difficulty: float = DEFAULT_DIFFICULTY,
    shift: float = 1.0,
    *,
    overwrite: bool = False,
    task: Task = "classification",
    test_images: int = 0,
) -> list[SiteSummary]:
    """Write ``n_sites`` training sites (``site-<k>``) and ``unseen`` held-out sites (``unseen-<k>``).

    Site sizes are the profiles' defaults (400, 250, 60, 150, 150, …; unseen 200) times ``scale``,
    at least 4 images each. ``task="segmentation"`` adds a SEG beside every image (see :func:`write_site`).
    ``test_images`` > 0 also writes ``site-<k>/test/``: that many images of other patients from the same
    scanner, a test export of the same size at every site. Why: a small site's held-out patients (a fifth of
    120 images) are too few to tell models 0.02 AUC apart, and holding out more would shrink what it trains on.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if test_images < 0 or 0 < test_images < MIN_SITE_IMAGES:
        raise ValueError(f"test_images must be 0 (none) or at least {MIN_SITE_IMAGES}, got {test_images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for profile in cohort_profiles(n_sites, unseen, seed):
        n = max(MIN_SITE_IMAGES, int(round(profile.default_size * scale)))
        summaries.append(
            write_site(out / profile.name, profile, n, seed, difficulty, shift, overwrite=overwrite, task=task)
        )
        if test_images and profile.name.startswith("site-"):  # other patients: the seed draws the patients
            test = write_site(
                out / profile.name / TEST_EXPORT,
                profile,
                test_images,
                seed + TEST_SEED_OFFSET,
                difficulty,
                shift,
                overwrite=overwrite,
                task=task,
            )
            summaries.append(replace(test, name=f"{profile.name}/{TEST_EXPORT}"))
    return summaries
