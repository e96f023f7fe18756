#!/usr/bin/env bash
# Build the images inside minikube (no registry needed), compile the demo pipeline with them, and submit
# it to KFP through kfp.Client. Run up.sh first. Without MINIKUBE_GPU=1 the GPU steps use the CPU image.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need minikube curl

HISTOXAI="${HISTOXAI:-.venv/bin/histoxai}"
OUT="${OUT:-outputs}/minikube"
TAG="${IMAGE_TAG:-local}"
kfp_host="http://localhost:$API_PORT"

[[ -x "$HISTOXAI" ]] || die "$HISTOXAI not found; run make install (or set HISTOXAI)"
curl -fsS "$kfp_host/apis/v2beta1/healthz" >/dev/null || die "no KFP API at $kfp_host; run make minikube-up"

# The pods read samples through the storage layer (local paths inside the pod, or gs://): give them a
# bucket holding phantom samples (histoxai phantom --out gs://BUCKET/phantom) and credentials in the image
# environment, e.g. with minikube's gcp-auth addon.
[[ -n "${SAMPLES_URI:-}" ]] || die "set SAMPLES_URI to a gs:// folder of samples the cluster can read (see make minikube-run in docs/cloud.md)"

# Images go straight into the cluster's container runtime; a tag other than :latest makes pods use them
# without pulling.
minikube -p "$PROFILE" image build -t "histoxai-cpu:$TAG" -f containers/cpu.Dockerfile .
export HISTOXAI_CPU_IMAGE="histoxai-cpu:$TAG" HISTOXAI_GPU_IMAGE="histoxai-cpu:$TAG"
if [[ "$GPU" == 1 ]]; then
  minikube -p "$PROFILE" image build -t "histoxai-gpu:$TAG" -f containers/gpu.Dockerfile .
  HISTOXAI_GPU_IMAGE="histoxai-gpu:$TAG"
fi

accelerator=none
[[ "$GPU" == 1 ]] && accelerator=nvidia.com/gpu

mkdir -p "$OUT"
"$HISTOXAI" compile --out "$OUT/pipeline.yaml" --resources small --config demo --accelerator-type "$accelerator"
"$HISTOXAI" submit --kfp-host "$kfp_host" --package "$OUT/pipeline.yaml" \
  --experiment histoxai-minikube --run-name "demo-$(date +%Y%m%d-%H%M%S)" \
  --samples-uri "$SAMPLES_URI" --samples 3,4,5 --param patch_size=64 --param explain_max_patches=48
echo "Follow the run at http://localhost:$UI_PORT (Runs, experiment histoxai-minikube)."
