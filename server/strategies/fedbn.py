"""FedBN (Li et al. 2021): FedAvg for everything except normalisation layers, which stay at each site.

The server averages all tensors; the sites are told ``keep-local-norm`` and
overwrite the received norm-layer tensors with their own (kept in the site's
work dir between rounds). The server's averaged norm tensors therefore only
matter for the exported global model (a starting point for a site that never
took part).

``server_momentum`` / ``server_learning_rate`` put Flower's FedAvgM step on the
shared weights (Hsu et al. 2019). Why: an averaged round moves the model about
as far as one *average* site's epoch, while pooled training takes every site's
steps in turn; momentum lets the shared weights keep moving along the direction
the rounds agree on. At the defaults (1.0, 0.0) FedAvgM is plain FedAvg.
"""

from __future__ import annotations

from server.strategies import fedavgm
from server.strategies.common import StrategySpec

SPEC = StrategySpec(name="fedbn", params={**fedavgm.SPEC.params, "server_momentum": (float, 0.0)}, bn_policy="local")
build = fedavgm.build  # the server is FedAvgM's; the sites keep their norm layers (``keep-local-norm``)
