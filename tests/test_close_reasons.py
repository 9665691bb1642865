"""A trade DTMS closed itself names the rule that closed it (issue 13): its close reason
comes from DTMS's own journal -- the action whose comment the closing deal carries -- never
the bare "DTMS", and stays one of the fixed, pre-initialised ``CloseReason`` labels."""

from __future__ import annotations

import dataclasses

import pytest

from dtms.model import (
    ActionIntent,
    ActionKind,
    ActionRecord,
    CloseReason,
    Deal,
    TradeState,
    close_reason_from_deals,
    dtms_close_rule,
)
from dtms.policy.lifecycle import decide, failed
from tests.test_lifecycle import (
    HEDGE_TICKET,
    LADDER,
    NOW,
    POLICY,
    QUIET,
    make_trade,
    score,
    snap,
)

TICKET = 50_000_001
MAGIC = 770077
BUY = make_trade().direction


def row(seq: int, kind: ActionKind, obligation: str, reason: str,
        status: str = "done") -> ActionRecord:
    return ActionRecord(TICKET, seq, kind.value, obligation, reason, status, NOW + seq)


def exit_deal(comment: str, magic: int = MAGIC) -> Deal:
    return Deal(ticket=9, position_id=TICKET, symbol="EURUSD", entry=1, reason=3, volume=0.1,
                price=1.1, profit=-5.0, magic=magic, comment=comment, time=int(NOW) + 100)


TIME_STOP_ROW = row(4, ActionKind.CLOSE, "close", "time stop: open 60 min")
TABLE = {
    "time stop": ([TIME_STOP_ROW], "DTMS:50000001:4", CloseReason.TIME_STOP),
    "flat timer": ([row(6, ActionKind.CLOSE, "close", "flat timer 75 min elapsed while hedged"),
                    row(7, ActionKind.CLOSE_HEDGE, "close_hedge",
                        "flat timer 75 min elapsed while hedged")],
                   "DTMS:50000001:6", CloseReason.FLAT_TIMER),
    "not recovered": ([row(8, ActionKind.CLOSE, "close",
                           "not recovered: score +0.50 < +1 after 30 min")],
                      "DTMS:50000001:8", CloseReason.NOT_RECOVERED),
    # a retried close names no rule; the close it retries does
    "retried time stop": ([dataclasses.replace(TIME_STOP_ROW, status="failed"),
                           row(5, ActionKind.CLOSE, "close", "close (retry)")],
                          "DTMS:50000001:5", CloseReason.TIME_STOP),
    "L2 cut became a full close": ([row(2, ActionKind.PARTIAL_CLOSE, "L2:partial",
                                        "warning L2: close 50%")],
                                   "DTMS:50000001:2", CloseReason.WARNING_L2),
    "last partial rung": ([row(3, ActionKind.PARTIAL_CLOSE, "partial:1",
                               "profit 2.5 R: take 25%")],
                          "DTMS:50000001:3", CloseReason.PARTIAL_PROFIT),
    "netting hedge took the rest": ([row(3, ActionKind.HEDGE, "hedge",
                                         "hedged: reduce (netting account) 0.5x volume")],
                                    "DTMS:50000001:3", CloseReason.NETTING_REDUCE),
    # the broker rewrote the comment: the newest done close in the journal decides
    "comment rewritten": ([row(1, ActionKind.MODIFY_SL, "sl:L1", "warning L1"),
                           row(4, ActionKind.CLOSE, "close", "time stop: open 60 min")],
                          "[tp 1.1]", CloseReason.TIME_STOP),
    "nothing journaled": ([], "DTMS:50000001:9", CloseReason.DTMS),
    "a stop change only": ([row(1, ActionKind.MODIFY_SL, "sl:L1", "warning L1")], "",
                           CloseReason.DTMS),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_a_dtms_close_names_the_rule_its_journal_records(case: str) -> None:
    journal, comment, expected = TABLE[case]
    deal = exit_deal(comment)
    assert close_reason_from_deals([deal], MAGIC)[0] is CloseReason.DTMS   # the deal's word
    reason, action = dtms_close_rule(deal, journal, "DTMS")
    assert reason is expected
    assert (action is None) == (expected is CloseReason.DTMS)


def _journaled(intent: ActionIntent, seq: int, status: str = "done") -> ActionRecord:
    return ActionRecord(TICKET, seq, intent.kind.value, intent.obligation, intent.reason,
                        status, NOW)


TIME_STOP = dataclasses.replace(POLICY, time_stop_min=60.0)
#: the policy's own close decisions, for each rule that closes a trade
RULES = {
    CloseReason.TIME_STOP: (make_trade(opened_at=NOW - 3600), snap(*QUIET[BUY]), TIME_STOP),
    CloseReason.FLAT_TIMER: (make_trade(state=TradeState.HEDGED, flat_since=NOW - 4500,
                                        hedge_ticket=HEDGE_TICKET), snap(*QUIET[BUY]), POLICY),
    CloseReason.NOT_RECOVERED: (make_trade(state=TradeState.RECOVERING,
                                           recovery_since=NOW - 1800),
                                snap(*QUIET[BUY], score=score(0.0)), POLICY),
    CloseReason.PARTIAL_PROFIT: (make_trade(sl=1.10020, obligations={"sl:breakeven": "done"}),
                                 snap(1.11500, 1.11520), LADDER),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_of_the_policy_that_closes_is_named_from_its_own_intent(
        rule: CloseReason) -> None:
    trade, s, policy = RULES[rule]
    [intent] = [i for i in decide(trade, s, policy).intents
                if i.kind in (ActionKind.CLOSE, ActionKind.PARTIAL_CLOSE)]
    reason, _ = dtms_close_rule(exit_deal("DTMS:50000001:1"), [_journaled(intent, 1)], "DTMS")
    assert reason is rule


def test_a_retried_time_stop_close_is_still_named_time_stop() -> None:
    first = decide(make_trade(opened_at=NOW - 3600), snap(*QUIET[BUY]), TIME_STOP)
    [close] = first.intents
    # the close failed 20 s ago (retry_after_s is 10): the policy offers it again
    trade = first.trade.copy(obligations={"close": failed(NOW - 20)})
    [retry] = decide(trade, snap(*QUIET[BUY]), TIME_STOP).intents
    assert (retry.kind, retry.reason) == (ActionKind.CLOSE, "close (retry)")
    journal = [_journaled(close, 1, "failed"), _journaled(retry, 2)]
    assert dtms_close_rule(exit_deal("DTMS:50000001:2"), journal, "DTMS")[0] is (
        CloseReason.TIME_STOP)


def test_close_reasons_are_a_fixed_set_of_label_values() -> None:
    assert {r.value for r in CloseReason} == {
        "SL", "TP", "STOP_OUT", "MANUAL", "EXPERT", "TIME_STOP", "FLAT_TIMER", "NOT_RECOVERED",
        "WARNING_L2", "PARTIAL_PROFIT", "NETTING_REDUCE", "GUARD", "REQUEST", "DTMS", "UNKNOWN"}
