"""Minimal FedRad ClientApp (Flower Message API): proves the deployment pipeline.

Trains a tiny linear model on seeded random data so TLS/auth/process plumbing
can be tested in seconds; the real handlers will call ``shared.training``
(``build_model``/``train_model``/``predict_proba``) on the site's cached tensors.
Heavy imports stay inside the handlers: Flower spawns a fresh ``flwr-clientapp``
process per message, and importing this module should not cost a torch import
before it is needed.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _data(context: Context, n: int = 64):  # noqa: ANN202 - torch types imported lazily
    """Seeded random site data; the seed comes from the SuperNode's node config."""
    import torch

    g = torch.Generator().manual_seed(int(context.node_config.get("seed", 0)))
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


def _model(msg: Message):  # noqa: ANN202
    import torch

    from shared.processes import apply_thread_limit

    apply_thread_limit()
    model = torch.nn.Linear(8, 2)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local SGD epochs on the site's data; reply with weights and sample count."""
    import torch

    model = _model(msg)
    x, y = _data(context)
    cfg = msg.content["config"]
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg.get("lr", 0.1)))
    loss = torch.tensor(0.0)
    for _ in range(int(cfg.get("local-epochs", 1))):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    metrics = MetricRecord({"train_loss": loss.item(), "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on the site's data (metrics only, no weights)."""
    import torch

    model = _model(msg)
    x, y = _data(context)
    with torch.no_grad():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
