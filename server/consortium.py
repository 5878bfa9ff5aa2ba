"""``consortium.yaml``: the coordinator's one settings file, validated strictly.

Why strict: a typo such as ``local_epoch: 5`` or ``proximal_m: 0.1`` must stop
the coordinator before any hospital spends compute, so unknown keys are an
error naming the key (``shared.config.StrictModel``). Strategy parameters are
validated per strategy (each strategy is its own model, selected by ``name``),
so FedAdam's ``eta`` is refused under FedAvg instead of being silently ignored.

:meth:`ConsortiumConfig.to_run_config` turns the file into the flat kebab-case
Flower run config of the issue-3 contract (the keys declared in pyproject's
``[tool.flwr.app.config]``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from shared.config import ConfigError, StrictModel, TaskConfig, check_host_port, load_yaml_mapping, parse_model

CONSORTIUM_YAML = "consortium.yaml"
STRATEGY_NAMES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "fedbn",
)


class _Strategy(StrictModel):
    def params(self) -> dict[str, Any]:
        """This strategy's parameters (everything but ``name``), for ``strategy-params``."""
        return self.model_dump(exclude={"name"})


class FedAvgStrategy(_Strategy):
    """Weighted mean of the site updates (by number of training images)."""

    name: Literal["fedavg"]


class _ServerStep(_Strategy):
    """Flower's FedAvgM step on the averaged update: w − server_learning_rate × (momentum-smoothed update)."""

    server_learning_rate: float = Field(1.0, gt=0, description="Server step on the averaged update (1 = FedAvg).")
    server_momentum: float = Field(0.0, ge=0, lt=1, description="Server momentum (0 = none).")


class FedBNStrategy(_ServerStep):
    """FedAvg where normalisation-layer parameters and buffers stay at each site; optionally with server momentum."""

    name: Literal["fedbn"]


class FedAvgMStrategy(_ServerStep):
    """FedAvg with server momentum (Hsu et al. 2019); BatchNorm statistics are averaged outside the step."""

    name: Literal["fedavgm"]
    server_momentum: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Server momentum (0.9 measured worse than FedAvg with FedRad's Adam sites; see docs/generalization.md).",
    )


class FedMedianStrategy(_Strategy):
    """Coordinate-wise median: robust to one outlying site."""

    name: Literal["fedmedian"]


class FedProxStrategy(_Strategy):
    """FedAvg plus a proximal term ``mu/2 ||w - w_global||^2`` in each site's loss."""

    name: Literal["fedprox"]
    proximal_mu: float = Field(0.01, ge=0, description="Proximal term weight (0 = FedAvg).")


class _AdaptiveStrategy(_Strategy):
    eta: float = Field(gt=0, description="Server learning rate.")
    eta_l: float = Field(gt=0, description="Client learning rate (recorded by Flower).")
    beta_1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta_2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity (numerical stability).")


class FedAdamStrategy(_AdaptiveStrategy):
    """Server-side Adam on the averaged update (Reddi et al. 2021)."""

    name: Literal["fedadam"]
    eta: float = Field(0.1, gt=0)
    eta_l: float = Field(0.1, gt=0)


class FedYogiStrategy(_AdaptiveStrategy):
    """Server-side Yogi on the averaged update (Reddi et al. 2021)."""

    name: Literal["fedyogi"]
    eta: float = Field(0.01, gt=0)
    eta_l: float = Field(0.0316, gt=0)


class FedTrimmedAvgStrategy(_Strategy):
    """Mean after dropping the ``beta`` fraction of highest and lowest values per coordinate."""

    name: Literal["fedtrimmedavg"]
    beta: float = Field(0.2, ge=0, lt=0.5, description="Fraction trimmed at each end.")


class KrumStrategy(_Strategy):
    """Picks the update closest to its neighbours; tolerates ``num_malicious_nodes`` (f) bad sites when min_sites ≥ 2f + 3."""

    name: Literal["krum"]
    num_malicious_nodes: int = Field(0, ge=0)


class DpConfig(StrictModel):
    """Differential privacy at one of two levels.

    ``site`` (client-level, server/strategies/dp.py): sites clip their update, the server adds noise, ε protects a
    whole hospital; needs hundreds of sites before the noise is affordable. ``image`` (shared/private_training.py):
    each site trains with DP-SGD and accounts its own ε (client/privacy_ledger.py), which protects each image.
    """

    level: Literal["site", "image"] = Field("site", description="Whom ε protects: a whole site, or one image.")
    noise_multiplier: float | None = Field(
        None, gt=0, description="level site: noise std as a multiple of clipping_norm / sites."
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        description="level image: ε every site reaches after the last "
        "round (each calibrates its own noise to its data).",
    )
    layers: Literal["all", "head"] = Field(
        "all",
        description="level image: train every layer (a BatchNorm-free "
        "model), or only the classifier of task.init_weights' pretrained model.",
    )
    clipping_norm: float = Field(
        gt=0,
        description="L2 bound: on each site's update (level site; parameters, not BN "
        "statistics) or on each image's gradient (level image).",
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ at which ε is reported.")

    @model_validator(mode="after")
    def _settings_of_the_level(self) -> DpConfig:
        if self.level == "site" and (self.noise_multiplier is None or self.target_epsilon is not None):
            raise ValueError("privacy.dp level 'site' needs noise_multiplier (and no target_epsilon)")
        if self.level == "image" and (self.target_epsilon is None or self.noise_multiplier is not None):
            raise ValueError(
                "privacy.dp level 'image' needs target_epsilon (and no noise_multiplier: each site calibrates its own)"
            )
        return self


# Strategies that aggregate a (weighted) mean, which is all SecAgg+ reveals; the robust ones need each update.
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "fedbn")


class SecAggConfig(StrictModel):
    """SecAgg+ (server/secure_aggregation.py): the server sees only the sum of the sites' updates."""

    share_fraction: float = Field(
        1.0, gt=0, le=1, description="Each site's secrets are split among this fraction of the sites."
    )
    threshold_fraction: float = Field(
        0.67,
        gt=0,
        le=1,
        description="Fraction of the shares needed to unmask: "
        "higher protects more, lower tolerates more sites dropping mid-round.",
    )
    clipping_range: float = Field(
        1.0,
        gt=0,
        description="With max_weight C = range × max_weight: a site with n "
        "examples may send update values up to C / n, quantised to ~2C / (4.2M × n).",
    )
    max_weight: float = Field(
        1000, gt=0, description="Example-count scale; all sites' examples together must stay below 1024 × max_weight."
    )


class PrivacySettings(StrictModel):
    """``privacy:`` in consortium.yaml."""

    dp: DpConfig | None = Field(None, description="Differential privacy; absent = off.")
    secure_aggregation: SecAggConfig | None = Field(None, description="SecAgg+; absent = off.")


# Tracking backends: what each needs installed, and the extra that installs it (pyproject's optional-dependencies).
TRACKING_PACKAGES = {
    "mlflow": ("mlflow", "MLflow", "mlflow"),
    "tensorboard": ("tensorboard", "TensorBoard", "tensorboard"),
}
# Where MLflow can keep runs: a database FedRad's extra can write (SQLite), or a server the consortium runs.
MLFLOW_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")


def importable(module: str) -> bool:
    """Whether ``import module`` would find it, without importing it (MLflow takes about a second to import)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import blocked (tests, or a broken install)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class MlflowTracking(StrictModel):
    """``tracking.mlflow``: per-round aggregates, ε, the run config and the model card, as one MLflow run per FedRad run."""

    uri: str = Field(
        "sqlite:///mlflow.db",
        min_length=1,
        description="Tracking URI: sqlite:///FILE (relative to the consortium folder; artifacts in mlartifacts/ "
        "beside it), or the consortium's MLflow server, http(s)://HOST:PORT.",
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=200, description="Experiment name; default: the consortium's name."
    )

    @field_validator("uri")
    @classmethod
    def _a_store_mlflow_writes(cls, uri: str) -> str:
        scheme = uri.partition(":")[0].split("+")[0].lower() if ":" in uri else ""
        if scheme in ("", "file"):
            raise ValueError(
                "MLflow 3 refuses its file store (./mlruns) by default; use sqlite:///mlflow.db (a file in the "
                "consortium folder) or your MLflow server's http(s)://HOST:PORT"
            )
        if scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"must start with one of {', '.join(s + ':' for s in MLFLOW_SCHEMES)}")
        if scheme == "sqlite" and (not uri.startswith("sqlite:///") or ":memory:" in uri or uri == "sqlite:///"):
            raise ValueError("a SQLite store is a file: sqlite:///mlflow.db (relative) or sqlite:////abs/path.db")
        return uri

    def anchored(self, base_dir: Path) -> str:
        """The URI with a relative SQLite file taken relative to ``base_dir`` (the consortium folder)."""
        if not self.uri.startswith("sqlite:///"):
            return self.uri
        path = self.uri.removeprefix("sqlite:///")
        return self.uri if path.startswith("/") else f"sqlite:///{(Path(base_dir) / path).resolve()}"


class TensorBoardTracking(StrictModel):
    """``tracking.tensorboard``: TensorBoard event files, one subfolder per run (``tensorboard --logdir DIR``)."""

    dir: Path = Field(Path("tensorboard"), description="Event files folder (relative to the consortium folder).")


class TrackingSettings(StrictModel):
    """``tracking:`` in consortium.yaml: where the server's per-round aggregates also go. Absent = nowhere.

    Only what the server already holds is sent (aggregate metrics, ε, the run config, the model card)."""

    mlflow: MlflowTracking | None = Field(None, description="An MLflow tracking store; absent = off.")
    tensorboard: TensorBoardTracking | None = Field(None, description="TensorBoard event files; absent = off.")

    @model_validator(mode="before")
    @classmethod
    def _a_named_backend_is_on(cls, data: Any) -> Any:
        # `mlflow:` with nothing after it (YAML null) or `mlflow: true` means "on, with the defaults", never "off".
        if isinstance(data, dict):
            return {k: {} if v is None or v is True else v for k, v in data.items()}
        return data

    @property
    def enabled(self) -> list[str]:
        return [name for name in TRACKING_PACKAGES if getattr(self, name) is not None]

    def missing_packages(self) -> list[str]:
        """One sentence per enabled backend whose package is not installed (empty: all there)."""
        return [
            f"tracking.{name} needs {label}: pip install 'fedrad[{extra}]'"
            for name in self.enabled
            for module, label, extra in [TRACKING_PACKAGES[name]]
            if not importable(module)
        ]


StrategyConfig = Annotated[
    FedAvgStrategy
    | FedBNStrategy
    | FedMedianStrategy
    | FedProxStrategy
    | FedAdamStrategy
    | FedYogiStrategy
    | FedAvgMStrategy
    | FedTrimmedAvgStrategy
    | KrumStrategy,
    Field(discriminator="name"),
]


class ConsortiumConfig(StrictModel):
    """Everything the coordinator decides for a consortium; one file, ``DIR/consortium.yaml``."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    address: str = Field(description="HOST:PORT hospitals dial (the fleet proxy's public address).")
    task: TaskConfig = Field(default_factory=TaskConfig)
    rounds: int = Field(10, ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=10)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="The sites' learning rate over the rounds: constant, or a cosine decay to near 0 "
        "at the last round (measured worse at 10 rounds; shared/lr_schedule.py).",
    )
    augment: float = Field(1.0, ge=0, le=10)
    scanner_augment: float = Field(
        0.0,
        ge=0,
        le=4,
        description="Scanner-appearance augmentation strength at the sites (exposure field, "
        "collimation, blur, contrast curve, noise; shared/scanner_augment.py); 0 = off.",
    )
    compression: Literal["none", "fp16"] = Field(
        "none", description="Site uploads as float32 or float16 (half the bytes)."
    )
    site_optimizer: Literal["reset", "carry"] = Field(
        "reset",
        description="Each round a fresh AdamW at the sites (reset), or each site's AdamW moments carried "
        "from its previous round (carry; kept at the site, never sent).",
    )
    average_last_rounds: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Publish the mean of the last K rounds' global models as the run's model "
        "(RUN_DIR/averaged.pt; server/round_average.py); 0 = the last round's.",
    )
    strategy: StrategyConfig = Field(default_factory=lambda: FedAvgStrategy(name="fedavg"))
    min_sites: int = Field(2, ge=1)
    round_timeout_s: int = Field(600, ge=10)
    wait_for_sites_s: int = Field(600, ge=1)
    seed: int = 0
    evaluate_every: int = Field(1, ge=1)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    tracking: TrackingSettings = Field(
        default_factory=TrackingSettings, description="Experiment tracking (MLflow, TensorBoard); absent = none."
    )

    _host_port = field_validator("address")(check_host_port)

    @model_validator(mode="after")
    def _secure_aggregation_needs_a_mean(self) -> ConsortiumConfig:
        if self.privacy.secure_aggregation is not None and self.strategy.name not in SECAGG_STRATEGIES:
            raise ValueError(
                f"privacy.secure_aggregation hides each site's update, and strategy {self.strategy.name!r} needs to see "
                f"them; use one of {', '.join(SECAGG_STRATEGIES)} or remove privacy.secure_aggregation"
            )
        return self

    @model_validator(mode="after")
    def _image_dp_needs_a_batchnorm_free_model(self) -> ConsortiumConfig:
        from shared.models import BATCHNORM_FREE_MODELS

        dp = self.privacy.dp
        if dp is None or dp.level != "image":
            return self
        refusal = self.task.spec().task.unsupported("image-dp")
        if refusal:
            raise ValueError(f"privacy.dp level 'image': {refusal} yet; use level 'site' or remove privacy.dp")
        if dp.layers == "all" and self.task.model not in BATCHNORM_FREE_MODELS:
            raise ValueError(
                f"privacy.dp level 'image' trains with per-image gradients, which BatchNorm in task.model "
                f"{self.task.model!r} mixes across images; set task.model to one of {', '.join(BATCHNORM_FREE_MODELS)}, "
                "or privacy.dp.layers: head with a pretrained task.init_weights"
            )
        if dp.layers == "head" and self.task.init_weights is None:
            raise ValueError(
                "privacy.dp.layers head trains only the classifier on frozen features, which must come "
                "from a pretrained model: set task.init_weights"
            )
        return self

    @model_validator(mode="after")
    def _carried_optimizer_is_not_dp_sgd(self) -> ConsortiumConfig:
        dp = self.privacy.dp
        if self.site_optimizer == "carry" and dp is not None and dp.level == "image":
            raise ValueError(
                "site_optimizer carry does not apply under per-image DP (DP-SGD keeps no moments "
                "between rounds); set site_optimizer: reset"
            )
        return self

    @model_validator(mode="after")
    def _krum_has_enough_sites(self) -> ConsortiumConfig:
        # Krum's rule lives beside the strategy, which also applies it to a run config given directly.
        from server.strategies.krum import sites_problem

        if isinstance(self.strategy, KrumStrategy):
            problem = sites_problem(self.strategy.num_malicious_nodes, self.min_sites)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    def to_run_config(
        self, *, run_dir: Path | str = "", resume: bool = False, mode: str = "train", crossval_model: Path | str = ""
    ) -> dict[str, Any]:
        """The Flower run config of the contract (flat kebab-case keys, TOML scalar values)."""
        return {
            "num-server-rounds": self.rounds,
            "local-epochs": self.local_epochs,
            "min-sites": self.min_sites,
            "round-timeout-s": self.round_timeout_s,
            "evaluate-every": self.evaluate_every,
            "seed": self.seed,
            "strategy": self.strategy.name,
            "strategy-params": json.dumps(self.strategy.params(), sort_keys=True),
            **self.task.spec().to_run_config(),  # task-type, classes or labels, image-size, model
            "batch-size": self.batch_size,
            "lr": float(self.lr),
            "lr-schedule": self.lr_schedule,
            "augment": float(self.augment),
            "scanner-augment": float(self.scanner_augment),
            "compression": self.compression,
            "site-optimizer": self.site_optimizer,
            "average-last-rounds": self.average_last_rounds,
            "run-dir": str(Path(run_dir).resolve()) if str(run_dir) else "",
            "resume": bool(resume),
            "consortium": self.name,
            "dp-noise-multiplier": float(self.privacy.dp.noise_multiplier or 0.0) if self.privacy.dp else 0.0,
            "dp-level": self.privacy.dp.level if self.privacy.dp else "site",
            "dp-target-epsilon": float(self.privacy.dp.target_epsilon or 0.0) if self.privacy.dp else 0.0,
            "dp-layers": self.privacy.dp.layers if self.privacy.dp else "all",
            "dp-clipping-norm": float(self.privacy.dp.clipping_norm) if self.privacy.dp else 0.0,
            "dp-delta": float(self.privacy.dp.delta) if self.privacy.dp else 1e-5,
            "mode": mode,  # "train", "stats" (`fedrad-server stats`) or "crossval" (`fedrad-server crossval`)
            "init-weights": str(Path(self.task.init_weights).resolve()) if self.task.init_weights else "",
            "crossval-model": str(Path(crossval_model).resolve()) if str(crossval_model) else "",
            "secagg": json.dumps(
                self.privacy.secure_aggregation.model_dump() if self.privacy.secure_aggregation else {}
            ),
        }


def parse_consortium(data: dict, source: str = CONSORTIUM_YAML, base_dir: Path | None = None) -> ConsortiumConfig:
    """Validate a mapping; every problem is a :class:`ConfigError` naming the key.

    Relative paths (``task.init_weights``, ``tracking.tensorboard.dir``, a ``tracking.mlflow.uri`` SQLite file) resolve
    against ``base_dir`` when given (the consortium folder). A tracking backend whose package is not installed is an
    error here, before anything starts.
    """
    strategy = data.get("strategy")
    if isinstance(strategy, str):  # shorthand: `strategy: fedavg`
        strategy = {"name": strategy}
        data = {**data, "strategy": strategy}
    if isinstance(strategy, dict) and strategy.get("name") not in STRATEGY_NAMES:
        got = strategy.get("name")
        raise ConfigError(f"{source}: key 'strategy.name': must be one of {', '.join(STRATEGY_NAMES)} (got {got!r})")
    try:
        cfg = parse_model(ConsortiumConfig, data, source, base_dir)
    except ConfigError as exc:  # pydantic names union members: 'strategy.fedprox.eta' -> 'strategy.eta'
        raise ConfigError(
            re.sub(r"'strategy\.(" + "|".join(STRATEGY_NAMES) + r")\.", r"'strategy.", str(exc))
        ) from None
    missing = cfg.tracking.missing_packages()
    if missing:
        raise ConfigError("\n".join(f"{source}: {line}" for line in missing))
    if base_dir is not None and cfg.tracking.mlflow is not None:
        cfg.tracking.mlflow.uri = cfg.tracking.mlflow.anchored(base_dir)
    return cfg


def load_consortium(directory: Path) -> ConsortiumConfig:
    """Read ``DIR/consortium.yaml`` (a consortium folder made by ``fedrad-server init``)."""
    path = Path(directory) / CONSORTIUM_YAML
    if not path.is_file():
        raise ConfigError(f"{path}: not found; is {directory} a consortium folder (made by `fedrad-server init`)?")
    return parse_consortium(load_yaml_mapping(path), str(path), Path(directory).resolve())


def consortium_yaml_text(name: str, address: str) -> str:
    """A documented ``consortium.yaml`` with every key at its default (``fedrad-server init``)."""
    cfg = parse_consortium({"name": name, "address": address}, "command line (--name/--address)")
    t = cfg.task
    return f"""\
# FedRad consortium settings. Edit, then `fedrad-server start DIR`.
# Unknown or misspelled keys are an error (nothing is silently ignored).

name: {json.dumps(cfg.name)}       # recorded in every global model's provenance
address: {json.dumps(cfg.address)}  # HOST:PORT hospitals dial (fleet proxy; TLS, sites' keys)

task:                        # what is learned; every site must use the same
  type: {t.type}       # classification, or segmentation (masks from DICOM SEG files beside the images)
  classes: {json.dumps(t.classes)}   # classification: last class = positive class
  # labels: [nodule, lung]   # segmentation instead of classes: the SEG segment names, one output channel each
  image_size: {t.image_size}             # model input side, pixels
  model: {t.model}             # classification: smallcnn, smallcnn-gn (GroupNorm: per-image DP), smallcnn-eq / smallcnn-gn-eq (histogram-equalised input), resnet18; clinical backbones at 224-512 px: densenet121, resnet50, efficientnet_b0; segmentation: unet
  # init_weights: pretrained.pt  # start from a FedRad model file of this task, or a plain PyTorch state dict (ImageNet, torchxrayvision: mapped onto the model, report printed by `start`); relative to this folder; never downloaded

rounds: {cfg.rounds}                   # federated rounds
local_epochs: {cfg.local_epochs}              # epochs each site trains per round
batch_size: {cfg.batch_size}
lr: {cfg.lr}                    # site optimiser learning rate
lr_schedule: {cfg.lr_schedule}         # over the rounds: constant, or cosine (decays to near 0 by the last round)
augment: {cfg.augment}                 # augmentation strength at the sites (0 = off)
scanner_augment: {cfg.scanner_augment}         # scanner-look augmentation at the sites (0 = off; see docs/generalization.md before raising it)
compression: {cfg.compression}             # site uploads: none (float32) or fp16 (half the bytes)
site_optimizer: {cfg.site_optimizer}        # each round a fresh AdamW at the sites (reset), or carry its moments over (carry)
average_last_rounds: {cfg.average_last_rounds}       # publish the mean of the last K rounds' global models (averaged.pt); 0 = the last round's
# For scanners no site has (docs/generalization.md, "round average"): strategy fedavgm, task.model smallcnn-eq, scanner_augment 1.0,
# site_optimizer carry, average_last_rounds 5, rounds 40.

strategy:
  name: fedavg               # fedavg, fedprox, fedadam, fedyogi, fedavgm, fedmedian, fedtrimmedavg, krum, fedbn
  # Parameters, only those of the chosen strategy:
  #   fedprox:       proximal_mu (0.01)
  #   fedadam:       eta (0.1), eta_l (0.1), beta_1 (0.9), beta_2 (0.99), tau (0.001)
  #   fedyogi:       eta (0.01), eta_l (0.0316), beta_1 (0.9), beta_2 (0.99), tau (0.001)
  #   fedavgm:       server_learning_rate (1.0), server_momentum (0.5)
  #   fedbn:         server_learning_rate (1.0), server_momentum (0.0; see docs/generalization.md before raising it)
  #   fedtrimmedavg: beta (0.2, fraction trimmed at each end)
  #   krum:          num_malicious_nodes (0; needs min_sites >= 2 x num_malicious_nodes + 3)
  #   fedavg, fedmedian: none (fedbn keeps normalisation layers at each site)

min_sites: {cfg.min_sites}                 # sites that must be online to start, and to answer each round
round_timeout_s: {cfg.round_timeout_s}         # a round never waits longer than this for a site
wait_for_sites_s: {cfg.wait_for_sites_s}        # how long `start` waits for min_sites to come online
seed: {cfg.seed}                    # initial weights and site shuffling
evaluate_every: {cfg.evaluate_every}            # federated evaluation every N rounds (and after the last)

# Differential privacy (client level: protects each whole site; fedavg/fedprox only). Uncomment to enable.
# Sites clip their update to clipping_norm; the server adds N(0, (noise_multiplier * clipping_norm / sites)^2)
# to the mean; epsilon at delta is reported after every round. 5 rounds at noise_multiplier 1.5 ≈ epsilon 7.5.
# privacy:
#   dp: {{noise_multiplier: 1.5, clipping_norm: 1.0, delta: 1.0e-5}}
#   # Or per-image DP (level image): each site trains with DP-SGD and accounts its own epsilon. It protects each
#   # image (a patient with k images: about k x epsilon) and works with any strategy; needs task.model: smallcnn-gn.
#   dp: {{level: image, target_epsilon: 8.0, clipping_norm: 1.0, delta: 1.0e-5}}
#   # With a pretrained task.init_weights (e.g. trained on public images), layers: head trains only the classifier
#   # under DP and keeps the features frozen; it works with smallcnn's BatchNorm and costs far less accuracy.
#   dp: {{level: image, layers: head, target_epsilon: 8.0, clipping_norm: 1.0}}
#   # Secure aggregation (SecAgg+): the server sees only the sum of the sites' updates; needs >= 2 sites,
#   # not with fedmedian/fedtrimmedavg/krum (they need each update). Costs 4 message waves a round and 2x upload.
#   secure_aggregation: {{threshold_fraction: 0.67}}

# Experiment tracking (optional; docs/coordinator.md): every round's aggregate metrics and epsilon, the run config and
# the model card also go to MLflow and/or TensorBoard. Only what the server already holds: nothing new leaves a site.
# Needs pip install 'fedrad[mlflow]' or 'fedrad[tensorboard]'. `fedrad-server track DIR` re-sends a run.
# tracking:
#   mlflow: {{uri: "sqlite:///mlflow.db"}}   # a file here (artifacts in mlartifacts/), or your server: http://HOST:5000;
#                                          # experiment: <name> (default: the consortium name)
#   tensorboard: {{dir: tensorboard}}        # one subfolder per run: tensorboard --logdir DIR/tensorboard
"""
