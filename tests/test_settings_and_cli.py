"""Configuration errors, the embedded Valkey's durability, and `speechq up` from start to Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from redis import Redis

from cli.embedded_redis import EmbeddedRedis
from config import Settings, SettingsError, load_settings
from contract.catalog import ModelRole, Registry
from tests.stack import ROOT, SPEECHQ, free_port, start_up, wait_until


def test_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.api_port == 6666
    assert settings.llm_model == "gemma-3-270m"
    assert settings.visibility_timeout > settings.task_time_limit_seconds


@pytest.mark.parametrize(
    ("variable", "value"),
    [("API_PORT", "not-a-port"), ("LLM_N_CTX", "12"), ("LOG_LEVEL", "LOUD"), ("JOB_TTL_SECONDS", "-1")],
)
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_visibility_timeout_must_exceed_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_TIME_LIMIT_SECONDS", "100")
    monkeypatch.setenv("BROKER_VISIBILITY_TIMEOUT_SECONDS", "50")
    with pytest.raises(SettingsError, match="BROKER_VISIBILITY_TIMEOUT_SECONDS"):
        load_settings()


def test_keys_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("API_KEY_ENABLED", "maybe-sk-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "API_KEY_ENABLED" in str(caught.value) and "sk-secret" not in str(caught.value)


def test_the_cli_refuses_to_start_with_a_bad_value(tmp_path: Path) -> None:
    env = {**os.environ, "API_PORT": "99999", "REDIS_URL": "redis://127.0.0.1:1"}
    done = subprocess.run([*SPEECHQ, "api"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "API_PORT" in done.stderr and "Traceback" not in done.stderr


def test_an_unknown_dialogue_model_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.dialogue_model == "smollm2-135m-instruct"
    assert Registry.load(settings).lookup(settings.dialogue_model, ModelRole.llm).chat_template  # an instruct model
    for value in ("no-such-model", "whisper-base"):  # not registered; registered, but not a language model
        monkeypatch.setenv("DIALOGUE_MODEL", value)
        with pytest.raises(SettingsError, match=f"^DIALOGUE_MODEL='{value}' is not a registered llm model$"):
            Registry.load(load_settings())


def test_the_cli_refuses_to_start_with_an_unknown_dialogue_model(tmp_path: Path, redis_url: str) -> None:
    env = {**os.environ, "DIALOGUE_MODEL": "no-such-model", "REDIS_URL": redis_url, "DATA_DIR": str(tmp_path)}
    message = "DIALOGUE_MODEL='no-such-model' is not a registered llm model"
    listed = subprocess.run([*SPEECHQ, "models", "list"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 2 and listed.stderr.strip() == f"speechq: {message}"
    api = subprocess.run(
        [*SPEECHQ, "api", "--port", str(free_port())], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert api.returncode != 0 and message in api.stdout + api.stderr


def test_embedded_valkey_is_durable_across_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = Redis.from_url(server.url, decode_responses=True)
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
        client.hset("speechq:job:durable", mapping={"status": "queued"})
        client.xadd("speechq:job:durable:events", {"type": "queued", "data": "{}"})
        client.close()
        assert (tmp_path / "address").read_text().strip() == server.url
    assert not (tmp_path / "address").exists()
    with EmbeddedRedis(tmp_path) as server:
        client = Redis.from_url(server.url, decode_responses=True)
        assert client.hget("speechq:job:durable", "status") == "queued"
        assert client.xlen("speechq:job:durable:events") == 1
        client.close()


def test_speechq_up_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DATA_DIR=str(tmp_path / "var"), LLM_MODELS_DIR=str(ROOT / "var" / "models"), PYTHONUNBUFFERED="1")
    up, url = start_up(env, tmp_path, "--no-flower")
    try:
        wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, timeout=120, what="speechq up")
        response = httpx.post(f"{url}/v1/generate", json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
        assert response.status_code == 200 and response.json()["generated_text"]
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(60) == 0
    finally:
        up.stop()
    output = up.log()
    assert url in output and "embedded Valkey" in output
    assert "worker stopped" in output and "api stopped" in output
    assert not (tmp_path / "var" / "valkey" / "address").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
