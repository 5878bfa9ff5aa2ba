"""The site's own account of the per-image privacy a run has spent: ε is computed here, never taken from the server.

Under ``privacy.dp.level: image`` the coordinator sets a target ε for the whole
run. Each site calibrates its own noise multiplier from that target, its own
number of training images and the run's rounds × local epochs
(:func:`shared.private_training.noise_for_epsilon`), trains with DP-SGD, and
records every round it trained in a ledger file under its work dir
(``privacy/<run key>-<site>.json``). ε after a round is composed from that
ledger, so it survives worker and site restarts, and a round re-run after a
server crash is counted twice (its first answer may have left the site).

A site with ``privacy.max_epsilon`` refuses a round that would take its ledger
above that cap, whatever the server says. The ledger needs a fixed training
set: if the site's data changed during a run, the round is refused and a new
run is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from client.worker_protocol import SiteRefusal
from shared.private_training import epsilon_of, noise_for_epsilon, steps_per_epoch


@dataclass(frozen=True)
class RoundPlan:
    """One private round as the site decided it: its noise, its steps and the ε it brings the run to."""

    round: int
    noise_multiplier: float
    steps: int
    epsilon_after: float


@dataclass(frozen=True)
class ImageDp:
    """The run's per-image DP settings, from the round config the server sends."""

    target_epsilon: float
    clipping_norm: float
    delta: float
    total_rounds: int
    layers: str = "all"  # "head": only the classifier of a pretrained model trains (shared.private_training)

    @classmethod
    def from_config(cls, config: Mapping) -> ImageDp | None:
        if config.get("dp-level") != "image":
            return None
        try:
            dp = cls(
                float(config["dp-target-epsilon"]),
                float(config["dp-clipping-norm"]),
                float(config["dp-delta"]),
                int(config["num-server-rounds"]),
                str(config.get("dp-layers", "all")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SiteRefusal(f"run refused by the site: per-image DP settings incomplete or invalid ({exc})") from None
        if not (
            dp.target_epsilon > 0
            and dp.clipping_norm > 0
            and 0 < dp.delta < 1
            and dp.total_rounds >= 1
            and dp.layers in ("all", "head")
        ):
            raise SiteRefusal(f"run refused by the site: per-image DP settings out of range ({dp})")
        return dp


class PrivacyLedger:
    """Rounds of one run this site trained privately, in a JSON file written atomically."""

    def __init__(self, path: Path, n: int, batch_size: int, delta: float) -> None:
        self.path, self.n, self.batch_size, self.delta = Path(path), int(n), int(batch_size), float(delta)
        self.rounds: list[dict] = []
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if (saved["n"], saved["batch_size"], saved["delta"]) != (self.n, self.batch_size, self.delta):
                raise SiteRefusal(
                    "run refused by the site: its training set or batch size changed during this run "
                    f"(ledger {self.path.name}: n={saved['n']} batch={saved['batch_size']}, now n={self.n} "
                    f"batch={self.batch_size}); per-image privacy accounting needs a fixed set: start a new run"
                )
            self.rounds = list(saved["rounds"])

    def _epsilon(self, extra: Sequence[tuple[float, int]] = ()) -> float:
        steps = [(float(r["noise_multiplier"]), int(r["steps"])) for r in self.rounds] + list(extra)
        return epsilon_of(steps, self.n, self.batch_size, self.delta)

    def epsilon(self) -> float:
        """ε this site has spent in the run so far (0 before its first private round)."""
        return self._epsilon()

    def plan(self, rnd: int, dp: ImageDp, epochs: int, max_epsilon: float = 0.0) -> RoundPlan:
        """Noise for this round (calibrated so ε reaches the target after the run's last round); refuse past the cap."""
        steps = epochs * steps_per_epoch(self.n, self.batch_size)
        z = noise_for_epsilon(dp.target_epsilon, self.n, self.batch_size, steps * dp.total_rounds, self.delta)
        after = self._epsilon([(z, steps)])
        if max_epsilon and after > max_epsilon:
            raise SiteRefusal(
                f"run refused by the site: round {rnd} would bring its per-image epsilon to {after:.3f}, "
                f"above its max_epsilon {max_epsilon:g}"
            )
        return RoundPlan(rnd, z, steps, after)

    def record(self, plan: RoundPlan) -> None:
        """Count the round before it trains: a spend is on record before it can happen, whatever fails later."""
        self.rounds.append({"round": plan.round, "noise_multiplier": plan.noise_multiplier, "steps": plan.steps})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"n": self.n, "batch_size": self.batch_size, "delta": self.delta, "rounds": self.rounds})
        )
        os.replace(tmp, self.path)


def train_private_round(
    model,
    data,
    cfg,
    dp: ImageDp,
    rnd: int,
    ledger_path: Path,  # noqa: ANN001 - torch types
    max_epsilon: float = 0.0,
) -> tuple[list[dict], dict[str, float]]:
    """One round of DP-SGD on ``data`` (a SiteDataset): plan and record it in the ledger, then train.

    Returns (training history, the metrics the server may see: ``dp-epsilon`` after this round and the
    noise multiplier this site chose).
    """
    from shared.private_training import train_model_private

    n = len(data)
    ledger = PrivacyLedger(ledger_path, n, min(cfg.batch_size, n), dp.delta)
    plan = ledger.plan(rnd, dp, cfg.epochs, max_epsilon)
    ledger.record(plan)
    history = train_model_private(model, data, cfg, plan.noise_multiplier, dp.clipping_norm, layers=dp.layers)
    return history, {"dp-epsilon": plan.epsilon_after, "dp-noise-multiplier": plan.noise_multiplier}
