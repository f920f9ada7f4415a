# Every user-facing command of the project. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
# The random-weight model: only for tests that need nothing but speed.
TINY_MODEL ?= $(CACHE)/tiny-sd
# The shipped default: a small SD3 pipeline trained here on the scene language (scene_model/).
DEFAULT_MODEL := models/default
# Any diffusers folder (or hub id, with the hub reachable) runs through the same path.
MODEL_ID ?= $(abspath $(DEFAULT_MODEL))
RUNTIME_PORT ?= 8080
MCP_PORT ?= 8000
TORCH_VERSION := 2.13.0
EXTRAS ?= runtime,server,dev

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-28s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: otherwise a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with everything (idempotent)

$(TINY_MODEL)/model_index.json: | $(VENV)/.installed
	$(PY) -m diffusers_runtime.tiny $(TINY_MODEL)

.PHONY: tiny-model
tiny-model: $(TINY_MODEL)/model_index.json ## Build the tiny offline model into .cache/tiny-sd

# The playground's browser tests drive Debian's Chromium (a test tool's own browser download
# cannot reach its CDN from a closed network). Installed where missing and apt can; where it
# cannot, those tests are skipped and say why.
CHROMIUM ?= /usr/bin/chromium

.PHONY: browser
browser: ## Install Debian's chromium for the playground's browser tests (as root, where missing)
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } ; } || \
		echo "make browser: could not install chromium; the playground's browser tests will be skipped"

.PHONY: test
test: install tiny-model browser ## Lint, then run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	TINY_MODEL_DIR=$(abspath $(TINY_MODEL)) $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## Ruff lint and format check, mypy (strict) over both packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: format
format: install ## Ruff autofix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: run-runtime
run-runtime: install ## Run only the diffusers runtime (MODEL_ID, default models/default) on :$(RUNTIME_PORT)
	MODEL_ID=$(MODEL_ID) $(PY) -m diffusers_runtime --http_port $(RUNTIME_PORT) --enable_grpc false

.PHONY: run
run: install ## Run the local stack (runtime + MCP server; MODEL_ID, default models/default), draw a first picture; Ctrl-C stops it
	MODEL_ID=$(MODEL_ID) RUNTIME_PORT=$(RUNTIME_PORT) MCP_PORT=$(MCP_PORT) \
		$(PY) -m scripts.local_stack

.PHONY: bench
bench: install ## Evaluate the default model; benchmark every layer, the speed tiers, how cost grows and LoRA adapters (bench/results/, docs/performance.md)
	$(PY) -m scene_model evaluate --model $(MODEL_ID) --report bench/results/evaluation.json
	MODEL_ID=$(MODEL_ID) $(PY) -m bench.run
	$(PY) -m bench.tiers
	$(PY) -m bench.cost
	$(PY) -m bench.loras

# OpenMP's default waiting, not OMP_WAIT_POLICY=PASSIVE: passive threads sleep between the
# many small operations of a step and made the denoiser 1.44x slower.
.PHONY: train-default-model
train-default-model: install ## Train models/default from scratch (about 2 h 20 min on 2 cores; resumes from .cache/scene-model), then evaluate it
	$(PY) -m scene_model train --work $(CACHE)/scene-model --out $(DEFAULT_MODEL)

.PHONY: samples
samples: install ## Redraw docs/samples.png, the README's sample grid, with the default model
	$(PY) -m scene_model samples --model $(DEFAULT_MODEL) --out docs/samples.png

# --- Deployment ---
# ENV=dev|staging|prod (or production) picks the MCP overlay and the runtime it talks to;
# ENV=local runs the checks against `make run`. DRY_RUN=1 prints cluster commands instead
# of running them.
ENV ?= dev
DRY_RUN ?=
ifeq ($(origin KUBECTL),undefined)
KUBECTL := $(shell command -v oc 2>/dev/null || command -v kubectl 2>/dev/null || echo $(VENV)/bin/kubectl)
endif
ifeq ($(origin CONTAINER_ENGINE),undefined)
CONTAINER_ENGINE := $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null || echo podman)
endif
, := ,
# Each model's namespace: tiny-sd (dev, staging) in default; the production runtime in a
# namespace of its own, which no other environment may list or reach.
RUNTIME_NAMESPACE_tiny-sd ?= default
RUNTIME_NAMESPACE_redhat-dog ?= diffusers-production
runtime_namespace = $(RUNTIME_NAMESPACE_$(1))
ISVC_TIMEOUT ?= 30m
ROLLOUT_TIMEOUT ?= 15m
IMAGE_REPO ?= quay.io/diffusers-mcp
IMAGE_TAG ?= 0.1.0
# cpu or cuda: which torch build the runtime image gets.
RUNTIME_VARIANT ?= cpu
TORCH_INDEX_URL_cpu := https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL_cuda := https://download.pytorch.org/whl/cu128
# The overlays carry this placeholder apps domain in the Route host, ALLOWED_HOSTS and
# PUBLIC_URL; deploying replaces it with the cluster's own (OpenShift's ingress config).
PLACEHOLDER_DOMAIN := apps.cluster.example.com
CLUSTER_DOMAIN ?= $(if $(DRY_RUN),$(PLACEHOLDER_DOMAIN),$(shell $(KUBECTL) get ingresses.config.openshift.io cluster -o jsonpath={.spec.domain} 2>/dev/null))

ENV_DIR = $(if $(filter prod,$(ENV)),production,$(ENV))
RUNTIME_dev := tiny-sd
RUNTIME_staging := tiny-sd
RUNTIME_production := redhat-dog
mcp_namespace = mcp-server-$(1)
# Prints instead of runs under DRY_RUN=1; commands therefore never contain single quotes.
run = $(if $(DRY_RUN),@echo '$(1)',$(1))
need_domain = $(if $(CLUSTER_DOMAIN),,$(error cannot read the cluster apps domain from \
	ingresses.config.openshift.io/cluster: pass CLUSTER_DOMAIN=apps.<your cluster domain>))
need_cluster_env = $(if $(filter dev staging production,$(ENV_DIR)),,$(error ENV must be \
	dev, staging or prod here (got "$(ENV)")))

# EMBEDDED_MODEL=1: the tiny-sd InferenceService serves the default model baked into the
# runtime image instead of downloading segmind/tiny-sd (air-gapped clusters).
overlay = $(1)$(if $(and $(filter tiny-sd,$(1)),$(filter 1 true yes,$(EMBEDDED_MODEL))),-embedded)

# Server-side apply: each field has an owner, so a deploy changes only the fields the manifests
# set. The replica counts that the HPA (MCP server) and KEDA (runtime) own are set by no
# manifest, and a second deploy of an unchanged overlay changes nothing live.
APPLY = apply --server-side --field-manager=diffusers-mcp

define deploy_runtime
	$(call run,$(KUBECTL) $(APPLY) -k kustomize/runtime/overlays/$(call overlay,$(1)))
	$(call run,$(KUBECTL) -n $(call runtime_namespace,$(1)) wait --for=condition=Ready inferenceservice/$(1) --timeout=$(ISVC_TIMEOUT))
endef

define deploy_mcp
	$(need_domain)
	$(call run,$(KUBECTL) kustomize kustomize/overlays/$(1) | sed -e "s/$(PLACEHOLDER_DOMAIN)/$(CLUSTER_DOMAIN)/g" | $(KUBECTL) $(APPLY) -f -)
	$(call run,$(KUBECTL) -n $(call mcp_namespace,$(1)) rollout status deployment/mcp-server --timeout=$(ROLLOUT_TIMEOUT))
	$(call run,$(KUBECTL) -n $(call mcp_namespace,$(1)) get route mcp-server -o custom-columns=URL:.spec.host)
endef

.PHONY: deploy-dev deploy-staging deploy-prod
deploy-dev: ## Deploy the MCP server to mcp-server-dev (the tiny-sd runtime must exist)
	$(call deploy_mcp,dev)
deploy-staging: ## Deploy the MCP server to mcp-server-staging (the tiny-sd runtime must exist)
	$(call deploy_mcp,staging)
deploy-prod: ## Deploy the MCP server to mcp-server-production (redhat-dog runtime, S3 Secret)
	$(call deploy_mcp,production)

.PHONY: deploy-runtime-tiny-sd deploy-runtime-redhat-dog
deploy-runtime-tiny-sd: ## Deploy the tiny-sd InferenceService (CPU) and wait until it is Ready
	$(call deploy_runtime,tiny-sd)
deploy-runtime-redhat-dog: ## Deploy the redhat-dog InferenceService (GPU) and wait until it is Ready
	$(call deploy_runtime,redhat-dog)

.PHONY: deploy-with-diffusers-dev deploy-with-diffusers-staging deploy-with-diffusers-prod
deploy-with-diffusers-dev: ## Runtime (tiny-sd) first, wait for Ready, then the dev MCP server
	$(call deploy_runtime,tiny-sd)
	$(call deploy_mcp,dev)
deploy-with-diffusers-staging: ## Runtime (tiny-sd) first, wait for Ready, then the staging MCP server
	$(call deploy_runtime,tiny-sd)
	$(call deploy_mcp,staging)
deploy-with-diffusers-prod: ## Runtime (redhat-dog) first, wait for Ready, then the production MCP server
	$(call deploy_runtime,redhat-dog)
	$(call deploy_mcp,production)

# Production's LoRA adapters live on a volume of their own (kustomize/runtime/overlays/
# redhat-dog/pvc-loras.yaml), read-only in the predictors; a pod of its own writes to it.
LORA ?=
LORA_RUNTIME ?= redhat-dog
lora_ns = -n $(call runtime_namespace,$(LORA_RUNTIME))
.PHONY: lora-push
lora-push: ## Copy the LoRA adapter LORA (a save_lora_weights folder or a .safetensors file) to the production model's adapters; served from its next request
	$(if $(LORA),,$(error LORA=<a folder diffusers' save_lora_weights wrote, or a .safetensors file>))
	$(call run,$(KUBECTL) $(lora_ns) apply -f kustomize/runtime/lora-push/pod.yaml)
	$(call run,$(KUBECTL) $(lora_ns) wait --for=condition=Ready pod/lora-push --timeout=5m)
	$(call run,$(KUBECTL) $(lora_ns) cp $(LORA) lora-push:/mnt/loras/$(notdir $(patsubst %/,%,$(LORA))))
	$(call run,$(KUBECTL) $(lora_ns) delete pod lora-push --wait=false)

# A namespace's ServingRuntime, runtime NetworkPolicies and discovery RBAC serve every model in
# it (tiny-sd and its embedded variant share default): undeploying one model only removes its
# InferenceService.
.PHONY: undeploy-dev undeploy-staging undeploy-prod undeploy-runtime-tiny-sd undeploy-runtime-redhat-dog
undeploy-dev: ## Delete the dev MCP server and its namespace
	$(call run,$(KUBECTL) delete -k kustomize/overlays/dev --ignore-not-found)
undeploy-staging: ## Delete the staging MCP server and its namespace
	$(call run,$(KUBECTL) delete -k kustomize/overlays/staging --ignore-not-found)
undeploy-prod: ## Delete the production MCP server and its namespace
	$(call run,$(KUBECTL) delete -k kustomize/overlays/production --ignore-not-found)
undeploy-runtime-tiny-sd: ## Delete the tiny-sd InferenceService
	$(call run,$(KUBECTL) -n $(call runtime_namespace,tiny-sd) delete inferenceservice tiny-sd --ignore-not-found)
undeploy-runtime-redhat-dog: ## Delete the redhat-dog InferenceService
	$(call run,$(KUBECTL) -n $(call runtime_namespace,redhat-dog) delete inferenceservice redhat-dog --ignore-not-found)

.PHONY: render
render: install ## Print the manifests of ENV (MCP overlay, then its runtime overlay)
	$(need_cluster_env)
	@$(VENV)/bin/kubectl kustomize kustomize/overlays/$(ENV_DIR)
	@echo ---
	@$(VENV)/bin/kubectl kustomize kustomize/runtime/overlays/$(RUNTIME_$(ENV_DIR))

.PHONY: validate
validate: install ## Check every manifest offline (render, schemas, NetworkPolicies, consistency, hadolint)
	$(PY) -m pytest tests/deploy -q --ignore=tests/deploy/test_live_checks.py $(PYTEST_ARGS)

.PHONY: test-connectivity
test-connectivity: ## DNS and runtime reachability from inside the MCP pod (ENV=local: the make run stack)
ifeq ($(ENV),local)
	$(PY) -m deploy.checks connectivity --runtime-url http://127.0.0.1:$(RUNTIME_PORT) --mcp-url http://127.0.0.1:$(MCP_PORT)
else
	$(need_cluster_env)
	$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) exec -i deploy/mcp-server -c mcp-server -- python - connectivity < deploy/checks.py)
endif

.PHONY: test-integration
test-integration: ## A real MCP tools/call and a REST generation through the Route (ENV=local: make run)
ifeq ($(ENV),local)
	$(PY) -m deploy.checks integration --mcp-url http://127.0.0.1:$(MCP_PORT)
else
	$(need_cluster_env)
	$(call run,$(PY) -m deploy.checks integration --kubectl $(KUBECTL) --namespace $(call mcp_namespace,$(ENV_DIR)))
endif

# The last line asks the server itself, through its list_models, what it serves: the static
# runtime and what model discovery found (or why it found nothing).
.PHONY: check-services
check-services: ## Show the runtime and MCP server objects of ENV, their endpoints, configured URL and discovered models
	$(need_cluster_env)
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) get inferenceservice $(RUNTIME_$(ENV_DIR)))
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) get service$(,)endpoints $(RUNTIME_$(ENV_DIR))-predictor)
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) get pods -l serving.kserve.io/inferenceservice=$(RUNTIME_$(ENV_DIR)))
	-$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) get deployment$(,)pods$(,)service$(,)endpoints$(,)route$(,)networkpolicy -l app.kubernetes.io/part-of=diffusers-mcp)
	-$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) get configmap -l app.kubernetes.io/name=mcp-server -o custom-columns=CONFIGMAP:.metadata.name$(,)DIFFUSERS_RUNTIME_URL:.data.DIFFUSERS_RUNTIME_URL)
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) get inferenceservice -l diffusers-mcp.io/expose=true$(,)environment.diffusers-mcp.io/$(ENV_DIR)=true)
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) get role$(,)rolebinding diffusers-mcp-discovery)
	-$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) exec -i deploy/mcp-server -c mcp-server -- python - models < deploy/checks.py)

.PHONY: logs
logs: ## Recent logs of ENV: readiness gate, MCP server, runtime
	$(need_cluster_env)
	-$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) logs deploy/mcp-server -c wait-for-runtime --tail=50)
	-$(call run,$(KUBECTL) -n $(call mcp_namespace,$(ENV_DIR)) logs deploy/mcp-server -c mcp-server --tail=200)
	-$(call run,$(KUBECTL) -n $(call runtime_namespace,$(RUNTIME_$(ENV_DIR))) logs -l serving.kserve.io/inferenceservice=$(RUNTIME_$(ENV_DIR)) -c kserve-container --tail=200)

.PHONY: images
images: ## Build both images with podman (or docker): RUNTIME_VARIANT=cpu|cuda, IMAGE_REPO, IMAGE_TAG
	$(call run,$(CONTAINER_ENGINE) build -f Containerfile --target mcp-server -t $(IMAGE_REPO)/mcp-server:$(IMAGE_TAG) .)
	$(call run,$(CONTAINER_ENGINE) build -f Containerfile --target diffusers-runtime --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL_$(RUNTIME_VARIANT)) -t $(IMAGE_REPO)/diffusers-runtime:$(IMAGE_TAG)-$(RUNTIME_VARIANT) .)
