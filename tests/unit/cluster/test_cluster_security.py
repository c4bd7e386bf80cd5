"""The cluster manifests are safe to expose, and well-formed for the API server that will read them.

- Every file under cluster/ is validated: the KubeRay custom resources against KubeRay's own CRD
  schemas (../shared/kuberay/crds, the v1 ``openAPIV3Schema``), the NetworkPolicies against the
  ingress-rule and label-selector schemas those CRDs embed, the user-state Redis's Service and
  StatefulSet against the Service, PodTemplateSpec and claim-template schemas they embed, every
  Serve config with Ray Serve's own ``ServeDeploySchema``. As the API server does, schema defaults are filled in before validating;
  ``x-kubernetes-int-or-string`` is integer-or-string and other ``x-kubernetes-*`` keys are ignored.
- Kubernetes *prunes* fields a structural schema does not declare -- a misspelt ``rayStartParam``
  is silently dropped, not refused -- and Serve ignores unknown keys too. So validation is strict
  here: a property the schema does not declare fails. The negative tests prove the validator fails.
- Ray token auth is on in every Ray cluster; the NetworkPolicies cover every Ray cluster, admit Ray's
  ports only from the cluster itself, an admin namespace (and a RayJob's submitter), and only the
  Serve port 8000 from anywhere; the API keys are mounted where the app looks (the pods' hardening,
  hostPath, S3 roles and the user-state Redis: test_cluster_hardening.py).
No Ray cluster and no Kubernetes: pure Python.
"""

from __future__ import annotations

import copy
import gzip
import os
import posixpath
import typing
from functools import cache
from pathlib import Path

import jsonschema
import pydantic
import pytest
import yaml

from serving.core.schemas import AppArgs

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "cluster"
KUBERAY = ROOT / ".." / "shared" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz",
             "RayService": "ray.io_rayservices.yaml.gz"}
CLUSTER_LABEL = "raycart.io/ray-cluster"  # on every Ray pod template; the NetworkPolicies select on it
ADMIN_NAMESPACE = {"raycart.io/ray-admin": "true"}
SERVE_PORT = 8000


# --- Kubernetes CRD schemas as JSON schema ---------------------------------------------------------

def _kuberay() -> Path:
    if not KUBERAY.is_dir():
        message = f"KubeRay CRDs not found at {KUBERAY.resolve()} (../shared/kuberay)"
        if os.environ.get("CI"):
            pytest.fail(message)  # as for ../shared/data: CI never passes by skipping
        pytest.skip(message)
    return KUBERAY


@cache
def crd_schema(kind: str) -> dict:
    """``spec.versions[name=v1].schema.openAPIV3Schema`` of KubeRay's CRD for ``kind``."""
    path = _kuberay() / "crds" / CRD_FILES[kind]
    with gzip.open(path, "rt") as f:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: libyaml when present
        (crd,) = [d for d in yaml.load_all(f, Loader=loader) if d and d.get("kind") == "CustomResourceDefinition"]
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def to_json_schema(schema: dict, strict: bool) -> dict:
    """A Kubernetes structural schema as plain JSON schema (draft 4, as OpenAPI v3.0's).

    ``x-kubernetes-int-or-string: true`` -> integer or string; ``nullable: true`` -> null allowed;
    other ``x-kubernetes-*`` keys are dropped. ``strict``: an object that declares ``properties``
    but neither ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` refuses any
    other property (the API server would prune it silently)."""
    out: dict = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub, strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value, strict)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub, strict) for sub in value]
        else:  # type, required, enum, pattern, format, default, min/max...: as they are
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (strict and "properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def fill_defaults(doc, schema: dict):
    """The API server fills defaults before it validates: each absent property with a ``default``
    gets it, recursively inside the objects and arrays present. Returns a defaulted copy."""
    doc = copy.deepcopy(doc)
    _fill(doc, schema)
    return doc


def _fill(doc, schema: dict) -> None:
    if isinstance(doc, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in doc and "default" in sub:
                doc[name] = copy.deepcopy(sub["default"])
            if name in doc:
                _fill(doc[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in doc.items():
                if name not in schema.get("properties", {}):
                    _fill(value, extra)
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for item in doc:
            _fill(item, schema["items"])


def schema_errors(doc, schema: dict, strict: bool = True) -> list[str]:
    """Every violation of the (Kubernetes) ``schema`` by ``doc`` once defaulted, as
    ``path: message`` lines; empty when valid."""
    validator = jsonschema.Draft4Validator(to_json_schema(schema, strict))
    errors = validator.iter_errors(fill_defaults(doc, schema))
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def raycluster_spec_schema() -> dict:
    return crd_schema("RayCluster")["properties"]["spec"]


def network_policy_schema() -> dict:
    """networking.k8s.io/v1 NetworkPolicy (ingress side), built from the NetworkPolicyIngressRule,
    NetworkPolicyEgressRule and LabelSelector schemas that KubeRay's RayCluster CRD embeds
    (``spec.networkPolicy``), so the rules are checked against Kubernetes' own field definitions."""
    head = raycluster_spec_schema()["properties"]["networkPolicy"]["properties"]["head"]["properties"]
    ingress_rule, egress_rule = head["ingressRules"]["items"], head["egressRules"]["items"]
    label_selector = ingress_rule["properties"]["from"]["items"]["properties"]["podSelector"]
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["networking.k8s.io/v1"]},
            "kind": {"type": "string", "enum": ["NetworkPolicy"]},
            "metadata": {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object",
                                                        "additionalProperties": {"type": "string"}}}},
            "spec": {"type": "object", "required": ["podSelector"],
                     "properties": {"podSelector": label_selector,
                                    "policyTypes": {"type": "array",
                                                    "items": {"type": "string", "enum": ["Ingress", "Egress"]}},
                                    "ingress": {"type": "array", "items": ingress_rule},
                                    "egress": {"type": "array", "items": egress_rule}}},
        },
    }


def _object_meta() -> dict:
    return crd_schema("RayService")["properties"]["spec"]["properties"]["serveService"]["properties"]["metadata"]


def service_schema() -> dict:
    """v1 Service: the full Service schema KubeRay's RayService CRD embeds (``spec.serveService``)."""
    service = copy.deepcopy(crd_schema("RayService")["properties"]["spec"]["properties"]["serveService"])
    service["properties"].pop("status")
    service["required"] = ["apiVersion", "kind", "metadata", "spec"]
    service["properties"]["apiVersion"] = {"type": "string", "enum": ["v1"]}
    service["properties"]["kind"] = {"type": "string", "enum": ["Service"]}
    return service


def stateful_set_schema() -> dict:
    """apps/v1 StatefulSet: its pod template is the PodTemplateSpec schema of the RayCluster CRD
    (``headGroupSpec.template``), its volume claim templates the PersistentVolumeClaimTemplate of
    the ephemeral-volume schema there; the StatefulSetSpec fields around them are written out here
    from the Kubernetes API reference (the fields these manifests may use)."""
    template = raycluster_spec_schema()["properties"]["headGroupSpec"]["properties"]["template"]
    volume = template["properties"]["spec"]["properties"]["volumes"]["items"]
    claim = volume["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]
    label_selector = raycluster_spec_schema()["properties"]["networkPolicy"]["properties"]["head"]["properties"][
        "ingressRules"]["items"]["properties"]["from"]["items"]["properties"]["podSelector"]
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["apps/v1"]},
            "kind": {"type": "string", "enum": ["StatefulSet"]},
            "metadata": _object_meta(),
            "spec": {"type": "object", "required": ["selector", "template"],
                     "properties": {"replicas": {"type": "integer", "minimum": 0},
                                    "selector": label_selector,
                                    "serviceName": {"type": "string"},
                                    "template": template,
                                    "volumeClaimTemplates": {"type": "array", "items": claim},
                                    "podManagementPolicy": {"type": "string", "enum": ["OrderedReady", "Parallel"]},
                                    "minReadySeconds": {"type": "integer", "minimum": 0},
                                    "revisionHistoryLimit": {"type": "integer", "minimum": 0}}},
        },
    }


# --- Ray Serve configs -----------------------------------------------------------------------------

def _models_in(annotation) -> list[type[pydantic.BaseModel]]:
    """The pydantic models an annotation admits (Optional, Union, List of them; not dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is dict:  # also typing.Dict
        return []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def undeclared_keys(models: list[type[pydantic.BaseModel]], data, path: str = "") -> list[str]:
    """Keys of ``data`` that none of ``models`` declares, recursively through nested models and
    lists of them. Serve's schemas ignore unknown keys, so a misspelt option would vanish silently."""
    if isinstance(data, list):
        return sorted({k for i, item in enumerate(data) for k in undeclared_keys(models, item, f"{path}[{i}]")})
    if not isinstance(data, dict) or not models:
        return []
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        owners = [m for m in models if key in m.model_fields]
        if not owners:
            found.append(where)
        else:
            found += undeclared_keys([s for m in owners for s in _models_in(m.model_fields[key].annotation)], value, where)
    return sorted(found)


def serve_config_errors(config: dict) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except pydantic.ValidationError as e:
        return [str(e)]
    return [f"{key}: not a Serve option" for key in undeclared_keys([ServeDeploySchema], config)]


# --- the manifests ---------------------------------------------------------------------------------

def documents() -> list[tuple[str, dict]]:
    """``(file name, document)`` for every YAML document under cluster/."""
    found = []
    for path in sorted(CLUSTER.glob("*.y*ml")):
        found += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert found
    return found


def ray_resources() -> list[tuple[str, dict]]:
    return [(f, d) for f, d in documents() if d.get("kind") in CRD_FILES]


def cluster_spec(resource: dict) -> dict:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    spec = resource["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[resource["kind"]]()


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def serve_configs() -> list[tuple[str, dict]]:
    configs = [(f, d) for f, d in documents() if "kind" not in d and "applications" in d]
    configs += [(f"{f} serveConfigV2", yaml.safe_load(d["spec"]["serveConfigV2"]))
                for f, d in ray_resources() if d["kind"] == "RayService"]
    return configs


def network_policies() -> list[dict]:
    return [d for _, d in documents() if d.get("kind") == "NetworkPolicy"]


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# --- the validator itself --------------------------------------------------------------------------

def test_the_validator_speaks_kubernetes_schemas():
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "size": {"x-kubernetes-int-or-string": True},  # the extension alone
        "mode": {"type": "string", "default": "token", "enum": ["token", "disabled"]},
        "opts": {"type": "object", "properties": {"level": {"type": "integer", "default": 3}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "maybe": {"type": "string", "nullable": True},
    }, "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}
    assert schema_errors({"port": 8000, "size": "1Gi", "opts": {}, "free": {"b": 1}, "map": {"x": "y"},
                          "maybe": None}, schema) == []
    assert fill_defaults({"opts": {}}, schema) == {"mode": "token", "opts": {"level": 3}}
    assert fill_defaults({}, schema) == {"mode": "token"}  # an absent object gets no inner defaults
    assert schema_errors({"port": 1.5}, schema) and schema_errors({"size": [1]}, schema)
    assert schema_errors({"opts": {"level": "high"}}, schema)
    # an undeclared property: refused in strict mode only (the API server would prune it)
    assert schema_errors({"opts": {"levl": 3}}, schema) == ["opts: Additional properties are not allowed ('levl' was unexpected)"]
    assert schema_errors({"opts": {"levl": 3}}, schema, strict=False) == []


def test_a_broken_manifest_fails_validation():
    job, spec_schema = manifest("rayjob-train.yaml"), raycluster_spec_schema()
    assert schema_errors(job, crd_schema("RayJob")) == []

    misspelt = copy.deepcopy(job)
    head = misspelt["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert any("'rayStartParam' was unexpected" in e for e in schema_errors(misspelt, crd_schema("RayJob")))
    assert any("'rayStartParam' was unexpected" in e for e in schema_errors(misspelt["spec"]["rayClusterSpec"], spec_schema))
    assert schema_errors(misspelt, crd_schema("RayJob"), strict=False) == []  # pruned, not refused, by Kubernetes

    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    assert any("'four' is not of type 'integer'" in e for e in schema_errors(wrong_type, crd_schema("RayJob"), strict=False))

    bad_mode = copy.deepcopy(job)
    bad_mode["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    assert any("authOptions/mode" in e for e in schema_errors(bad_mode, crd_schema("RayJob"), strict=False))

    misplaced = copy.deepcopy(job)  # authOptions belongs to the cluster spec, not to the RayJob's
    misplaced["spec"]["authOptions"] = misplaced["spec"]["rayClusterSpec"].pop("authOptions")
    assert any("'authOptions' was unexpected" in e for e in schema_errors(misplaced, crd_schema("RayJob")))

    service = manifest("rayservice.yaml")
    no_head = copy.deepcopy(service)
    del no_head["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert any("'headGroupSpec' is a required property" in e
               for e in schema_errors(no_head["spec"]["rayClusterConfig"], spec_schema, strict=False))

    service_doc, stateful_set = yaml.safe_load_all((CLUSTER / "redis-user-state.yaml").read_text())
    assert schema_errors(stateful_set, stateful_set_schema()) == [] and schema_errors(service_doc, service_schema()) == []
    misspelt = copy.deepcopy(stateful_set)
    misspelt["spec"]["serviceNam"] = misspelt["spec"].pop("serviceName")
    misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    misspelt["spec"]["volumeClaimTemplates"][0]["spec"]["accesModes"] = ["ReadWriteOnce"]
    assert {e.split(": ")[0] for e in schema_errors(misspelt, stateful_set_schema())} == {
        "spec", "spec/template/spec/containers/0/securityContext", "spec/volumeClaimTemplates/0/spec"}
    wrong_type = copy.deepcopy(service_doc)
    wrong_type["spec"]["ports"][0]["port"] = "redis"
    assert schema_errors(wrong_type, service_schema()) == ["spec/ports/0/port: 'redis' is not of type 'integer'"]

    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config_errors(config) == []
    misspelt_option = copy.deepcopy(config)
    misspelt_option["http_options"]["request_timeout"] = misspelt_option["http_options"].pop("request_timeout_s")
    assert serve_config_errors(misspelt_option) == ["http_options.request_timeout: not a Serve option"]
    misspelt_option = copy.deepcopy(config)
    misspelt_option["applications"][0]["deployments"][0]["autoscaling_config"]["max_replica"] = 4
    assert serve_config_errors(misspelt_option) == [
        "applications[0].deployments[0].autoscaling_config.max_replica: not a Serve option"]
    wrong_type = copy.deepcopy(config)
    wrong_type["http_options"]["request_timeout_s"] = "ten"
    assert serve_config_errors(wrong_type)


# --- every manifest validates ----------------------------------------------------------------------

def test_every_manifest_validates():
    """Each document under cluster/ is of a known kind and valid for its schema (strict)."""
    seen = set()
    for name, doc in documents():
        kind = doc.get("kind")
        if kind in CRD_FILES:
            assert doc["apiVersion"] == "ray.io/v1", name
            assert schema_errors(doc, crd_schema(kind)) == [], f"{name}: {kind} against its CRD"
            # the embedded cluster spec against the RayCluster CRD itself
            assert schema_errors(cluster_spec(doc), raycluster_spec_schema()) == [], f"{name}: RayCluster spec"
        elif kind == "NetworkPolicy":
            assert schema_errors(doc, network_policy_schema()) == [], f"{name}: {doc['metadata']['name']}"
        elif kind == "Service":
            assert schema_errors(doc, service_schema()) == [], f"{name}: {doc['metadata']['name']}"
        elif kind == "StatefulSet":
            assert schema_errors(doc, stateful_set_schema()) == [], f"{name}: {doc['metadata']['name']}"
        elif kind is None and "applications" in doc:
            assert serve_config_errors(doc) == [], name
        else:
            pytest.fail(f"{name}: a {kind or 'kind-less'} document this test does not know how to validate")
        seen.add(name)
    assert {"rayservice.yaml", "rayjob-train.yaml", "rayjob-tune.yaml", "serve.yaml", "network-policy.yaml",
            "redis-user-state.yaml"} <= seen


def test_every_serve_config_validates_and_the_rayservice_embeds_serve_yaml():
    configs = dict(serve_configs())
    assert set(configs) == {"serve.yaml", "rayservice.yaml serveConfigV2"}
    for name, config in configs.items():
        assert serve_config_errors(config) == [], name
        app_timeout = AppArgs(**config["applications"][0]["args"]).request_timeout_s
        # the proxy's deadline comes after the app's own (which answers 504 with a message)
        assert config["http_options"]["request_timeout_s"] > app_timeout, name
    # the whole config, not only the applications: http_options too
    assert configs["rayservice.yaml serveConfigV2"] == configs["serve.yaml"]


# --- security --------------------------------------------------------------------------------------

def test_token_auth_is_on_in_every_ray_cluster():
    resources = ray_resources()
    assert {d["kind"] for _, d in resources} >= {"RayService", "RayJob"}
    for name, doc in resources:
        spec = cluster_spec(doc)
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{name}: authOptions.mode must be token"
        assert auth.get("secretName"), f"{name}: the token comes from a Secret (authOptions.secretName)"
        assert not auth.get("enableK8sTokenAuth"), f"{name}: K8s token auth is for standalone RayClusters only"
        major, minor = map(int, spec["rayVersion"].split(".")[:2])
        assert (major, minor) >= (2, 52), f"{name}: KubeRay needs Ray >= 2.52 for token auth"
        for template in pod_templates(spec):  # KubeRay keeps a container's own RAY_AUTH_* env
            for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
                names = {e["name"] for e in container.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, (name, container["name"])


def _selects(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "matchLabels only, in these manifests"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def _same_cluster_peer(peer: dict, cluster: str) -> bool:
    return set(peer) == {"podSelector"} and peer["podSelector"] == {"matchLabels": {CLUSTER_LABEL: cluster}}


def _admin_peer(peer: dict) -> bool:
    return set(peer) == {"namespaceSelector"} and peer["namespaceSelector"] == {"matchLabels": ADMIN_NAMESPACE}


def _submitter_peer(peer: dict, job: str) -> bool:
    return set(peer) == {"podSelector"} and peer["podSelector"] == {
        "matchLabels": {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": job}}


def open_to_all(policy: dict) -> list[dict]:
    """The ``ports`` entries of ``policy``'s ingress rules that admit any source: a rule without
    ``from``, or with an ipBlock, an empty namespace selector or an empty pod selector. A rule
    without ``ports`` opens every port: ``{"port": "*"}``."""
    found = []
    for rule in policy["spec"].get("ingress", []):
        peers = rule.get("from") or []
        wide = not peers or any("ipBlock" in p or p.get("namespaceSelector") == {}
                                or ("podSelector" in p and not p["podSelector"]) for p in peers)
        if wide:
            found += rule.get("ports") or [{"port": "*"}]
    return found


def test_network_policies_cover_every_ray_cluster():
    policies = network_policies()
    assert policies, "cluster/network-policy.yaml: no NetworkPolicy"
    for name, doc in ray_resources():
        cluster = doc["metadata"]["name"]
        labels = [t.get("metadata", {}).get("labels", {}) for t in pod_templates(cluster_spec(doc))]
        assert all(lab.get(CLUSTER_LABEL) == cluster for lab in labels), f"{name}: every pod template needs {CLUSTER_LABEL}: {cluster}"
        mine = [p for p in policies if all(_selects(p["spec"]["podSelector"], lab) for lab in labels)]
        assert mine, f"{name}: no NetworkPolicy selects the pods of {cluster}"
        # a pod is isolated for ingress once one Ingress policy selects it; what is admitted is the union
        assert any("Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for p in mine)
        rules = [r for p in mine for r in p["spec"].get("ingress", [])]
        assert any(not r.get("ports") and r.get("from") and all(_same_cluster_peer(x, cluster) for x in r["from"])
                   for r in rules), f"{cluster}: its own pods must reach every Ray port"
        assert any(not r.get("ports") and r.get("from") and all(_admin_peer(x) for x in r["from"])
                   for r in rules), f"{cluster}: the admin namespaces must reach Ray's ports"
        for rule in rules:  # every other peer is one of the known ones
            for peer in rule.get("from") or []:
                assert (_same_cluster_peer(peer, cluster) or _admin_peer(peer)
                        or (doc["kind"] == "RayJob" and _submitter_peer(peer, cluster)
                            and rule.get("ports") == [{"protocol": "TCP", "port": 8265}])), (cluster, rule)
        if doc["kind"] == "RayService":
            assert [p for pol in mine for p in open_to_all(pol)] == [{"protocol": "TCP", "port": SERVE_PORT}]
        else:
            assert [p for pol in mine for p in open_to_all(pol)] == [], f"{cluster} serves nothing to the world"


def test_only_the_serve_port_is_open_to_all():
    for policy in network_policies():
        for port in open_to_all(policy):
            assert port == {"protocol": "TCP", "port": SERVE_PORT}, (policy["metadata"]["name"], port)
    # ... and the check sees a port opened too wide
    widened = copy.deepcopy(network_policies()[0])
    widened["spec"]["ingress"].append({"ports": [{"protocol": "TCP", "port": 8265}]})
    widened["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    widened["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 6379}]})
    assert {str(p["port"]) for p in open_to_all(widened)} == {"8000", "8265", "*", "6379"}


def _mount_of(template: dict, container_path: str) -> tuple[dict, dict]:
    """The (volumeMount, volume) of the Ray container that holds ``container_path``."""
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in spec["containers"][0].get("volumeMounts", [])
              if posixpath.commonpath([m["mountPath"], container_path]) == m["mountPath"].rstrip("/")]
    assert mounts, f"nothing is mounted at {container_path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, volumes[mount["name"]]


def test_the_api_keys_are_mounted_where_the_app_looks():
    service = manifest("rayservice.yaml")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    keys_file = app["args"]["api_keys_file"]
    assert keys_file == "/etc/raycart/api-keys/keys"
    for template in pod_templates(service["spec"]["rayClusterConfig"]):
        mount, volume = _mount_of(template, keys_file)
        assert mount.get("readOnly") is True
        secret = volume["secret"]
        assert secret["secretName"] == "raycart-api-keys"
        assert posixpath.join(mount["mountPath"], *[i["path"] for i in secret["items"] if i["key"] == "keys"]) == keys_file
