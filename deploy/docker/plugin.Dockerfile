# The filter as a Wasm OCI image for Istio's WasmPlugin (and Envoy Gateway's
# EnvoyExtensionPolicy code.type Image): an empty root holding only /plugin.wasm, one
# layer. That is the "compat" layout Istio's image fetcher takes: a single layer
# whose only file is plugin.wasm. `make image` builds it and checks the layer.
FROM scratch
COPY plugin.wasm /plugin.wasm
