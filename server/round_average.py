"""The published model as the average of the last K rounds' global models (``average_last_rounds: K``).

Why: late in a run the global model still moves from round to round (each round is one noisy step of
a few sites), and which round happens to be last decides how it does at a hospital whose scanner no
site has. The mean of the last K global models sits in the middle of that wandering: the idea of
stochastic weight averaging (Izmailov et al., UAI 2018), which SWAD (Cha et al., NeurIPS 2021) showed
to generalise better to unseen domains. It costs no training and nothing leaves a site: the server
already keeps every round's model file (:mod:`server.checkpoints`), and an average of released models
is post-processing, so a DP guarantee of the rounds holds for it unchanged.

Measured in ``fedrad-bench generalization --average-rounds K`` (docs/generalization.md).

Floating-point tensors (weights, BatchNorm running statistics) are averaged; integer ones (BatchNorm's
batch counters) are taken from the last round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from shared.modelfile import LoadedModel, load_model_file, save_model_file

AVERAGED_FILE = "averaged.pt"


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (same keys and shapes); integer tensors from the last one."""
    if not states:
        raise ValueError("nothing to average")
    last = states[-1]
    out = {}
    for key, value in last.items():
        if value.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def averaged_model(paths: Sequence[Path]) -> LoadedModel:
    """The model files at ``paths`` (oldest first) averaged into one :class:`LoadedModel` (the last one's metadata)."""
    files = [load_model_file(p) for p in paths]
    state = average_state_dicts([f.model.state_dict() for f in files])
    model = files[-1]
    model.model.load_state_dict(state)
    model.model.eval()
    return model


def window(last_round: int, k: int) -> range:
    """The rounds a K-round average after ``last_round`` covers (fewer while fewer rounds exist)."""
    return range(max(1, last_round - k + 1), last_round + 1)


def write_round_average(run_dir: Path, last_round: int, k: int, round_path) -> dict:  # noqa: ANN001 - int -> Path
    """Write ``run_dir/averaged.pt``: the mean of the global models of the last ``k`` rounds up to ``last_round``.

    ``round_path(r)`` names round r's model file. The provenance records which rounds went in
    (``extra.averaged_rounds = [first, last]``), so the model card can say so. Returns what ``state.json``
    records: ``{"file", "rounds": [first, last], "weights_sha256"}``."""
    rounds = window(last_round, k)
    avg = averaged_model([round_path(r) for r in rounds])
    prov = dict(avg.provenance)
    extra = dict(prov.get("extra") or {}) | {"averaged_rounds": [rounds[0], rounds[-1]]}
    path = Path(run_dir) / AVERAGED_FILE
    digest = save_model_file(
        path,
        avg.model,
        architecture=avg.architecture,
        arch_kwargs=avg.arch_kwargs,
        classes=avg.classes,
        labels=avg.labels or None,
        task=avg.task,
        task_options=avg.task_options,
        preprocess=avg.preprocess,
        threshold=avg.threshold,
        provenance={
            "trained_by": prov["trained_by"],
            "kind": prov["kind"],
            "rounds": prov.get("rounds"),
            "epochs": prov.get("epochs"),
            "extra": extra,
        },
    )
    return {"file": AVERAGED_FILE, "rounds": [rounds[0], rounds[-1]], "weights_sha256": digest}
