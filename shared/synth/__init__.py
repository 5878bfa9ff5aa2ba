"""Synthetic chest-radiograph cohorts written as real DICOM, for the demo, tests and IT dry-runs.

Binary task ``normal`` vs ``nodule``: a nodule image has one (sometimes two)
faint round blobs inside the lung fields, among ribs, clavicles, vessels and
end-on vessel dots that look a little like nodules. Sites differ like real
scanner fleets (contrast curve, noise, blur, bias field, collimation, AP
portable positioning) and in how they encode DICOM (matrix, bit depth,
signedness, MONOCHROME1, rescale, transfer syntax, PACS folder layout).

Dials:

* ``difficulty`` (default :data:`DEFAULT_DIFFICULTY` = 0.5): nodule contrast,
  0 = obvious, 1 = barely visible. The default is tuned so a small CNN on 64×64
  inputs is clearly better with ~600 training images than with ~40.
* ``shift`` (default 1): 0 = every site looks the same, 1 = the profiles as
  written, 2 = twice every appearance difference. Encoding differences are not
  scaled (a correct loader removes them).

Entry points: :func:`write_cohort`, :func:`write_site`, :func:`render_image`;
``fedrad-site synth OUT`` on the command line.
``task="segmentation"`` also writes a DICOM SEG (``nodule``, ``lung``) beside each
image, from the same anatomy and positioning (:mod:`shared.synth.masks`).

CT (``fedrad-site synth OUT --modality ct``): :func:`shared.synth.ct_cohort.write_ct_cohort`
writes axial CT series of an analytic trunk phantom (:mod:`shared.synth.ct_phantom`: liver,
lesion, lung, spine) as classic, compressed or Enhanced CT DICOM, in four patient positions,
labelled by SEG or RTSTRUCT, with scouts and broken series a reader must reject, and a
``manifest.json``. Not imported here: it pulls in scipy, and radiograph-only callers never need it.
"""

from shared.synth.anatomy import DEFAULT_DIFFICULTY, render_image
from shared.synth.cohort import CLASSES, SiteSummary, cohort_profiles, write_cohort, write_site
from shared.synth.profiles import PROFILES, TRAINING_PROFILES, UNSEEN_PROFILES, ScannerLook, SiteProfile

__all__ = [
    "CLASSES",
    "DEFAULT_DIFFICULTY",
    "PROFILES",
    "TRAINING_PROFILES",
    "UNSEEN_PROFILES",
    "ScannerLook",
    "SiteProfile",
    "SiteSummary",
    "cohort_profiles",
    "render_image",
    "write_cohort",
    "write_site",
]
