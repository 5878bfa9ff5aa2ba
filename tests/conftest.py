"""Shared fixtures: a small synthetic cohort written once per test session (real DICOM files)."""

from __future__ import annotations

import pytest
import torch

from shared.processes import exit_on_sigterm
from shared.synth import SiteSummary, write_cohort

torch.set_num_threads(1)  # tests may run beside other processes on a 2-core machine
exit_on_sigterm()  # a CI timeout's SIGTERM still runs the cleanup that stops Flower processes


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SiteSummary]:
    """Three training sites and one unseen site, ~15 % of the default sizes."""
    out = tmp_path_factory.mktemp("cohort")
    return write_cohort(out, n_sites=3, seed=7, unseen=1, scale=0.15)
