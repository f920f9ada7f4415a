"""What the schemas cannot see: the pieces of each overlay agree with each other and with the
runtime overlay they point at (ports, names, timeouts, hosts), and every container is locked
down and bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.deploy.manifests import (
    MCP_ENVS,
    REPO,
    RUNTIMES,
    config,
    env_vars,
    find,
    matches,
    mcp_dir,
    one,
    render,
    runtime_container,
    runtime_dir,
    tool,
)

# KServe RawDeployment's predictor Service listens on CommonDefaultHttpPort and forwards to
# the predictor container's port.
PREDICTOR_SERVICE_PORT = 80
# Read by Python, torch and huggingface_hub rather than by the runtime's settings.
LIBRARY_ENV = {"HOME", "HF_HOME", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HUB_OFFLINE"}
CONTAINERFILE = REPO / "Containerfile"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def probe_ports(container: dict) -> set[int]:
    return {
        container[probe]["httpGet"]["port"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe")
        if probe in container
    }


def seconds(haproxy_timeout: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", haproxy_timeout).groups()
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, None: 1e-3, "m": 60, "h": 3600, "d": 86400}
    return int(number) * scale[unit]


def test_mcp_ports_agree(mcp_docs):
    (container,) = pod_spec(mcp_docs)["containers"]
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert int(config(mcp_docs)["PORT"]) == port
    (service_port,) = one(mcp_docs, "Service")["spec"]["ports"]
    assert service_port["targetPort"] == port
    assert probe_ports(container) == {port}
    ingress = one(mcp_docs, "NetworkPolicy", "mcp-server-allow-ingress")["spec"]["ingress"]
    assert {p["port"] for rule in ingress for p in rule["ports"]} == {port}
    # The Route's named target port is the Service port carrying the container port.
    assert one(mcp_docs, "Route")["spec"]["port"]["targetPort"] == service_port["name"]


def test_runtime_ports_agree(env, mcp_docs, runtime_docs):
    container = runtime_container(runtime_docs)
    (port,) = [p["containerPort"] for p in container["ports"]]
    args = container["args"]
    assert int(args[args.index("--http_port") + 1]) == port
    assert args[args.index("--enable_grpc") + 1] == "false"
    assert probe_ports(container) == {port}
    runtime_spec = one(runtime_docs, "ServingRuntime")["spec"]
    assert runtime_spec["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert runtime_spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    for policy in find(runtime_docs, "NetworkPolicy"):
        if "Ingress" in policy["spec"]["policyTypes"]:
            ingress = policy["spec"]["ingress"]
            assert {p["port"] for rule in ingress for p in rule["ports"]} == {port}
    # NetworkPolicies see the pod's port after the Service translation, not the Service's 80.
    egress = one(mcp_docs, "NetworkPolicy", "mcp-server-allow-egress")["spec"]["egress"]
    to_runtime = [r for r in egress if any("podSelector" in peer for peer in r["to"])]
    assert [p["port"] for rule in to_runtime for p in rule["ports"]] == [port]


def test_runtime_url_names_the_predictor_service(env, mcp_docs, runtime_docs):
    isvc = one(runtime_docs, "InferenceService")
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    assert name == MCP_ENVS[env]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    settings = config(mcp_docs)
    url = urlsplit(settings["DIFFUSERS_RUNTIME_URL"])
    assert url.scheme == "http"
    assert url.hostname == f"{name}-predictor.{namespace}.svc.cluster.local"
    assert (url.port or 80) == PREDICTOR_SERVICE_PORT
    assert url.path in ("", "/")
    assert settings["DIFFUSERS_RUNTIME_SERVICE"] == f"{name}-predictor"
    assert settings["DIFFUSERS_RUNTIME_NAMESPACE"] == namespace
    assert settings["DEFAULT_MODEL_NAME"] == name
    # The runtime serves its one model under this name, whatever the model.
    args = runtime_container(runtime_docs)["args"]
    assert settings["DIFFUSERS_MODEL_ID"] == args[args.index("--model_name") + 1]
    assert env_vars(runtime_container(runtime_docs))["MODEL_NAME"]["value"] == "model"


def test_policies_select_the_pods_they_mean(env, mcp_docs, runtime_docs):
    mcp_labels = one(mcp_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(one(mcp_docs, "Deployment")["spec"]["selector"], mcp_labels)
    assert matches({"matchLabels": one(mcp_docs, "Service")["spec"]["selector"]}, mcp_labels)
    for policy in find(mcp_docs, "NetworkPolicy"):
        assert matches(policy["spec"]["podSelector"], mcp_labels), policy["metadata"]["name"]
    predictor = one(runtime_docs, "InferenceService")["spec"]["predictor"]
    runtime_policy = one(runtime_docs, "NetworkPolicy", "diffusers-runtime-ingress")
    assert matches(runtime_policy["spec"]["podSelector"], predictor["labels"])
    egress = one(mcp_docs, "NetworkPolicy", "mcp-server-allow-egress")["spec"]["egress"]
    (runtime_peer,) = [peer for rule in egress for peer in rule["to"] if "podSelector" in peer]
    assert matches(runtime_peer["podSelector"], predictor["labels"])
    # Both sides ask for the environment's label: a runtime pod labelled for no environment, or
    # for another, is selected by neither (tests/deploy/test_network.py shows it with nca).
    unlabelled = {"app.kubernetes.io/name": "diffusers-runtime"}
    assert not matches(runtime_peer["podSelector"], unlabelled)
    # The runtime admits this environment's MCP pods to the runtime pods labelled for it.
    admit = one(runtime_docs, "NetworkPolicy", f"diffusers-runtime-allow-mcp-server-{env}")
    assert matches(admit["spec"]["podSelector"], predictor["labels"])
    assert not matches(admit["spec"]["podSelector"], unlabelled)
    assert predictor["labels"][f"environment.diffusers-mcp.io/{env}"] == "true"
    ((from_mcp,),) = [rule["from"] for rule in admit["spec"]["ingress"]]
    assert matches(from_mcp["podSelector"], mcp_labels)
    namespace = one(mcp_docs, "Namespace")["metadata"]["name"]
    assert matches(from_mcp["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})


def test_timeouts_are_ordered(mcp_docs, runtime_docs):
    """Route timeout >= server generation timeout >= the runtime's worst case."""
    route_timeout = seconds(
        one(mcp_docs, "Route")["metadata"]["annotations"]["haproxy.router.openshift.io/timeout"]
    )
    generation_timeout = float(config(mcp_docs)["GENERATION_TIMEOUT_SECONDS"])
    isvc = one(runtime_docs, "InferenceService")
    step_seconds = float(
        isvc["metadata"]["annotations"]["diffusers-mcp.io/step-seconds-at-max-load"]
    )
    max_steps = int(env_vars(runtime_container(runtime_docs))["MAX_STEPS"]["value"])
    runtime_budget = max_steps * step_seconds
    assert route_timeout >= generation_timeout >= runtime_budget, (
        route_timeout,
        generation_timeout,
        runtime_budget,
    )
    # Serverless mode's request timeout must not cut a generation short either.
    assert isvc["spec"]["predictor"]["timeout"] >= generation_timeout


def test_route_host_is_what_the_server_accepts_and_links_to(env, mcp_docs):
    route = one(mcp_docs, "Route")
    host = route["spec"]["host"]
    assert host == f"mcp-server-mcp-server-{env}.apps.cluster.example.com"
    settings = config(mcp_docs)
    allowed = settings["ALLOWED_HOSTS"].split(",")
    assert host in allowed
    # In-cluster clients reach /mcp through the Service, whose name is then the Host header.
    service = one(mcp_docs, "Service")["metadata"]
    assert f"{service['name']}.{service['namespace']}.svc:*" in allowed
    tls = route["spec"].get("tls")
    if env == "dev":
        assert tls is None
        assert settings["PUBLIC_URL"] == f"http://{host}"
    else:
        assert tls == {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"}
        assert settings["PUBLIC_URL"] == f"https://{host}"


def _security_problems(container: dict, pod_security: dict) -> list[str]:
    context = container.get("securityContext", {})
    seccomp = context.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    expected = {
        "runAsNonRoot": context.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True,
        "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": context.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": context.get("capabilities", {}).get("drop") == ["ALL"],
        "no added capabilities": not context.get("capabilities", {}).get("add"),
        "seccomp RuntimeDefault": seccomp.get("type") == "RuntimeDefault",
        "not privileged": not context.get("privileged"),
    }
    return [f"{container['name']}: {rule}" for rule, ok in expected.items() if not ok]


def test_mcp_containers_are_locked_down(mcp_docs):
    spec = pod_spec(mcp_docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    containers = all_containers(spec)
    assert [c["name"] for c in containers] == ["wait-for-runtime", "mcp-server"]
    problems = [p for c in containers for p in _security_problems(c, spec["securityContext"])]
    assert problems == []


def test_runtime_container_is_locked_down(model_docs):
    assert _security_problems(runtime_container(model_docs), {}) == []


def test_readiness_gate_is_the_server_image_running_wait_for_runtime(mcp_docs):
    init, main = all_containers(pod_spec(mcp_docs))
    assert init["image"] == main["image"]
    assert init["command"] == ["python", "-m", "mcp_server.wait_for_runtime"]
    assert init["envFrom"] == main["envFrom"]


def _bounded(container: dict) -> bool:
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    return {"cpu", "memory"} <= limits.keys() and {"cpu", "memory"} <= requests.keys()


def test_every_container_has_requests_and_limits(mcp_docs, model_docs):
    containers = [*all_containers(pod_spec(mcp_docs)), runtime_container(model_docs)]
    assert [c["name"] for c in containers if not _bounded(c)] == []


@pytest.mark.parametrize(
    ("overlay", "requests", "limits"),
    [
        ("dev", {"cpu": "50m", "memory": "128Mi"}, {"cpu": "250m", "memory": "512Mi"}),
        ("production", {"cpu": "200m", "memory": "512Mi"}, {"cpu": "1000m", "memory": "2Gi"}),
    ],
)
def test_mcp_sizing(overlay, requests, limits):
    (container,) = pod_spec(render(mcp_dir(overlay)))["containers"]
    assert container["resources"] == {"requests": requests, "limits": limits}


def test_runtime_sizing(model_docs):
    isvc = one(model_docs, "InferenceService")
    resources = runtime_container(model_docs)["resources"]
    if isvc["metadata"]["name"] == "tiny-sd":
        assert resources == {
            "requests": {"cpu": "1", "memory": "4Gi"},
            "limits": {"cpu": "4", "memory": "8Gi"},
        }
        model = isvc["spec"]["predictor"]["model"]
        if "storageUri" in model:
            assert model["storageUri"] == "hf://segmind/tiny-sd"
            return
        # The embedded variant: the model the runtime image carries, nothing downloaded.
        model_id = env_vars(runtime_container(model_docs))["MODEL_ID"]["value"]
        copied = re.search(r"^COPY .*models/default/ (\S+)$", CONTAINERFILE.read_text(), re.M)
        assert copied and model_id == copied.group(1).rstrip("/")
        # Served as `make run` serves it: the folder's serving.json gives the defaults its
        # evaluation is measured at, and no variable overrides them.
        env = env_vars(runtime_container(model_docs))
        assert not {"DEFAULT_GUIDANCE_SCALE", "DEFAULT_STEPS"} & set(env)
        return
    else:
        gpu = {"nvidia.com/gpu": "1"}
        assert resources == {
            "requests": {"cpu": "1", "memory": "8Gi", **gpu},
            "limits": {"cpu": "6", "memory": "64Gi", **gpu},
        }
        tolerations = isvc["spec"]["predictor"]["tolerations"]
        assert {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in tolerations
    storage = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert storage.split("://")[0] in {"hf", "pvc", "s3"}


def _mounts(container: dict, spec: dict) -> dict[str, dict]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def test_writable_paths_are_empty_dirs(mcp_docs, model_docs):
    spec = pod_spec(mcp_docs)
    settings = config(mcp_docs)
    for container in all_containers(spec):
        assert "emptyDir" in _mounts(container, spec)["/tmp"]
    (main,) = spec["containers"]
    if settings["IMAGE_STORE"] == "local":
        assert "emptyDir" in _mounts(main, spec)[settings["IMAGE_STORE_DIR"]]
    runtime_spec = one(model_docs, "ServingRuntime")["spec"]
    container = runtime_container(model_docs)
    mounts = _mounts(container, runtime_spec)
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in mounts["/tmp"]
    for cache in ("HF_HOME", "XDG_CACHE_HOME", "TORCH_HOME", "HOME"):
        assert env_vars(container)[cache]["value"].startswith("/tmp")


def test_no_secret_values_in_manifests(mcp_docs, model_docs):
    docs = mcp_docs + model_docs
    # Not even a ServiceAccount token Secret: KEDA requests bound, expiring tokens instead.
    assert find(docs, "Secret") == []
    assert [key for key in config(mcp_docs) if SECRET_NAME.search(key)] == []
    containers = [*all_containers(pod_spec(mcp_docs)), runtime_container(model_docs)]
    for container in containers:
        for name, var in env_vars(container).items():
            if SECRET_NAME.search(name):
                assert "secretKeyRef" in var.get("valueFrom", {}), name


def test_production_is_highly_available_with_a_shared_image_store():
    docs = render(mcp_dir("production"))
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    # The HPA owns the count: a manifest that set it would undo the HPA at every deploy.
    assert "replicas" not in deployment["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mcp-server",
    }
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert matches(pdb["selector"], labels) and pdb["minAvailable"] >= 1
    spec = deployment["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert matches(term["podAffinityTerm"]["labelSelector"], labels)
    (main,) = spec["containers"]
    assert main["startupProbe"]["httpGet"]["port"] == main["ports"][0]["containerPort"]
    assert config(docs)["IMAGE_STORE"] == "s3"
    secret_refs = {
        name: var["valueFrom"]["secretKeyRef"]
        for name, var in env_vars(main).items()
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    for required in ("S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret_refs[required]["name"] == "mcp-server-s3"
        assert not secret_refs[required].get("optional")
    assert secret_refs["MCP_AUTH_TOKEN"]["optional"] is True


@pytest.mark.parametrize("container_name", ["wait-for-runtime", "mcp-server"])
def test_server_settings_accept_the_rendered_configuration(mcp_docs, container_name):
    """Each MCP container's environment, as the pod gets it (Secret values stood in), passes
    the server's own configuration check."""
    (container,) = [c for c in all_containers(pod_spec(mcp_docs)) if c["name"] == container_name]
    environment = {"PATH": os.environ["PATH"], **config(mcp_docs)}
    for name, var in env_vars(container).items():
        stand_in = "https://s3.example.com" if name.endswith("_URL") else f"stand-in-{name.lower()}"
        environment[name] = var.get("value", stand_in)
    result = subprocess.run(
        [sys.executable, "-c", "from mcp_server.settings import load_settings; load_settings()"],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_runtime_settings_accept_the_rendered_configuration(model_docs):
    environment = {"PATH": os.environ["PATH"]}
    environment |= {
        name: var["value"] for name, var in env_vars(runtime_container(model_docs)).items()
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from diffusers_runtime.settings import load_settings as l; print(l())",
        ],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Every variable the manifests set is one the runtime reads (a typo would be ignored).
    read = result.stdout
    for name in environment.keys() - {"PATH"} - LIBRARY_ENV:
        assert f"{name.lower()}=" in read, name


# Fields that the API server or a controller writes once an object exists (OpenShift's
# ServiceAccount controller adds pull secrets; the Service allocator, the address): a manifest
# that set one would fight its writer, a conflict or an undone change at every deploy.
SERVER_OWNED = {
    "*": ["status", "metadata.resourceVersion", "metadata.uid", "metadata.creationTimestamp",
          "metadata.generation", "metadata.managedFields"],
    "Service": ["spec.clusterIP", "spec.clusterIPs"],
    "ServiceAccount": ["secrets", "imagePullSecrets"],
    "Namespace": ["spec"],
}  # fmt: skip
# What KServe makes of an InferenceService in RawDeployment, and KEDA scales: its own objects.
KSERVE_OWNED = ("Deployment", "Service", "HorizontalPodAutoscaler", "ScaledObject")


def _has(doc: dict, path: str) -> bool:
    node = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize("tree", [*(mcp_dir(env) for env in MCP_ENVS), *map(runtime_dir, RUNTIMES)])
def test_a_second_deploy_of_an_unchanged_overlay_changes_nothing(tree):
    """Two renders are byte for byte the same (generated names included), and no object sets
    a field that a controller owns once deployed: the replica count of a Deployment an HPA
    scales, what the API server fills in, the objects KServe makes of an InferenceService.
    With server-side apply, the second deploy then finds nothing to change."""
    renders = [
        subprocess.run(
            [tool("kubectl"), "kustomize", str(tree)], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert renders[0] == renders[1]
    docs = render(tree)
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        target = one(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], tree
    for doc in docs:
        for path in SERVER_OWNED["*"] + SERVER_OWNED.get(doc["kind"], []):
            assert not _has(doc, path), (tree, doc["kind"], path)
    for isvc in find(docs, "InferenceService"):
        predictor = f"{isvc['metadata']['name']}-predictor"
        assert not [
            d for d in docs if d["kind"] in KSERVE_OWNED and d["metadata"]["name"] == predictor
        ]


# What the restricted profile allows beyond the security context, checked on the MCP pods.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip

MODES = ("enforce", "audit", "warn")


def pod_security_versions(labels: dict[str, str]) -> dict[str, str]:
    return {mode: labels[f"pod-security.kubernetes.io/{mode}-version"] for mode in MODES}


@pytest.mark.parametrize("env", MCP_ENVS)
def test_each_mcp_namespace_enforces_the_restricted_pod_security_profile(env):
    docs = render(mcp_dir(env))
    labels = one(docs, "Namespace")["metadata"]["labels"]
    for mode in MODES:
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    # Enforcement pinned (an upgrade cannot tighten it mid-rollout), warnings at the latest.
    versions = pod_security_versions(labels)
    assert re.fullmatch(r"v1\.\d+", versions["enforce"])
    assert versions["audit"] == versions["warn"] == "latest"
    # OpenShift's synchroniser would otherwise set them from the SCCs.
    assert labels["security.openshift.io/scc.podSecurityLabelSync"] == "false"
    # The pods meet it: the containers' contexts (test_mcp_containers_are_locked_down), and
    # no host namespace, host port or volume type outside the profile.
    spec = pod_spec(docs)
    assert not {"hostNetwork", "hostPID", "hostIPC"} & {k for k, v in spec.items() if v}
    assert not [p for c in all_containers(spec) for p in c.get("ports", []) if "hostPort" in p]
    kinds = {key for volume in spec["volumes"] for key in volume if key != "name"}
    assert kinds <= RESTRICTED_VOLUMES


def test_the_production_runtime_namespace_pins_baseline_and_warns_about_restricted():
    labels = one(render(runtime_dir("redhat-dog")), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    versions = pod_security_versions(labels)
    assert re.fullmatch(r"v1\.\d+", versions["enforce"])
    assert versions["audit"] == versions["warn"] == "latest"
