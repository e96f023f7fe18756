#!/usr/bin/env bash
# Stop the port-forwards and delete the minikube cluster (KEEP_CLUSTER=1: only stop it, keeping KFP and
# its runs for the next make minikube-up).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need minikube

stop_forwards
if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
  minikube stop --profile "$PROFILE"
else
  minikube delete --profile "$PROFILE"
fi
