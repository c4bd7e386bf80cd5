"""Every pod in cluster/ runs hardened, with the least it needs (issue 25, 4e):

- every container -- Ray heads and workers, init containers, KubeRay's autoscaler sidecar, the
  RayJobs' submitter pods, the user-state Redis -- runs as a numeric non-root user, without privilege
  escalation or capabilities, under the RuntimeDefault seccomp profile, with CPU and memory requests
  and limits;
- no ``hostPath`` volume unless the Serve app's ``feedback_ack: local`` needs a node-local ``wal_dir``;
- S3 credentials per role: the RayService reads ``raycart-s3-serve``, the RayJobs ``raycart-s3-train``;
- the user-state Redis's password comes from a Secret through ``secretKeyRef``, never the Serve
  config; that Redis is not the GCS fault-tolerance one, and only the serving pods reach it.
The helpers and the schema validation of the same files are in test_cluster_security.py.
"""

from __future__ import annotations

import copy
import re
from urllib.parse import urlsplit

import yaml
from test_cluster_security import (
    CLUSTER,
    _mount_of,
    _selects,
    cluster_spec,
    documents,
    manifest,
    network_policies,
    open_to_all,
    pod_templates,
    ray_resources,
    serve_configs,
)

from serving.core.schemas import AppArgs

RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}
S3_SECRET = {"RayService": "raycart-s3-serve", "RayJob": "raycart-s3-train"}  # cluster/README.md documents both


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """``(where, pod spec)`` of every pod a document makes: a Ray cluster's head and worker groups,
    a RayJob's submitter, a StatefulSet's pods."""
    if doc.get("kind") in S3_SECRET:
        spec = cluster_spec(doc)
        found = [(f"template {i}", t["spec"]) for i, t in enumerate(pod_templates(spec))]
        if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
            found.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
        return found
    if doc.get("kind") == "StatefulSet":
        return [("template", doc["spec"]["template"]["spec"])]
    return []


def containers(doc: dict) -> list[tuple[str, dict, dict]]:
    """``(where, container, pod spec)`` for every container of a document, KubeRay's autoscaler
    sidecar included (configured by ``autoscalerOptions``, in the head pod)."""
    found = [(f"{where}/{c['name']}", c, pod) for where, pod in pod_specs(doc)
             for c in pod.get("initContainers", []) + pod["containers"]]
    if doc.get("kind") in S3_SECRET and cluster_spec(doc).get("enableInTreeAutoscaling"):
        head = cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
        found.append(("autoscaler", cluster_spec(doc).get("autoscalerOptions") or {}, head))
    return found


def all_containers() -> list[tuple[str, dict, dict]]:
    found = [(f"{name} {doc['metadata']['name']} {where}", c, pod) for name, doc in documents()
             for where, c, pod in containers(doc)]
    assert {w.split()[1] for w, _, _ in found} >= {"raycart", "raycart-train", "raycart-tune", "raycart-retrain",
                                                  "raycart-state-redis"}
    return found


# --- securityContext -------------------------------------------------------------------------------

def security_problems(container: dict, pod: dict) -> list[str]:
    context = container.get("securityContext") or {}
    problems = [f"securityContext.{key} must be {value}" for key, value in RESTRICTED.items()
                if context.get(key) != value]
    if context.get("privileged"):
        problems.append("privileged")
    # runAsNonRoot with an image whose USER is a name (the Ray image's `ray`) fails at start: the
    # kubelet can verify a numeric uid only
    user = context.get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
    if not isinstance(user, int) or user == 0:
        problems.append(f"runAsUser {user!r}: a numeric non-root uid (container or pod)")
    return problems


def test_every_container_runs_as_non_root_without_privileges():
    for where, container, pod in all_containers():
        assert security_problems(container, pod) == [], where


def test_the_security_check_sees_a_weakened_container():
    (_, container, pod), = [c for c in all_containers() if c[0].endswith("ray-worker") and "raycart-train" in c[0]]
    assert security_problems(container, pod) == []
    for key, bad in [("runAsNonRoot", None), ("allowPrivilegeEscalation", True),
                     ("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}), ("seccompProfile", {"type": "Unconfined"})]:
        weak = copy.deepcopy(container)
        weak["securityContext"][key] = bad
        assert security_problems(weak, pod) == [f"securityContext.{key} must be {RESTRICTED[key]}"], key
    assert security_problems(container, {"securityContext": {"runAsUser": 0}}) == [
        "runAsUser 0: a numeric non-root uid (container or pod)"]
    assert security_problems({"name": "bare"}, {})  # today's manifests: no securityContext at all


# --- resources -------------------------------------------------------------------------------------

_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    """A Kubernetes resource quantity (``500m``, ``2``, ``16Gi``) as a number."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * (_SUFFIX[suffix] if suffix else 1)


def resource_problems(container: dict) -> list[str]:
    resources = container.get("resources") or {}
    problems = [f"resources.{kind}.{name} missing" for kind in ("requests", "limits") for name in ("cpu", "memory")
                if name not in resources.get(kind, {})]
    for name, request in resources.get("requests", {}).items():
        if name in resources.get("limits", {}) and quantity(request) > quantity(resources["limits"][name]):
            problems.append(f"resources.requests.{name} above its limit")
    return problems


def test_every_container_has_requests_and_limits():
    assert quantity("500m") == 0.5 and quantity("16Gi") == 16 * 2**30 and quantity(8) == 8
    for where, container, _ in all_containers():
        assert resource_problems(container) == [], where
    assert resource_problems({"resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}) == [
        "resources.requests.cpu missing", "resources.requests.memory missing"]  # a head of today's RayJobs
    assert resource_problems({"resources": {"requests": {"cpu": "3", "memory": "1Gi"},
                                            "limits": {"cpu": "2", "memory": "1Gi"}}}) == [
        "resources.requests.cpu above its limit"]


def test_every_rayjob_declares_its_submitter_pod():
    """KubeRay's default submitter has resources but no securityContext: each RayJob declares its own,
    a Kubernetes Job's pod (restartPolicy Never), without S3 credentials (it only submits)."""
    jobs = [(name, doc) for name, doc in ray_resources() if doc["kind"] == "RayJob"]
    assert len(jobs) == 3
    for name, job in jobs:
        submitter = job["spec"].get("submitterPodTemplate")
        assert submitter, f"{name}: no submitterPodTemplate"
        assert submitter["spec"].get("restartPolicy") == "Never", name
        (container,) = submitter["spec"]["containers"]
        assert not container.get("command"), f"{name}: KubeRay writes the `ray job submit` command"
        assert not secrets_of(container), f"{name}: the submitter needs no Secret of its own"


# --- hostPath --------------------------------------------------------------------------------------

def hostpath_problems(doc: dict) -> list[str]:
    """hostPath volumes are allowed only in a RayService whose app acknowledges feedback on the node
    (``feedback_ack: local``), and then ``wal_dir`` must be on one in every pod that may run an
    Ingress replica. With ``shared`` the WAL is in S3: no node volume at all."""
    local_wal = []
    if doc.get("kind") == "RayService":
        apps = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
        local_wal = [args.wal_dir for args in (AppArgs(**a["args"]) for a in apps) if args.feedback_ack == "local"]
    problems = [f"{where}: hostPath volume {v['name']} (feedback_ack does not need one)"
                for where, pod in pod_specs(doc) for v in pod.get("volumes", []) if "hostPath" in v and not local_wal]
    if local_wal:
        for template in serving_templates(doc):
            for wal_dir in local_wal:
                try:
                    _, volume = _mount_of(template, wal_dir)
                except AssertionError:
                    volume = {}
                if "hostPath" not in volume:
                    problems.append(f"feedback_ack local: wal_dir {wal_dir} is not on a node volume")
    return problems


def test_no_hostpath_volume_unless_the_feedback_ack_needs_one():
    for name, doc in documents():
        assert hostpath_problems(doc) == [], name
    service = manifest("rayservice.yaml")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["feedback_ack"] == "shared"

    def with_args(doc: dict, **changes) -> dict:
        doc = copy.deepcopy(doc)
        config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        config["applications"][0]["args"].update(changes)
        doc["spec"]["serveConfigV2"] = yaml.safe_dump(config)
        return doc

    def with_node_volume(doc: dict) -> dict:  # today's (HEAD) shape: a hostPath WAL on every Ray pod
        for template in pod_templates(doc["spec"]["rayClusterConfig"]):
            template["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/var/lib/raycart"}})
            template["spec"]["containers"][0]["volumeMounts"].append({"name": "node", "mountPath": "/var/lib/raycart"})
        return doc

    assert len(hostpath_problems(with_node_volume(copy.deepcopy(service)))) == 2  # shared + hostPath: refused
    local = with_args(service, feedback_ack="local", wal_dir="/var/lib/raycart/wal")
    assert hostpath_problems(local) == ["feedback_ack local: wal_dir /var/lib/raycart/wal is not on a node volume"]
    assert hostpath_problems(with_node_volume(local)) == []


# --- S3 credentials per role -----------------------------------------------------------------------

def secrets_of(container: dict) -> set[str]:
    """The Secrets a container's environment comes from (envFrom and env valueFrom)."""
    names = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    return names | {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})}


def test_s3_credentials_per_role():
    """The serving pods hold the serving role's credentials (read models and data, write the app's
    online data: feedback, policy state, runtime items), the jobs the training role's (read data
    and feedback, write models and runs); never the other's, never one shared Secret."""
    readme = (CLUSTER / "README.md").read_text()
    for name, doc in ray_resources():
        role = S3_SECRET[doc["kind"]]
        for template in pod_templates(cluster_spec(doc)):
            for container in template["spec"]["containers"]:
                s3 = {s for s in secrets_of(container) if s.startswith("raycart-s3")}
                assert s3 == {role}, (name, container["name"], s3)
    for role in S3_SECRET.values():
        assert f"`{role}`" in readme, f"cluster/README.md must document the bucket policy of {role}"
    assert len(set(S3_SECRET.values())) == 2


# --- the user-state Redis --------------------------------------------------------------------------

def serving_templates(doc: dict) -> list[dict]:
    """The RayService's pod templates that may run Serve replicas (an Ingress among them): every
    group whose Ray node offers CPUs (the head is started with num-cpus 0)."""
    spec = cluster_spec(doc)
    head = spec["headGroupSpec"]
    groups = ([head] if str(head.get("rayStartParams", {}).get("num-cpus")) != "0" else []) + spec.get("workerGroupSpecs", [])
    return [g["template"] for g in groups]


def _env(container: dict, name: str) -> list[dict]:
    return [e for e in container.get("env", []) if e["name"] == name]


def test_no_password_is_written_into_a_manifest():
    """Any environment variable that looks like a credential comes from a Secret, not a literal."""
    for where, container, _ in all_containers():
        for entry in container.get("env", []):
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", entry["name"]):
                assert set(entry) == {"name", "valueFrom"} and "secretKeyRef" in entry["valueFrom"], (where, entry["name"])


def test_the_user_state_redis_password_comes_from_a_secret_not_the_serve_config():
    service = manifest("rayservice.yaml")
    spec = service["spec"]["rayClusterConfig"]
    envs = set()
    for where, config in serve_configs():
        (app,) = config["applications"]
        args = AppArgs(**app["args"])
        assert args.user_state == "redis", where
        url = urlsplit(args.redis_url)
        assert url.password is None and url.username is None, f"{where}: a password in redis_url"
        assert args.redis_password_env, f"{where}: redis_password_env names the variable holding the password"
        assert [k for k in app["args"] if "pass" in k.lower()] == ["redis_password_env"], where
        envs.add((args.redis_password_env, url.hostname, url.port or 6379))
    ((variable, host, port),) = envs
    # a Redis of its own: not the GCS fault-tolerance one, nor its password or its variable
    gcs = spec["gcsFaultToleranceOptions"]
    assert host != urlsplit(gcs["redisAddress"]).hostname
    assert variable != "REDIS_PASSWORD"  # KubeRay sets that one on the head for the GCS's Redis
    gcs_secret = gcs["redisPassword"]["valueFrom"]["secretKeyRef"]

    serving = serving_templates(service)
    assert serving
    refs = set()
    for template in pod_templates(spec):
        (container,) = template["spec"]["containers"]
        entries = _env(container, variable)
        if any(template is t for t in serving):
            (entry,) = entries
            assert set(entry) == {"name", "valueFrom"}, "a secretKeyRef, never a literal value"
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] != gcs_secret["name"]
            refs.add((ref["name"], ref["key"]))
        else:
            assert entries == [], "a pod that runs no Ingress gets no Redis password"
    ((secret, key),) = refs

    # the Redis itself: the Service of that host selects a StatefulSet that requires the same password
    (svc,) = [d for _, d in documents() if d.get("kind") == "Service" and d["metadata"]["name"] == host]
    assert port in [p["port"] for p in svc["spec"]["ports"]]
    (redis,) = [d for _, d in documents() if d.get("kind") == "StatefulSet"
                and _selects({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
    assert _selects(redis["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    argv = container.get("command", []) + container.get("args", [])
    password_arg = argv[argv.index("--requirepass") + 1]
    (name,) = re.fullmatch(r"\$\((\w+)\)", password_arg).groups()
    (entry,) = _env(container, name)
    assert entry["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"  # the state survives a restart


def test_only_the_serving_pods_reach_the_user_state_redis():
    (redis,) = [d for _, d in documents() if d.get("kind") == "StatefulSet"]
    labels = redis["spec"]["template"]["metadata"]["labels"]
    mine = [p for p in network_policies() if _selects(p["spec"]["podSelector"], labels)]
    assert mine, "no NetworkPolicy selects the user-state Redis"
    assert any("Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for p in mine)
    rules = [r for p in mine for r in p["spec"].get("ingress", [])]
    assert rules and all(open_to_all(p) == [] for p in mine)
    for rule in rules:
        assert rule["ports"] == [{"protocol": "TCP", "port": 6379}], rule
        assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"]), rule  # this namespace's pods
    admitted = [(name, i) for name, doc in ray_resources()
                for i, template in enumerate(pod_templates(cluster_spec(doc)))
                if any(_selects(peer["podSelector"], template["metadata"].get("labels", {}))
                       for rule in rules for peer in rule["from"])]
    service = manifest("rayservice.yaml")
    serving = [i for i, t in enumerate(pod_templates(service["spec"]["rayClusterConfig"]))
               if any(t == s for s in serving_templates(service))]
    assert admitted == [("rayservice.yaml", i) for i in serving]
