"""``fedrad-bench generalization``: does federation generalise? Pooled, local-only and federated models, every site.

On the same data and the same compute budget (``rounds × local_epochs``
passes over each training image), for each seed:

* **pooled**: one model on all training sites' training patients (the upper
  reference a consortium cannot have);
* **local-only**: one model per training site, on its own training patients;
* **federated**: one run per strategy through Flower's simulation engine
  (Ray, ``flwr run`` on a simulation SuperLink; :mod:`benchmarks.simulation`) or, with ``engine="deployment"``, its
  deployment engine (a loopback consortium, :mod:`benchmarks.deployment_engine`),
  with FedRad's production ServerApp and ClientApp.

Every model is scored (ROC AUC; for ``task_type="segmentation"`` Dice per
segment label and their mean, :mod:`benchmarks.generalization_task`) on every training site's held-out patients
(the split the ClientApp makes, :func:`client.federated.load_site_data`,
seeded by the run seed) and on each unseen site (all its images). FedBN's
model is scored at a training site with that site's own normalisation layers
(as the site deploys it) and at an unseen site with the averaged ones.
AdaBN rows are added only for models with BatchNorm (the segmentation UNet
uses instance norm, which has no running statistics). Results: ``results.json``
and ``report.html`` with PNG charts
(:mod:`benchmarks.generalization_report`).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from benchmarks import generalization_task as bench_task
from benchmarks.deployment_engine import DeploymentEngine
from benchmarks.paired_comparison import SITE_MEAN, comparisons
from benchmarks.simulation import SimulatedSite, prepare_site, run_simulated
from client.federated import LocalNormStore, global_model, load_site_data
from server.checkpoints import RunDir
from server.round_average import averaged_model, window
from shared.config import ConfigError, load_yaml_mapping
from shared.lr_schedule import LR_SCHEDULES
from shared.modelfile import load_model_file
from shared.models import MODEL_BUILDERS
from shared.synth.cohort import TEST_EXPORT
from shared.synth.ct_cohort import MANIFEST as CT_MANIFEST
from shared.tasks import TaskSpec, get_task, task_names
from shared.training import TrainConfig

STRATEGIES = ("fedavg", "fedprox", "fedbn", "fedadam")
STRATEGY_PARAMS = {"fedprox": {"proximal_mu": 0.01}, "fedadam": {"eta": 0.01}}
# Centralised and per-round training settings when not given: the task's own (TrainConfig.for_task), except a
# higher learning rate for segmentation (a benchmark has few epochs; 1e-2 trains the synthetic masks fastest).
BENCH_LR: dict[str, float] = {"segmentation": 1e-2}
ENGINE = "Flower simulation engine (Ray, `flwr run` on a simulation SuperLink), FedRad's production ServerApp/ClientApp"
ENGINES = ("simulation", "deployment")  # deployment: the slower final check on the real engine
EQUALIZE = "equalize"  # the intensity lever's row suffix: "<model> + equalize"
EQUALIZE_SUFFIX = "-eq"  # its architectures: smallcnn-eq, smallcnn-gn-eq (shared.intensity)
SCANNER_AUG = "scanner-aug"  # the scanner-appearance augmentation lever's row suffix (shared.scanner_augment)
MOMENTUM = "momentum"  # the server-momentum lever's row suffix: FedAvgM's step on the shared weights
CARRIED = "carried optimizer"  # the site-optimizer lever's row suffix: each site's AdamW carried across its rounds
AVERAGED = "round average"  # the published model as the mean of the last K rounds' global models (server.round_average)


@dataclass(frozen=True)
class ArmVariant:
    """A lever that changes how every arm trains, so pooled and each strategy get a row with it: "<arm> + <label>".

    Same split, initial weights, shuffling and epochs as the arm without it, so the two pair seed by seed."""

    label: str = ""  # "" = the plain arm
    equalize: bool = False  # the model's histogram-equalisation input layer (<model>-eq, shared.intensity)
    scanner_augment: float = 0.0  # scanner-appearance augmentation strength at every site (shared.scanner_augment)
    server_momentum: float = 0.0  # > 0: the server steps with this momentum (federated arms whose strategy takes it)
    carry_optimizer: bool = False  # federated arms: run config site-optimizer carry (shared.training.OptimizerCarry)

    def row(self, arm: str) -> str:
        return f"{arm} + {self.label}" if self.label else arm

    def run_name(self, strategy: str, seed: int) -> str:
        """The federated run's folder, e.g. fedavg-seed0, fedavg-equalize-seed0, fedavg-equalize-scanner-aug-seed0."""
        return "-".join([strategy, *self.label.replace(" + ", " ").split(), f"seed{seed}"])


PLAIN = ArmVariant()


class BenchmarkError(RuntimeError):
    """An arm of the benchmark could not run; the message says which and why."""


@dataclass(frozen=True)
class BenchSite:
    """A site folder: ``site.yaml`` (its ``data``/``labels``) or ``dicom/`` + ``labels.csv`` (the synthetic layout).

    ``labels`` is None for a segmentation-only site (its labels are the DICOM SEGs in ``data``)."""

    name: str
    data: Path
    labels: Path | None
    test: BenchSite | None = None  # <folder>/test/ (dicom/ + labels.csv): scored instead of held-out patients

    @classmethod
    def from_dir(cls, folder: Path) -> BenchSite:
        """The site in ``folder``, with its separate test export ``folder/test/`` when there is one."""
        site = cls._data_of(Path(folder))
        test = Path(folder) / TEST_EXPORT
        return replace(site, test=cls._data_of(test, f"{site.name}/{TEST_EXPORT}")) if test.is_dir() else site

    @classmethod
    def _data_of(cls, folder: Path, name: str = "") -> BenchSite:
        name = name or folder.name
        if (folder / "site.yaml").is_file():
            values = load_yaml_mapping(folder / "site.yaml")
            if "data" not in values:
                raise ConfigError(f"{folder / 'site.yaml'}: needs 'data' (and 'labels' for classification)")
            base = folder.resolve()
            labels = base / str(values["labels"]) if values.get("labels") else None
            return cls(name, base / str(values["data"]), labels)
        if (folder / "dicom").is_dir() and (folder / "labels.csv").is_file():
            return cls(name, folder / "dicom", folder / "labels.csv")
        if (folder / "dicom").is_dir() and (folder / CT_MANIFEST).is_file():  # a CT site: its labels are in dicom/
            return cls(name, folder / "dicom", None)
        raise ConfigError(
            f"{folder}: not a site folder; expected site.yaml, dicom/ and labels.csv (what `fedrad-site synth` "
            f"writes), or dicom/ and {CT_MANIFEST} (`fedrad-site synth --modality ct`)"
        )


@dataclass
class BenchConfig:
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: int = 3
    rounds: int = 5
    local_epochs: int = 2
    image_size: int = 64
    model: str = ""  # "" = the task's default (smallcnn, unet)
    batch_size: int = 0  # 0 = the task's default (TASK_DEFAULTS)
    lr: float = 0.0  # 0 = the task's default
    lr_schedule: str = "constant"  # every arm's learning rate over its epochs / rounds (shared.lr_schedule)
    augment: float = 1.0
    classes: list[str] = field(default_factory=lambda: ["normal", "nodule"])
    cpus: int = 2
    adabn: bool = True  # also score each federated model with BN statistics re-estimated at the unseen site
    task_type: str = "classification"  # or "segmentation": a UNet on DICOM SEG masks, scored by Dice per label
    labels: list[str] = field(default_factory=list)  # segmentation: the SEG segment names, one output channel each
    # The task's settings (Task.options, e.g. segmentation3d's spacing, window, patches_per_case), as a consortium
    # sets them under task: in consortium.yaml; {} = the task's defaults. Every arm reads the sites under them.
    task_options: dict[str, str] = field(default_factory=dict)
    finetune_epochs: int = 0  # > 0: also "<strategy> + finetune", each site's model tuned on its own training patients
    engine: str = (
        "simulation"  # or "deployment": federated runs on a loopback consortium (benchmarks.deployment_engine)
    )
    equalize_lever: bool = False  # also "pooled + equalize" and "<strategy> + equalize" (model <model>-eq)
    scanner_augment_lever: float = 0.0  # > 0: also "<arm> + scanner-aug" at this strength (and with equalize)
    server_momentum_lever: float = 0.0  # > 0: also "<strategy> + momentum" for the strategies that take one
    carry_optimizer_lever: bool = False  # also "<strategy> + carried optimizer" (and "+ momentum + carried optimizer")
    average_rounds: int = 0  # > 1: also "<federated row> + round average", the mean of its last K global models
    combined_levers_only: bool = False  # with equalize and scanner-aug: only both together, not each alone

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine: unknown {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.task_type not in task_names():
            raise ConfigError(f"--task: unknown {self.task_type!r}; choose from {', '.join(task_names())}")
        kind = get_task(self.task_type)
        try:
            kind.check_outputs(self.outputs)
        except ValueError as exc:
            raise ConfigError(f"--{'classes' if kind.outputs_key == 'classes' else 'labels'}: {exc}") from None
        try:
            self._options = kind.check_options(self.task_options) if self.task_options else ()
        except ValueError as exc:
            raise ConfigError(f"--task-options: {exc}") from None
        if self.finetune_epochs < 0 or (self.finetune_epochs and kind.unsupported("finetune")):
            raise ConfigError(f"--finetune-epochs: a number of epochs >= 0 ({kind.unsupported('finetune') or 'ok'})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule: unknown {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        self.model = self.model or kind.default_model
        if self.equalize_lever and self.model + EQUALIZE_SUFFIX not in MODEL_BUILDERS:
            raise ConfigError(
                "--equalize-lever: the histogram-equalisation input layer exists for the classification "
                f"models smallcnn and smallcnn-gn only, not {self.model!r}"
            )
        if not 0 <= self.scanner_augment_lever < math.inf or (
            self.scanner_augment_lever and kind.unsupported("scanner-augment")
        ):
            raise ConfigError(
                "--scanner-augment-lever: a strength >= 0 (e.g. 1.0), for tasks with scanner augmentation"
            )
        if not 0 <= self.server_momentum_lever < 1:
            raise ConfigError(
                f"--server-momentum-lever: a momentum in [0, 1) (e.g. 0.5), got {self.server_momentum_lever}"
            )
        if self.average_rounds < 0 or self.average_rounds == 1 or self.average_rounds > self.rounds:
            raise ConfigError(
                f"--average-rounds: a number of rounds from 2 to --rounds ({self.rounds}), or 0 for off; "
                f"got {self.average_rounds}"
            )
        if self.server_momentum_lever and not any(takes_server_momentum(s) for s in self.strategies):
            raise ConfigError(
                "--server-momentum-lever: none of --strategies takes a server momentum; add fedbn or fedavgm"
            )
        defaults = TrainConfig.for_task(kind)
        self.batch_size = self.batch_size or defaults.batch_size
        self.lr = self.lr or BENCH_LR.get(kind.name, defaults.lr)

    @property
    def outputs(self) -> list[str]:
        """The task's output names: the classes, or the segment labels."""
        return list(self.classes if get_task(self.task_type).outputs_key == "classes" else self.labels)

    def variants(self) -> list[ArmVariant]:
        """The plain arms, then each lever that changes every arm, and both together when both are on (with
        ``combined_levers_only``, only both together)."""
        eq, sa = self.equalize_lever, self.scanner_augment_lever
        single = not (eq and sa and self.combined_levers_only)
        return [
            PLAIN,
            *([ArmVariant(EQUALIZE, equalize=True)] if eq and single else []),
            *([ArmVariant(SCANNER_AUG, scanner_augment=sa)] if sa and single else []),
            *([ArmVariant(f"{EQUALIZE} + {SCANNER_AUG}", equalize=True, scanner_augment=sa)] if eq and sa else []),
        ]

    def federated_variants(self, strategy: str) -> list[ArmVariant]:
        """:meth:`variants`, then the levers with no pooled twin (pooled training has no server, and one optimizer
        throughout): server momentum where the strategy takes one, the carried site optimizer, both together, and
        the carried optimizer on top of the last (all-levers) variant."""
        m = self.server_momentum_lever if takes_server_momentum(strategy) else 0.0
        carry = self.carry_optimizer_lever
        levered = self.variants()[-1]
        return [
            *self.variants(),
            *([ArmVariant(MOMENTUM, server_momentum=m)] if m else []),
            *([ArmVariant(CARRIED, carry_optimizer=True)] if carry else []),
            *([ArmVariant(f"{MOMENTUM} + {CARRIED}", server_momentum=m, carry_optimizer=True)] if m and carry else []),
            *(
                [replace(levered, label=f"{levered.label} + {CARRIED}", carry_optimizer=True)]
                if carry and levered != PLAIN
                else []
            ),
        ]

    def task(self, variant: ArmVariant = PLAIN) -> TaskSpec:
        """The benchmark's task; with an equalising ``variant``, the same model with that input layer."""
        model = self.model + EQUALIZE_SUFFIX if variant.equalize else self.model
        return TaskSpec(self.task_type, tuple(self.outputs), model, self.image_size, self._options)

    def run_config(self, strategy: str, seed: int, run_dir: Path, n_sites: int, variant: ArmVariant = PLAIN) -> dict:
        return {
            "num-server-rounds": self.rounds,
            "local-epochs": self.local_epochs,
            "min-sites": n_sites,
            "round-timeout-s": 1800,
            "evaluate-every": self.rounds,
            "seed": seed,
            "strategy": strategy,
            "strategy-params": json.dumps(
                STRATEGY_PARAMS.get(strategy, {})
                | ({"server_momentum": variant.server_momentum} if variant.server_momentum else {})
            ),
            **self.task(variant).to_run_config(),
            "batch-size": self.batch_size,
            "lr": self.lr,
            "lr-schedule": self.lr_schedule,
            "augment": self.augment,
            "scanner-augment": variant.scanner_augment,
            "site-optimizer": "carry" if variant.carry_optimizer else "reset",
            "run-dir": str(run_dir),
            "consortium": "Benchmark",
        }


def takes_server_momentum(strategy: str) -> bool:
    """Whether the named strategy (server.strategies) has a ``server_momentum`` parameter."""
    from server.strategies import STRATEGIES as SERVER_STRATEGIES

    module = SERVER_STRATEGIES.get(strategy)
    return module is not None and "server_momentum" in module.SPEC.params


def adapt_bn(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.nn.Module:
    """AdaBN: a copy of ``model`` whose BatchNorm running statistics come from ``images`` (no labels needed).

    What an unseen hospital can do before using the model: run its own
    unlabelled images through it once. Weights are unchanged.
    """
    import copy

    adapted = copy.deepcopy(model)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return adapted.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    adapted.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            adapted(images[i : i + batch_size].float())
    return adapted.eval()


def _mean_sd(values: list[float]) -> dict:
    """Mean, sd and n over the seeds, and the value of each seed (None where it is undefined, e.g. one class)."""
    vals = [v for v in values if not math.isnan(v)]
    per_seed = [None if math.isnan(v) else round(v, 4) for v in values]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": per_seed}
    return {
        "mean": round(statistics.fmean(vals), 4),
        "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": per_seed,
    }


def run_benchmark(
    sites: list[BenchSite],
    unseen: list[BenchSite],
    cfg: BenchConfig,
    out: Path,
    say: Callable[[str], None] = print,
) -> dict:
    """Train and score everything; write ``results.json`` under ``out``; return the results.

    With ``engine="deployment"`` one loopback consortium serves every federated run; it stops when this returns
    or fails."""
    out = Path(out).resolve()
    deployment = DeploymentEngine(
        out / "deployment",
        sites,
        classes=cfg.classes,
        image_size=cfg.image_size,
        cache_dirs={s.name: out / "cache" / s.name for s in sites},
    )
    with deployment if cfg.engine == "deployment" else contextlib.nullcontext() as deployed:
        return _run_benchmark(sites, unseen, cfg, out, say, deployed)


def _run_benchmark(
    sites: list[BenchSite],
    unseen: list[BenchSite],
    cfg: BenchConfig,
    out: Path,
    say: Callable[[str], None],
    deployed: DeploymentEngine | None,
) -> dict:
    torch.set_num_threads(1)
    task = cfg.task()
    metrics = bench_task.metric_names(task)
    sim = [
        prepare_site(out / "sites", s.name, s.data, s.labels, cfg.classes, cfg.image_size, out / "cache" / s.name)
        for s in sites
    ]
    unseen_data = {u.name: bench_task.load_all(task, u.data, u.labels, out / "cache" / u.name) for u in unseen}
    test_exports = {
        s.name: bench_task.load_all(task, s.test.data, s.test.labels, out / "cache" / f"{s.name}-{TEST_EXPORT}")
        for s in sites
        if s.test is not None
    }
    columns = [f"{s.name} test" for s in sites] + list(unseen_data)
    cells: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in metrics}  # metric → model → column → per seed
    adabn = cfg.adabn and bool(unseen_data) and bench_task.has_batch_norm(task)
    timings: dict[str, list[float]] = {}
    epochs = cfg.rounds * cfg.local_epochs
    for seed in range(cfg.seeds):
        split = {s.name: load_site_data(s.site_yaml, task, seed, s.name) for s in sim}
        tests = {f"{n} test": test_exports.get(n, d.held_out) for n, d in split.items()} | unseen_data

        def score(label: str, model_for: Callable[[str], torch.nn.Module], tests: dict = tests) -> None:
            for col, data in tests.items():
                for metric, value in bench_task.score(task, model_for(col), data).items():
                    cells[metric].setdefault(label, {}).setdefault(col, []).append(value)

        def score_run(label: str, run: FederatedModels) -> None:
            """A federated run's row, and with ``average_rounds`` its round-average row from the same run."""
            score(label, run)
            if cfg.average_rounds:
                score(f"{label} + {AVERAGED}", run.averaged())

        pooled_data = bench_task.pool(task, [d.train for d in split.values()])
        for variant in cfg.variants():
            t0 = time.monotonic()
            say(f"seed {seed}: {variant.row('pooled')} model ({epochs} epochs)")
            pooled = _train(cfg.task(variant), pooled_data, epochs, cfg, seed, variant.scanner_augment)
            score(variant.row("pooled"), lambda col, m=pooled: m)
            timings.setdefault(variant.row("pooled"), []).append(time.monotonic() - t0)
        for name, d in split.items():
            t0 = time.monotonic()
            say(f"seed {seed}: local-only model of {name}")
            local = _train(task, d.train, epochs, cfg, seed)
            score(f"local {name}", lambda col, m=local: m)
            timings.setdefault("local", []).append(time.monotonic() - t0)
        for strategy in cfg.strategies:
            t0 = time.monotonic()
            say(
                f"seed {seed}: federated {strategy} ({cfg.rounds} rounds × {cfg.local_epochs} epochs, {len(sim)} sites)"
            )
            models = _federated_run(cfg, strategy, seed, out / "runs" / PLAIN.run_name(strategy, seed), sim, deployed)
            score_run(strategy, models)
            if adabn:  # the unseen site re-estimates BatchNorm statistics on its own images
                adapted = {u: adapt_bn(models(u), d.images) for u, d in unseen_data.items()}
                score(f"{strategy} + AdaBN", lambda col, m=models, a=adapted: a.get(col, m(col)))
            if cfg.finetune_epochs:  # what `fedrad-site finetune` gives each training site; unseen sites have no labels
                tuned = {
                    f"{n} test": bench_task.finetune(
                        models(f"{n} test"), d.train, cfg.finetune_epochs, cfg.batch_size, cfg.augment, seed
                    )
                    for n, d in split.items()
                }
                score(f"{strategy} + finetune", lambda col, m=models, t=tuned: t.get(col, m(col)))
            timings.setdefault(strategy, []).append(time.monotonic() - t0)
            for variant in cfg.federated_variants(strategy)[1:]:
                t0 = time.monotonic()
                say(f"seed {seed}: federated {variant.row(strategy)}")
                run = _federated_run(
                    cfg, strategy, seed, out / "runs" / variant.run_name(strategy, seed), sim, deployed, variant
                )
                score_run(variant.row(strategy), run)
                timings.setdefault(variant.row(strategy), []).append(time.monotonic() - t0)
    site_tests = [f"{s.name} test" for s in sites]
    results = summarise(cells[metrics[0]], columns, site_tests, [s.name for s in sites], list(unseen_data))
    results["metric"] = metrics[0]
    if len(metrics) > 1:  # segmentation: each label's Dice summarised as the headline is (matrix, models, paired)
        best = results["verdict"].get("best_federated")
        per_label = {
            m: summarise(cells[m], columns, site_tests, [s.name for s in sites], list(unseen_data), best)
            for m in metrics[1:]
        }
        results["metric_matrices"] = {m: r["matrix"] for m, r in per_label.items()}
        results["metric_models"] = {m: r["models"] for m, r in per_label.items()}
        results["metric_paired"] = {m: r["paired"] for m, r in per_label.items()}
    results.update(
        config=asdict(cfg),
        engine=deployed.description if deployed is not None else ENGINE,
        sites={s.name: len(split[s.name].train) + len(split[s.name].held_out) for s in sim},
        test_sizes={c: len(d) for c, d in tests.items()},
        test_sets={f"{s.name} test": "test export" if s.name in test_exports else "held-out patients" for s in sites},
        seconds={k: round(sum(v), 1) for k, v in timings.items()},
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _federated_run(
    cfg: BenchConfig,
    strategy: str,
    seed: int,
    run_dir: Path,
    sim: list[SimulatedSite],
    deployed: DeploymentEngine | None,
    variant: ArmVariant = PLAIN,
) -> FederatedModels:
    """One federated run on the chosen engine; column → the model it gives there (see :class:`FederatedModels`)."""
    try:
        if deployed is not None:
            deployed.run(cfg.run_config(strategy, seed, run_dir, len(sim), variant), label=run_dir.name)
        else:
            run_simulated(cfg.run_config(strategy, seed, run_dir, len(sim), variant), sim, cpus=cfg.cpus)
    except Exception as exc:  # noqa: BLE001 - the ServerApp's own message names the round and the sites
        raise BenchmarkError(
            f"federated {strategy} run (seed {seed}) failed: {exc}; its files are in {run_dir}"
        ) from None
    homes = [replace(s, work_dir=deployed.work_dir(s.name)) for s in sim] if deployed is not None else sim
    return FederatedModels(cfg.task(variant), run_dir, homes, strategy == "fedbn", cfg.rounds, cfg.average_rounds)


def _train(
    task: TaskSpec, data: bench_task.Dataset, epochs: int, cfg: BenchConfig, seed: int, scanner_augment: float = 0.0
) -> torch.nn.Module:
    return bench_task.train(
        task, data, epochs, cfg.batch_size, cfg.lr, cfg.augment, seed, cfg.lr_schedule, scanner_augment
    )


@dataclass
class FederatedModels:
    """What a finished federated run gives each test column: called with a column, the model deployed there
    (FedBN: the site's own normalisation layers at home, the averaged ones elsewhere); :meth:`averaged` the same
    for the mean of its last ``average_rounds`` global models (:mod:`server.round_average`)."""

    task: TaskSpec
    run_dir: Path
    sites: list[SimulatedSite]
    local_norm: bool
    rounds: int
    average_rounds: int = 0

    def __post_init__(self) -> None:
        latest = self.run_dir / "latest.pt"
        if not latest.is_file():
            raise RuntimeError(f"federated run left no model at {latest}; see the simulation output above")
        self._latest = self._per_column(load_model_file(latest).model.eval())

    def __call__(self, column: str) -> torch.nn.Module:
        return self._latest(column)

    def averaged(self) -> Callable[[str], torch.nn.Module]:
        rounds = window(self.rounds, self.average_rounds)
        return self._per_column(averaged_model([RunDir(self.run_dir).round_path(r) for r in rounds]).model)

    def _per_column(self, glob: torch.nn.Module) -> Callable[[str], torch.nn.Module]:
        if not self.local_norm:
            return lambda col: glob
        state = glob.state_dict()
        per_site = {}
        for s in self.sites:
            store = LocalNormStore(s.work_dir, LocalNormStore.run_key("Benchmark", str(self.run_dir)), s.name)
            per_site[f"{s.name} test"] = global_model(self.task, state, store.load_before(10**9)).eval()
        return lambda col: per_site.get(col, glob)


def summarise(
    cells: dict,
    columns: list[str],
    site_tests: list[str],
    site_names: list[str],
    unseen: list[str],
    best: str | None = None,
) -> dict:
    """Mean ± sd (and the values) over seeds per cell; per model the mean over site test sets, unseen score, ratio
    to pooled; the verdict; and paired per-seed differences (:mod:`benchmarks.paired_comparison`). ``best``: the
    federated model the verdict and pairs are about (a label's figures follow the headline's best); default the
    strategy with the highest site mean."""
    matrix = {m: {c: _mean_sd(v) for c, v in row.items()} for m, row in cells.items()}
    models: dict[str, dict] = {}
    series: dict[str, dict[str, list[float]]] = {}  # model → column (and SITE_MEAN) → value per seed
    seeds = max(len(v) for row in cells.values() for v in row.values())
    for m, row in cells.items():
        per_seed_mean = [
            statistics.fmean([row[c][i] for c in site_tests if not math.isnan(row[c][i])] or [math.nan])
            for i in range(seeds)
        ]
        series[m] = {**row, SITE_MEAN: per_seed_mean}
        models[m] = {"site_mean": _mean_sd(per_seed_mean), "unseen": {u: matrix[m][u] for u in unseen}}
    pooled = models.get("pooled", {}).get("site_mean", {}).get("mean")
    for m in models.values():
        mean = m["site_mean"]["mean"]
        m["ratio_to_pooled"] = round(mean / pooled, 4) if pooled and mean is not None else None
    federated = [m for m in models if not m.startswith(("pooled", "local "))]
    strategies = [m for m in federated if "+" not in m]  # matched budget; "+ AdaBN" / "+ finetune" are levers on top
    verdict = {}
    if best not in strategies:
        best = None
    if strategies:
        best = best or max(strategies, key=lambda m: models[m]["site_mean"]["mean"] or 0)
        verdict = _verdict(best, models, matrix, site_names, unseen)
        with_levers = max(federated, key=lambda m: models[m]["site_mean"]["mean"] or 0)
        if with_levers != best:
            verdict["with_levers"] = _verdict(with_levers, models, matrix, site_names, unseen)
        for_unseen = _best_unseen([best, with_levers, *federated], matrix, unseen)  # a tie goes to those already named
        if for_unseen and for_unseen not in (best, with_levers):  # the model to deploy where scanners are new
            verdict["for_unseen"] = _verdict(for_unseen, models, matrix, site_names, unseen)
    pooled_levers = [m for m in models if m.startswith("pooled +")]  # e.g. pooled + equalize, against pooled
    paired = comparisons(series, federated + pooled_levers, site_names, unseen, best)
    for key in ("with_levers", "for_unseen"):
        if verdict.get(key):
            paired += comparisons(series, [], site_names, unseen, verdict[key]["best_federated"])
    return {"columns": columns, "matrix": matrix, "models": models, "verdict": verdict, "paired": paired}


def _best_unseen(federated: list[str], matrix: dict, unseen: list[str]) -> str | None:
    """The first of ``federated`` with the highest mean score over the unseen sites, if any was scored."""

    def score(m: str) -> float:
        vals = [matrix[m][u]["mean"] for u in unseen if matrix[m].get(u, {}).get("mean") is not None]
        return statistics.fmean(vals) if vals else -math.inf

    scored = [m for m in federated if score(m) > -math.inf]
    return max(scored, key=score) if scored else None


def _verdict(best: str, models: dict, matrix: dict, site_names: list[str], unseen: list[str]) -> dict:
    """How ``best`` does against the targets, on means over seeds (:func:`summarise`'s ``paired`` has the CIs)."""
    own = {n: matrix[f"local {n}"][f"{n} test"]["mean"] for n in site_names if f"local {n}" in matrix}
    return {
        "best_federated": best,
        "ratio_to_pooled": models[best]["ratio_to_pooled"],
        "beats_local_on_own_test": {n: (matrix[best][f"{n} test"]["mean"] or 0) > (v or 0) for n, v in own.items()},
        "best_unseen": {u: max(models, key=lambda m: matrix[m][u]["mean"] or 0) for u in unseen},
        "beats_local_on_unseen": {
            u: all((matrix[best][u]["mean"] or 0) > (matrix[f"local {n}"][u]["mean"] or 0) for n in site_names)
            for u in unseen
        },
    }
