"""What a site does with one federated message: train or evaluate the global model on local data.

Testable without Flower: the ClientApp (:mod:`client.app`) only converts
messages to the plain arguments here and back. :class:`SiteSession` is one
run's task and data at the site; the warm site worker (:mod:`client.site_worker`)
keeps it in memory between messages, while the in-process fallback opens it
per message from the on-disk tensor cache (``load_site_dataset``; fast after
the first decode). FedBN's local normalisation tensors live in the site's work
dir either way, so both paths give the same results.

Held-out evaluation: each site splits its cases once per run, by patient
(``shared.splits.stratified_group_split``, seeded by the run's ``seed``, the
same split every round) into a training part (1 − ``EVAL_FRACTION``) and a
held-out part. Training never sees the held-out patients; federated
evaluation reports on them only. A site too small for a patient split (fewer
than 2 patients) trains on everything and evaluates on its training data,
flagged with ``held-out = 0``.

Only aggregate numbers ever leave the site: example counts, mean loss,
accuracy, AUC and timings — no per-case values, keys or paths.

Hardware: each run trains and evaluates on the site's own ``device``, ``threads`` and
``amp`` from site.yaml (:mod:`shared.hardware`), never on anything the server says; the
weights sent back are CPU tensors whatever trained them.

Every task goes through the same code: the run config's task
(:class:`shared.tasks.TaskSpec`) says how the site's export becomes cases,
which loss the one training loop uses and which aggregate figures an
evaluation sends (:mod:`shared.tasks`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.config import ConfigError, SiteDataConfig, load_yaml_mapping
from shared.hardware import Hardware, activate, site_hardware
from shared.models import norm_layer_names
from shared.tasks import TaskSpec
from shared.tasks.base import TaskDataset
from shared.training import OptimizerCarry, TrainConfig, train_model

EVAL_FRACTION = 0.2
ROUND_STATE_KEEP = 2  # rounds of FedBN / optimizer state kept per site (the newest is used)


@dataclass
class SiteData:
    """A site's cases split for federated training and held-out evaluation."""

    train: TaskDataset
    held_out: TaskDataset
    has_held_out: bool
    load_s: float
    site_name: str
    work_dir: Path
    manufacturers: dict[str, int] = field(default_factory=dict)  # usable images per scanner manufacturer
    hardware: Hardware | None = None  # site.yaml's device/threads/amp (None: shared.hardware.active())


def _site_work_dir(site_config: Path, values: Mapping) -> Path:
    """``work_dir`` of site.yaml (relative to its folder), default ``work/`` beside it (as ``fedrad-site start``)."""
    base = Path(site_config).resolve().parent
    raw = values.get("work_dir")
    return (base / raw) if raw else base / "work"


def load_site_data(site_config: Path, task: TaskSpec, seed: int, site_name: str | None = None) -> SiteData:
    """Load and split the site's data for ``task``; a mismatch with the task is a ConfigError."""
    from client.site_options import site_data_config

    t0 = time.perf_counter()
    site_config = Path(site_config)
    cfg: SiteDataConfig = site_data_config(config=site_config, task=task.type)
    cfg.image_size = task.image_size  # the model needs the task's size; the cache is keyed by it
    kind = task.task
    hardware = site_hardware(cfg, site_config)  # before the data: a GPU asked for but absent fails fast
    data = task.load_site(cfg, site_config)  # under the consortium's settings of the task
    values = load_yaml_mapping(site_config)
    try:
        train, held = kind.split(data, EVAL_FRACTION, seed)
        if len(train) < 2 or len(held) < 1:
            raise ValueError("training part too small")
        has_held = True
    except ValueError:
        train, held, has_held = data, data, False
    return SiteData(
        train=train,
        held_out=held,
        has_held_out=has_held,
        load_s=time.perf_counter() - t0,
        site_name=str(site_name or values.get("site_name") or "site"),
        work_dir=_site_work_dir(site_config, values),
        manufacturers=dict(getattr(data, "manufacturers", {}) or {}),  # where the task's loader counted them
        hardware=hardware,
    )


class RoundStateStore:
    """State a site keeps for itself between rounds of one run, one file per round (never sent anywhere).

    Keyed by the run folder on the server (not Flower's run id), so a resumed
    run finds the state of the run it continues. Round ``r`` uses the newest
    state saved for a round before ``r``; a re-run of a round after a server
    crash therefore never sees its own earlier attempt. Subclasses name the kind.
    """

    folder = "state"  # under the site's work dir
    kind = "state"  # the file prefix: <kind>-round-0007.pt

    def __init__(self, work_dir: Path, run_key: str, site_name: str) -> None:
        self.dir = Path(work_dir) / self.folder / run_key / site_name

    @staticmethod
    def run_key(consortium: str, run_dir: str) -> str:
        return hashlib.sha256(f"{consortium}\0{run_dir}".encode()).hexdigest()[:16]

    def _path(self, rnd: int) -> Path:
        return self.dir / f"{self.kind}-round-{rnd:04d}.pt"

    def load_before(self, rnd: int) -> dict | None:
        rounds = (
            sorted(int(p.stem.rsplit("-", 1)[1]) for p in self.dir.glob(f"{self.kind}-round-*.pt"))
            if self.dir.exists()
            else []
        )
        earlier = [r for r in rounds if r < rnd]
        if not earlier:
            return None
        return torch.load(self._path(earlier[-1]), map_location="cpu", weights_only=True)

    def save(self, rnd: int, state: Mapping) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(rnd).with_suffix(".tmp")
        torch.save(dict(state), tmp)
        os.replace(tmp, self._path(rnd))
        for old in sorted(self.dir.glob(f"{self.kind}-round-*.pt"))[:-ROUND_STATE_KEEP]:
            old.unlink(missing_ok=True)


class LocalNormStore(RoundStateStore):
    """FedBN: this site's normalisation-layer tensors between rounds."""

    folder, kind = "fedbn", "norm"

    def save(self, rnd: int, state: Mapping[str, torch.Tensor]) -> None:
        super().save(rnd, {k: v.detach().cpu().clone() for k, v in state.items()})


class OptimizerStore(RoundStateStore):
    """``site-optimizer: carry``: this site's AdamW moments between rounds (:class:`shared.training.OptimizerCarry`)."""

    folder, kind = "optimizer", "adamw"


def global_model(task: TaskSpec, state: Mapping[str, torch.Tensor], local_norm: Mapping[str, torch.Tensor] | None):  # noqa: ANN201
    """Build the task's model with the global weights; with ``local_norm`` (FedBN) the site's own norm tensors win."""
    model = task.build_model()
    weights = dict(state)
    if local_norm:
        norm = norm_layer_names(model)
        weights.update({k: v for k, v in local_norm.items() if k in norm})
    model.load_state_dict(weights)
    return model


def norm_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's normalisation-layer tensors (what FedBN keeps at the site)."""
    keys = norm_layer_names(model)
    return {k: v for k, v in model.state_dict().items() if k in keys}


def train_config(task: TaskSpec, config: Mapping) -> TrainConfig:
    """TrainConfig for one round: ``seed + server-round`` so every round shuffles differently."""
    defaults = TrainConfig.for_task(task.task)
    return TrainConfig.for_task(
        task.task,
        epochs=int(config.get("local-epochs", 1)),
        batch_size=int(config.get("batch-size", defaults.batch_size)),
        lr=float(config.get("lr", defaults.lr)),
        augment=float(config.get("augment", 1.0)),
        scanner_augment=float(config.get("scanner-augment", 0.0)),
        seed=int(config.get("seed", 0)) + int(config.get("server-round", 0)),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )


def train_round(
    task: TaskSpec,
    state: Mapping[str, torch.Tensor],
    data: SiteData,
    config: Mapping,
    store: LocalNormStore | None,
    ledger: Path | None = None,
    max_epsilon: float = 0.0,
    optimizer_store: OptimizerStore | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """Train the global weights locally; return (new state dict, aggregate metrics).

    With ``optimizer_store`` (round config ``site-optimizer: carry``) AdamW continues from this site's
    moments of its previous round and saves them for the next (:class:`shared.training.OptimizerCarry`).

    Under per-image DP (``dp-level: image``) the round trains with DP-SGD and is recorded in this
    site's privacy ``ledger`` first (:mod:`client.privacy_ledger`); ``max_epsilon`` is the site's cap.
    """
    rnd = int(config.get("server-round", 0))
    keep_local = bool(config.get("keep-local-norm", False)) and store is not None
    model = global_model(task, state, store.load_before(rnd) if keep_local else None)
    dp_metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.get("dp-level") != "image":
        carry = OptimizerCarry(optimizer_store.load_before(rnd)) if optimizer_store is not None else None
        history = train_model(model, data.train, train_config(task, config), carry=carry, hardware=data.hardware)
        if optimizer_store is not None:
            optimizer_store.save(rnd, carry.state)
    else:
        from client.privacy_ledger import ImageDp, train_private_round

        refusal = task.task.unsupported("image-dp")
        if refusal:
            raise ValueError(refusal)
        if ledger is None:
            raise ValueError("per-image DP needs the site's privacy ledger path")
        history, dp_metrics = train_private_round(
            model, data.train, train_config(task, config), ImageDp.from_config(config), rnd, ledger, max_epsilon
        )
    last = history[-1]
    metrics: dict[str, float | int] = {"num-examples": len(data.train), "train-loss": float(last["loss"])}
    if "train_acc" in last:
        metrics["train-acc"] = float(last["train_acc"])
    metrics.update({"train-s": time.perf_counter() - t0, **dp_metrics})
    if keep_local:
        store.save(rnd, norm_state(model))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics  # CPU whatever trained it


def evaluate_round(
    task: TaskSpec, state: Mapping[str, torch.Tensor], data: SiteData, config: Mapping, store: LocalNormStore | None
) -> dict[str, float | int]:
    """Aggregate figures of the global model (FedBN: with this site's norm layers) on the held-out part."""
    rnd = int(config.get("server-round", 0))
    keep_local = bool(config.get("keep-local-norm", False)) and store is not None
    model = global_model(task, state, store.load_before(rnd + 1) if keep_local else None)
    return {**task.task.site_metrics(model, data.held_out, seed=rnd), "held-out": int(data.has_held_out)}


def shared_local_model(task: TaskSpec, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """The weights of the model file this site shares for cross-site evaluation, if it fits the consortium's task."""
    from shared.modelfile import load_model_file

    loaded = load_model_file(path)
    mismatch = loaded.task_mismatch(task)
    if mismatch:
        raise ConfigError(f"{path}: {mismatch}; the consortium's task is {task.describe()}")
    trained_on = int((loaded.provenance.get("extra") or {}).get("train_images") or 0)
    return {k: v.detach() for k, v in loaded.model.state_dict().items()}, {"num-examples": trained_on}


@dataclass
class SiteSession:
    """One run's task and split data at this site, opened from Flower's run and node config.

    Run config: ``classes``, ``image-size``, ``model``, ``seed``, ``consortium``,
    ``run-dir`` (FedBN key). Node config: ``site-config`` (site.yaml path),
    ``site-name``.
    """

    task: TaskSpec
    data: SiteData
    consortium: str
    run_dir: str
    max_epsilon: float = 0.0  # site.yaml privacy.max_epsilon (node config); 0 = no cap of its own
    _load_s: float = field(init=False)  # data-loading time not yet reported (the first message reports it)

    def __post_init__(self) -> None:
        self._load_s = self.data.load_s

    @classmethod
    def open(cls, run_config: Mapping, node_config: Mapping) -> SiteSession:
        site_config = node_config.get("site-config")
        if not site_config:
            raise ConfigError("node config has no 'site-config' (fedrad-site start sets it to the site.yaml path)")
        task = TaskSpec.from_run_config(run_config)
        data = load_site_data(
            Path(str(site_config)), task, int(run_config.get("seed", 0)), node_config.get("site-name")
        )
        if data.hardware is not None:  # the site's device and threads for every message of the run
            activate(data.hardware)
        return cls(
            task,
            data,
            str(run_config.get("consortium", "")),
            str(run_config.get("run-dir", "")),
            float(node_config.get("max-epsilon", 0.0) or 0.0),
        )

    @property
    def run_key(self) -> str:
        """This run's key at the site: its round stores and privacy ledger (a resumed run finds them again)."""
        return RoundStateStore.run_key(self.consortium, self.run_dir)

    def ledger_path(self) -> Path:
        """This site's per-image privacy ledger for the run."""
        return self.data.work_dir / "privacy" / f"{self.run_key}-{self.data.site_name}.json"

    def _store(self, config: Mapping) -> LocalNormStore | None:
        return (
            LocalNormStore(self.data.work_dir, self.run_key, self.data.site_name)
            if config.get("keep-local-norm")
            else None
        )

    def _optimizer_store(self, config: Mapping) -> OptimizerStore | None:
        carry = config.get("site-optimizer", "reset") == "carry"
        return OptimizerStore(self.data.work_dir, self.run_key, self.data.site_name) if carry else None

    def handle(
        self, op: str, state: Mapping[str, torch.Tensor], config: Mapping
    ) -> tuple[dict[str, torch.Tensor] | None, dict[str, float | int]]:
        """Run one ``train`` or ``evaluate`` message: (new weights or None, aggregate metrics).

        ``load-s`` is the data-loading time this message paid (0 once the session is warm).
        """
        if op == "train":
            new_state, metrics = train_round(
                self.task,
                state,
                self.data,
                config,
                self._store(config),
                self.ledger_path(),
                self.max_epsilon,
                self._optimizer_store(config),
            )
        elif op == "evaluate":
            new_state, metrics = None, evaluate_round(self.task, state, self.data, config, self._store(config))
        elif op == "local-model":  # a consented crossval request: this site's own model file, checked against the task
            new_state, metrics = shared_local_model(self.task, Path(str(config["local-model-path"])))
        elif op == "query":  # data statistics for the coordinator (client/site_stats.py)
            from client.site_stats import site_statistics

            refusal = self.task.task.unsupported("stats")
            if refusal:
                raise ValueError(refusal)
            d = self.data
            return None, site_statistics([d.train, d.held_out] if d.has_held_out else [d.train], d.manufacturers)
        else:
            raise ValueError(f"unknown message type {op!r} (expected train, evaluate or query)")
        metrics["load-s"], self._load_s = self._load_s, 0.0
        return new_state, metrics
