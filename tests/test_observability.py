"""The shipped observability config agrees with what DTMS exports, and promtool accepts it.

* every PromQL expression in the Grafana dashboard and in the alert rules refers only to metric
  names (and label names, and initialised label values) that :class:`dtms.metrics.Metrics`
  exports, plus ``up`` which Prometheus itself provides;
* the dashboard has a fixed uid, refers to the provisioned datasource by a fixed uid, and has no
  ``__inputs`` (it is provisioned, not imported);
* ``promtool check config``, ``promtool check rules`` and ``promtool test rules`` pass, and every
  alert has unit tests where it fires and where it does not.

promtool comes from Debian's ``prometheus`` package, which ``.ci/run`` installs. Without it these
tests fail (they do not skip): the rules are only known to be valid if promtool says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from dtms.config import Settings
from dtms.metrics import Metrics

CONFIG = Path(__file__).resolve().parents[1] / "config"
PROM = CONFIG / "prometheus"
GRAFANA = CONFIG / "grafana"
DASHBOARD = GRAFANA / "dtms-dashboard.json"
DATASOURCE_UID = "dtms-prometheus"
DASHBOARD_UID = "dtms-overview"

REQUIRED_ALERTS = {"DTMSDown", "DTMSNotReady", "DTMSRestartStorm", "DTMSTradeGiveUps",
                   "DTMSActionFailureRatio", "DTMSBrokerDisconnected",
                   "DTMSStoreCommitLatencyHigh", "DTMSTradeClosedUnknown", "DTMSAccountLocked",
                   "DTMSDailyLossNearLimit"}
#: Series Prometheus provides itself, with their labels.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}

INSTALL_HINT = ("promtool is not installed. Install Debian's `prometheus` package "
                "(`apt-get install prometheus`; .ci/run does this in CI): the alert rules and "
                "the scrape config are only known to be valid once promtool accepts them.")


# -- what DTMS exports ------------------------------------------------------------------------
@cache
def exported() -> dict[str, tuple[set[str], dict[str, set[str]]]]:
    """Sample name -> (label names, label values present at start) for everything DTMS exports.

    Sample names are derived from each family's type (a counter ``x`` exports ``x_total`` and
    ``x_created``; a histogram ``x_bucket``, ``x_sum``, ``x_count`` and ``x_created``), so that
    labelled metrics without children yet are included. Label values present at start are the
    ones initialised in advance; for those labels the set is complete.
    """
    metrics = Metrics()
    labelnames = {w._name: set(w._labelnames) for w in vars(metrics).values()
                  if isinstance(w, MetricWrapperBase)}
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}
    out: dict[str, tuple[set[str], dict[str, set[str]]]] = {}
    for family in metrics.registry.collect():
        labels = labelnames[family.name]
        for suffix in suffixes[family.type]:
            out[family.name + suffix] = (labels | ({"le"} if suffix == "_bucket" else set()), {})
        for sample in family.samples:
            names, values = out.setdefault(sample.name, (set(sample.labels), {}))
            for k, v in sample.labels.items():
                values.setdefault(k, set()).add(v)
    assert "dtms_ready" in out and "dtms_actions_total" in out
    return out


def known_series() -> dict[str, tuple[set[str], dict[str, set[str]]]]:
    return {**exported(), **{k: (v, {}) for k, v in PROMETHEUS_SERIES.items()}}


# -- a small PromQL scanner ---------------------------------------------------------------------
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, label names, durations or strings."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)      # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)     # range and subquery durations ($__rate_interval)
    e = _GROUPING.sub(" ", e)             # by (le, kind), on (instance), ...
    return {m.group(1) for m in _IDENT.finditer(e)
            if not m.group(2) and m.group(1) not in _KEYWORDS}


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, op, value), ...]) for each selector with label matchers."""
    for m in _SELECTOR.finditer(expr):
        if m.group(1) in _KEYWORDS or m.group(1) in ("by", "without"):
            continue
        yield m.group(1), _MATCHER.findall(m.group(2))


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in _GROUPING.finditer(_STRING.sub('""', expr)):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    return labels


def test_scanner_finds_metric_names_and_ignores_the_rest():
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(dtms_action_duration_seconds_bucket'
            '{instance=~"$instance", kind="trail"}[$__rate_interval]))) > 0.25 and on (instance) '
            'sum without (le) (increase(dtms_bogus_total[5m] offset 1h)) / up{job="dtms"} '
            '> bool 1e3 or vector(1)')
    assert metric_names(expr) == {"dtms_action_duration_seconds_bucket", "dtms_bogus_total", "up"}
    assert grouping_labels(expr) == {"le", "kind", "instance"}
    assert dict(selectors(expr)) == {
        "dtms_action_duration_seconds_bucket": [("instance", "=~", "$instance"),
                                                ("kind", "=", "trail")],
        "up": [("job", "=", "dtms")]}


# -- where the expressions are ------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def dashboard_exprs() -> list[str]:
    d = dashboard()
    exprs = [n["expr"] for n in _walk(d.get("panels", [])) if isinstance(n.get("expr"), str)]
    for var in d.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and isinstance(query, str):
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
            if m:  # Grafana's label_values(selector, label): check the selector and the label
                exprs.append(f"group by ({m.group(2)}) ({m.group(1)})")
            else:
                exprs.append(query)
    return exprs


def _yaml_block(lines: list[str], i: int, indent: int) -> tuple[str, int]:
    block = []
    while i < len(lines) and (not lines[i].strip()
                              or len(lines[i]) - len(lines[i].lstrip()) > indent):
        block.append(lines[i].strip())
        i += 1
    return "\n".join(block).strip(), i


def rule_values(text: str, key: str) -> list[str]:
    """The values of ``key:`` in a YAML rules file: plain, quoted or block (|, >) scalars.
    (No YAML library is a DTMS dependency; promtool validates the file as a whole.)"""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(rf"^(\s*)(?:-\s+)?{key}:\s*(.*?)\s*$", lines[i])
        i += 1
        if not m or lines[i - 1].lstrip().startswith("#"):
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest[:1] in ("|", ">"):
            value, i = _yaml_block(lines, i, indent)
        elif rest[:1] == '"':
            value = json.loads(rest)
        elif rest[:1] == "'":
            value = rest[1:-1].replace("''", "'")
        else:
            value = rest
        out.append(value)
    return out


def alert_blocks() -> dict[str, str]:
    """alert name -> the text of its rule."""
    text = (PROM / "alerts.yml").read_text()
    parts = re.split(r"(?m)^\s*- alert:\s*", text)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def alert_exprs() -> list[str]:
    exprs = rule_values((PROM / "alerts.yml").read_text(), "expr")
    assert len(exprs) == len(alert_blocks()), "one expr per alert"
    return exprs


# -- (a) consistency ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_expression_uses_only_exported_metrics_and_labels(source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    assert len(exprs) >= (20 if source == "dashboard" else len(REQUIRED_ALERTS))
    series = known_series()
    problems: list[str] = []
    for expr in exprs:
        names = metric_names(expr)
        if not names:
            problems.append(f"no metric in {expr!r}")
        for name in sorted(names - set(series)):
            problems.append(f"{name!r} is not exported by DTMS (in {expr!r})")
        known = [series[n] for n in names if n in series]
        allowed_labels = TARGET_LABELS.union(*(labels for labels, _ in known))
        for label in sorted(grouping_labels(expr) - allowed_labels):
            problems.append(f"grouping label {label!r} is on none of {sorted(names)} "
                            f"(in {expr!r})")
        for name, matchers in selectors(expr):
            if name not in series:
                continue
            labels, values = series[name]
            for label, op, value in matchers:
                if label not in labels | TARGET_LABELS:
                    problems.append(f"{name} has no label {label!r} (in {expr!r})")
                elif label in values and "$" not in value and op in ("=", "=~"):
                    wanted = value.split("|") if op == "=~" else [value]
                    if all(re.fullmatch(r"[\w.+-]+", w) for w in wanted):
                        problems += [f"{name}{{{label}={w!r}}} is never exported; known: "
                                     f"{sorted(values[label])} (in {expr!r})"
                                     for w in wanted if w not in values[label]]
    assert not problems, "\n".join(problems)


def test_metric_names_follow_prometheus_conventions():
    metrics = Metrics()
    for family in metrics.registry.collect():
        assert family.name.startswith("dtms_"), family.name
        assert not family.name.endswith("_total") or family.type == "counter", family.name
        if family.type == "histogram" and "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            assert not {"ticket", "position", "trace_id"} & set(wrapper._labelnames), wrapper._name
    names = set(exported())
    for required in ("dtms_action_duration_seconds_bucket", "dtms_tick_to_decision_seconds_bucket",
                     "dtms_actions_total", "dtms_store_commit_duration_seconds_bucket",
                     "dtms_rpc_request_duration_seconds_bucket",
                     "dtms_broker_request_duration_seconds_bucket"):
        assert required in names
    _, values = exported()["dtms_actions_total"]
    assert values["kind"] == {"breakeven", "trail", "tighten", "partial_close", "hedge", "close"}
    assert values["outcome"] == {"success", "retry", "uncertain", "reject", "deferred"}


def test_dashboard_covers_the_required_panels():
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for name in ("dtms_ready", "dtms_trades", "dtms_registrations_total", "dtms_actions_total",
                 "dtms_action_duration_seconds_bucket", "dtms_actor_restarts_total",
                 "dtms_actor_giveups_total", "dtms_rpc_requests_total",
                 "dtms_rpc_request_duration_seconds_bucket",
                 "dtms_broker_request_duration_seconds_bucket",
                 "dtms_broker_order_retcodes_total", "dtms_mailbox_depth",
                 # the account guard (issue 15)
                 "dtms_guard_locked", "dtms_guard_daily_pnl", "dtms_guard_drawdown_ratio",
                 "dtms_guard_open_risk", "dtms_guard_breaches_total"):
        assert name in used, f"no dashboard panel uses {name}"
    latency = [e for e in dashboard_exprs() if "dtms_action_duration_seconds_bucket" in e]
    assert any("histogram_quantile(0.5," in e for e in latency)
    assert any("histogram_quantile(0.99," in e for e in latency)


# -- (b) the dashboard is provisionable ----------------------------------------------------------
def test_dashboard_has_fixed_uids_and_no_inputs():
    raw = DASHBOARD.read_text()
    d = json.loads(raw)
    assert d["uid"] == DASHBOARD_UID
    assert "__inputs" not in d and "__requires" not in d
    assert "${DS_" not in raw, "datasource must be referenced by uid, not an import input"
    assert d.get("id") is None
    panels = [p for p in _walk(d["panels"]) if "targets" in p]
    assert len(panels) >= 9
    ids = [p["id"] for p in _walk(d["panels"]) if "gridPos" in p]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == DATASOURCE_UID, p["title"]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID


def test_grafana_provisioning_matches_the_dashboard():
    ds = (GRAFANA / "provisioning" / "datasources" / "dtms.yml").read_text()
    assert rule_values(ds, "uid") == [DATASOURCE_UID]
    assert rule_values(ds, "type") == ["prometheus"]
    assert rule_values(ds, "apiVersion") == ["1"]
    boards = (GRAFANA / "provisioning" / "dashboards" / "dtms.yml").read_text()
    assert rule_values(boards, "apiVersion") == ["1"]
    assert rule_values(boards, "type") == ["file"]
    assert len(rule_values(boards, "path")) == 1


def test_scrape_config_targets_the_default_metrics_port():
    text = (PROM / "prometheus.yml").read_text()
    m = Settings().metrics
    assert rule_values(text, "job_name") == ["dtms"]
    assert f'"{m.host}:{m.port}"' in text
    assert re.search(r"(?m)^rule_files:\s*\n\s*-\s*alerts\.yml\s*$", text)


# -- (c) promtool ---------------------------------------------------------------------------
def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    proc = subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{output}"
    return output


def test_promtool_check_config():
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out, out
    assert f"SUCCESS: {len(alert_blocks())} rules found" in out, out


def test_promtool_check_rules():
    out = promtool("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(alert_blocks())} rules found" in out, out


def test_promtool_test_rules():
    out = promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out, out


def test_every_alert_is_labelled_annotated_and_unit_tested_both_ways():
    blocks = alert_blocks()
    assert set(blocks) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(blocks)
    for name, block in blocks.items():
        assert rule_values(block, "severity")[0] in ("critical", "warning"), name
        assert rule_values(block, "summary") and rule_values(block, "description"), name
    tests = (PROM / "alerts_test.yml").read_text()
    cases: dict[str, set[bool]] = {}
    for chunk in re.split(r"(?m)^\s*- eval_time:", tests)[1:]:
        name = rule_values(chunk, "alertname")[0]
        empty = re.search(r"exp_alerts:\s*\[\]", chunk) is not None
        fires = "exp_labels:" in chunk
        assert empty != fires, f"unclear test case for {name}"
        cases.setdefault(name, set()).add(fires)
    for name in blocks:
        assert cases.get(name) == {True, False}, (
            f"{name} needs promtool cases where it fires and where it does not, has {cases.get(name)}")
