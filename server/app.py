"""FedRad ServerApp (Flower Message API): federated rounds with checkpoints and resume.

Why a round loop instead of ``strategy.start()``: ``Grid.send_and_receive``
sleeps a fixed 3 s between reply polls and ``start()`` waits forever for
``min_available_nodes``. :func:`send_and_receive` polls the same public Grid
API every ``poll_s``, every message wave has a deadline (``round-timeout-s``)
so a dead site cannot stall the run, and each round ends with a checkpoint
(:mod:`server.checkpoints`) that ``resume=true`` continues from.

Round policy (documented for coordinators):

* before the first round of a run (or resumed run) the server waits up to
  ``round-timeout-s`` for ``min-sites`` connected sites, then goes on with
  whoever is connected (at least one; nobody fails the run). Later rounds do
  not wait: they go to the sites connected at that moment, so a site that is
  down costs no waiting, and one that reconnects joins the next round;
* a training wave aggregates the valid replies that arrived within
  ``round-timeout-s``; replies that are late, errors, or fail validation
  (:mod:`server.strategies.validation`) are left out and logged; fewer than
  ``min_replies`` valid replies (strategy parameter, default 1) fail the run
  (the checkpoints of earlier rounds stay, so it can be resumed);
* evaluation runs every ``evaluate-every`` rounds and after the last one, on
  the sites' held-out patients; it never fails a round.

Heavy imports stay inside ``main`` so Flower's loading of this module stays cheap.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from shared.tasks import TaskSpec

app = ServerApp()


class RunConfigError(ValueError):
    """A run-config value the coordinator must fix; the message names the key."""


@dataclass(frozen=True)
class RunSettings:
    """The run config (``[tool.flwr.app.config]`` keys), typed and checked."""

    num_server_rounds: int
    local_epochs: int
    min_sites: int
    round_timeout_s: int
    evaluate_every: int
    seed: int
    strategy: str
    strategy_params: str
    task: TaskSpec  # the consortium's task: kind, outputs, architecture, input size
    batch_size: int
    lr: float
    augment: float
    run_dir: Path
    resume: bool
    consortium: str
    dp_noise_multiplier: float = 0.0  # 0: no differential privacy
    dp_clipping_norm: float = 0.0
    dp_delta: float = 1e-5
    dp_level: str = "site"  # "site": client-level central DP (above); "image": per-image DP-SGD at each site
    dp_target_epsilon: float = 0.0  # level "image": ε each site calibrates its noise to reach after the last round
    dp_layers: str = "all"  # level "image": "all", or "head" (only the classifier of the init-weights model trains)
    mode: str = "train"  # "stats": one query to every site for the coordinator's data QC (server/statistics.py)
    init_weights: str = ""  # a FedRad model file on the server host to start round 1 from (transfer learning)
    compression: str = "none"  # site uploads: "none" (float32) or "fp16" (shared/compression.py)
    crossval_model: str = ""  # mode "crossval": the global model file to evaluate (server host path)
    secagg: str = "{}"  # SecAgg+ settings as JSON (server/secure_aggregation.py); "{}" = off
    lr_schedule: str = "constant"  # over the rounds: "constant" or "cosine" (shared.lr_schedule)
    scanner_augment: float = 0.0  # scanner-appearance augmentation strength at the sites (shared.scanner_augment)
    site_optimizer: str = (
        "reset"  # each round a fresh AdamW at the sites, or "carry" its moments (shared.training.OptimizerCarry)
    )
    average_last_rounds: int = 0  # > 1: also publish the mean of the last K global models (server.round_average)

    @property
    def model(self) -> str:
        return self.task.model

    @classmethod
    def from_run_config(cls, cfg: Mapping) -> RunSettings:
        def get(key: str, typ: type, default: object):  # noqa: ANN202
            value = cfg.get(key, default)
            try:
                if typ is bool:
                    if isinstance(value, str):
                        return value.strip().lower() in ("1", "true", "yes")
                    return bool(value)
                return typ(value)
            except (TypeError, ValueError):
                raise RunConfigError(f"run config {key!r}: expected {typ.__name__}, got {value!r}") from None

        run_dir = str(get("run-dir", str, "")).strip()
        if not run_dir or not Path(run_dir).is_absolute():
            raise RunConfigError(f"run config 'run-dir' must be an absolute folder on the server host, got {run_dir!r}")
        try:
            task = TaskSpec.from_run_config(cfg)
        except ValueError as exc:
            raise RunConfigError(f"run config {exc}") from None
        s = cls(
            num_server_rounds=get("num-server-rounds", int, 3),
            local_epochs=get("local-epochs", int, 1),
            min_sites=get("min-sites", int, 2),
            round_timeout_s=get("round-timeout-s", int, 600),
            evaluate_every=get("evaluate-every", int, 1),
            seed=get("seed", int, 0),
            strategy=get("strategy", str, "fedavg").strip().lower(),
            strategy_params=get("strategy-params", str, "{}"),
            task=task,
            batch_size=get("batch-size", int, 32),
            lr=get("lr", float, 1e-3),
            augment=get("augment", float, 1.0),
            run_dir=Path(run_dir),
            resume=get("resume", bool, False),
            consortium=get("consortium", str, "fedrad"),
            dp_noise_multiplier=get("dp-noise-multiplier", float, 0.0),
            dp_clipping_norm=get("dp-clipping-norm", float, 0.0),
            dp_delta=get("dp-delta", float, 1e-5),
            dp_level=get("dp-level", str, "site").strip().lower(),
            dp_target_epsilon=get("dp-target-epsilon", float, 0.0),
            dp_layers=get("dp-layers", str, "all").strip().lower(),
            mode=get("mode", str, "train").strip().lower(),
            secagg=get("secagg", str, "{}"),
            crossval_model=get("crossval-model", str, ""),
            init_weights=get("init-weights", str, ""),
            compression=get("compression", str, "none").strip().lower(),
            lr_schedule=get("lr-schedule", str, "constant").strip().lower(),
            scanner_augment=get("scanner-augment", float, 0.0),
            site_optimizer=get("site-optimizer", str, "reset").strip().lower(),
            average_last_rounds=get("average-last-rounds", int, 0),
        )
        from shared.lr_schedule import LR_SCHEDULES

        if s.lr_schedule not in LR_SCHEDULES:
            raise RunConfigError(
                f"run config 'lr-schedule' must be one of {', '.join(LR_SCHEDULES)}, got {s.lr_schedule!r}"
            )
        if not (0 <= s.augment < math.inf and 0 <= s.scanner_augment < math.inf):
            raise RunConfigError(
                f"run config 'augment' and 'scanner-augment' must be finite numbers >= 0, "
                f"got {s.augment!r} and {s.scanner_augment!r}"
            )
        from shared.training import SITE_OPTIMIZERS

        if s.site_optimizer not in SITE_OPTIMIZERS:
            raise RunConfigError(
                f"run config 'site-optimizer' must be one of {', '.join(SITE_OPTIMIZERS)}, got {s.site_optimizer!r}"
            )
        if s.site_optimizer == "carry" and s.image_dp:
            raise RunConfigError(
                "run config 'site-optimizer' carry does not apply under per-image DP (DP-SGD keeps "
                "no moments between rounds); set it to reset"
            )
        if s.average_last_rounds < 0:
            raise RunConfigError(
                f"run config 'average-last-rounds' must be a number of rounds >= 0 (0 = publish the "
                f"last round's model), got {s.average_last_rounds}"
            )
        refusal = s.task.task.unsupported("scanner-augment") if s.scanner_augment else None
        if refusal:
            raise RunConfigError(f"run config 'scanner-augment': {refusal}; set it to 0")
        refusal = s.task.task.unsupported("image-dp") if s.dp_level == "image" else None
        if refusal:
            raise RunConfigError(f"run config 'dp-level' image: {refusal}; use dp-level site")
        from shared.compression import MODES

        if s.compression not in MODES:
            raise RunConfigError(f"run config 'compression' must be one of {', '.join(MODES)}, got {s.compression!r}")
        if s.mode not in ("train", "stats", "crossval"):
            raise RunConfigError(f"run config 'mode' must be 'train', 'stats' or 'crossval', got {s.mode!r}")
        if s.mode == "crossval" and not s.crossval_model:
            raise RunConfigError("run config 'crossval-model' must name the model file to evaluate in mode 'crossval'")
        if s.dp_noise_multiplier < 0 or (s.dp_noise_multiplier > 0 and s.dp_clipping_norm <= 0):
            raise RunConfigError("run config 'dp-noise-multiplier' must be >= 0, and with it 'dp-clipping-norm' > 0")
        if s.dp_level not in ("site", "image"):
            raise RunConfigError(f"run config 'dp-level' must be 'site' or 'image', got {s.dp_level!r}")
        if s.dp_level == "image" and (s.dp_target_epsilon <= 0 or s.dp_clipping_norm <= 0 or s.dp_noise_multiplier):
            raise RunConfigError(
                "run config 'dp-level' image needs 'dp-target-epsilon' > 0 and 'dp-clipping-norm' > 0, "
                "and no 'dp-noise-multiplier' (each site calibrates its own noise)"
            )
        from shared.models import BATCHNORM_FREE_MODELS

        if s.dp_layers not in ("all", "head"):
            raise RunConfigError(f"run config 'dp-layers' must be 'all' or 'head', got {s.dp_layers!r}")
        if s.dp_level == "image" and s.dp_layers == "all" and s.model not in BATCHNORM_FREE_MODELS:
            raise RunConfigError(
                f"run config 'dp-level' image with 'dp-layers' all needs a model without BatchNorm "
                f"({', '.join(BATCHNORM_FREE_MODELS)}), not {s.model!r}"
            )
        if s.dp_level == "image" and s.dp_layers == "head" and not s.init_weights:
            raise RunConfigError(
                "run config 'dp-layers' head trains only the classifier, so it needs 'init-weights' "
                "(a pretrained model file) for the frozen features"
            )
        try:
            secagg = json.loads(s.secagg or "{}")
        except json.JSONDecodeError:
            secagg = None
        if not isinstance(secagg, dict):
            raise RunConfigError(f"run config 'secagg' must be a JSON object, got {s.secagg!r}")
        from server.consortium import SECAGG_STRATEGIES

        if secagg and s.strategy not in SECAGG_STRATEGIES:
            raise RunConfigError(
                f"run config 'secagg' (secure aggregation) needs one of {', '.join(SECAGG_STRATEGIES)}, "
                f"not strategy {s.strategy!r}: it hides the single updates that strategy needs"
            )
        if not 0 < s.dp_delta < 1:
            raise RunConfigError(f"run config 'dp-delta' must lie in (0, 1), got {s.dp_delta}")
        for key, value, low in (
            ("num-server-rounds", s.num_server_rounds, 1),
            ("local-epochs", s.local_epochs, 1),
            ("min-sites", s.min_sites, 1),
            ("round-timeout-s", s.round_timeout_s, 1),
            ("evaluate-every", s.evaluate_every, 1),
            ("batch-size", s.batch_size, 2),
        ):
            if value < low:
                raise RunConfigError(f"run config {key!r} must be at least {low}, got {value}")
        check_task(s)
        return s

    @property
    def image_dp(self) -> bool:
        return self.dp_level == "image" and self.dp_target_epsilon > 0

    def describe(self) -> str:
        return self.task.describe()

    def train_config(self, rnd: int) -> dict:
        """What every site gets with round ``rnd``'s training message: the round's learning rate (after the
        schedule), and with per-image DP the settings each site calibrates to."""
        from shared.lr_schedule import scheduled_lr

        dp = (
            {
                "dp-level": "image",
                "dp-target-epsilon": self.dp_target_epsilon,
                "dp-clipping-norm": self.dp_clipping_norm,
                "dp-delta": self.dp_delta,
                "num-server-rounds": self.num_server_rounds,
                "dp-layers": self.dp_layers,
            }
            if self.image_dp
            else {}
        )
        lr = scheduled_lr(self.lr, rnd - 1, self.num_server_rounds, self.lr_schedule)
        return {
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "lr": lr,
            "augment": self.augment,
            "scanner-augment": self.scanner_augment,
            "seed": self.seed,
            "compression": self.compression,
            "site-optimizer": self.site_optimizer,
            **dp,
        }


def check_task(s: RunSettings) -> None:
    """The run config's architecture is one of its task's; a RunConfigError names the key."""
    registry = s.task.task.model_registry()
    if s.model not in registry:
        raise RunConfigError(
            f"run config 'model': {s.model!r} is not a {s.task.type} architecture; use one of "
            f"{', '.join(sorted(registry))}"
        )


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float, poll_s: float = 0.2) -> list[Message]:
    """Push ``messages`` and collect replies until all arrived or ``timeout`` passed (late ones are dropped).

    Same contract as ``Grid.send_and_receive``, with a short poll interval instead of Flower's fixed 3 s.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return replies


def silent_nodes(messages: Iterable[Message], replies: Iterable[Message]) -> list[int]:
    """Node ids that were sent a message and did not answer it in time (metrics.jsonl's ``no_reply``)."""
    answered = {int(r.metadata.src_node_id) for r in replies}
    return sorted({int(m.metadata.dst_node_id) for m in messages} - answered)


def write_progress(run_dir: Path, rnd: int, wave: str, messages: Iterable[Message] = ()) -> None:
    """``RUN_DIR/progress.json``: the wave in flight and the sites it waits for, for the live dashboard.

    Written (atomically) as each wave starts; the rounds themselves are committed by ``state.json``."""
    from server.checkpoints import PROGRESS_FILE, write_json_atomic

    write_json_atomic(
        Path(run_dir) / PROGRESS_FILE,
        {
            "round": rnd,
            "wave": wave,
            "nodes": sorted({int(m.metadata.dst_node_id) for m in messages}),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def wait_for_sites(grid: Grid, min_sites: int, timeout: float, poll_s: float = 0.5) -> int:
    """Wait up to ``timeout`` s for ``min_sites`` connected sites; return how many there are (maybe fewer)."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(list(grid.get_node_ids()))
        if n >= min_sites or time.monotonic() >= deadline:
            return n
        time.sleep(poll_s)


def site_metrics_row(train: Mapping[int, Mapping], evaluate: Mapping[int, Mapping]) -> dict[str, dict]:
    """metrics.jsonl's ``site_metrics``: ``{"<node id>": {"train": {...} | None, "eval": {...} | None}}``, each
    accepted reply's own aggregate metrics (what the site sent; the round figures are their combination)."""
    nodes = sorted(set(train) | set(evaluate))
    return {
        str(n): {
            "train": dict(train[n]) if n in train else None,
            "eval": dict(evaluate[n]) if n in evaluate else None,
        }
        for n in nodes
    }


def _bytes(arrays: ArrayRecord) -> int:
    return sum(len(a.data) for a in arrays.values())


def _say(text: str) -> None:
    print(f"FEDRAD {text}", flush=True)


def initial_state(s: RunSettings, model) -> dict:  # noqa: ANN001 - torch.nn.Module
    """Round 1's weights: ``init-weights`` if given (:func:`initial_weights`), else ``model``'s own."""
    return initial_weights(s, model)[0]


def initial_weights(s: RunSettings, model) -> tuple[dict, dict | None]:  # noqa: ANN001 - torch.nn.Module
    """Round 1's weights and where they came from (kept in every round's model file), or ``model``'s own and None.

    ``init-weights`` is a FedRad model file of the same task, or a plain PyTorch state dict mapped onto the
    architecture (:mod:`shared.weights_import`; ``fedrad-server start`` converts one before the run and prints
    its report, so here it usually arrives as a FedRad model file that carries that report)."""
    if not s.init_weights:
        return model.state_dict(), None
    import copy

    from shared.modelfile import ModelFileError
    from shared.start_weights import load_start_weights

    try:
        start = load_start_weights(s.init_weights, s.task, copy.deepcopy(model))
    except ModelFileError as exc:
        raise RunConfigError(f"task.init_weights: {exc}") from None
    for line in start.lines():
        _say(line)
    return start.state_dict, start.provenance


def run_crossval(grid: Grid, s: RunSettings) -> None:
    """Mode ``crossval`` (:mod:`server.crossval`): the global model and consenting sites' local models, everywhere."""
    from server.crossval import GLOBAL, collect_local_models, cross_evaluate, write_crossval
    from shared.modelfile import load_model_file

    loaded = load_model_file(s.crossval_model)
    mismatch = loaded.task_mismatch(s.task)
    if mismatch:
        raise RunConfigError(f"{s.crossval_model}: {mismatch}, but the consortium's task is {s.describe()}")
    timeout = float(s.round_timeout_s)
    n = wait_for_sites(grid, s.min_sites, timeout)
    nodes = sorted(int(x) for x in grid.get_node_ids())
    template = ArrayRecord(loaded.model.state_dict())
    local, not_shared = collect_local_models(grid, nodes, template, timeout=timeout, send=send_and_receive)
    models = {GLOBAL: template, **{f"local@{node}": arrays for node, arrays in local.items()}}
    matrix = cross_evaluate(
        grid, nodes, models, {"seed": s.seed, "server-round": 0}, timeout=timeout, send=send_and_receive
    )
    path = write_crossval(
        s.run_dir,
        {
            "model": s.crossval_model,
            "weights_sha256": loaded.weights_sha256,
            "task": s.task.type,
            "metric": s.task.headline_metric,
            "sites": [str(x) for x in nodes],
            "not_shared": {str(k): v for k, v in not_shared.items()},
            "matrix": matrix,
        },
    )
    _say(f"crossval: {len(models)} model(s) x {n} site(s) written to {path}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) ``num-server-rounds`` rounds; checkpoint every round into ``run-dir``."""
    import torch

    from server.checkpoints import RunDir, RunTask, read_metrics
    from server.secure_aggregation import SecAggSettings, secure_train_wave
    from server.strategies import build_strategy
    from server.strategies.dp import (
        DpSettings,
        epsilon_next,
        image_privacy_report,
        make_private,
        privacy_report,
        replay,
    )
    from shared.modelfile import weights_sha256
    from shared.processes import apply_thread_limit

    apply_thread_limit()
    s = RunSettings.from_run_config(context.run_config)
    if s.mode == "stats":
        from server.statistics import collect_statistics

        n = wait_for_sites(grid, s.min_sites, float(s.round_timeout_s))
        path = collect_statistics(grid, s.run_dir, timeout=float(s.round_timeout_s), send=send_and_receive)
        _say(f"statistics from {n} site(s) written to {path}")
        return
    try:
        secagg = SecAggSettings.from_json(s.secagg)
    except (TypeError, ValueError) as exc:
        raise RunConfigError(f"run config 'secagg': {exc}") from None
    if s.mode == "crossval":
        run_crossval(grid, s)
        return
    torch.manual_seed(s.seed)
    model = s.task.build_model()
    strategy = build_strategy(s.strategy, s.strategy_params, model, min_sites=s.min_sites)
    strategy.task = s.task
    if s.dp_noise_multiplier > 0:
        make_private(strategy, DpSettings(s.dp_noise_multiplier, s.dp_clipping_norm, s.dp_delta))
    if s.image_dp:  # each site trains with DP-SGD and accounts its own ε; an update without it is not known private
        strategy.required_train_metrics = ("dp-epsilon",)
    state, start_weights = initial_weights(s, model)
    task = RunTask(s.task, s.consortium, strategy.name, s.seed, init_weights=start_weights)
    run = RunDir(s.run_dir)
    point = run.prepare(task, resume=s.resume)
    start = 1
    if point is not None:
        state, start = point.state_dict, point.last_round + 1
        strategy.load_state_dict(point.strategy_state)
        if strategy.dp is not None:  # ε continues from the rounds already released
            replay(
                strategy, [int(r["sites_answered"]) for r in read_metrics(s.run_dir) if r["round"] <= point.last_round]
            )
        _say(f"resume from round={point.last_round} sha256={point.weights_sha256}")
    arrays = ArrayRecord(state)
    model_bytes = _bytes(arrays)
    _say(
        f"start strategy={strategy.name} bn_policy={strategy.bn_policy} rounds={start}..{s.num_server_rounds} "
        f"secure_aggregation={'on' if secagg else 'off'} task={s.task.type} model={s.model} params={sum(p.numel() for p in model.parameters())} bytes={model_bytes} run_dir={s.run_dir}"
    )
    timeout = float(s.round_timeout_s)
    for rnd in range(start, s.num_server_rounds + 1):
        t0 = time.monotonic()
        available = wait_for_sites(grid, s.min_sites, timeout if rnd == start else 0.0)
        if available < 1:
            raise RuntimeError(f"round {rnd}: no site connected within {timeout:.0f} s (round-timeout-s)")
        if available < s.min_sites:
            _say(f"round={rnd} warning: only {available} of min-sites={s.min_sites} connected; going on")
        start_sha = weights_sha256(arrays.to_torch_state_dict())
        t_wait = time.monotonic()
        round_config = {**s.train_config(rnd), "server-round": rnd}
        if strategy.dp is not None:
            round_config["dp-epsilon-next"] = epsilon_next(strategy, available)  # sites with max_epsilon check it
        msgs = strategy.configure_train(rnd, arrays, round_config, grid, available)
        write_progress(s.run_dir, rnd, "train", msgs)
        if secagg is None:
            replies = send_and_receive(grid, msgs, timeout=timeout)
            t_train = time.monotonic()
            outcome = strategy.aggregate_train(rnd, replies)
            missing = len(msgs) - len(replies)
            no_reply = {"train": silent_nodes(msgs, replies)}
        else:  # the same round config, sent through SecAgg+: the server only ever holds the sum
            nodes = [int(m.metadata.dst_node_id) for m in msgs]
            wave = secure_train_wave(
                grid, context, rnd, arrays, dict(msgs[0].content["config"]), nodes, secagg, timeout
            )
            t_train = time.monotonic()
            outcome = strategy.aggregate_train(rnd, wave.replies)
            outcome.accepted = wave.contributors if outcome.arrays is not None else []
            missing = len(msgs) - len(wave.contributors)
            no_reply = {"train": sorted(set(nodes) - set(wave.contributors))}  # SecAgg+: silent or dropped out
        if outcome.arrays is None:
            reasons = "; ".join(f"node {n}: {r}" for n, r in outcome.rejected) or "none"
            raise RuntimeError(
                f"round {rnd}: {len(outcome.accepted)} valid update(s) from {len(msgs)} site(s) "
                f"within {timeout:.0f} s, need {strategy.min_replies} ({missing} no reply; rejected: {reasons})"
                + (
                    "; under secure aggregation a site's error reaches only its own log: see the sites' SuperNode logs"
                    if secagg is not None
                    else ""
                )
            )
        arrays = outcome.arrays
        t_agg = time.monotonic()
        eval_out = None
        n_eval = 0
        if rnd % s.evaluate_every == 0 or rnd == s.num_server_rounds:
            eval_msgs = strategy.configure_evaluate(rnd, arrays, {"seed": s.seed, "server-round": rnd}, grid, available)
            n_eval = len(eval_msgs)
            write_progress(s.run_dir, rnd, "evaluate", eval_msgs)
            eval_replies = send_and_receive(grid, eval_msgs, timeout=timeout)
            no_reply["evaluate"] = silent_nodes(eval_msgs, eval_replies)
            eval_out = strategy.aggregate_evaluate(rnd, eval_replies)
        t_eval = time.monotonic()
        eval_metrics = eval_out.metrics if eval_out else None
        failures = [{"node": n, "reason": r} for n, r in outcome.rejected] + (
            [{"node": n, "reason": f"evaluate: {r}"} for n, r in eval_out.rejected] if eval_out else []
        )
        row = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(t_eval - t0, 3),
            "sites_answered": len(outcome.accepted),
            "sites_failed": len(outcome.rejected) + missing,
            "failures": failures,
            "no_reply": no_reply,  # node ids per wave that were asked and did not answer in time
            "train": outcome.metrics,
            "eval": eval_metrics,
            "privacy": image_privacy_report(
                s.dp_target_epsilon, s.dp_clipping_norm, s.dp_delta, outcome.metrics, s.dp_layers
            )
            if s.image_dp
            else privacy_report(strategy),
            "start_weights_sha256": start_sha,
            "timing": {
                "wait_sites_s": round(t_wait - t0, 3),
                "train_wave_s": round(t_train - t_wait, 3),
                "aggregate_s": round(t_agg - t_train, 3),
                "evaluate_wave_s": round(t_eval - t_agg, 3),
            },
            "bytes_per_site": {"down": model_bytes * (2 if n_eval else 1), "up": model_bytes, "model": model_bytes},
            "site_metrics": site_metrics_row(outcome.site_metrics, eval_out.site_metrics if eval_out else {}),
        }
        t_ck = time.monotonic()
        auc = (eval_metrics or {}).get(task.best_metric)  # AUC, or mean Dice for segmentation
        digest = run.save_round(
            rnd,
            arrays.to_torch_state_dict(),
            task=task,
            num_server_rounds=s.num_server_rounds,
            metrics=row,
            strategy_state=strategy.state_dict(),
            eval_auc=float(auc) if auc is not None else None,
            privacy=row["privacy"],
            average_last=s.average_last_rounds,
        )
        _say(
            f"round={rnd} sites={len(outcome.accepted)} failed={row['sites_failed']} seconds={row['seconds']:.2f} "
            f"checkpoint_s={time.monotonic() - t_ck:.2f} sha256={digest} "
            + (f"epsilon={row['privacy']['epsilon']:.3f} delta={s.dp_delta:g} " if row["privacy"] else "")
            + f"train={json.dumps(outcome.metrics)} "
            f"eval={json.dumps(eval_metrics)} timing={json.dumps(row['timing'])}"
        )
    _say(
        f"rounds_completed={s.num_server_rounds - start + 1} of {s.num_server_rounds} (last round {s.num_server_rounds})"
    )
