"""The production runtime autoscales on its own queue metric through KServe's KEDA support,
and scale-down drains: the new kinds pass the models generated from their CRDs (KEDA,
prometheus-operator), the InferenceService's autoscaling passes kserve's typed models
(test_render), and the pieces of the metric pipeline, the grace periods and the MCP
servers' admission agree with each other."""

from __future__ import annotations

import copy
import re

import pytest
from cloudcoil.models.keda.v1alpha1 import TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor
from pydantic import BaseModel, ConfigDict, ValidationError

from diffusers_runtime import metrics
from tests.deploy.manifests import (
    config,
    env_vars,
    find,
    matches,
    mcp_dir,
    one,
    render,
    runtime_container,
    runtime_dir,
)

MODEL = "redhat-dog"
THANOS = "https://thanos-querier.openshift-monitoring.svc.cluster.local:9092"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render(runtime_dir(MODEL))


def external_metric(docs: list[dict]) -> dict:
    (metric,) = one(docs, "InferenceService")["spec"]["predictor"]["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    return metric["external"]


class BoundServiceAccountToken(BaseModel):
    """KEDA 2.17's spec.boundServiceAccountToken entry, which the generated models (KEDA
    2.16.1, the newest on PyPI) do not know yet."""

    model_config = ConfigDict(extra="forbid")
    parameter: str
    serviceAccountName: str


def crd_problems(document: dict, model: type[BaseModel]) -> list[str]:
    """Errors of DOCUMENT read as MODEL, and the fields it does not know: the generated
    models ignore unknown fields, so what does not come back out unchanged is unknown."""
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    echoed = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [] if echoed == document else [f"unknown or changed fields: {document} -> {echoed}"]


@pytest.mark.parametrize(
    ("kind", "model"),
    [("PodMonitor", PodMonitor), ("TriggerAuthentication", TriggerAuthentication)],
)
def test_new_kinds_match_their_crd_models(docs, kind, model):
    document = copy.deepcopy(one(docs, kind))
    for entry in document["spec"].pop("boundServiceAccountToken", []):
        BoundServiceAccountToken.model_validate(entry)
    assert crd_problems(document, model) == []


def test_crd_models_reject_unknown_and_missing_fields(docs):
    """The control: a misspelt field and a missing key are caught."""
    monitor = copy.deepcopy(one(docs, "PodMonitor"))
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    assert crd_problems(monitor, PodMonitor) != []
    auth = copy.deepcopy(one(docs, "TriggerAuthentication"))
    del auth["spec"]["boundServiceAccountToken"]
    del auth["spec"]["configMapTargetRef"][0]["key"]
    assert crd_problems(auth, TriggerAuthentication) != []
    with pytest.raises(ValidationError):
        BoundServiceAccountToken.model_validate({"parameter": "bearerToken", "name": "x"})


def test_kserve_creates_a_keda_scaled_object_in_raw_deployment(docs):
    isvc = one(docs, "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "keda"
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]
    behavior = predictor["autoScaling"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_the_query_reads_this_runtimes_own_queue_metrics_from_thanos(docs):
    external = external_metric(docs)
    metric = external["metric"]
    isvc = one(docs, "InferenceService")["metadata"]
    assert metric["backend"] == "prometheus"
    # Thanos' tenancy port answers only for the namespace the query names.
    assert metric["serverAddress"] == THANOS
    assert metric["namespace"] == isvc["namespace"]
    names = set(re.findall(r"(diffusers_\w+)\{", metric["query"]))
    assert names == {"diffusers_requests_in_flight", "diffusers_requests_queued"}
    # The runtime's own gauges, under those names.
    assert names == {gauge._name for gauge in (metrics.IN_FLIGHT, metrics.QUEUED)}
    for selector in re.findall(r"\{([^}]*)\}", metric["query"]):
        assert f'namespace="{isvc["namespace"]}"' in selector
        # RawDeployment's pods: <isvc>-predictor-<replicaset>-<pod>.
        assert f'pod=~"{isvc["name"]}-predictor-.+"' in selector
    assert float(external["target"]["value"]) > 0


def test_keda_authenticates_as_an_account_that_may_read_the_metrics(docs):
    auth_ref = external_metric(docs)["authenticationRef"]
    assert auth_ref["authModes"] == "bearer"
    spec = one(docs, "TriggerAuthentication", auth_ref["authenticationRef"]["name"])["spec"]
    # A bound token KEDA requests when it needs one, which expires: no token Secret exists.
    assert "secretTargetRef" not in spec and find(docs, "Secret") == []
    ((token,),) = [spec["boundServiceAccountToken"]]
    assert token["parameter"] == "bearerToken"
    account = token["serviceAccountName"]
    assert one(docs, "ServiceAccount", account)
    (ca,) = spec["configMapTargetRef"]
    assert (ca["parameter"], ca["name"], ca["key"]) == (
        "ca",
        "openshift-service-ca.crt",
        "service-ca.crt",
    )
    requester = one(docs, "Role", "diffusers-runtime-autoscaler-token-requester")
    assert requester["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["serviceaccounts/token"],
            "resourceNames": [account],
            "verbs": ["create"],
        }
    ]
    namespace = one(docs, "ServiceAccount", account)["metadata"]["namespace"]
    binding = one(docs, "RoleBinding", "diffusers-runtime-metrics-reader")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    ]
    role = one(docs, "Role", binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert ("", "pods", "get") in granted and ("metrics.k8s.io", "pods", "get") in granted
    # Read-only.
    assert {v for _, _, v in granted} <= {"get", "list", "watch"}


def test_prometheus_scrapes_the_predictor_pods_on_their_metrics_port(docs):
    monitor = one(docs, "PodMonitor")["spec"]
    predictor_labels = {"serving.kserve.io/inferenceservice": MODEL}
    assert matches(monitor["selector"], predictor_labels)
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in runtime_container(docs)["ports"]}
    serving_runtime = one(docs, "ServingRuntime")["spec"]
    assert endpoint["path"] == serving_runtime["annotations"]["prometheus.kserve.io/path"]
    assert (
        str(ports[endpoint["port"]]) == serving_runtime["annotations"]["prometheus.kserve.io/port"]
    )
    # The runtime's NetworkPolicy lets the user-workload Prometheus in on that port.
    policy = one(docs, "NetworkPolicy", "diffusers-runtime-ingress")["spec"]
    monitoring = {"kubernetes.io/metadata.name": "openshift-user-workload-monitoring"}
    assert any(
        matches(peer.get("namespaceSelector", {}), monitoring) and "podSelector" not in peer
        and ports[endpoint["port"]] in {p["port"] for p in rule["ports"]}
        for rule in policy["ingress"] for peer in rule["from"]
    )  # fmt: skip


def test_scale_down_lets_the_longest_generation_finish(docs):
    """kubelet's grace > the runtime's drain >= MAX_STEPS x the step time at full load."""
    isvc = one(docs, "InferenceService")
    step_seconds = float(
        isvc["metadata"]["annotations"]["diffusers-mcp.io/step-seconds-at-max-load"]
    )
    environment = env_vars(runtime_container(docs))
    longest = int(environment["MAX_STEPS"]["value"]) * step_seconds
    drain = float(environment["SHUTDOWN_GRACE_SECONDS"]["value"])
    kubelet = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert kubelet > drain >= longest, (kubelet, drain, longest)


def test_mcp_admission_lets_a_saturated_replica_show_it():
    """The MCP servers admit more calls per replica than the autoscaler's per-replica target,
    even at their fewest pods: otherwise demand could never exceed the target and the
    runtime would not scale up however long the MCP queues grow."""
    mcp = render(mcp_dir("production"))
    per_replica = int(config(mcp)["MAX_CONCURRENT_PER_RUNTIME"])
    fewest_pods = one(mcp, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    target = float(external_metric(render(runtime_dir(MODEL)))["target"]["value"])
    assert per_replica * fewest_pods > target
    # And each MCP pod alone can fill one replica's batch.
    batch = int(env_vars(runtime_container(render(runtime_dir(MODEL))))["MAX_BATCH_SIZE"]["value"])
    assert per_replica >= batch


def test_only_the_production_runtime_needs_keda_and_prometheus_operator():
    for model in ("tiny-sd", "tiny-sd-embedded"):
        kinds = {d["kind"] for d in render(runtime_dir(model))}
        assert not kinds & {"PodMonitor", "TriggerAuthentication"}, model
        isvc = one(render(runtime_dir(model)), "InferenceService")
        assert "autoScaling" not in isvc["spec"]["predictor"]
    assert find(render(runtime_dir(MODEL)), "ScaledObject") == []  # KServe makes it
