# Settings and helpers shared by up.sh, run.sh and down.sh (sourced, not run).
# Every setting can be overridden from the environment.
# shellcheck shell=bash disable=SC2034  # the settings are read by the scripts that source this file

KFP_VERSION="${KFP_VERSION:-2.17.0}"         # KFP backend release matching the kfp 2.17 SDK
PROFILE="${MINIKUBE_PROFILE:-histoxai}"
CPUS="${MINIKUBE_CPUS:-4}"
MEMORY="${MINIKUBE_MEMORY:-12g}"
GPU="${MINIKUBE_GPU:-0}"                      # 1: pass the host's NVIDIA GPUs through (docker driver)
UI_PORT="${KFP_UI_PORT:-8080}"
API_PORT="${KFP_API_PORT:-8888}"
STATE_DIR="${MINIKUBE_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/histoxai-minikube}"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH; install it first"
  done
}

# Ends the port-forwards a previous up.sh started (only the processes it recorded).
stop_forwards() {
  local pidfile pid
  for pidfile in "$STATE_DIR"/*.pid; do
    [[ -e "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
