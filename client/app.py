"""FedRad ClientApp (Flower Message API): train and evaluate the global model on the site's data.

Flower spawns a fresh ``flwr-clientapp`` process per message. With the site's
warm worker running (node config ``worker-socket``, set by ``fedrad-site
start``) this process only forwards the message's arrays and config to it
(:mod:`client.worker_protocol`: numpy and the standard library, no torch) and
sends the reply on. Without it, the same work runs here (:class:`client.federated.SiteSession`),
importing torch and reading the tensor cache for every message.

Every message, in order: the site's code approval (:mod:`client.approval`;
an unapproved run is refused before any data is read), the work, the
outbound guard (:mod:`client.outbound_guard`: only the model's arrays and
allowed aggregate metrics leave), the audit log (:mod:`client.audit`), the
reply. A failure reaches the server as a generic reason with a reference;
the details stay in the site's SuperNode log.

Node config (set by ``fedrad-site start``, :func:`client.site_config.site_node_config`):
``site-config``, ``site-name``, ``audit-log``, ``approvals``, ``min-count``,
optional ``worker-socket``, ``audit-key`` (signs the audit head), ``audit-pin-file``,
``audit-pin-syslog``. An audit log that fails its checks refuses every reply with a
reason naming the site and the log (never a crash, never a rewrite).
A virtual SuperNode of Flower's simulation runtime has only ``partition-id``:
its site's node config comes from a file on the simulating machine
(:mod:`client.simulated_site`), never from the server.
Run config: ``classes``, ``image-size``, ``model``, ``seed``, ``consortium``, ``run-dir``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

if TYPE_CHECKING:
    from client.audit import SiteAuditLog

app = ClientApp()


def process_age_s() -> float:
    """Seconds since this process started (psutil: Linux, macOS, Windows), read before any heavy import.

    It is the per-message cold start: process spawn plus Flower's and this app's imports.
    """
    import psutil

    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except psutil.Error:
        return 0.0


def _in_process(
    op: str, context: Context, config: dict, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, dict]:
    """The message's work in this process (no warm worker): torch import, data load, train/evaluate/query."""
    import torch

    from client.federated import SiteSession
    from shared.processes import apply_thread_limit

    apply_thread_limit()
    session = SiteSession.open(context.run_config, context.node_config)
    state, metrics = session.handle(op, {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, config)
    return ({k: v.numpy() for k, v in state.items()} if state is not None else None), metrics


def _work(op: str, msg: Message, context: Context, config: dict, arrays: dict[str, np.ndarray]):  # noqa: ANN202
    """(new arrays or None, metrics, warm flag): by the warm worker when it answers, else in this process."""
    from client.worker_protocol import WorkerUnavailable, call_worker

    socket_path = context.node_config.get("worker-socket")
    try:
        if not socket_path:
            raise WorkerUnavailable("no worker-socket in the node config")
        out, metrics = call_worker(
            socket_path,
            op,
            run_id=msg.metadata.run_id,
            run_config=dict(context.run_config),
            config=config,
            arrays=arrays,
        )
        return (out if op in ("train", "local-model") else None), metrics, 1
    except WorkerUnavailable as exc:
        print(f"FedRad: {exc}; working in this process (slower)", file=sys.stderr, flush=True)
        state, metrics = _in_process(op, context, config, arrays)
        return state, metrics, 0


def _refusal(node_config: dict) -> tuple[str, str] | None:
    """(reason for the server, detail for the site's log) when this site must not run this code; else None."""
    from client.approval import ApprovalError, is_approved
    from shared.code_identity import code_sha256

    missing = [k for k in ("approvals", "audit-log") if not node_config.get(k)]
    if missing:
        return (
            "site not configured for FedRad runs",
            f"node config lacks {missing}: start the site with `fedrad-site start --config site.yaml`, which sets them",
        )
    sha = code_sha256(Path(__file__).resolve().parents[1])
    try:
        if is_approved(Path(str(node_config["approvals"])), sha):
            return None
    except ApprovalError as exc:
        return "site approvals file unreadable", str(exc)
    public = f"run refused by the site: FedRad code sha256 {sha} is not approved there"
    return public, (
        f"{public}. Review the code this run shipped (under the site's work dir, apps/) and, if you accept it, "
        f"run `fedrad-site approve --config site.yaml --code-hash {sha}`"
    )


def _privacy_refusal(node_config: dict, config: dict, *, secure: bool) -> tuple[str, str] | None:
    """Refuse a training round that does not meet this site's ``privacy`` requirements (site.yaml)."""
    if int(node_config.get("require-secagg", 0)) and not secure:
        reason = (
            "run refused by the site: it requires secure aggregation (privacy.secure_aggregation in consortium.yaml)"
        )
        return reason, reason
    image_dp = config.get("dp-level") == "image"  # per-image DP: the site accounts its own ε (client/privacy_ledger.py)
    if int(node_config.get("require-dp", 0)) and "clipping_norm" not in config and not image_dp:
        reason = "run refused by the site: it requires differential privacy (privacy.dp in consortium.yaml)"
        return reason, reason
    limit = float(node_config.get("max-epsilon", 0.0))
    if image_dp:
        target = float(config.get("dp-target-epsilon", float("inf")))
        if limit and target > limit:
            reason = f"run refused by the site: the run's per-image target epsilon {target:g} is above its max_epsilon {limit:g}"
            return reason, reason
        return None
    epsilon = float(config.get("dp-epsilon-next", float("inf") if limit else 0.0))
    if limit and epsilon > limit:
        reason = (
            f"run refused by the site: this round would bring epsilon to {epsilon:.3f}, above its max_epsilon {limit:g}"
        )
        return reason, reason
    return None


def _record(audit: SiteAuditLog, entry: dict) -> tuple[str, str] | None:
    """Write ``entry``; (reason for the server, detail for the site's log) when the audit log refuses it.

    A log that fails its checks (tampering, a head that disagrees with it) or cannot be
    written is never rewritten here: the message is withheld, each time, with a reason.
    """
    from client.audit import AuditError

    try:
        audit.append(entry)
    except AuditError as exc:
        return audit.refusal(exc), audit.refusal(exc)
    except OSError as exc:
        public = f"{entry.get('type')} reply withheld: the site could not write its audit log"
        return public, f"{public} {audit.path}: {exc}"
    return None


def _audit_refusal(audit: SiteAuditLog | None) -> tuple[str, str] | None:
    """Before any work: (reason, detail) when the site's audit log fails its checks; a crash's traces are repaired."""
    from client.audit import AuditError

    if audit is None:
        return None
    try:
        audit.check()
    except AuditError as exc:
        return audit.refusal(exc), audit.refusal(exc)
    except OSError as exc:
        public = f"site {audit.site}: its audit log at {audit.path} cannot be opened"
        return public, f"{public}: {exc}"
    return None


def _error_reply(msg: Message, audit: SiteAuditLog | None, entry: dict, public: str, local: str) -> Message:
    """Generic reason to the server, details to the site's log (the SuperNode log) and the audit log."""
    from flwr.app import Error
    from flwr.common.constant import ErrorCode

    print(f"FedRad: {local}", file=sys.stderr, flush=True)
    failed = _record(audit, {**entry, "reason": public, "bytes": len(public)}) if audit is not None else None
    if failed is not None:  # the refusal itself could not be recorded: say why instead
        public = failed[0]
        print(f"FedRad: {failed[1]}", file=sys.stderr, flush=True)
    return Message(error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=public), reply_to=msg)


def _guarded_work(
    op: str, msg: Message, context: Context, config: dict, arrays: dict[str, np.ndarray], t0: float, startup: float
):  # noqa: ANN202 - GuardedReply
    """The work (warm worker or in-process) → DP clipping → outbound guard; what may leave."""
    from client.outbound_guard import DEFAULT_MIN_COUNT, guard_reply, spec_of
    from shared.tasks import TaskSpec

    state, metrics, warm = _work(op, msg, context, config, arrays)
    if op == "train" and state is not None and "clipping_norm" in config:  # central DP: bound the update
        from client.dp_clip import clip_update

        state, norm = clip_update(arrays, state, float(config["clipping_norm"]))
        print(f"FedRad DP: update norm {norm:.4f} clipped to {float(config['clipping_norm']):g}", file=sys.stderr)
    if op != "query":  # statistics replies carry counts only
        metrics.update({"startup-s": startup, "handler-s": time.perf_counter() - t0, "warm-worker": warm})
    guarded = guard_reply(
        op,
        incoming=spec_of(arrays),
        arrays=state,
        metrics=metrics,
        min_count=int(context.node_config.get("min-count", DEFAULT_MIN_COUNT)),
        task=TaskSpec.from_run_config(context.run_config),
    )
    for d in guarded.violations:
        print(f"FedRad outbound guard dropped {d.item}: {d.reason}", file=sys.stderr, flush=True)
    return guarded


def _failure(op: str, msg: Message, audit: SiteAuditLog | None, entry: dict, exc: Exception) -> Message:
    """Whatever failed, the server gets a generic reason with a reference; the site's log gets the details."""
    import secrets
    import traceback

    from client.worker_protocol import SiteRefusal

    if isinstance(exc, SiteRefusal):  # the site's own rule (privacy budget, requirements): the reason may go out
        reason = str(exc.args[0])
        return _error_reply(msg, audit, {**entry, "type": "refused"}, reason, exc.args[-1])
    ref = secrets.token_hex(4)
    local = f"{op} failed (ref {ref}): {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return _error_reply(msg, audit, {**entry, "type": "error"}, f"{op} failed at the site (ref {ref})", local)


def _send(msg: Message, reply: Message, audit: SiteAuditLog | None, entry: dict) -> Message:
    """Nothing leaves without its audit entry: a reply whose entry cannot be written is withheld."""
    if audit is None:  # unreachable: _refusal refuses a node config without audit-log
        return _error_reply(msg, None, {}, "site not configured for FedRad runs", "no audit-log in the node config")
    failed = _record(audit, entry)
    return reply if failed is None else _error_reply(msg, None, {}, *failed)


def _site_audit(node: dict) -> SiteAuditLog | None:
    """The site's audit log from its node config (path, site key for signed heads, pins)."""
    from client.audit import SiteAuditLog

    return SiteAuditLog.from_node_config(node)


def _site_context(context: Context) -> tuple[Context, str | None]:
    """(context with the site's node config, None), or (context, why not) for a simulated partition with no site.

    A real SuperNode's context is returned as it is; a simulated partition's node config
    comes from the simulating machine (:mod:`client.simulated_site`), never from the run config.
    """
    from client.simulated_site import (
        SimulatedSiteError,
        is_simulated_partition,
        site_node_config,
    )  # standard library only

    if not is_simulated_partition(context.node_config):
        return context, None
    try:
        node_config = site_node_config(context.node_config)
    except SimulatedSiteError as exc:
        return context, str(exc)
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=node_config,
        state=context.state,
        run_config=context.run_config,
    ), None


def _handle(op: str, msg: Message, context: Context) -> Message:
    """Site identity → approval check → work (warm worker or in-process) → outbound guard → audit log → reply."""
    startup, t0 = process_age_s(), time.perf_counter()
    import hashlib
    from dataclasses import asdict

    context, no_site = _site_context(context)
    if no_site is not None:
        return _error_reply(msg, None, {}, "site not configured for FedRad runs", no_site)
    node = dict(context.node_config)
    if op == "train" and "secaggplus_configs" in msg.content.config_records:
        return _handle_secure(msg, context, startup, t0)
    config = dict(msg.content["config"])
    audit = _site_audit(node)
    broken = _audit_refusal(audit)
    if broken is not None:
        return _error_reply(msg, None, {}, *broken)
    if op == "query" and config.get("purpose") == "local-model":  # `fedrad-server crossval` asks for the local model
        op = "local-model"
    entry = {"run": int(msg.metadata.run_id), "round": int(config.get("server-round", 0)), "type": op}
    refusal = _refusal(node) or (_privacy_refusal(node, config, secure=False) if op == "train" else None)
    if refusal is None and op == "local-model":
        if node.get("local-model"):
            config["local-model-path"] = str(node["local-model"])  # read by the site's own process; never sent
        else:
            reason = "site does not share its local model (site.yaml crossval.share_local_model)"
            refusal = (reason, reason)
    if refusal is not None:
        return _error_reply(msg, audit, {**entry, "type": "refused"}, *refusal)
    arrays = {name: arr.numpy() for name, arr in msg.content["arrays"].items()} if "arrays" in msg.content else {}
    try:
        guarded = _guarded_work(op, msg, context, config, arrays, t0, startup)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the server gets a generic reason only
        return _failure(op, msg, audit, entry, exc)
    reply = RecordDict({"metrics": MetricRecord(guarded.metrics)})
    sent = guarded.arrays or {}
    if op == "train" and sent:  # after the guard: what it approved is what is compressed and audited
        from shared.compression import compress

        sent = compress(sent, str(config.get("compression", "none")))
    if guarded.arrays is not None:
        reply["arrays"] = ArrayRecord(array_dict={name: Array(arr) for name, arr in sent.items()})
    digests = {name: hashlib.sha256(np.require(a, requirements="C").tobytes()).hexdigest() for name, a in sent.items()}
    return _send(
        msg,
        Message(reply, reply_to=msg),
        audit,
        {
            **entry,
            "bytes": sum(a.nbytes for a in sent.values()),
            "arrays": digests,
            "metrics": guarded.metrics,
            "guard": [asdict(d) for d in guarded.decisions],
        },
    )


def _handle_secure(msg: Message, context: Context, startup: float, t0: float) -> Message:
    """One SecAgg+ stage (:mod:`client.secure_aggregation`): approval → stage → protocol guard → audit → reply."""
    from dataclasses import asdict

    from client.secure_aggregation import guard_secure_reply, round_config, run_secure_stage, secure_stage, stage_digest

    node = dict(context.node_config)
    audit = _site_audit(node)
    broken = _audit_refusal(audit)
    if broken is not None:
        return _error_reply(msg, None, {}, *broken)
    stage = secure_stage(msg)
    config = round_config(msg)
    entry = {
        "run": int(msg.metadata.run_id),
        "round": int(config.get("server-round", msg.metadata.group_id or 0)),
        "type": f"train/secagg-{stage}",
    }
    refusal = _refusal(node)
    if refusal is not None:
        return _error_reply(msg, audit, {**entry, "type": "refused"}, *refusal)
    decisions: list = []
    n_arrays: list[int] = []

    def train(config: dict, arrays: dict[str, np.ndarray]):  # noqa: ANN202
        refused = _privacy_refusal(node, config, secure=True)
        if refused is not None:
            from client.worker_protocol import SiteRefusal

            raise SiteRefusal(*refused)
        guarded = _guarded_work("train", msg, context, config, arrays, t0, startup)
        decisions.extend(asdict(d) for d in guarded.decisions)
        n_arrays.append(len(arrays))
        return guarded.arrays, guarded.metrics

    try:
        reply = run_secure_stage(msg, context, train)
        problems = guard_secure_reply(str(stage), reply.content, n_arrays[0] if n_arrays else None)
        if problems:
            raise RuntimeError(f"secure-aggregation reply blocked by the outbound guard: {'; '.join(problems)}")
    except Exception as exc:  # noqa: BLE001
        return _failure("train", msg, audit, entry, exc)
    size, digests = stage_digest(reply)
    metrics = (
        dict(reply.content.config_records["fitres.metrics"]) if "fitres.metrics" in reply.content.config_records else {}
    )
    return _send(msg, reply, audit, {**entry, "bytes": size, "arrays": digests, "metrics": metrics, "guard": decisions})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global weights; reply with the new weights and aggregate metrics."""
    return _handle("train", msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Data statistics for the coordinator's QC view: counts and a coarse histogram, each at least min_count."""
    return _handle("query", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Aggregate figures of the global model on this site's held-out patients (metrics only, no weights)."""
    return _handle("evaluate", msg, context)
