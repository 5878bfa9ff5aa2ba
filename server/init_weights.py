"""``task.init_weights`` before the run starts: a plain state dict is imported once, where the coordinator sees it.

The ServerApp runs inside Flower's processes, where a printed report reaches nobody and an error surfaces only
after every site has connected. So ``fedrad-server start`` imports the file itself, before it waits for sites:
it prints the import report (which keys found a place, which model tensors keep their fresh init), fails at
once on a file that does not fit the task's model, and writes the result as a FedRad model file into the run
folder (``init-weights.pt``, the report in its provenance). Round 1 starts from that file, so the run folder
holds everything the run started from even if the original file moves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.config import ConfigError

INIT_FILE = "init-weights.pt"


def prepare_init_weights(
    cfg,  # noqa: ANN001 - server.consortium.ConsortiumConfig
    run_dir: Path,
    *,
    resume: bool,
    say: Callable[[str], None],
) -> Path | None:
    """The model file round 1 starts from, checked against the task; None when the task has no init_weights.

    A FedRad model file of the task is used as it is; a plain state dict becomes ``run_dir/init-weights.pt``
    (a resumed run keeps the one it made). The head's fresh init follows the consortium's seed, as the
    ServerApp's would. Every problem is a :class:`~shared.config.ConfigError` naming the file."""
    source = cfg.task.init_weights
    if source is None:
        return None
    converted = Path(run_dir) / INIT_FILE
    if resume and converted.is_file():
        say(f"init weights: {converted} (imported from {source} when the run started)")
        return converted
    import torch

    from shared.modelfile import ModelFileError, save_model_file
    from shared.start_weights import load_start_weights

    spec = cfg.task.spec()
    torch.manual_seed(cfg.seed)
    try:
        model = spec.build_model()
        start = load_start_weights(source, spec, model)
    except (ModelFileError, ValueError) as exc:
        raise ConfigError(f"consortium.yaml task.init_weights: {exc}") from None
    if start.report is None:  # a FedRad model file of this task: the ServerApp reads it as it is
        for line in start.lines():
            say(line)
        return Path(source)
    for line in start.lines(full_report=f"provenance.extra.imported_from of {converted}"):
        say(line)
    save_model_file(
        converted,
        start.state_dict,
        architecture=spec.model,
        arch_kwargs={},
        **spec.model_file_outputs(),
        preprocess=cfg.task.preprocess(),
        threshold=None,
        provenance={"trained_by": cfg.name, "kind": "imported", "extra": {"imported_from": start.provenance}},
    )
    return converted
