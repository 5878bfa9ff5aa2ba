"""The aggregate multi-label metrics a site may send, by key pattern (the per-finding keys vary by consortium).

One place for the rules the site's outbound guard, the server's reply validation and the round aggregation
all apply, so they cannot drift apart. Per finding ``<f>`` (a held-out case counts for a finding when its
label for it is certain, 1 or 0):

* ``auc-<f>``, ``sensitivity-<f>``, ``specificity-<f>``, ``prevalence-<f>``: the finding's figures, and
  ``auc-<f>-ci-low`` / ``-ci-high`` the site's own bootstrap interval of its AUC (kept per site, never
  averaged, like ``auc-ci-*``);
* ``auc-<f>-examples``: the smaller of the finding's positive and negative case counts. Every figure of
  the finding is counted by it, and so is the count itself: the guard withholds all of them when either
  side has fewer than ``min_count`` cases. Why the smaller side: one case moves an AUC by up to
  1 / (cases on its side), and a prevalence with 2 positives tells about those 2 patients; a finding
  rare at a site is not sent at all. The server weights ``auc-<f>`` across sites by it;
* ``auc-macro`` (mean of the per-finding AUCs), with its interval ``auc-macro-ci-*``, counted by
  ``auc-macro-examples``: the smallest ``auc-<f>-examples`` over all findings, so a macro AUC leaves
  only when every finding it averages could (else the withheld finding's AUC would follow from it);
* ``auc-micro`` (one AUC over every certain (case, finding) pair), counted by ``auc-micro-examples``
  (the smaller of all positive and all negative pairs).

No per-case figure has a key here. Imports only ``re``: the guard runs in every per-message ClientApp process.
"""

from __future__ import annotations

import re
from collections.abc import Collection

FINDING = r"[A-Za-z0-9_.]{1,40}"  # finding names cannot contain '-' (it separates the parts of a key)
RESERVED = frozenset({"macro", "micro", "examples", "ci"})  # would read as another key's part
PER_FINDING = ("auc", "sensitivity", "specificity", "prevalence")
_FIGURE = re.compile(rf"^({'|'.join(PER_FINDING)})-({FINDING})$")
_CI = re.compile(rf"^auc-({FINDING})-ci-(?:low|high)$")
_COUNT = re.compile(rf"^auc-({FINDING})-examples$")
SUMMARY = ("macro", "micro")  # auc-macro, auc-micro


def count_key(key: str, findings: Collection[str] | None = None) -> str | bool:
    """The key counting the cases ``key`` rests on (a count is counted by itself); False: not a multilabel key.

    With ``findings`` (the guard passes the task's) only those findings' keys qualify, so no other value can
    leave under a made-up name. Never None: every count here is withheld below ``min_count`` like a figure.
    """
    for pattern, group in ((_FIGURE, 2), (_CI, 1), (_COUNT, 1)):
        m = pattern.match(key)
        if m is None:
            continue
        name = m.group(group)
        if name in SUMMARY:
            if pattern is _FIGURE and m.group(1) != "auc":
                return False  # sensitivity-macro etc. are not sent
            if pattern is _CI and name == "micro":
                return False
            return f"auc-{name}-examples"
        if name in RESERVED or (findings is not None and name not in findings):
            return False
        return f"auc-{name}-examples"
    return False


def is_fraction(key: str) -> bool:
    """AUCs, sensitivities, specificities and prevalences lie in [0, 1]."""
    return count_key(key) is not False and not key.endswith("-examples")


def is_per_site(key: str) -> bool:
    """A site's own interval: meaningless averaged over sites."""
    return bool(_CI.match(key)) and count_key(key) is not False


def metric_keys(findings: list[str]) -> list[str]:
    """Every aggregate key a multilabel evaluation of ``findings`` may send (for tests and docs)."""
    out = [
        "auc-macro",
        "auc-macro-ci-low",
        "auc-macro-ci-high",
        "auc-macro-examples",
        "auc-micro",
        "auc-micro-examples",
    ]
    for f in findings:
        out += [f"{what}-{f}" for what in PER_FINDING]
        out += [f"auc-{f}-ci-low", f"auc-{f}-ci-high", f"auc-{f}-examples"]
    return out
