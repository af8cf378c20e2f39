#!/usr/bin/env bash
# make docker-test: brings envoy/docker-compose.yaml up under a project name of its
# own, waits until Envoy is ready, runs the shared client scenarios (tests/docker.rs)
# against it, prints every container's log if anything failed, and always tears the
# stack down. Expects the images (deploy/docker/build-images.sh) and the .wasm.
set -euo pipefail
cd "$(dirname "$0")/../.."

export ENVOY_IMAGE=${ENVOY_IMAGE:-envoyproxy/envoy:v1.40.0}
export MOCK_IMAGE=${MOCK_IMAGE:-ai-fallback/mock-upstream:local}
project=${DOCKER_TEST_PROJECT:-ai-fallback-test-$$}

# Docker would create a missing bind-mount source as a directory: check first.
wasm=${AI_FALLBACK_WASM:-target/wasm32-wasip1/release/ai_fallback.wasm}
[ -f "$wasm" ] || { echo "docker-test: $wasm is missing: run make build" >&2; exit 1; }
export AI_FALLBACK_WASM=$(realpath "$wasm")

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
compose+=(-p "$project" -f envoy/docker-compose.yaml)

teardown() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" -ne 0 ]; then
    echo "----- docker-test failed ($status): container states and logs -----"
    "${compose[@]}" ps || true
    "${compose[@]}" logs --no-color --timestamps || true
    echo "----- end of container logs -----"
  fi
  "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

echo "docker-test: starting stack $project (Envoy image $ENVOY_IMAGE)"
"${compose[@]}" up -d

# `port` prints 127.0.0.1:PORT, or 0.0.0.0:PORT on older engines.
published() { "${compose[@]}" port "$1" "$2" | tail -n1 | sed 's/^0\.0\.0\.0:/127.0.0.1:/'; }
envoy_addr=$(published envoy 10000)
admin_addr=$(published envoy 9901)
mock_addr=$(published mock 10001)
echo "docker-test: Envoy on $envoy_addr (admin $admin_addr), mock on $mock_addr"

deadline=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin_addr/ready")" = 200 ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "docker-test: Envoy was not ready within 60 s" >&2
    exit 1
  fi
  if [ -z "$("${compose[@]}" ps -q envoy)" ] ||
     [ "$(docker inspect -f '{{.State.Running}}' "$("${compose[@]}" ps -q envoy)")" != true ]; then
    echo "docker-test: the Envoy container is not running" >&2
    exit 1
  fi
  sleep 0.5
done
echo "docker-test: Envoy is ready"

AI_FALLBACK_DOCKER_URL="http://$envoy_addr" \
AI_FALLBACK_DOCKER_MOCK_URL="http://$mock_addr" \
  cargo test -p ai-fallback --test docker -- --ignored --nocapture
