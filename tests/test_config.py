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
