"""Webhooks without a network: the [[webhooks]] settings and their bounds, the payload in each
format, the signature, the retry delays, and the queue rows a commit writes (real SQLite)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtms import config
from dtms.actors.store import AddRestart, MarkDeliveries, PutTrade, StoreActor
from dtms.config import ConfigError, Settings, WebhookSettings
from dtms.metrics import Metrics
from dtms.model import ActionRecord, Direction, Trade, TradeState, Transition
from dtms.supervisor import RestartEvent
from dtms.webhooks import WebhookQueue
from dtms.webhooks.payload import envelope, headers, matches, render, retry_delay, text_line

TOML = '''
[store]
webhooks_max_queued = 50

[[webhooks]]
url = "https://hooks.example.com/dtms"
events = ["trade.state", "guard.*"]
secret = "s3cret"

[[webhooks]]
url = "https://api.telegram.org/bot123:ABC/sendMessage"
events = ["supervisor.giveup", "service.not_ready"]
format = "telegram"
chat_id = "-1001"
max_backoff_s = 10.0
'''


def test_webhooks_from_the_config_file_are_typed_with_their_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(TOML)
    s = config.load(f, environ={})
    assert s.store.webhooks_max_queued == 50
    assert s.webhooks == (
        WebhookSettings(url="https://hooks.example.com/dtms",
                        events=("trade.state", "guard.*"), secret="s3cret"),
        WebhookSettings(url="https://api.telegram.org/bot123:ABC/sendMessage",
                        events=("supervisor.giveup", "service.not_ready"), format="telegram",
                        chat_id="-1001", max_backoff_s=10.0))
    assert (s.webhooks[0].timeout_s, s.webhooks[0].min_backoff_s, s.webhooks[0].max_backoff_s,
            s.webhooks[0].format) == (10.0, 1.0, 30.0, "dtms")
    # the label never shows a URL's path: a chat webhook's path is its token
    assert s.webhooks[1].label == "https://api.telegram.org"
    assert WebhookSettings(url="http://u:p@h:81/x", name="").label == "http://h:81"
    assert WebhookSettings(url="http://h/x", name="ops").label == "ops"


def test_every_bad_webhook_key_is_named_with_its_bound():
    bad = [{"url": "ftp://x/y", "events": ["trade.state", "trade.nope"], "format": "teams"},
           {"url": "https://a.example/h", "events": [], "timeout_s": 0,
            "min_backoff_s": 5, "max_backoff_s": 60},
           {"url": "https://a.example/h", "events": ["guard.locked"], "format": "telegram"},
           {"url": "http://b.example:99999/", "events": ["guard.*"], "chat_id": "1"}]
    with pytest.raises(ConfigError) as err:
        Settings().replace(webhooks=bad)
    msg = str(err.value)
    for expected in (
            "webhooks[0].url: must be an http:// or https:// URL with a host (and a port in "
            "1..65535), got 'ftp://x/y'",
            "webhooks[0].events: unknown event 'trade.nope'; known: trade.state, trade.action, "
            "supervisor.giveup, service.not_ready, guard.*",
            "webhooks[0].format: must be one of dtms, slack, discord, telegram, got 'teams'",
            "webhooks[1].events: must name at least one of",
            "webhooks[1].timeout_s: must be in (0, 300], got 0",
            "webhooks[1].min_backoff_s, webhooks[1].max_backoff_s: must be 0 < min <= max <= 30"
            ", got 5, 60",
            "webhooks[2].url: the same URL as webhooks[1]",
            'webhooks[2].chat_id: required with format = "telegram"',
            "webhooks[3].url: must be an http:// or https:// URL",
            'webhooks[3].chat_id: only for format = "telegram", got format \'dtms\''):
        assert expected in msg
    assert "webhooks[2].events" not in msg        # guard.<name> is a known event
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.colour: unknown setting; known: url"):
        Settings().replace(webhooks=[{"url": "http://h/", "events": ["trade.state"],
                                      "colour": "red"}])
    with pytest.raises(ConfigError, match=r"store.webhooks_max_queued: must be >= 1, got 0"):
        Settings().replace(store={"webhooks_max_queued": 0})


def test_webhooks_cannot_be_set_from_the_environment():
    with pytest.raises(ConfigError, match=r"\[\[webhooks\]\] in the config file \(not "
                                          r"\[webhooks\], nor DTMS_WEBHOOKS_\* variables\)"):
        config.load(None, environ={"DTMS_WEBHOOKS_URL": "http://h/"})
    with pytest.raises(ConfigError, match=r"webhooks: must be an array of tables"):
        Settings().replace(webhooks={"url": "http://h/"})     # a [webhooks] table
    # the queue's bound is an ordinary setting
    s = config.load(None, environ={"DTMS_STORE_WEBHOOKS_MAX_QUEUED": "7"})
    assert s.store.webhooks_max_queued == 7


def test_event_patterns_match_exactly_or_by_prefix():
    assert matches(("guard.*",), "guard.locked")
    assert matches(("guard.locked",), "guard.locked")
    assert not matches(("guard.locked",), "guard.unlocked")
    assert not matches(("guard.*",), "guardian.x")
    assert not matches(("trade.state",), "trade.action")


def test_each_format_posts_the_body_its_service_accepts():
    data = {"ticket": 7, "from_state": "HEALTHY", "to_state": "WARNING_L1",
            "reason": "score -2.5 <= -2.0", "at": 1.5,
            "trade": {"symbol": "EURUSD", "direction": "BUY"}}
    body = envelope("trade.state", "d-1", 1.5, data)
    assert json.loads(body) == {"event": "trade.state", "delivery": "d-1", "at": 1.5,
                                "data": data}
    line = "DTMS: trade 7 EURUSD BUY: HEALTHY -> WARNING_L1 (score -2.5 <= -2.0)"
    assert text_line("trade.state", data) == line

    def hook(fmt: str, **kw) -> WebhookSettings:
        return WebhookSettings(url="https://x/", events=("trade.state",), format=fmt, **kw)
    assert render(hook("dtms"), body) == body.encode()
    assert json.loads(render(hook("slack"), body)) == {"text": line}
    assert json.loads(render(hook("discord"), body)) == {"content": line}
    assert json.loads(render(hook("telegram", chat_id="-1001"), body)) == {
        "chat_id": "-1001", "text": line}
    action = {"ticket": 7, "kind": "MODIFY_SL", "status": "done", "price": 0.0, "volume": 0.0,
              "sl": 1.0851, "tp": 0.0, "reason": "breakeven", "symbol": "EURUSD",
              "direction": "BUY"}
    assert text_line("trade.action", action) == ("DTMS: trade 7 EURUSD BUY: MODIFY_SL done "
                                                 "(sl 1.0851): breakeven")
    assert text_line("service.not_ready", {"reason": "no terminal"}) == (
        "DTMS is not ready: no terminal")
    # Discord takes 2,000 characters at most
    long = envelope("guard.locked", "d", 1.0, {"note": "x" * 5000})
    assert len(json.loads(render(hook("discord"), long))["content"]) == 2000


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body():
    hook = WebhookSettings(url="https://x/", events=("trade.state",), secret="k")
    body = b'{"event":"trade.state"}'
    h = headers(hook, "trade.state", "d-9", body)
    assert h["X-DTMS-Event"] == "trade.state" and h["X-DTMS-Delivery"] == "d-9"
    assert h["X-DTMS-Signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    unsigned = headers(WebhookSettings(url="https://x/", events=("trade.state",)), "e", "d", body)
    assert "X-DTMS-Signature" not in unsigned


@given(attempts=st.integers(1, 10_000), u=st.floats(0, 1, exclude_max=True),
       lo=st.floats(0.01, 30), hi=st.floats(0.01, 30))
def test_a_retry_waits_longer_each_try_but_never_more_than_its_cap(attempts, u, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    hook = WebhookSettings(url="https://x/", events=("trade.state",), min_backoff_s=lo,
                           max_backoff_s=hi)
    delay = retry_delay(hook, attempts, u)
    assert lo <= delay <= hi <= 30
    assert retry_delay(hook, attempts + 1, u) >= delay


def test_default_retries_double_from_one_second_to_thirty():
    hook = WebhookSettings(url="https://x/", events=("trade.state",))
    assert [retry_delay(hook, n, 0.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


# -- the queue in the store: rows written by the commit of what caused them ------------------

def _trade(ticket: int, state: TradeState = TradeState.HEALTHY) -> Trade:
    return Trade(ticket=ticket, symbol="EURUSD", direction=Direction.BUY, entry_price=1.085,
                 volume=0.1, initial_volume=0.1, sl=1.08, tp=1.09, initial_sl=1.08,
                 state=state, state_since=1.0, created_at=1.0, updated_at=1.0)


def _rows(path) -> list[dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM webhook_deliveries ORDER BY id")]
    db.close()
    return rows


@pytest.mark.anyio
async def test_a_commit_queues_its_transitions_actions_and_giveups(settings):
    import anyio
    hooks = (WebhookSettings(url="http://a/", events=("trade.state", "trade.action")),
             WebhookSettings(url="http://b/", events=("supervisor.giveup",)))
    metrics = Metrics()
    ids = iter(f"d{i}" for i in range(100))
    queue = WebhookQueue(hooks, 4, metrics, new_id=lambda: next(ids))
    store = StoreActor(settings.store, metrics, webhooks=queue)
    pending = ActionRecord(ticket=5, seq=1, kind="MODIFY_SL", obligation="sl:breakeven",
                           reason="breakeven at 1.0 R", status="pending", created_at=2.0,
                           request={"sl": 1.0855})
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await store.ask(PutTrade(_trade(5), Transition(5, 1.0, "", "HEALTHY", "registered")))
        await store.ask(PutTrade(_trade(5), actions=(pending,)))
        await store.ask(PutTrade(_trade(5), actions=(pending.copy(status="sent"),)))  # no event
        await store.ask(AddRestart(RestartEvent("trades", "5", "give_up", "crash", "boom", 6,
                                                0.0, 3.0, kind="trade")))
        await store.ask(AddRestart(RestartEvent("trades", "6", "restart", "crash", "x", 1,
                                                0.1, 3.5, kind="trade")))      # no event
        rows = _rows(settings.store.path)
        assert [(r["delivery"], r["url"], r["event"], r["ticket"]) for r in rows] == [
            ("d0", "http://a/", "trade.state", 5), ("d1", "http://a/", "trade.action", 5),
            ("d2", "http://b/", "supervisor.giveup", 5)]
        state, action, giveup = (json.loads(r["body"]) for r in rows)
        assert state == {"event": "trade.state", "delivery": "d0", "at": 1.0,
                         "data": {"ticket": 5, "from_state": "", "to_state": "HEALTHY",
                                  "reason": "registered", "at": 1.0,
                                  "trade": json.loads(json.dumps(_trade(5).view()))}}
        assert action["data"] == {"ticket": 5, "seq": 1, "kind": "MODIFY_SL",
                                  "obligation": "sl:breakeven", "status": "pending",
                                  "price": 0.0, "volume": 0.0, "sl": 1.0855, "tp": 0.0,
                                  "reason": "breakeven at 1.0 R", "retcode": 0, "at": 2.0,
                                  "symbol": "EURUSD", "direction": "BUY"}
        assert giveup["data"] == {"supervisor": "trades", "child": "5", "kind": "trade",
                                  "ticket": 5, "reason": "crash", "exception": "boom",
                                  "attempt": 6, "at": 3.0}
        assert queue.queued == 3 and metrics.webhook_queued._value.get() == 3
        # the bound: one room left, two events: one queued, one dropped and counted
        await store.ask(PutTrade(_trade(7), Transition(7, 4.0, "", "HEALTHY", "registered"),
                                 actions=(pending.copy(ticket=7, status="done"),)))
        assert [r["ticket"] for r in _rows(settings.store.path)] == [5, 5, 5, 7]
        assert metrics.webhook_dropped.labels("http://a")._value.get() == 1
        # delivered rows leave the queue and free their room
        await store.ask(MarkDeliveries(done=(rows[0]["id"],), dropped=(rows[1]["id"],)))
        assert queue.queued == 2 and len(_rows(settings.store.path)) == 2
        await store.stop()
    # a restart counts what is left against the bound
    again = WebhookQueue(hooks, 4, metrics)
    store = StoreActor(settings.store, metrics, webhooks=again)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        assert again.queued == 2 and again.wake.is_set()
        await store.stop()


def test_retry_after_is_read_as_seconds_or_an_http_date():
    from dtms.webhooks.delivery import _retry_after
    assert _retry_after("7", 100.0) == 7.0
    assert _retry_after("Thu, 01 Jan 1970 00:02:00 GMT", 100.0) == 20.0
    assert _retry_after("soon", 100.0) is None and _retry_after(None, 1.0) is None


def _put(ticket: int, actions: int) -> PutTrade:
    record = ActionRecord(ticket=ticket, seq=1, kind="CLOSE", obligation="x", reason="r",
                          status="done", created_at=1.0)
    return PutTrade(_trade(ticket), Transition(ticket, 1.0, "", "HEALTHY", "registered"),
                    actions=(record,) * actions)


@given(batches=st.lists(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)),
                                 max_size=6), max_size=6),
       bound=st.integers(1, 12), hooks=st.integers(1, 3))
def test_the_queue_never_holds_more_than_its_bound_and_counts_every_drop(batches, bound,
                                                                         hooks):
    endpoints = tuple(WebhookSettings(url=f"http://h{i}/", events=("trade.state",
                                                                    "trade.action"))
                      for i in range(hooks))
    metrics = Metrics()
    queue = WebhookQueue(endpoints, bound, metrics)
    made = 0
    for batch in batches:
        plan = queue.plan([_put(t, n) for t, n in batch])
        queue.committed(plan)
        made += sum(1 + n for _, n in batch) * hooks
        assert queue.queued <= bound
    dropped = sum(metrics.webhook_dropped.labels(f"http://h{i}")._value.get()
                  for i in range(hooks))
    assert queue.queued + dropped == made
    assert queue.queued == min(made, bound)
