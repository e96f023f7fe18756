# histoxai: `make demo` runs the pipeline on phantom data; `make test` runs the test suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs
PIP_VERSION := 26.3

.PHONY: install test browser demo compile lint bench lock lock-hashes lock-uv-version clean tools build template retrain-source deploy minikube-up minikube-run minikube-down

# Every install checks hashes (docs/development.md#pinned-dependencies): first pip, setuptools and wheel,
# then the locked dependencies (--no-build-isolation: the one source distribution, kfp-server-api, builds
# with the locked setuptools instead of an unchecked download), then the project itself, which has no
# hash to check, with --no-deps.
install: $(STAMP)  ## create .venv and install the project with pinned, hash-checked dependencies

$(STAMP): pyproject.toml constraints.txt requirements-build-lock.txt requirements-lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements-build-lock.txt
	$(BIN)/python -m pip install -q --require-hashes --no-build-isolation -r requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# One worker per core (pytest-xdist); a test file's tests stay on one worker, so its module fixtures
# (trained models, ingested phantoms) are built once. TEST_WORKERS=0 runs in one process. One worker more
# than cores was about 5 % faster on 2 cores in single runs (289-304 s against 318 s), within this
# machine's noise; two of three fresh-clone runs with it at 1e12600 failed tests/test_chunk_layouts.py (two
# ingestions of the same pixels differed). h5py's unlocked read_direct_chunk, which histoxai/chunked.py
# now locks, made such reads fail beside other h5py threads; that it caused that difference is not shown.
TEST_WORKERS ?= auto
test: install tools browser  ## run the whole test suite (on every core)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Installed before the tests start, so that apt-get's minute is not counted as test time.
browser: install  ## Debian's chromium and chromium-driver for the browser tests (apt-get when missing; needs root)
	@$(BIN)/python -c "from tests.app_browser import ensure_chromium; ensure_chromium()"

demo: install  ## the whole pipeline run locally on phantom samples 3, 4, 5 (2-5 min on 2 cores), into $(OUT)/demo
	$(BIN)/python -m histoxai.pipelines.demo --out $(OUT)/demo

compile: install  ## compile the pipeline to $(OUT)/pipeline.yaml (images from HISTOXAI_CPU_IMAGE / HISTOXAI_GPU_IMAGE)
	$(BIN)/histoxai compile --out $(OUT)/pipeline.yaml

.PHONY: docs
docs: install  ## figures in README.md and docs/*.md from $(OUT)/bench, $(OUT)/demo (and its pictures), $(OUT)/demo-derived and a fresh histoxai baseline, via docs/figures/ (docs/development.md)
	$(BIN)/histoxai baseline --out $(OUT)/baseline --overwrite > /dev/null
	$(BIN)/python docs/render.py --bench $(OUT)/bench --demo $(OUT)/demo --demo-derived $(OUT)/demo-derived --baseline $(OUT)/baseline

lint: install  ## ruff over the whole tree (CI runs it before the tests)
	$(BIN)/ruff check .

bench: install  ## benchmarks; figures go to $(OUT)/bench/results.json and .md
	$(BIN)/python -m tests.bench.run --out $(OUT)/bench

lock:  ## re-resolve the environment from pyproject.toml, rewrite constraints.txt, then the hashed locks
	rm -rf /tmp/histoxai-lock && $(PYTHON) -m venv /tmp/histoxai-lock
	/tmp/histoxai-lock/bin/python -m pip install -q --upgrade "pip==$(PIP_VERSION)"
	/tmp/histoxai-lock/bin/python -m pip install -q -e ".[dev]"
	{ echo "# Exact versions of every package in the project's environment. make install installs them from"; \
	  echo "# requirements-lock.txt, which adds their hashes (make lock-hashes writes it from this file)."; \
	  echo "# Regenerate after changing pyproject.toml dependencies: make lock"; \
	  /tmp/histoxai-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt
	$(MAKE) lock-hashes

# --- Hashed locks: the exact versions of constraints.txt, infra/requirements-tools*.txt and
# containers/cuda-constraints.txt with the sha256 of every file PyPI has for them, written by uv
# (itself installed by hash from requirements-uv-lock.txt; `make lock-hashes uv=X` moves it to version X).
LOCK_VENV := .venv-lock
LOCK_STAMP := $(LOCK_VENV)/.installed
LOCK_BUILD := build/lock
# The machines the locks serve: Linux x86_64 (glibc 2.36: Debian 12, the images' bookworm base), CPython
# 3.11 from 3.11.7 on (soupsieve, a checkov dependency, needs 3.11.5 or later).
LOCK_TARGET := --python-version 3.11.7 --python-platform x86_64-manylinux_2_36
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --no-config --generate-hashes $(LOCK_TARGET) \
  --custom-compile-command "make lock-hashes"
uv ?= $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements-uv-lock.txt)

$(LOCK_STAMP): requirements-uv-lock.txt
	@test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV) || python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: -r requirements-uv-lock.txt
	@touch $@

lock-uv-version:  # checked before anything is installed for the lock
	@echo "$(uv)" | grep -Eq '^[0-9][0-9A-Za-z.]*$$' || { echo "make lock-hashes: uv=$(uv) is not a version; expected e.g. uv=0.13.8" >&2; exit 2; }

lock-hashes: lock-uv-version $(LOCK_STAMP)  ## rewrite the *-lock.txt files (hashes) for the exact versions pinned now
	rm -rf $(LOCK_BUILD) && mkdir -p $(LOCK_BUILD)
	printf 'pip==%s\nsetuptools\nwheel\n' "$(PIP_VERSION)" > $(LOCK_BUILD)/build.in
	printf 'pip==%s\n' "$(PIP_VERSION)" > $(LOCK_BUILD)/pip.in
	printf 'uv==%s\n' "$(uv)" > $(LOCK_BUILD)/uv.in
	$(UV_COMPILE) -o requirements-lock.txt constraints.txt
	$(UV_COMPILE) -o requirements-build-lock.txt -c constraints.txt $(LOCK_BUILD)/build.in
	$(LOCK_VENV)/bin/python containers/image_pins.py --variant cpu --out $(LOCK_BUILD)/cpu
	$(UV_COMPILE) -o containers/requirements-cpu-lock.txt -c $(LOCK_BUILD)/cpu/constraints.txt \
	  $(LOCK_BUILD)/cpu/requirements.txt
	$(LOCK_VENV)/bin/python containers/image_pins.py --variant gpu --out $(LOCK_BUILD)/gpu
	$(UV_COMPILE) -o containers/requirements-gpu-lock.txt -c $(LOCK_BUILD)/gpu/constraints.txt \
	  -c containers/cuda-constraints.txt $(LOCK_BUILD)/gpu/requirements.txt
	$(UV_COMPILE) -o infra/requirements-tools-lock.txt infra/requirements-tools.txt $(LOCK_BUILD)/pip.in
	$(UV_COMPILE) -o infra/requirements-hcl2-lock.txt --no-deps infra/requirements-hcl2.txt
	$(UV_COMPILE) -o requirements-uv-lock.txt $(LOCK_BUILD)/uv.in

# --- Cloud and cluster: images, infrastructure, KFP on minikube (docs/cloud.md) --------
TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
RETRAIN_SRC := build/retrain-source
env ?= dev
tag ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
TF := terraform -chdir=infra/terraform
TF_OUT = TF_WORKSPACE=$(env) $(TF) output -raw

tools: $(TOOLS_STAMP)  ## hadolint, shellcheck, checkov and python-hcl2 in .venv-tools, for the infrastructure tests

$(TOOLS_STAMP): infra/requirements-tools-lock.txt infra/requirements-hcl2-lock.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV) || python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: -r infra/requirements-tools-lock.txt
	rm -rf $(TOOLS_VENV)/hcl2
	$(TOOLS_VENV)/bin/python -m pip install -q --require-hashes --only-binary :all: --no-deps \
	  --target $(TOOLS_VENV)/hcl2 -r infra/requirements-hcl2-lock.txt
	@touch $@

build:  ## build and push the cpu, gpu and app images with Cloud Build (after make deploy; env=dev, tag=<git commit>, builder_digest=sha256:...)
	@echo "$(builder_digest)" | grep -Eq '^sha256:[0-9a-f]{64}$$' || { echo "make build: builder_digest=$(builder_digest) is not a digest; pass builder_digest=sha256:<64 hex digits> of gcr.io/cloud-builders/docker (containers/README.md, Builder image)" >&2; exit 2; }
	@command -v gcloud >/dev/null || { echo "make build: gcloud not found; install the Google Cloud CLI" >&2; exit 2; }
	@command -v terraform >/dev/null || { echo "make build: terraform not found; install Terraform >= 1.6" >&2; exit 2; }
	project=$$($(TF_OUT) project_id) && registry=$$($(TF_OUT) docker_registry) && \
	gcloud builds submit --project "$$project" --region "$$($(TF_OUT) region)" \
	  --config containers/cloudbuild.yaml \
	  --service-account "projects/$$project/serviceAccounts/$$($(TF_OUT) image_build_service_account)" \
	  --gcs-source-staging-dir "$$($(TF_OUT) sources_bucket)/cloudbuild" \
	  --substitutions "_REGISTRY=$$registry,_TAG=$(tag),_BUILDER_DIGEST=$(builder_digest)" . && \
	echo "export HISTOXAI_CPU_IMAGE=$$registry/histoxai-cpu:$(tag)" && \
	echo "export HISTOXAI_GPU_IMAGE=$$registry/histoxai-gpu:$(tag)"

template: install  ## compile the pipeline with the images of tag=<git commit> to where the retraining trigger reads it
	@command -v terraform >/dev/null || { echo "make template: terraform not found; install Terraform >= 1.6" >&2; exit 2; }
	registry=$$($(TF_OUT) docker_registry) && \
	HISTOXAI_CPU_IMAGE=$$registry/histoxai-cpu:$(tag) HISTOXAI_GPU_IMAGE=$$registry/histoxai-gpu:$(tag) \
	  $(BIN)/histoxai compile --out "$$($(TF_OUT) pipeline_template)"

retrain-source: install  ## pack the retraining function's source: main.py, the project wheel, pinned requirements
	rm -rf $(RETRAIN_SRC) build/lib && mkdir -p $(RETRAIN_SRC)  # build/lib: a stale copy would ship deleted modules
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(RETRAIN_SRC) .
	cp infra/retrain/main.py constraints.txt $(RETRAIN_SRC)/
	cd $(RETRAIN_SRC) && { echo "-c constraints.txt"; ls histoxai-*.whl | sed 's|^|./|'; } > requirements.txt

deploy: retrain-source  ## create or update the cloud side with Terraform (env=dev applies infra/terraform/envs/dev.tfvars)
	@test -f infra/terraform/envs/$(env).tfvars || { echo "make deploy: infra/terraform/envs/$(env).tfvars not found; copy infra/terraform/envs/example.tfvars there and set project_id" >&2; exit 2; }
	@command -v terraform >/dev/null || { echo "make deploy: terraform not found; install Terraform >= 1.6" >&2; exit 2; }
	$(TF) init -input=false
	$(TF) workspace select -or-create $(env)
	$(TF) apply -input=false -var-file=envs/$(env).tfvars -var image_tag=$(tag) \
	  -var retrain_source_dir=$(abspath $(RETRAIN_SRC))

minikube-up:  ## start minikube with Kubeflow Pipelines: UI on :8080, API on :8888 (MINIKUBE_GPU=1 for NVIDIA GPUs)
	bash infra/minikube/up.sh

minikube-run: install  ## build the images inside minikube, compile the demo pipeline and submit it there
	HISTOXAI=$(BIN)/histoxai OUT=$(OUT) bash infra/minikube/run.sh

minikube-down:  ## stop the port-forwards and delete the minikube cluster (KEEP_CLUSTER=1 only stops it)
	bash infra/minikube/down.sh

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(OUT) build *.egg-info

# --- Review app ------------------------------------------------------------------------------------------
APP_USERS ?= $(OUT)/app-users.yaml
APP_PORT ?= 8501
.PHONY: app

app: install  ## the review app on the demo run ($(OUT)/demo, after make demo) at http://127.0.0.1:$(APP_PORT)
	@test -d $(OUT)/demo || { echo "make app: $(OUT)/demo not found; run make demo first" >&2; exit 2; }
	@test -f $(APP_USERS) || { password=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))') && \
	  echo "$$password" | $(BIN)/histoxai app --hash-password demo > $(APP_USERS) && \
	  echo "make app: sign in as 'demo' with password '$$password' (its bcrypt hash is in $(APP_USERS);" \
	       "delete that file for a new password)"; }
	$(BIN)/histoxai app --run $(OUT)/demo --users $(APP_USERS) --port $(APP_PORT)
