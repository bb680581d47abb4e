"""pipelines.core.wait, .net, .redis_server and the RECLOOP_* readers of .settings (no servers)."""

from __future__ import annotations

import socket
import time

import pytest

from pipelines.core.net import free_port, port_open
from pipelines.core.redis_server import RedisServer
from pipelines.core.settings import Settings, env_float, env_int, env_text
from pipelines.core.wait import wait_until


# --- wait_until -------------------------------------------------------------------------------
def test_wait_until_returns_the_first_true_value():
    calls = []

    def check():
        calls.append(1)
        return "ready" if len(calls) == 3 else None

    assert wait_until(check, 5, "the third call", interval_s=0.001) == "ready"
    assert len(calls) == 3


def test_wait_until_checks_at_least_once_then_times_out_naming_what():
    calls = []
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"after 0.05s waiting for the moon"):
        wait_until(lambda: calls.append(1), 0.05, "the moon", interval_s=0.01)
    assert len(calls) >= 2 and time.monotonic() - t0 < 2
    assert wait_until(lambda: 1, 0, "at once") == 1  # no time at all: still one check


def test_wait_until_lets_the_check_give_up():
    def check():
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(check, 5, "a dead process")


# --- net --------------------------------------------------------------------------------------
def test_free_port_and_port_open():
    port = free_port()
    assert not port_open(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert port_open(sock.getsockname()[1])


def test_redis_server_command_binds_loopback_without_persistence(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/redis-server")
    server = RedisServer(tmp_path, port=6400)
    assert server.url == "redis://127.0.0.1:6400/0" and server.proc is None
    cmd = server.command()
    assert cmd[0] == "/usr/bin/redis-server"
    assert cmd[1:] == ["--port", "6400", "--bind", "127.0.0.1", "--save", "", "--appendonly",
                       "no", "--dir", str(tmp_path)]  # fmt: skip
    server.stop()  # not started: nothing to do
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="infra/setup.sh"):
        server.command()


# --- RECLOOP_* variables ----------------------------------------------------------------------
def test_env_readers_treat_empty_as_unset_and_name_a_bad_variable():
    env = {"A": "3", "B": "0.5", "E": "", "T": "text"}
    assert env_int(env, "A") == 3 and env_float(env, "B") == 0.5 and env_text(env, "T") == "text"
    assert env_int(env, "E", 7) == 7 and env_float(env, "MISSING") is None
    assert env_text(env, "E", "default") == "default"
    with pytest.raises(ValueError, match="T='text' is not an integer"):
        env_int(env, "T")
    with pytest.raises(ValueError, match="T='text' is not a number"):
        env_float(env, "T", 1.0)


def test_settings_and_serving_config_read_the_environment_the_same_way(tmp_path):
    from pipelines.experiments.ab import ABConfig
    from serving.config import ServingConfig

    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "", "RECLOOP_SCALE": ""})
    assert (s.seed, s.scale) == (42, "demo")
    cfg = ServingConfig.from_env({"RECLOOP_SERVE_CANDIDATES": "600", "RECLOOP_SERVE_SEED": "",
                                  "RECLOOP_SERVE_NEW_USERS": "user_tower"})  # fmt: skip
    assert (cfg.candidates, cfg.seed, cfg.new_users) == (600, None, "user_tower")
    with pytest.raises(ValueError, match="RECLOOP_SEED='x' is not an integer"):
        Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "x"})
    with pytest.raises(ValueError, match="RECLOOP_SERVE_DEADLINE_MS='soon' is not a number"):
        ServingConfig.from_env({"RECLOOP_SERVE_DEADLINE_MS": "soon"})
    # the threads that run the stages at once in one process
    assert ServingConfig.from_env({}).workers == 4
    assert ServingConfig.from_env({"RECLOOP_SERVE_THREADS": "1"}).workers == 1
    assert ServingConfig.from_env({"RECLOOP_SERVE_THREADS": "0"}).workers == 0  # event loop
    with pytest.raises(ValueError, match=r"workers \(RECLOOP_SERVE_THREADS\) must be >= 0"):
        ServingConfig.from_env({"RECLOOP_SERVE_THREADS": "-1"})
    with pytest.raises(ValueError, match="RECLOOP_AB_ALPHA='low' is not a number"):
        ABConfig.from_env({"RECLOOP_AB_ALPHA": "low"})
