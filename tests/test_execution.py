"""Intent -> MT5 request, and retcode classes: tables of exact numbers, then the sim as referee."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtms.brokers.mt5 import MT5Adapter
from dtms.brokers.sim import ManualClock, SimConfig, SimTerminal
from dtms.brokers.sim import rules as sim_rules
from dtms.brokers.sim.requests import Rejected
from dtms.model import ActionIntent, ActionKind, Direction, SymbolSpec, Tick
from dtms.policy.execution import (
    Deferred,
    Request,
    RetcodeClass,
    Skipped,
    Target,
    build_request,
    classify,
)

EURUSD = SymbolSpec(name="EURUSD", digits=5, point=0.00001, volume_min=0.01, volume_max=100.0,
                    volume_step=0.01, stops_level=10, freeze_level=5, spread=12, filling_mode=3,
                    contract_size=100_000.0)
XAUUSD = SymbolSpec(name="XAUUSD", digits=2, point=0.01, volume_min=0.01, volume_max=50.0,
                    volume_step=0.01, stops_level=50, freeze_level=20, spread=25, filling_mode=3,
                    contract_size=100.0)
EU_TICK = Tick("EURUSD", 1_717_372_800, bid=1.08500, ask=1.08512)
XAU_TICK = Tick("XAUUSD", 1_717_372_800, bid=2400.00, ask=2400.25)
EU_BUY = Target(ticket=5, symbol="EURUSD", direction=Direction.BUY, volume=0.37, sl=1.08300,
                tp=1.09000)
EU_SELL = Target(ticket=6, symbol="EURUSD", direction=Direction.SELL, volume=0.37, sl=1.08800,
                 tp=1.08000)
KW = {"magic": 770001, "comment": "dtms#5/3", "deviation": 20}


def sl(value: float) -> ActionIntent:
    return ActionIntent(ActionKind.MODIFY_SL, "sl:L1", "test", sl=value)


def vol(kind: ActionKind, value: float = 0.0) -> ActionIntent:
    return ActionIntent(kind, kind.value.lower(), "test", volume=value)


def build(intent: ActionIntent, target: Target = EU_BUY, spec: SymbolSpec = EURUSD,
          tick: Tick = EU_TICK, **kw: object) -> Request | Deferred | Skipped:
    return build_request(intent, target, spec, tick, **{**KW, **kw})  # type: ignore[arg-type]


def request(*args: object, **kw: object) -> Request:
    r = build(*args, **kw)  # type: ignore[arg-type]
    assert isinstance(r, Request), r
    return r


# -- MODIFY_SL ---------------------------------------------------------------------------------

def test_sltp_modify_keeps_the_tp_and_carries_the_common_fields() -> None:
    r = request(sl(1.08400))
    assert r.fields == {"action": 6, "position": 5, "symbol": "EURUSD", "sl": 1.08400,
                        "tp": 1.09000, "magic": 770001, "comment": "dtms#5/3", "deviation": 20,
                        "type_time": 0}
    assert (r.volume, r.full_close, r.note) == (0.37, False, "")


def test_prices_are_rounded_to_digits() -> None:
    target = dataclasses.replace(EU_BUY, tp=1.0900000000004)
    r = request(sl(1.084123), target)
    assert (r.fields["sl"], r.fields["tp"]) == (1.08412, 1.09)


@pytest.mark.parametrize("target, tick, spec, wanted, placed, note", [
    # BUY: sl at most bid - (stops + 1) points
    (EU_BUY, EU_TICK, EURUSD, 1.08495, 1.08489,
     "sl moved from 1.08495 to 1.08489 to respect stops_level 10 (bid 1.08500)"),
    (EU_BUY, EU_TICK, EURUSD, 1.08490, 1.08489,
     "sl moved from 1.08490 to 1.08489 to respect stops_level 10 (bid 1.08500)"),
    (EU_BUY, EU_TICK, EURUSD, 1.08520, 1.08489,  # wrong side of the price
     "sl moved from 1.08520 to 1.08489 to respect stops_level 10 (bid 1.08500)"),
    # SELL: sl at least ask + (stops + 1) points
    (EU_SELL, EU_TICK, EURUSD, 1.08515, 1.08523,
     "sl moved from 1.08515 to 1.08523 to respect stops_level 10 (ask 1.08512)"),
    (EU_SELL, EU_TICK, EURUSD, 1.08400, 1.08523,
     "sl moved from 1.08400 to 1.08523 to respect stops_level 10 (ask 1.08512)"),
    (dataclasses.replace(EU_BUY, symbol="XAUUSD", sl=2390.0, tp=2450.0), XAU_TICK, XAUUSD,
     2399.70, 2399.49, "sl moved from 2399.70 to 2399.49 to respect stops_level 50 (bid 2400.00)"),
])
def test_sl_inside_stops_level_moves_to_the_nearest_allowed_price(
        target: Target, tick: Tick, spec: SymbolSpec, wanted: float, placed: float,
        note: str) -> None:
    r = request(sl(wanted), target, spec, tick)
    assert (r.fields["sl"], r.fields["tp"], r.note) == (placed, target.tp, note)


def test_sl_just_outside_stops_level_is_not_adjusted() -> None:
    r = request(sl(1.08489))
    assert (r.fields["sl"], r.note) == (1.08489, "")


@pytest.mark.parametrize("target, wanted", [
    (dataclasses.replace(EU_BUY, sl=1.08490), 1.08495),   # adjusted 1.08489 < current
    (dataclasses.replace(EU_BUY, sl=1.08489), 1.08495),   # adjusted == current
    (dataclasses.replace(EU_SELL, sl=1.08520), 1.08515),  # adjusted 1.08523 > current
])
def test_adjusted_sl_that_is_no_improvement_is_skipped(target: Target, wanted: float) -> None:
    r = build(sl(wanted), target)
    assert isinstance(r, Skipped) and "no longer an improvement" in r.reason


@pytest.mark.parametrize("target, wanted, reason", [
    (EU_BUY, 1.08200, "a stop never loosens"),
    (EU_SELL, 1.08900, "a stop never loosens"),
    (EU_BUY, 0.0, "removing the stop would loosen it"),
    (EU_BUY, 1.083001, "no change"),
    (EU_SELL, 1.08800, "no change"),
])
def test_sl_that_loosens_or_changes_nothing_is_skipped(target: Target, wanted: float,
                                                       reason: str) -> None:
    r = build(sl(wanted), target)
    assert isinstance(r, Skipped) and reason in r.reason


def test_no_current_stop_means_any_stop_is_an_improvement() -> None:
    target = dataclasses.replace(EU_SELL, sl=0.0, tp=0.0)
    r = request(sl(1.08600), target)
    assert (r.fields["sl"], r.fields["tp"]) == (1.08600, 0.0)


@pytest.mark.parametrize("target, tick, spec, wanted, above, below", [
    # BUY, sl 3 points under the bid: wait for bid >= sl + (freeze + 1) points
    (dataclasses.replace(EU_BUY, sl=1.08497), EU_TICK, EURUSD, 1.08499, 1.08503, None),
    (dataclasses.replace(EU_BUY, sl=1.08495), EU_TICK, EURUSD, 1.08499, 1.08501, None),  # edge
    # SELL, sl 3 points over the ask: ask <= sl - 6 points (an ask level: no spread in it)
    (dataclasses.replace(EU_SELL, sl=1.08515), EU_TICK, EURUSD, 1.08514, None, 1.08509),
    (dataclasses.replace(EU_BUY, symbol="XAUUSD", sl=2399.85, tp=0.0), XAU_TICK, XAUUSD,
     2399.90, 2400.06, None),
    (dataclasses.replace(EU_SELL, symbol="XAUUSD", sl=2400.40, tp=0.0), XAU_TICK, XAUUSD,
     2400.35, None, 2400.19),
    # the kept tp is checked like a new level: out of max(freeze, stops) before a modify
    (dataclasses.replace(EU_BUY, tp=1.08505), EU_TICK, EURUSD, 1.08400, None, 1.08494),
    (dataclasses.replace(EU_BUY, tp=1.08508), EU_TICK, EURUSD, 1.08400, None, 1.08497),
    (dataclasses.replace(EU_SELL, tp=1.08505), EU_TICK, EURUSD, 1.08700, 1.08516, None),
])
def test_freeze_band_defers_until_the_reference_price_leaves_it(target: Target, tick: Tick, spec: SymbolSpec,
                                                    wanted: float, above: float | None,
                                                    below: float | None) -> None:
    r = build(sl(wanted), target, spec, tick)
    assert isinstance(r, Deferred), r
    assert (r.resume_above, r.resume_below) == (above, below)


def test_sl_just_outside_the_freeze_band_is_not_deferred() -> None:
    r = build(sl(1.08495), dataclasses.replace(EU_BUY, sl=1.08494))
    assert isinstance(r, Skipped)  # 6 points: not frozen, but no tighter stop fits either


# -- deals -------------------------------------------------------------------------------------

def deal(position: int, type_: int, volume: float, price: float, filling: int = 0
         ) -> dict[str, object]:
    d: dict[str, object] = {"action": 1, "symbol": "EURUSD", "type": type_, "volume": volume,
                            "price": price, "type_filling": filling, "magic": 770001,
                            "comment": "dtms#5/3", "deviation": 20, "type_time": 0}
    if position:
        d["position"] = position
    return d


def test_partial_close_is_floored_to_the_step() -> None:
    r = request(vol(ActionKind.PARTIAL_CLOSE, 0.37 * 0.5))
    assert r.fields == deal(5, 1, 0.18, 1.08500)
    assert (r.volume, r.full_close) == (0.18, False)
    assert r.note == "volume floored from 0.185 to 0.18 (step 0.01)"


@pytest.mark.parametrize("target, spec, wanted, closed, full", [
    (EU_BUY, EURUSD, 0.36, 0.36, False),                       # leaves exactly volume_min
    (EU_BUY, EURUSD, 0.37, 0.37, True),                        # leaves nothing
    (EU_BUY, EURUSD, 0.50, 0.37, True),                        # more than held
    (dataclasses.replace(EU_BUY, volume=0.25),
     dataclasses.replace(EURUSD, volume_min=0.10), 0.20, 0.25, True),  # would leave 0.05 < 0.10
])
def test_partial_close_becomes_a_full_close_when_the_rest_is_below_volume_min(
        target: Target, spec: SymbolSpec, wanted: float, closed: float, full: bool) -> None:
    r = request(vol(ActionKind.PARTIAL_CLOSE, wanted), target, spec)
    assert (r.volume, r.fields["volume"], r.full_close) == (closed, closed, full)
    assert ("full close" in r.note) is full


@pytest.mark.parametrize("wanted", [0.0, 0.005, 0.0099999])
def test_partial_close_below_volume_min_is_skipped(wanted: float) -> None:
    r = build(vol(ActionKind.PARTIAL_CLOSE, wanted))
    assert isinstance(r, Skipped) and "below volume_min 0.01" in r.reason


def test_partial_close_is_capped_at_volume_max() -> None:
    r = request(vol(ActionKind.PARTIAL_CLOSE, 2.5), dataclasses.replace(EU_BUY, volume=5.0),
                dataclasses.replace(EURUSD, volume_max=1.0))
    assert (r.volume, r.full_close, r.note) == (1.0, False, "capped at volume_max 1")


def test_close_is_opposite_at_the_closing_price() -> None:
    assert request(vol(ActionKind.CLOSE)).fields == deal(5, 1, 0.37, 1.08500)
    r = request(vol(ActionKind.CLOSE), EU_SELL)
    assert r.fields == deal(6, 0, 0.37, 1.08512) and r.full_close


def test_close_above_volume_max_closes_volume_max_and_says_more_remains() -> None:
    r = request(vol(ActionKind.CLOSE), dataclasses.replace(EU_BUY, volume=150.0))
    assert (r.volume, r.full_close) == (100.0, False)
    assert r.note == "closing volume_max 100 of 150; the rest remains"


@pytest.mark.parametrize("target, wanted, type_, volume, price, note", [
    (EU_BUY, 0.185, 1, 0.18, 1.08500, "volume floored from 0.185 to 0.18 (step 0.01)"),
    (EU_SELL, 0.2, 0, 0.2, 1.08512, ""),
    (EU_BUY, 0.004, 1, 0.01, 1.08500, "hedge volume raised from 0.004 to volume_min 0.01"),
])
def test_hedge_opens_an_opposite_position_without_stops(target: Target, wanted: float, type_: int,
                                                        volume: float, price: float,
                                                        note: str) -> None:
    r = request(vol(ActionKind.HEDGE, wanted), target)
    assert r.fields == deal(0, type_, volume, price)
    assert (r.volume, r.full_close, r.note) == (volume, False, note)


@pytest.mark.parametrize("wanted, spec", [
    (0.0, EURUSD), (0.2, dataclasses.replace(EURUSD, volume_min=0.5, volume_step=0.1)),
])
def test_hedge_that_cannot_be_sized_is_skipped(wanted: float, spec: SymbolSpec) -> None:
    assert isinstance(build(vol(ActionKind.HEDGE, wanted), EU_BUY, spec), Skipped)


def test_hedge_on_a_netting_account_becomes_a_reduction() -> None:
    target = dataclasses.replace(EU_BUY, hedging_account=False)
    r = request(vol(ActionKind.HEDGE, 0.185), target)
    assert r.fields == deal(5, 1, 0.18, 1.08500)
    assert r.note.startswith("netting account: hedge becomes a reduction")
    full = request(vol(ActionKind.HEDGE, 0.37), target)
    assert (full.volume, full.full_close) == (0.37, True)


def test_close_hedge_closes_the_hedge_position() -> None:
    target = dataclasses.replace(EU_BUY, hedge_ticket=9, hedge_volume=0.18)
    r = request(vol(ActionKind.CLOSE_HEDGE), target)
    assert r.fields == deal(9, 0, 0.18, 1.08512)  # the hedge is a SELL: buy it back at the ask
    r = request(vol(ActionKind.CLOSE_HEDGE), dataclasses.replace(EU_SELL, hedge_ticket=9,
                                                                  hedge_volume=0.2))
    assert r.fields == deal(9, 1, 0.2, 1.08500) and r.full_close
    assert isinstance(build(vol(ActionKind.CLOSE_HEDGE)), Skipped)


@pytest.mark.parametrize("bitmask, filling", [(1, 0), (2, 1), (3, 0), (0, 2)])
def test_filling_mode_from_the_symbol_bitmask(bitmask: int, filling: int) -> None:
    spec = dataclasses.replace(EURUSD, filling_mode=bitmask)
    for kind in (ActionKind.CLOSE, ActionKind.PARTIAL_CLOSE, ActionKind.HEDGE):
        assert request(vol(kind, 0.1), EU_BUY, spec).fields["type_filling"] == filling


@pytest.mark.parametrize("intent, target", [
    (sl(1.08400), EU_BUY),
    (vol(ActionKind.PARTIAL_CLOSE, 0.1), EU_BUY),
    (vol(ActionKind.CLOSE), EU_BUY),
    (vol(ActionKind.HEDGE, 0.1), EU_BUY),
    (vol(ActionKind.CLOSE_HEDGE), dataclasses.replace(EU_BUY, hedge_ticket=9, hedge_volume=0.1)),
])
def test_every_request_carries_magic_comment_and_deviation(intent: ActionIntent,
                                                           target: Target) -> None:
    long_comment = "dtms#123456789/42 defensive L2 partial close"
    r = request(intent, target, comment=long_comment, magic=42, deviation=7)
    f = r.fields
    assert (f["magic"], f["deviation"], f["type_time"], f["symbol"]) == (42, 7, 0, "EURUSD")
    assert f["comment"] == long_comment[:31] and len(f["comment"]) == 31


# -- retcodes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("retcode, expected", [
    (10009, RetcodeClass.SUCCESS), (10010, RetcodeClass.SUCCESS), (10008, RetcodeClass.SUCCESS),
    (10004, RetcodeClass.RETRY), (10020, RetcodeClass.RETRY), (10021, RetcodeClass.RETRY),
    (10012, RetcodeClass.UNCERTAIN), (10031, RetcodeClass.UNCERTAIN),
    (10011, RetcodeClass.UNCERTAIN), (None, RetcodeClass.UNCERTAIN),
    (10014, RetcodeClass.FIX), (10015, RetcodeClass.FIX), (10016, RetcodeClass.FIX),
    (10029, RetcodeClass.FIX), (10030, RetcodeClass.FIX), (10038, RetcodeClass.FIX),
    (10017, RetcodeClass.GIVE_UP), (10018, RetcodeClass.GIVE_UP), (10019, RetcodeClass.GIVE_UP),
    (10027, RetcodeClass.GIVE_UP), (10036, RetcodeClass.GIVE_UP),
    (10006, RetcodeClass.GIVE_UP), (12345, RetcodeClass.GIVE_UP), (0, RetcodeClass.GIVE_UP),
])
def test_classify(retcode: int | None, expected: RetcodeClass) -> None:
    for kind in ActionKind:
        assert classify(retcode, kind) is expected


def test_no_changes_is_success_only_for_a_modify() -> None:
    assert classify(10025, ActionKind.MODIFY_SL) is RetcodeClass.SUCCESS
    assert classify(10025, ActionKind.CLOSE) is RetcodeClass.FIX
    assert classify(10025, ActionKind.PARTIAL_CLOSE) is RetcodeClass.FIX
    assert RetcodeClass.GIVE_UP == "give_up" and RetcodeClass.SUCCESS == "success"


# -- properties --------------------------------------------------------------------------------

STEPS = (0.001, 0.01, 0.05, 0.1, 0.25, 1.0)


@settings(max_examples=400, deadline=None)
@given(step=st.sampled_from(STEPS), min_steps=st.integers(1, 20), held_steps=st.integers(0, 500),
       max_steps=st.integers(1, 400), wanted=st.floats(0, 200, allow_nan=False),
       kind=st.sampled_from([ActionKind.PARTIAL_CLOSE, ActionKind.CLOSE, ActionKind.HEDGE,
                             ActionKind.CLOSE_HEDGE]),
       hedging=st.booleans(), buy=st.booleans())
def test_volumes_are_always_on_step_within_limits(step: float, min_steps: int, held_steps: int,
                                                  max_steps: int, wanted: float,
                                                  kind: ActionKind, hedging: bool,
                                                  buy: bool) -> None:
    vmin = round(step * min_steps, 6)
    vmax = round(step * (min_steps + max_steps), 6)
    held = round(vmin + step * held_steps, 6)
    spec = dataclasses.replace(EURUSD, volume_step=step, volume_min=vmin, volume_max=vmax)
    target = dataclasses.replace(EU_BUY if buy else EU_SELL, volume=held, hedge_ticket=9,
                                 hedge_volume=held, hedging_account=hedging)
    r = build(vol(kind, wanted), target, spec)
    if not isinstance(r, Request):
        return
    v = r.fields["volume"]
    assert v == r.volume
    assert abs(v / step - round(v / step)) * step < 1e-9
    assert vmin - 1e-9 <= v <= vmax + 1e-9
    if "position" in r.fields:
        assert v <= held + 1e-9


@settings(max_examples=400, deadline=None)
@given(buy=st.booleans(), bid_pts=st.integers(100_000, 200_000), spread=st.integers(0, 30),
       stops=st.integers(0, 50), freeze=st.integers(0, 50), cur_off=st.integers(-80, 200),
       tp_off=st.integers(-10, 200), want_off=st.integers(-80, 200), no_sl=st.booleans())
def test_a_modify_never_loosens_and_passes_the_servers_rules(
        buy: bool, bid_pts: int, spread: int, stops: int, freeze: int, cur_off: int,
        tp_off: int, want_off: int, no_sl: bool) -> None:
    p = EURUSD.point
    spec = dataclasses.replace(EURUSD, stops_level=stops, freeze_level=freeze, spread=spread)
    bid, ask = round(bid_pts * p, 5), round((bid_pts + spread) * p, 5)
    sign, ref = (1, bid) if buy else (-1, ask)
    # offsets are points behind the reference price (positive = on the stop's proper side)
    cur = 0.0 if no_sl else round(ref - sign * cur_off * p, 5)
    tp = 0.0 if tp_off < 0 else round(ref + sign * tp_off * p, 5)
    target = Target(1, "EURUSD", Direction.BUY if buy else Direction.SELL, 1.0, cur, tp)
    r = build(sl(round(ref - sign * want_off * p, 5)), target, spec,
              Tick("EURUSD", 0, bid=bid, ask=ask))
    if not isinstance(r, Request):
        return
    new = r.fields["sl"]
    assert r.fields["tp"] == tp
    if cur:
        assert sign * (new - cur) > p / 2  # strictly tighter
    # the simulated server's own checks: stops level for sl and tp, freeze on current levels
    sim_spec = SimpleNamespace(stops_level=stops, point=p)
    try:
        sim_rules.check_stops(sim_spec, 0 if buy else 1, ref, new, tp)  # type: ignore[arg-type]
    except Rejected as rej:  # pragma: no cover - the assertion message is the point
        pytest.fail(f"server would refuse with {rej.retcode}: {r}")
    if freeze:
        assert not (cur and sign * (ref - cur) / p <= freeze + 1e-6)
        assert not (tp and sign * (tp - ref) / p <= freeze + 1e-6)


# -- against the simulated terminal ------------------------------------------------------------

START = 1_717_372_800  # Monday 2024-06-03 00:00 UTC: markets open


def terminal(**config: object) -> tuple[SimTerminal, MT5Adapter]:
    term = SimTerminal(SimConfig(symbols=("EURUSD", "XAUUSD"), history_days=0.5, **config),
                       ManualClock(START))
    adapter = MT5Adapter(term)
    adapter.connect()
    term.set_price("EURUSD", 1.08500)
    return term, adapter


def send(term: SimTerminal, adapter: MT5Adapter, intent: ActionIntent, target: Target) -> Request:
    r = build_request(intent, target, adapter.symbol(target.symbol), adapter.tick(target.symbol),
                      **KW)  # type: ignore[arg-type]
    assert isinstance(r, Request), r
    result = term.order_send(r.fields)
    assert result.retcode == 10009, (result.retcode, result.comment, r.fields)
    return r


def test_requests_are_accepted_by_the_simulated_server() -> None:
    term, adapter = terminal()
    ticket = term.open_position("EURUSD", "BUY", 0.37, sl=1.08300, tp=1.09000)
    target = Target(ticket, "EURUSD", Direction.BUY, 0.37, 1.08300, 1.09000)

    r = send(term, adapter, sl(1.08495), target)
    assert r.fields["sl"] == 1.08489
    (pos,) = adapter.positions(ticket=ticket)
    assert (pos.sl, pos.tp, pos.volume) == (1.08489, 1.09, 0.37)

    target = dataclasses.replace(target, sl=pos.sl)
    send(term, adapter, vol(ActionKind.PARTIAL_CLOSE, 0.37 * 0.5), target)
    (pos,) = adapter.positions(ticket=ticket)
    assert (pos.sl, pos.tp, pos.volume) == (1.08489, 1.09, 0.19)

    target = dataclasses.replace(target, volume=pos.volume)
    send(term, adapter, vol(ActionKind.HEDGE, 0.095), target)
    (hedge,) = [p for p in adapter.positions(symbol="EURUSD") if p.ticket != ticket]
    assert (hedge.direction, hedge.volume, hedge.sl, hedge.tp) == (Direction.SELL, 0.09, 0, 0)

    target = dataclasses.replace(target, hedge_ticket=hedge.ticket, hedge_volume=hedge.volume)
    send(term, adapter, vol(ActionKind.CLOSE_HEDGE), target)
    send(term, adapter, vol(ActionKind.CLOSE), target)
    assert adapter.positions(symbol="EURUSD") == []


def test_freeze_deferral_matches_the_simulated_server() -> None:
    term, adapter = terminal()
    ticket = term.open_position("EURUSD", "SELL", 0.1, sl=1.08600, tp=1.08000)
    target = Target(ticket, "EURUSD", Direction.SELL, 0.1, 1.08600, 1.08000)
    term.set_price("EURUSD", 1.08585)  # ask 1.08597: sl 3 points away, inside freeze 5
    r = build_request(sl(1.08590), target, adapter.symbol("EURUSD"), adapter.tick("EURUSD"),
                      **KW)  # type: ignore[arg-type]
    assert isinstance(r, Deferred) and (r.resume_above, r.resume_below) == (None, 1.08594)

    probe = {"action": 6, "position": ticket, "symbol": "EURUSD", "sl": 1.08650, "tp": 1.08000}
    assert term.order_send(probe).retcode == 10029            # the server agrees it is frozen
    term.set_price("EURUSD", 1.08583)
    assert term.order_check(probe).retcode == 10029           # one point short of the level
    term.set_price("EURUSD", 1.08582)
    assert term.order_check(probe).retcode == 0               # at the level: no longer frozen

    term.set_price("EURUSD", 1.08568)  # ask 1.08580: room for a tighter stop
    r = send(term, adapter, sl(1.08590), target)
    assert r.note == "sl moved from 1.08590 to 1.08591 to respect stops_level 10 (ask 1.08580)"
    (pos,) = adapter.positions(ticket=ticket)
    assert (pos.sl, pos.tp, pos.volume) == (1.08591, 1.08, 0.1)


def test_netting_hedge_reduces_the_position_at_the_simulated_server() -> None:
    term, adapter = terminal(margin_mode=0)
    ticket = term.open_position("EURUSD", "BUY", 0.37)
    target = Target(ticket, "EURUSD", Direction.BUY, 0.37, 0.0, 0.0, hedging_account=False)
    send(term, adapter, vol(ActionKind.HEDGE, 0.185), target)
    (pos,) = adapter.positions(symbol="EURUSD")
    assert (pos.ticket, pos.direction, pos.volume) == (ticket, Direction.BUY, 0.19)
    assert math.isclose(pos.volume, 0.19)
