"""Settings: the shipped TOML equals the defaults; env overrides; bad values are named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dtms import config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_toml_holds_every_default():
    shipped = tomllib.loads((ROOT / "config" / "dtms.toml").read_text())
    assert shipped == config.defaults_as_toml_types()


def test_defaults_are_loopback_8001_and_9108():
    s = config.load(ROOT / "config" / "dtms.toml", environ={})
    assert (s.rpc.host, s.rpc.port, s.metrics.host, s.metrics.port) == (
        "127.0.0.1", 8001, "127.0.0.1", 9108)
    assert s.broker.backend == "sim"


def test_env_overrides_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[rpc]\nport = 8200\n[registry]\nowned_elsewhere_owners = ['um']\n")
    s = config.load(f, environ={"DTMS_RPC_PORT": "8300", "DTMS_SIM_ACCOUNT": "netting",
                                "DTMS_METRICS_ENABLED": "false"})
    assert (s.rpc.port, s.sim.account, s.metrics.enabled) == (8300, "netting", False)
    assert s.registry.owned_elsewhere_owners == ("um",)


def test_dtms_config_variable_names_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[rpc]\nport = 8123\n")
    assert config.load(environ={"DTMS_CONFIG": str(f)}).rpc.port == 8123
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(environ={"DTMS_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize("env, message", [
    ({"DTMS_RPC_PORT": "eighty"}, "rpc.port: expected an integer"),
    ({"DTMS_RPC_PORT": "70000"}, "rpc.port: must be 0..65535"),
    ({"DTMS_BROKER_BACKEND": "ftp"}, "broker.backend"),
    ({"DTMS_STORE_SYNCHRONOUS": "sometimes"}, "store.synchronous"),
    ({"DTMS_METRICS_ENABLED": "maybe"}, "metrics.enabled: expected true/false"),
])
def test_bad_values_are_named(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(ROOT / "config" / "dtms.toml", environ=env)


def test_unknown_keys_are_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[rpc]\nprot = 1\n")
    with pytest.raises(config.ConfigError, match="unknown setting rpc.prot"):
        config.load(f, environ={})
    f.write_text("[rcp]\nport = 1\n")
    with pytest.raises(config.ConfigError, match=r"unknown config section \[rcp\]"):
        config.load(f, environ={})


# == the [policy] section has the wire's bounds (issue 13 item 8) ==============================

@pytest.mark.parametrize(("toml", "names"), [
    ("partial_levels_r = [-1]\npartial_fractions = [0.9]\n", ["policy.partial_levels_r"]),
    ("partial_fractions = [0.5]\n", ["policy.partial_levels_r", "policy.partial_fractions"]),
    ("partial_levels_r = [1, 2]\npartial_fractions = [0.6, 0.6]\n", ["policy.partial_fractions"]),
    ("l1_score = -5.0\n", ["policy.l2_score", "policy.l1_score"]),
    ("requote_retries = 99\n", ["policy.requote_retries"]),
    ("hedge_ratio = 0.0\n", ["policy.hedge_ratio"]),
    ("flat_timer_min = -1.0\n", ["policy.flat_timer_min"]),
])
def test_policy_section_of_the_config_file_is_bounded(tmp_path, toml, names):
    f = tmp_path / "c.toml"
    f.write_text("[policy]\n" + toml)
    with pytest.raises(config.ConfigError) as info:
        config.load(f, environ={})
    assert [p.split(":")[0] for p in str(info.value).split("; ") if p.startswith("policy.")
            ] == names


def test_env_keeps_its_text_coercion_for_policy_keys():
    s = config.load(ROOT / "config" / "dtms.toml", environ={
        "DTMS_POLICY_PARTIAL_LEVELS_R": "1.5, 2.5", "DTMS_POLICY_PARTIAL_FRACTIONS": "0.25,0.25",
        "DTMS_POLICY_REQUOTE_RETRIES": "5", "DTMS_POLICY_L2_CLOSE_REPEAT": "true",
        "DTMS_REGISTRY_OWNED_ELSEWHERE_MAGICS": "1001,1002"})
    assert (s.policy.partial_levels_r, s.policy.partial_fractions) == ((1.5, 2.5), (0.25, 0.25))
    assert (s.policy.requote_retries, s.policy.l2_close_repeat) == (5, True)
    assert s.registry.owned_elsewhere_magics == (1001, 1002)
    with pytest.raises(config.ConfigError, match=r"policy.requote_retries: must be in \[0, 10\]"):
        config.load(ROOT / "config" / "dtms.toml", environ={"DTMS_POLICY_REQUOTE_RETRIES": "11"})


# == the client's retry budget covers a restart (issue 13, client) ============================

def test_default_client_retry_budget_waits_longer_than_a_restart():
    from dtms.client import Client
    c = config.ClientSettings()
    client = Client()
    assert (client.retries, client.backoff_min, client.backoff_max) == (
        c.retries, c.backoff_min_s, c.backoff_max_s)
    bases = [min(c.backoff_max_s, c.backoff_min_s * 2 ** (a - 1)) for a in range(1, c.retries)]
    # the jitter draws each wait from half its base to its base
    assert (sum(bases) / 2, sum(bases)) == (3.875, 7.75)   # a restart measures 0.5-1 s


@pytest.mark.parametrize(("env", "message"), [
    ({"DTMS_CLIENT_RETRIES": "0"}, "client.retries: must be >= 1"),
    ({"DTMS_CLIENT_BACKOFF_MIN_S": "3"}, "client.backoff_min_s, client.backoff_max_s"),
    ({"DTMS_CLIENT_BACKOFF_MIN_S": "0"}, "client.backoff_min_s, client.backoff_max_s"),
    ({"DTMS_REGISTRY_OWNED_ELSEWHERE_MAGICS": "5,-1"},
     r"registry.owned_elsewhere_magics: each must be >= 0, got \[5, -1\]"),
    ({"DTMS_REGISTRY_OWNED_ELSEWHERE_MAGICS": "770077"},
     r"registry.owned_elsewhere_magics: must not hold DTMS's own broker.magic \(770077\)"),
])
def test_client_and_registry_settings_are_validated(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(ROOT / "config" / "dtms.toml", environ=env)
