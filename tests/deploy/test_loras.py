"""How LoRA adapters reach production's predictors: a volume mounted read-only at LORA_DIR,
written only by `make lora-push`'s own locked-down pod, which needs no network."""

from __future__ import annotations

import yaml

from tests.deploy.manifests import KUSTOMIZE, env_vars, one, render, runtime_dir
from tests.deploy.test_consistency import _security_problems
from tests.deploy.test_tooling import make

POD = KUSTOMIZE / "runtime" / "lora-push" / "pod.yaml"


def test_the_predictors_read_the_adapters_volume_at_lora_dir() -> None:
    docs = render(runtime_dir("redhat-dog"))
    claim = one(docs, "PersistentVolumeClaim", "redhat-dog-loras")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # replicas and the push pod at once
    predictor = one(docs, "InferenceService")["spec"]["predictor"]
    (volume,) = [v for v in predictor["volumes"] if v["name"] == "loras"]
    assert volume["persistentVolumeClaim"] == {"claimName": "redhat-dog-loras", "readOnly": True}
    model = predictor["model"]
    (mount,) = [m for m in model["volumeMounts"] if m["name"] == "loras"]
    assert mount["readOnly"] is True
    assert env_vars(model)["LORA_DIR"]["value"] == mount["mountPath"]


def test_the_push_pod_writes_that_volume_and_is_locked_down() -> None:
    pod = yaml.safe_load(POD.read_text())
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert _security_problems(container, spec["securityContext"]) == []
    assert spec["automountServiceAccountToken"] is False
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "redhat-dog-loras"
    assert {"name": "loras", "mountPath": "/mnt/loras"} in container["volumeMounts"]


def test_make_lora_push_copies_through_the_pod_then_removes_it() -> None:
    assert make("lora-push", "LORA=models/default/loras/outline/") == [
        "oc -n diffusers-production apply -f kustomize/runtime/lora-push/pod.yaml",
        "oc -n diffusers-production wait --for=condition=Ready pod/lora-push --timeout=5m",
        "oc -n diffusers-production cp models/default/loras/outline/ lora-push:/mnt/loras/outline",
        "oc -n diffusers-production delete pod lora-push --wait=false",
    ]
