"""The fleet proxy's checks before a body is read (server/fleet_auth.py), with real Flower signatures.

Each request a SuperNode sends carries a signature over a fresh timestamp; the proxy refuses a request that
lacks one, carries a bad or stale one, or replays one it already forwarded, and never reads such a body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from base64 import b64encode

import httpx
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes, sign_message

from server.fleet_auth import MESSAGE_BODY_BYTES, OBJECT_BODY_BYTES, ReplayGuard, auth_problem, route_limit
from server.fleet_proxy import build_app

KEY, PUBLIC = generate_key_pairs()


def signed(at: dt.datetime | None = None, key=KEY, public=PUBLIC) -> dict[str, str]:  # noqa: ANN001
    """Headers as Flower's NodeAuthHttpInterceptor writes them."""
    stamp = (at or dt.datetime.now(tz=dt.UTC)).isoformat()
    return {
        "flwr-public-key": b64encode(public_key_to_bytes(public)).decode("ascii"),
        "flwr-timestamp": stamp,
        "flwr-signature": b64encode(sign_message(key, stamp.encode("ascii"))).decode("ascii"),
    }


def test_a_fresh_signed_request_passes_once_and_its_replay_is_refused() -> None:
    replays, headers = ReplayGuard(), signed()
    assert auth_problem(headers, replays) is None
    assert auth_problem(headers, replays) == "replayed signed headers"
    assert auth_problem(signed(), replays) is None  # the next request signs a new timestamp


def test_missing_malformed_stale_and_forged_headers_are_refused() -> None:
    replays, now = ReplayGuard(), dt.datetime.now(tz=dt.UTC)
    good = signed(now)
    assert "no flwr-signature header" in auth_problem({k: v for k, v in good.items() if k != "flwr-signature"}, replays)
    assert auth_problem({**good, "flwr-public-key": "not base64!"}, replays) == "malformed signature headers"
    assert "outside" in auth_problem(signed(now - dt.timedelta(seconds=320)), replays)  # Flower's window is 305 s
    assert "outside" in auth_problem(signed(now + dt.timedelta(seconds=30)), replays)  # a clock far ahead
    other_key, _ = generate_key_pairs()
    assert auth_problem(signed(now, key=other_key), replays) == "signature does not verify"  # signed by another key
    assert auth_problem({**good, "flwr-timestamp": (now + dt.timedelta(seconds=1)).isoformat()}, replays) == (
        "signature does not verify"
    )


def test_the_replay_memory_forgets_after_flowers_window_and_stays_bounded() -> None:
    guard = ReplayGuard(max_entries=3)
    assert guard.first_use("k", "t1", "s", now=0.0) and not guard.first_use("k", "t1", "s", now=1.0)
    assert guard.first_use("k", "t1", "s", now=400.0)  # after 310 s the SuperLink refuses it anyway
    for i in range(10):
        guard.first_use("k", f"x{i}", "s", now=401.0)
    assert len(guard._seen) <= 3


def test_only_object_pushes_may_carry_megabytes() -> None:
    assert route_limit("push-object") == OBJECT_BODY_BYTES
    assert route_limit("push-messages") == route_limit("get-fab") == MESSAGE_BODY_BYTES < OBJECT_BODY_BYTES
    assert route_limit("list-runs") is None


def test_the_proxy_refuses_an_unsigned_body_without_reading_it() -> None:
    """401 on the headers alone: the 60 MB body the client declares is never pulled from the socket."""
    read = []

    async def body():  # noqa: ANN202 - an async byte stream that records every chunk the proxy pulls
        for _ in range(60):
            read.append(1)
            yield b"x" * 1_000_000

    async def scenario() -> tuple[int, int, int]:
        app = build_app("127.0.0.1:9", None)  # nothing listens there: a forwarded request would be a 502
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
            unsigned = await client.post(
                "/v1/fleet/push-object", content=body(), headers={"content-length": "60000000"}
            )
            too_big = await client.post("/v1/fleet/push-messages", headers={**signed(), "content-length": "9000000"})
            forwarded = await client.post("/v1/fleet/get-run", headers=signed(), content=b"\x08\x01")
        return unsigned.status_code, too_big.status_code, forwarded.status_code

    unsigned, too_big, forwarded = asyncio.run(scenario())
    assert unsigned == 401 and read == []
    assert too_big == 413  # a message route declaring more than 8 MiB, refused before its body
    assert forwarded == 502  # signed and small: forwarded (the upstream is down here)
