"""What a webhook sends: which events an endpoint takes, the body in its format, the headers and
the signature. Pure functions: no I/O, no clock (the delivery actor brings the time).

The body of ``format = "dtms"`` is the envelope, stored as it is sent::

    {"event": "trade.state", "delivery": "5f0c...", "at": 1764590400.5,
     "data": {"ticket": 123, "from_state": "HEALTHY", "to_state": "WARNING_L1", ...}}

``data`` is what the ``subscribe`` notification of that event carries (:mod:`dtms.events`).
"slack", "discord" and "telegram" post the body those services accept, a one-line text made
from the same envelope: ``{"text"}``, ``{"content"}``, ``{"chat_id", "text"}``.

Headers: ``X-DTMS-Event``, ``X-DTMS-Delivery`` (the idempotency key: the same on every retry of
one delivery) and, with a secret, ``X-DTMS-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

Example::

    body = render(hook, envelope("trade.state", "d1", 1.0, {"ticket": 1}))
    assert verify(hook.secret, body, headers(hook, "trade.state", "d1", body)["X-DTMS-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from dtms import __version__
from dtms.config import WebhookSettings
from dtms.supervisor import Backoff

#: the longest text each chat service takes in one message
_TEXT_LIMIT = {"slack": 3000, "discord": 2000, "telegram": 4096}


def matches(patterns: tuple[str, ...], event: str) -> bool:
    """``event`` is named by one of ``patterns``: exactly, or by a ``prefix.*`` pattern."""
    return any(event == p or (p.endswith(".*") and event.startswith(p[:-1])) for p in patterns)


def encode(data: dict[str, Any]) -> str:
    """An event's ``data`` as JSON, once for all the endpoints that take it."""
    return json.dumps(data, default=str, separators=(",", ":"))


def envelope(event: str, delivery: str, at: float, data: dict[str, Any] | str) -> str:
    """The JSON text of one delivery (stored, then sent as is by format "dtms"); ``data`` may
    be :func:`encode`'s text already."""
    encoded = data if isinstance(data, str) else encode(data)
    return (f'{{"event":{json.dumps(event)},"delivery":{json.dumps(delivery)},'
            f'"at":{json.dumps(at)},"data":{encoded}}}')


def text_line(event: str, data: dict[str, Any]) -> str:
    """One line a person reads in a chat."""
    ticket = data.get("ticket")
    trade = data.get("trade") or {}
    if event == "trade.state":
        where = " ".join(str(x) for x in (trade.get("symbol"), trade.get("direction")) if x)
        was = data.get("from_state") or "new"
        return (f"DTMS: trade {ticket} {where}: {was} -> {data.get('to_state')} "
                f"({data.get('reason')})").replace("  ", " ")
    if event == "trade.action":
        where = " ".join(str(x) for x in (data.get("symbol"), data.get("direction")) if x)
        levels = ", ".join(f"{k} {data[k]:g}" for k in ("price", "volume", "sl", "tp")
                           if isinstance(data.get(k), int | float) and data.get(k))
        return (f"DTMS: trade {ticket} {where}: {data.get('kind')} {data.get('status')}"
                + (f" ({levels})" if levels else "") + f": {data.get('reason')}"
                ).replace("  ", " ")
    if event == "supervisor.giveup":
        what = f"trade {ticket}" if ticket else f"{data.get('kind')} {data.get('child')}"
        return (f"DTMS gave up {what} after repeated crashes "
                f"(supervisor {data.get('supervisor')}): {data.get('exception')}")
    if event == "service.not_ready":
        return f"DTMS is not ready: {data.get('reason')}"
    return f"DTMS {event}: " + json.dumps(data, default=str, sort_keys=True)


def render(hook: WebhookSettings, body: str) -> bytes:
    """The raw bytes POSTed to ``hook`` for the stored envelope ``body``."""
    if hook.format == "dtms":
        return body.encode()
    sent = json.loads(body)
    text = text_line(sent["event"], sent["data"])
    limit = _TEXT_LIMIT[hook.format]
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    if hook.format == "slack":
        out: dict[str, Any] = {"text": text}
    elif hook.format == "discord":
        out = {"content": text}
    else:
        out = {"chat_id": hook.chat_id, "text": text}
    return json.dumps(out).encode()


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body>`` keyed by ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver checks (in constant time): ``header`` signs ``body`` with ``secret``."""
    return hmac.compare_digest(signature(secret, body), header)


def headers(hook: WebhookSettings, event: str, delivery: str, body: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": f"dtms/{__version__}",
           "X-DTMS-Event": event, "X-DTMS-Delivery": delivery}
    if hook.secret:
        out["X-DTMS-Signature"] = signature(hook.secret, body)
    return out


def retry_delay(hook: WebhookSettings, attempts: int, u: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones (``u`` in [0, 1) jitters it):
    ``min_backoff_s`` doubling, never more than ``max_backoff_s`` (30 s at most)."""
    backoff = Backoff(hook.min_backoff_s, hook.max_backoff_s, jitter=0.2)
    return min(hook.max_backoff_s, backoff.delay(max(0, attempts - 1), u))


__all__ = ["encode", "envelope", "headers", "matches", "render", "retry_delay", "signature", "text_line",
           "verify"]
