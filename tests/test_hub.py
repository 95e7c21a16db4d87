"""Without a reachable hub, stitchcli switches the hub libraries offline and fails fast and clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stitchcli import hub

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def online_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "_checked", None)


def test_unreachable_endpoint_switches_offline(online_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    assert not hub.offline_mode()
    assert hub.hub_reachable(timeout=1.0) is False
    assert hub.prefer_offline_when_unreachable() is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.offline_mode()


def test_user_offline_setting_needs_no_check(online_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: pytest.fail("must not probe the network"))
    assert hub.prefer_offline_when_unreachable() is True


def test_reachable_endpoint_stays_online(online_env, monkeypatch):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.prefer_offline_when_unreachable() is False
        assert not hub.offline_mode()
    finally:
        server.close()


@pytest.mark.slow
def test_cli_without_offline_variables_fails_fast_with_the_offline_message(cache_dir, tiny_bert):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"HF_ENDPOINT": UNREACHABLE, "STITCHCLI_CACHE": str(cache_dir)})
    result = subprocess.run(
        [sys.executable, "-m", "stitchcli", "embed", "-m", "hf:org/some-model", "-d", "cifar10", "--split", "test"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Retry" not in result.stderr  # no back-off loop of the hub client
    assert result.stderr.strip().splitlines()[-1].startswith("stitchcli: error: could not download dataset 'cifar10'")
    assert "offline alternatives" in result.stderr
