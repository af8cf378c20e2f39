#!/usr/bin/env bash
# make image: the filter as a Wasm OCI image, `FROM scratch` with the module as
# /plugin.wasm in a single layer (what Istio's WasmPlugin and Envoy Gateway's
# EnvoyExtensionPolicy pull), tagged $PLUGIN_IMAGE. Then `docker save` and a look
# inside the archive prove the layout: one layer, holding only plugin.wasm.
# Push it with `docker tag $PLUGIN_IMAGE REGISTRY/ai-fallback:VERSION && docker push ...`.
set -euo pipefail
cd "$(dirname "$0")/../.."

PLUGIN_IMAGE=${PLUGIN_IMAGE:-ai-fallback/plugin:local}
WASM=${AI_FALLBACK_WASM:-target/wasm32-wasip1/release/ai_fallback.wasm}
context=target/docker/plugin

[ -f "$WASM" ] || { echo "$WASM is missing: run make build" >&2; exit 1; }
rm -rf "$context"
mkdir -p "$context"
cp "$WASM" "$context/plugin.wasm"
docker build --quiet -t "$PLUGIN_IMAGE" -f deploy/docker/plugin.Dockerfile "$context" >/dev/null
echo "built $PLUGIN_IMAGE from $WASM"
docker save "$PLUGIN_IMAGE" -o "$context/image.tar"
python3 deploy/docker/check-oci-image.py "$context/image.tar" "$WASM"
