"""Ray token authentication on a real local head, as cluster/README.md configures it.

`ray start --head` with ``RAY_AUTH_MODE=token`` and the token in ``RAY_AUTH_TOKEN`` (what KubeRay's
``authOptions: {mode: token, secretName: ...}`` sets on every Ray container). Then, as a user would:
the Jobs API (`ray job submit`, raw HTTP) and the GCS (`ray status`) refuse a client without the
token or with a wrong one, and accept one with the token (``RAY_AUTH_TOKEN`` or a file named by
``RAY_AUTH_TOKEN_PATH``); the job runs. Every listener stays on loopback (``ss -ltnp``).

The cluster is this test's own: its own temp dir, HOME (so no ``~/.ray/auth_token`` is found) and
free ports (including the two metrics ports Ray otherwise fixes at 44217/44227;
:class:`ray_nodes.RayNodes`), and it is stopped by killing its own processes -- never `ray stop`,
which would stop every Ray on the machine."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
from netwatch import LOOPBACK, ListenerWatch, listeners
from ray_nodes import RAY, RayNodes
from ray_nodes import clean_env as _env
from ray_nodes import http as _http

pytestmark = pytest.mark.integration


@pytest.fixture
def token_cluster():
    nodes = RayNodes()  # its own temp dir, HOME and free ports; token auth on
    try:
        nodes.start_head(num_cpus=1, timeout=60)
        yield {"url": nodes.dashboard, "token": nodes.token, "ports": nodes.ports, "home": nodes.home,
               "root": nodes.root}
    finally:
        nodes.stop()


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], check=False, env=env, capture_output=True, text=True, timeout=120)


def test_the_jobs_api_and_the_gcs_require_the_token(token_cluster):
    c = token_cluster
    url, token, home = c["url"], c["token"], c["home"]
    job = [sys.executable, "-c", "print('hello from the job')"]
    gcs = f"127.0.0.1:{c['ports']['gcs']}"
    with ListenerWatch() as watch:
        bound = {local for local, _ in listeners()}
        for name in ("gcs", "dashboard", "client"):
            assert any(local.endswith(f":{c['ports'][name]}") and local.startswith(LOOPBACK) for local in bound), name

        # the dashboard says so, publicly
        assert _http(f"{url}/api/authentication_mode") == (200, '{"authentication_mode": "token"}')

        # without the token: refused (401), by the CLI, raw HTTP and the GCS alike
        refused = _ray("job", "submit", "--address", url, "--", *job, env=_env(home))
        assert refused.returncode != 0
        assert "Authentication required: Unauthorized: Missing authentication token" in refused.stderr + refused.stdout
        assert _http(f"{url}/api/jobs/")[0] == 401
        status = _ray("status", "--address", gcs, env=_env(home))
        assert status.returncode != 0 and "InvalidAuthToken" in status.stderr + status.stdout

        # a wrong token: refused (403)
        wrong = _ray("job", "submit", "--address", url, "--", *job,
                     env=_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
        assert wrong.returncode != 0
        assert "Forbidden: Invalid authentication token" in wrong.stderr + wrong.stdout
        assert _http(f"{url}/api/jobs/", token="not-the-token")[0] == 403

        # with the token: accepted, and the job runs to success
        accepted = _ray("job", "submit", "--address", url, "--", *job,
                        env=_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        out = accepted.stdout + accepted.stderr
        assert accepted.returncode == 0, out[-3000:]
        assert "hello from the job" in out and "succeeded" in out
        code, body = _http(f"{url}/api/jobs/", token=token)
        assert code == 200 and '"status": "SUCCEEDED"' in body

        # ... or with the token in a file (RAY_AUTH_TOKEN_PATH), e.g. a mounted Secret
        token_file = c["root"] / "auth_token"
        token_file.write_text(token)
        listed = _ray("job", "list", "--address", url,
                      env=_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)))
        assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout, listed.stderr[-3000:]
        status = _ray("status", "--address", gcs, env=_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert status.returncode == 0, status.stderr[-3000:]
    assert watch.samples > 0
    assert not watch.outside, f"listening beyond loopback: {sorted(watch.outside)}"
