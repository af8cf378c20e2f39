#!/usr/bin/env python3
"""Checks a `docker save` archive of the plugin image: exactly one layer, and that
layer holds exactly one regular file, plugin.wasm, equal to the module built.

usage: check-oci-image.py IMAGE.tar MODULE.wasm

Reads both archive layouts `docker save` writes: the legacy one (manifest.json
naming <id>/layer.tar) and the OCI one of newer engines (manifest.json naming
blobs/sha256/<digest>). Only the Python standard library is used.
"""
import hashlib
import io
import json
import sys
import tarfile


def fail(message):
    print(f"check-oci-image: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail(__doc__.strip().splitlines()[2])
    archive_path, module_path = sys.argv[1], sys.argv[2]
    with open(module_path, "rb") as f:
        module = f.read()
    with tarfile.open(archive_path) as archive:
        manifests = json.load(archive.extractfile("manifest.json"))
        if len(manifests) != 1:
            fail(f"{len(manifests)} images in the archive, expected 1")
        layers = manifests[0]["Layers"]
        if len(layers) != 1:
            fail(f"the image has {len(layers)} layers, expected 1: {layers}")
        layer_bytes = archive.extractfile(layers[0]).read()
    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        members = layer.getmembers()
        files = [m for m in members if m.isfile()]
        names = [m.name.lstrip("./") for m in files]
        if names != ["plugin.wasm"]:
            fail(f"the layer holds {[m.name for m in members]}, expected only plugin.wasm")
        wasm = layer.extractfile(files[0]).read()
    if wasm != module:
        fail(f"plugin.wasm in the image differs from {module_path}")
    if wasm[:4] != b"\0asm":
        fail("plugin.wasm is not a WebAssembly module")
    digest = hashlib.sha256(wasm).hexdigest()
    print(f"one layer ({layers[0]}), holding only plugin.wasm: {len(wasm)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
