"""A real multi-node Ray cluster on this machine: a head (`ray start --head --block`) and worker
nodes (a raylet each, started as ``ray.cluster_utils.Cluster`` starts one), each a process with its
own resources, all on 127.0.0.1 with token authentication on.

Each node is its own process session (``start_new_session``): :meth:`RayNodes.kill` SIGKILLs the
session and every descendant of the node's process -- the raylet, its object store, its workers
-- which is what losing the machine looks like to the rest of the cluster. Each node has its own temp
dir (as on its own machine: session files, unpacked job packages), the cluster its own HOME (no
``~/.ray/auth_token`` is found) and free ports, including the two metrics ports Ray otherwise fixes
at 44217/44227; it is never stopped with `ray stop`, which would stop every Ray on the machine.
With ``start_head(gcs_redis=...)`` the head keeps its GCS tables in Redis (GCS fault tolerance) and
:meth:`RayNodes.restart_gcs` kills and restarts its GCS alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PROJECT = Path(__file__).resolve().parents[2]
# what a job's working_dir leaves behind (the project travels with each job, as from a laptop)
EXCLUDES = [".venv", ".git", "raycart-work", "benchmarks/results", "*.png", "__pycache__"]
HEAD_PORTS = ("gcs", "dashboard", "client", "agent_http", "agent_grpc", "runtime_env", "metrics",
              "autoscaler_metrics", "dashboard_metrics")
NODE_PORTS = ("node_manager", "object_manager", "agent_http", "agent_grpc", "runtime_env", "metrics")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # all held open at once: n distinct ports
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Ray address or auth setting, HOME = ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH_") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return env | {"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} | extra


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sess="], capture_output=True, text=True, check=True).stdout
    return [pid for pid, sess in (map(int, line.split()) for line in out.splitlines()) if sess == sid]


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for child, parent in (map(int, line.split()) for line in out.splitlines()):
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, just not reaped
    except OSError:
        return False


def kill_tree(*leaders: subprocess.Popen) -> None:
    """SIGKILL the sessions ``leaders`` lead and every descendant of them (Ray starts worker
    processes in sessions of their own) all at once, reap the leaders and wait for the rest."""
    doomed = set()
    for leader in leaders:
        doomed |= set(session_pids(leader.pid)) | descendants(leader.pid)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for leader in leaders:
        try:
            leader.wait(10)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.time() + 10
    while any(_running(pid) for pid in doomed) and time.time() < deadline:
        time.sleep(0.2)


def http(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# a worker node's process: what Cluster.add_node does, then wait until killed (RayNodes.kill)
WORKER_NODE = r"""
import json, sys, threading
from ray._private.node import Node
from ray._private.parameter import RayParams
node = Node(RayParams(**json.loads(sys.argv[1])), head=False, shutdown_at_exit=False, spawn_reaper=False)
print("node started", node.node_id, flush=True)
threading.Event().wait()
"""


# a head whose GCS alone can be killed and restarted (GCS fault tolerance): what Cluster's head is,
# driven by lines on stdin ("kill-gcs", "start-gcs"); `ray start --block` would tear the whole head
# down as soon as its GCS died
HEAD_NODE = r"""
import json, sys
from ray._private.node import Node
from ray._private.parameter import RayParams
node = Node(RayParams(**json.loads(sys.argv[1])), head=True, shutdown_at_exit=False, spawn_reaper=False)
print("head started", node.node_id, flush=True)
for line in sys.stdin:
    if line.strip() == "kill-gcs":
        node.kill_gcs_server()
        print("gcs killed", flush=True)
    elif line.strip() == "start-gcs":
        node.start_gcs_server()
        print("gcs started", flush=True)
"""


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path


class RayNodes:
    """``start_head()``, ``add_node(name, ...)``, ``kill(name)``, ``stop()``; :attr:`env` is what a
    client (the CLI, `ray job submit`, a driver) needs: the token and the cluster's address."""

    def __init__(self, root: Path | None = None, node_env: dict[str, str] | None = None):
        # short: Ray's unix sockets live below the temp dir
        self.root = Path(root or tempfile.mkdtemp(prefix="rc-nodes-", dir="/tmp"))
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(32)
        self.ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
        self.node_env = node_env or {}  # every node's processes (e.g. S3 credentials for the workers)
        self.nodes: dict[str, Node] = {}  # running
        self.names: dict[str, str] = {}  # node id -> name, of every worker node started (killed ones too)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['gcs']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_ADDRESS=self.address,
                         **extra)

    def _node_env(self) -> dict[str, str]:
        return clean_env(self.home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                         AUTOSCALER_METRIC_PORT=str(self.ports["autoscaler_metrics"]),
                         DASHBOARD_METRIC_PORT=str(self.ports["dashboard_metrics"]), **self.node_env)

    def _start(self, name: str, cmd: list[str], env: dict[str, str], stdin=None) -> Node:
        log = self.root / f"{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=stdin,
                                    start_new_session=True, text=True)
        node = Node(name, proc, log)
        self.nodes[name] = node
        return node

    def start_head(self, num_cpus: float = 1, resources: dict | None = None, timeout: float = 90,
                   gcs_redis: str | None = None, env: dict[str, str] | None = None) -> Node:
        """``ray start --head --block``; with ``gcs_redis`` (``host:port`` of a Redis server) a head
        with GCS fault tolerance whose GCS :meth:`restart_gcs` can kill and restart. ``env``: more
        variables for the head's processes (e.g. ``RAY_health_check_period_ms``, read by the GCS)."""
        p = self.ports
        head_env = self._node_env() | (env or {})
        if gcs_redis:
            spec = {"node_ip_address": "127.0.0.1", "gcs_server_port": p["gcs"], "include_dashboard": True,
                    "dashboard_host": "127.0.0.1", "dashboard_port": p["dashboard"],
                    "ray_client_server_port": p["client"], "dashboard_agent_listen_port": p["agent_http"],
                    "metrics_agent_port": p["agent_grpc"], "runtime_env_agent_port": p["runtime_env"],
                    "metrics_export_port": p["metrics"], "min_worker_port": 0, "max_worker_port": 0,
                    "num_cpus": num_cpus, "resources": resources or {}, "temp_dir": str(self.root / "ray"),
                    "object_store_memory": 100 * 1024 * 1024}
            ft_env = head_env | {"RAY_REDIS_ADDRESS": gcs_redis, "RAY_USAGE_STATS_ENABLED": "0",
                                 "RAY_external_storage_namespace": secrets.token_hex(8)}
            node = self._start("head", [sys.executable, "-c", HEAD_NODE, json.dumps(spec)], ft_env,
                               stdin=subprocess.PIPE)
            return self._wait_head(node, timeout)
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={p['gcs']}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={p['dashboard']}",
               f"--ray-client-server-port={p['client']}", f"--dashboard-agent-listen-port={p['agent_http']}",
               f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env']}",
               f"--metrics-export-port={p['metrics']}", "--min-worker-port=0", "--max-worker-port=0",
               f"--num-cpus={num_cpus}", f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        return self._wait_head(self._start("head", cmd, head_env), timeout)

    def _wait_head(self, node: Node, timeout: float) -> Node:
        deadline = time.time() + timeout
        while True:
            try:
                if http(f"{self.dashboard}/api/jobs/")[0] == 401:  # up, and refusing
                    break
            except OSError:
                pass
            if node.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start --head did not come up:\n{node.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return node

    def add_node(self, name: str, num_cpus: float = 1, resources: dict | None = None, timeout: float = 90) -> Node:
        """A worker node: a raylet (+ object store, agents) joining the head. Started the way
        ``ray.cluster_utils.Cluster.add_node`` starts one -- a ``ray._private.node.Node`` -- but in
        its own process session, because `ray start --address` refuses to join a second node
        with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and, with it set to 1, replaces 127.0.0.1 in the
        address by the host's network IP, where the loopback-bound GCS is not listening."""
        p = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS))))
        spec = {"gcs_address": self.address, "node_ip_address": "127.0.0.1", "num_cpus": num_cpus,
                "resources": resources or {}, "node_manager_port": p["node_manager"],
                "object_manager_port": p["object_manager"], "dashboard_agent_listen_port": p["agent_http"],
                "metrics_agent_port": p["agent_grpc"], "runtime_env_agent_port": p["runtime_env"],
                "metrics_export_port": p["metrics"], "min_worker_port": 0, "max_worker_port": 0,
                "object_store_memory": 100 * 1024 * 1024,
                # its own temp dir, as on its own machine: sharing the head's, the nodes' runtime-env
                # agents unpack the same job package into one folder, one under the other's feet;
                # and so its own log monitor, which sends its workers' output to their drivers
                "temp_dir": str(self.root / name), "include_log_monitor": True}
        node = self._start(name, [sys.executable, "-c", WORKER_NODE, json.dumps(spec)], self._node_env())
        deadline = time.time() + timeout
        while True:  # its own id alive in the GCS (a count could hide a node that died meanwhile)
            started = [ln.split()[-1] for ln in node.log.read_text().splitlines() if ln.startswith("node started")]
            if started and started[0] in self.alive_ids():
                self.names[started[0]] = name
                return node
            if node.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"node {name} did not join:\n{node.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def alive_ids(self) -> set[str]:
        """Ids of the nodes the GCS holds alive (through the dashboard's API, with the token)."""
        code, body = http(f"{self.dashboard}/nodes?view=summary", self.token)
        if code != 200:
            return set()
        summary = json.loads(body)["data"]["summary"]
        return {n["raylet"]["nodeId"] for n in summary if n.get("raylet", {}).get("state") == "ALIVE"}

    def state(self, what: str, **filters: str) -> list[dict]:
        """Ray's State API (``/api/v0/<what>``: actors, nodes, ...) through the dashboard."""
        query = {"detail": "true", "limit": "1000"}
        if filters:
            query |= {"filter_keys": list(filters), "filter_predicates": ["="] * len(filters),
                      "filter_values": list(filters.values())}
        code, body = http(f"{self.dashboard}/api/v0/{what}?{urllib.parse.urlencode(query, doseq=True)}", self.token)
        if code != 200:
            raise RuntimeError(f"state API {what}: {code} {body[:500]}")
        return json.loads(body)["data"]["result"]["result"]

    def placed(self, class_prefix: str) -> list[str]:
        """Names of the nodes where the live actors whose class starts with ``class_prefix`` run
        (``head`` for any node not added by :meth:`add_node`)."""
        return sorted(self.names.get(a["node_id"], "head") for a in self.state("actors", state="ALIVE")
                      if a["class_name"].startswith(class_prefix))

    def job_status(self, submission_id: str) -> str:
        """A job's status through the Jobs API (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        code, body = http(f"{self.dashboard}/api/jobs/{submission_id}", self.token)
        if code != 200:
            raise RuntimeError(f"job {submission_id}: {code} {body[:500]}")
        return json.loads(body)["status"]

    def submit(self, submission_id: str, *command: str, env_vars: dict[str, str], wait: bool = False,
               timeout: float = 180) -> subprocess.CompletedProcess:
        """`ray job submit` of ``python -m training.cli <command>`` with the project as the job's
        working_dir and ``env_vars`` in its environment (and the client's); ``wait``: until it ends."""
        runtime_env = {"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": env_vars}
        return self.cli("ray", "job", "submit", "--address", self.dashboard, *([] if wait else ["--no-wait"]),
                        "--submission-id", submission_id, "--runtime-env-json", json.dumps(runtime_env), "--",
                        sys.executable, "-m", "training.cli", *command, env=self.env(**env_vars), timeout=timeout)

    def wait_job(self, submission_id: str, timeout: float) -> str:
        """The job's status once it is no longer PENDING or RUNNING (or when ``timeout`` is up)."""
        deadline = time.time() + timeout
        while (status := self.job_status(submission_id)) in ("PENDING", "RUNNING") and time.time() < deadline:
            time.sleep(1)
        return status

    def job_logs(self, submission_id: str) -> str:
        out = self.cli("ray", "job", "logs", submission_id, "--address", self.dashboard, env=self.env())
        return out.stdout + out.stderr

    def cli(self, *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
        """``ray <args>`` / ``serve <args>`` as a user runs them against this cluster's dashboard."""
        exe = str(Path(RAY).with_name(args[0]))
        return subprocess.run([exe, *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def restart_gcs(self, down_s: float = 5.0, timeout: float = 60) -> float:
        """Kill the head's GCS (SIGKILL), leave it down ``down_s`` seconds, start it again (same
        port; its tables come back from Redis); returns the seconds until the dashboard's API
        answers again. Needs a head started with ``gcs_redis``."""
        head = self.nodes["head"]
        if head.proc.stdin is None:
            raise RuntimeError("restart_gcs needs start_head(gcs_redis=...)")
        for command, done in (("kill-gcs", "gcs killed"), ("start-gcs", "gcs started")):
            if command == "start-gcs":
                time.sleep(down_s)
            seen = head.log.read_text().count(done)
            head.proc.stdin.write(command + "\n")
            head.proc.stdin.flush()
            deadline = time.time() + timeout
            while head.log.read_text().count(done) == seen:
                if head.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{command} failed:\n{head.log.read_text()[-3000:]}")
                time.sleep(0.2)
        started = time.time()
        while not self.alive_ids():
            if time.time() - started > timeout:
                raise RuntimeError("the GCS did not come back")
            time.sleep(0.5)
        return time.time() - started

    def kill(self, name: str) -> None:
        """Lose the node: every process of it at once (SIGKILL, :func:`kill_tree`)."""
        kill_tree(self.nodes.pop(name).proc)

    def stop(self) -> None:
        """Every node killed outright at once (a test cluster keeps nothing)."""
        try:
            leaders = [n.proc for n in self.nodes.values()]
            self.nodes.clear()
            kill_tree(*leaders)
        finally:
            if not os.environ.get("RAYCART_KEEP_NODES"):  # keep the logs to read after a failure
                shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def head_and_two_nodes(work: Path, node_env: dict[str, str], cpus: float, gcs_ft: bool = False,
                       head_env: dict[str, str] | None = None):
    """A head without CPUs (job drivers, Ray's and Serve's own actors) and worker nodes ``a`` and
    ``b`` with ``cpus`` each; ``gcs_ft``: the head's GCS keeps its tables in a Redis server started
    here (in ``work``). Everything is stopped on exit."""
    from serving.state.redis_server import LocalRedis

    gcs_redis = LocalRedis(work / "gcs-redis").start() if gcs_ft else None
    nodes = RayNodes(node_env=node_env)
    try:
        nodes.start_head(num_cpus=0, gcs_redis=f"127.0.0.1:{gcs_redis.port}" if gcs_redis else None, env=head_env)
        nodes.add_node("a", num_cpus=cpus)
        nodes.add_node("b", num_cpus=cpus)
        yield nodes
    finally:
        nodes.stop()
        if gcs_redis:
            gcs_redis.stop()

