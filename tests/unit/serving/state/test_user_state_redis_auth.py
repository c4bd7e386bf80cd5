"""The Redis user state takes its password from an environment variable (on Kubernetes: a Secret
through secretKeyRef), so the app's config (cluster/serve.yaml) never holds it. Against a real
redis-server on 127.0.0.1 that requires the password."""

import subprocess
import time

import pytest
from pydantic import ValidationError

from serving.core.schemas import AppArgs
from serving.state.redis_backend import RedisUserState
from serving.state.redis_server import free_port, redis_binary
from serving.state.user_state import Outcome, UserStateConfig

PASSWORD = "s3cret-from-a-k8s-secret"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import redis

    port = free_port()
    proc = subprocess.Popen([redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis-auth")),
                             "--requirepass", PASSWORD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=1)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None:
                pytest.fail("redis-server did not start")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_the_password_comes_from_the_named_environment_variable(url, monkeypatch):
    monkeypatch.setenv("RAYCART_STATE_REDIS_PASSWORD", PASSWORD)
    state = RedisUserState(UserStateConfig.tiny(), url, password_env="RAYCART_STATE_REDIS_PASSWORD")
    assert state.ping()
    state.issue("r1", "u:1", ["a", "b"])
    assert state.record("r1", "a", "click").outcome is Outcome.RECORDED
    state.close()
    # the same server without the password refuses the client (NOAUTH): the password is what let it in
    assert not RedisUserState(UserStateConfig.tiny(), url).ping()
    monkeypatch.setenv("RAYCART_STATE_REDIS_PASSWORD", "wrong")
    assert not RedisUserState(UserStateConfig.tiny(), url, password_env="RAYCART_STATE_REDIS_PASSWORD").ping()


def test_an_unset_or_empty_password_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RAYCART_STATE_REDIS_PASSWORD", raising=False)
    with pytest.raises(ValueError, match=r"\$RAYCART_STATE_REDIS_PASSWORD, which is not set"):
        RedisUserState(UserStateConfig.tiny(), "redis://127.0.0.1:1/0", password_env="RAYCART_STATE_REDIS_PASSWORD")
    monkeypatch.setenv("RAYCART_STATE_REDIS_PASSWORD", "")
    with pytest.raises(ValueError, match="which is empty"):
        RedisUserState(UserStateConfig.tiny(), "redis://127.0.0.1:1/0", password_env="RAYCART_STATE_REDIS_PASSWORD")


def test_app_args_name_the_variable_not_the_password():
    args = AppArgs(model_dir="m", data_dir="d", user_state="redis", redis_password_env="RAYCART_STATE_REDIS_PASSWORD")
    assert args.redis_password_env == "RAYCART_STATE_REDIS_PASSWORD"
    assert AppArgs(model_dir="m", data_dir="d").redis_password_env is None
    with pytest.raises(ValidationError, match="redis_password_env"):
        AppArgs(model_dir="m", data_dir="d", redis_password_env="not a variable name!")
