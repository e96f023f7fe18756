#!/usr/bin/env bash
# Start minikube, install Kubeflow Pipelines standalone (pinned platform-agnostic manifests), wait until
# it is ready, and port-forward the UI (http://localhost:8080) and the API (http://localhost:8888).
# MINIKUBE_GPU=1 passes NVIDIA GPUs through (needs the driver and nvidia-container-toolkit on the host).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need minikube kubectl curl

start_args=(start --profile "$PROFILE" --cpus "$CPUS" --memory "$MEMORY" --disk-size 60g)
if [[ "$GPU" == 1 ]]; then
  start_args+=(--driver docker --container-runtime docker --gpus all)
fi
minikube "${start_args[@]}"
kubectl config use-context "$PROFILE" >/dev/null

manifests="github.com/kubeflow/pipelines/manifests/kustomize"
echo "Installing Kubeflow Pipelines $KFP_VERSION ..."
kubectl apply -k "$manifests/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k "$manifests/env/platform-agnostic?ref=$KFP_VERSION"

echo "Waiting for the KFP deployments (the first start pulls images: 5-15 minutes) ..."
kubectl -n kubeflow wait --for=condition=Available deployment --all --timeout=1200s

mkdir -p "$STATE_DIR"
stop_forwards
nohup kubectl -n kubeflow port-forward svc/ml-pipeline-ui "$UI_PORT:80" >"$STATE_DIR/ui.log" 2>&1 &
echo $! >"$STATE_DIR/ui.pid"
nohup kubectl -n kubeflow port-forward svc/ml-pipeline "$API_PORT:8888" >"$STATE_DIR/api.log" 2>&1 &
echo $! >"$STATE_DIR/api.pid"

for _ in $(seq 60); do
  curl -fsS "http://localhost:$API_PORT/apis/v2beta1/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://localhost:$API_PORT/apis/v2beta1/healthz" >/dev/null \
  || die "the KFP API does not answer on port $API_PORT; see $STATE_DIR/api.log"

echo "KFP $KFP_VERSION is up on minikube profile '$PROFILE'."
echo "  UI:  http://localhost:$UI_PORT"
echo "  API: http://localhost:$API_PORT   (make minikube-run submits the demo pipeline here)"
