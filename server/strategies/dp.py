"""Central differential privacy with client-side clipping: Flower's wrapper and accountant, fitted to FedRad.

What it guarantees: each released global model is (ε, δ)-differentially
private with respect to one *whole site* joining or leaving (client-level
DP): every site clips its update to ``clipping_norm`` (L2), the server adds
Gaussian noise of standard deviation ``noise_multiplier × clipping_norm /
sites`` to the mean, and Flower's ``RdpAccountant`` composes the rounds into
ε at ``delta``. Every site is asked every round, so there is no sampling
amplification: ε depends on the noise multiplier and the number of rounds
only (5 rounds: z = 1.5 → ε ≈ 7.5 at δ = 1e-5).

What FedRad adds around ``DifferentialPrivacyClientSideFixedClipping``:

* **equal site weights** in the noised mean (the sensitivity analysis assumes
  a plain mean); example counts still weight the metrics;
* **BatchNorm statistics outside the noise** (BN policy ``average``; see
  :mod:`shared.dp_rules`): they are per-channel aggregates of each site's
  images, like the metrics, and are averaged without noise. The guarantee
  covers the learned parameters; a model without BatchNorm is covered whole;
* **strict rounds**: the noise is calibrated to the number of sites asked, so
  a round where one did not answer is not released (the run stops and can be
  resumed); Flower's accountant supports FedAvg's aggregation only, hence
  FedAvg and FedProx;
* ε **before** each round is sent to the sites (``dp-epsilon-next``) so a
  site with ``privacy.max_epsilon`` can refuse, and ε **after** it goes into
  ``metrics.jsonl``, the progress display and the model file.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from server.strategies.base import FedRadStrategy
from server.strategies.common import StrategyError
from shared.dp_rules import is_norm_statistic

DP_STRATEGIES = ("fedavg", "fedprox")
UNIFORM_WEIGHT_KEY = "dp-weight"
POPULATION = 1_000_000  # no amplification: the population size does not enter ε (Flower keeps it for reporting)


@dataclass(frozen=True)
class DpSettings:
    noise_multiplier: float
    clipping_norm: float
    delta: float


def make_private(strategy: FedRadStrategy, dp: DpSettings) -> None:
    """Wrap ``strategy``'s Flower strategy in client-side-clipping DP with RDP accounting (in place)."""
    if strategy.name not in DP_STRATEGIES:
        raise StrategyError(
            f"differential privacy works with {', '.join(DP_STRATEGIES)} (Flower's accountant covers FedAvg's "
            f"aggregation only), not {strategy.name!r}; change strategy.name or remove privacy.dp"
        )
    strategy.set_bn_policy("average")
    held = {k for k in strategy.template if is_norm_statistic(k)}
    if set(strategy.held) != held:  # server noise and site clipping must cover the same arrays
        raise StrategyError(
            f"model's normalisation statistics {sorted(strategy.held)} differ from the DP rule's {sorted(held)}"
        )
    strategy.inner.weighted_by_key = UNIFORM_WEIGHT_KEY
    strategy.inner = DifferentialPrivacyClientSideFixedClipping(
        strategy.inner, dp.noise_multiplier, dp.clipping_norm, 1, accountant=new_accountant(dp)
    )
    strategy.uniform_weight_key = UNIFORM_WEIGHT_KEY
    strategy.dp = dp


def release_event(dp: DpSettings, sites: int) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(noise_multiplier=dp.noise_multiplier, sample_size=sites, population_size=POPULATION)


def new_accountant(dp: DpSettings) -> RdpAccountant:
    return RdpAccountant(
        PrivacyConfig(dp.delta, POPULATION, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )


def epsilon_next(strategy: FedRadStrategy, sites: int) -> float:
    """ε after one more round with ``sites`` sites (what a site with ``max_epsilon`` checks).

    Without amplification every release of the same noise multiplier costs the same, so a fresh
    accountant with one more release than the run's gives it.
    """
    accountant = new_accountant(strategy.dp)
    accountant.compose(release_event(strategy.dp, max(1, sites)), strategy.inner.accountant.num_releases + 1)
    return accountant.get_epsilon(strategy.dp.delta)


def privacy_report(strategy: FedRadStrategy) -> dict | None:
    """ε spent so far and the settings behind it; None without DP."""
    dp = getattr(strategy, "dp", None)
    if dp is None:
        return None
    spent = strategy.inner.privacy_spent()
    return {
        "epsilon": round(spent.epsilon, 4) if spent.num_releases else 0.0,
        "delta": dp.delta,
        "noise_multiplier": dp.noise_multiplier,
        "clipping_norm": dp.clipping_norm,
        "rounds_released": spent.num_releases,
        "accounting": "rdp, client-level, no sampling amplification",
    }


def replay(strategy: FedRadStrategy, sites_per_round: list[int]) -> None:
    """A resumed run: compose the rounds already released (their site counts from metrics.jsonl)."""
    for sites in sites_per_round:
        strategy.inner.accountant.compose(release_event(strategy.dp, max(1, sites)))


def image_privacy_report(
    target_epsilon: float,
    clipping_norm: float,
    delta: float,
    train_metrics,  # noqa: ANN001
    layers: str = "all",
) -> dict:
    """Per-image DP (each site's DP-SGD, :mod:`shared.private_training`): ε of the least private site this round.

    The sites account their own ε (:mod:`client.privacy_ledger`) and report it; the server only collects it, and
    rejects a training reply without it (``FedRadStrategy.required_train_metrics``).
    """
    eps = float(train_metrics.get("dp-epsilon", 0.0)) if train_metrics else 0.0
    return {
        "epsilon": round(eps, 4),
        "delta": delta,
        "level": "image",
        "layers": layers,
        "target_epsilon": target_epsilon,
        "clipping_norm": clipping_norm,
        "noise_multiplier_min": train_metrics.get("dp-noise-multiplier") if train_metrics else None,
        "accounting": "rdp, per image, Poisson sampling, at each site (largest site ε)",
    }
