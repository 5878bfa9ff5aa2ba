"""FedRad shared core: what both the hospital site and the consortium server need.

Data flows site DICOM → :mod:`shared.imaging` (scan, decode, QC reasons, cache)
→ :mod:`shared.labels` (join to the label manifest) → :mod:`shared.tasks.classification.dataset`
(in-memory tensors) → :mod:`shared.training` / :mod:`shared.models` →
:mod:`shared.modelfile` (one self-describing file per model).

This package never imports ``client`` or ``server``.
"""
