#!/usr/bin/env python3
"""Validates Kubernetes objects against the real CRDs, the way the apiserver does.

Usage: crd_validate.py REFS_DIR MANIFEST.yaml... > report.json

REFS_DIR holds the published CRDs (../shared/deploy-refs). Every object is checked
against each release named in RELEASES for its API group, as `kubectl apply
--validate=strict` (server-side, fieldValidation=Strict) would on a cluster that has
those CRDs:

- the object's apiVersion must name a version the CRD serves (`served: false` is refused);
- the version's openAPIV3Schema is read as the apiserver reads a structural schema:
  `default`s are applied first; a null is kept only where `nullable: true` (elsewhere it
  is pruned, as the apiserver does); an unknown field is an error unless the node has
  `x-kubernetes-preserve-unknown-fields` (or `x-kubernetes-embedded-resource` for
  apiVersion/kind/metadata); `x-kubernetes-int-or-string` takes an integer or a
  string; type, enum, pattern, lengths, bounds, item counts, `allOf`/`anyOf`/`oneOf`/
  `not`, and `x-kubernetes-list-type` set/map uniqueness are checked;
- every CEL rule (`x-kubernetes-validations`) on a node the object reaches is evaluated
  with cel-python (module celpy), `self` bound to that node's value with the property
  names escaped as Kubernetes does (`namespace` is `__namespace__`). Transition rules
  (those that read `oldSelf`) are not evaluated: the apiserver skips them on create.
  A rule that celpy cannot compile or evaluate is listed, not passed.

Exit status 0 when every object passes everywhere, 1 otherwise; the JSON report on
stdout says, per object and release, the errors, the CEL rules evaluated and those
not evaluated (with why), and the string formats that were not checked.
"""

import copy
import glob
import json
import os
import re
import sys

import celpy
import yaml
from celpy import celtypes

# The releases each API group is checked against: the minimum and the latest.
# Gateway API: the standard channel, the experimental one for a kind not in it.
RELEASES = {
    "networking.istio.io": [
        ("Istio 1.28.0", ["istio/istio-1.28.0-crds.yaml"]),
        ("Istio 1.30.3", ["istio/istio-1.30.3-crds.yaml"]),
    ],
    "extensions.istio.io": [
        ("Istio 1.28.0", ["istio/istio-1.28.0-crds.yaml"]),
        ("Istio 1.30.3", ["istio/istio-1.30.3-crds.yaml"]),
    ],
    "gateway.envoyproxy.io": [
        ("Envoy Gateway 1.6.0", ["envoy-gateway/v1.6.0-*.yaml"]),
        ("Envoy Gateway 1.9.0", ["envoy-gateway/v1.9.0-*.yaml"]),
    ],
    "gateway.networking.k8s.io": [
        (
            "Gateway API 1.6.1",
            ["gateway-api/v1.6.1-standard-*.yaml"],
            ["gateway-api/v1.6.1-experimental-*.yaml"],
        ),
    ],
}

# Kubernetes' escaping of property names in CEL (apiserver/pkg/cel/escaping.go).
CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
    "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
    "void", "while",
}

# String formats the apiserver checks and this script checks too.
CHECKED_FORMATS = {"int32", "int64", "double", "float", "byte", "date-time", "uri"}


def escape_property(name):
    if name in CEL_RESERVED:
        return "__%s__" % name
    if not re.fullmatch(r"[a-zA-Z_.\-/][a-zA-Z0-9_.\-/]*", name):
        return None  # not accessible from CEL
    name = name.replace("__", "__underscores__")
    return name.replace(".", "__dot__").replace("-", "__dash__").replace("/", "__slash__")


def to_cel(value, schema):
    """The CEL value of `value`, typed by its schema as the apiserver types it."""
    schema = schema or {}
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items")) for v in value])
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    out = {}
    for key, item in value.items():
        if properties is not None and key in properties:
            escaped = escape_property(key)
            if escaped is not None:
                out[celtypes.StringType(escaped)] = to_cel(item, properties[key])
        elif isinstance(additional, dict):
            out[celtypes.StringType(key)] = to_cel(item, additional)
        else:
            out[celtypes.StringType(key)] = to_cel(item, {})
    return celtypes.MapType(out)


class Checker:
    def __init__(self):
        self.errors = []
        self.evaluated = []
        self.not_evaluated = []
        self.unchecked_formats = set()
        self.env = celpy.Environment()

    def error(self, path, message):
        self.errors.append("%s: %s" % (path or "<root>", message))

    # -- defaults and pruning, as the apiserver does before validating ------------

    def default(self, schema, value):
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            for key in list(value):
                sub = properties.get(key)
                if sub is None and isinstance(schema.get("additionalProperties"), dict):
                    sub = schema["additionalProperties"]
                if value[key] is None and sub is not None and not sub.get("nullable"):
                    del value[key]  # pruned: null where the schema does not allow it
                elif sub is not None:
                    self.default(sub, value[key])
            for key, sub in properties.items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                    self.default(sub, value[key])
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self.default(schema["items"], item)

    # -- structural validation --------------------------------------------------

    def check(self, schema, value, path, root=False):
        if value is None:
            if not schema.get("nullable"):
                self.error(path, "null is not allowed")
            return
        if not self.check_type(schema, value, path):
            return
        self.check_values(schema, value, path)
        if isinstance(value, dict):
            self.check_object(schema, value, path, root)
        elif isinstance(value, list):
            items = schema.get("items")
            for index, item in enumerate(value):
                if isinstance(items, dict):
                    self.check(items, item, "%s[%d]" % (path, index))
            self.check_list_type(schema, value, path)
        for rule in schema.get("x-kubernetes-validations") or []:
            self.evaluate(rule, schema, value, path)

    def check_type(self, schema, value, path):
        kind = schema.get("type")
        if schema.get("x-kubernetes-int-or-string"):
            ok = (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)
            if not ok:
                self.error(path, "must be an integer or a string")
            return ok
        if kind is None:
            if not (schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource")):
                # A structural schema names a type everywhere else.
                self.error(path, "schema without a type")
                return False
            return True
        expected = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
        }[kind]
        if not expected(value):
            self.error(path, "must be of type %s, not %s" % (kind, type(value).__name__))
            return False
        return True

    def check_values(self, schema, value, path):
        if "enum" in schema and value not in schema["enum"]:
            self.error(path, "%r is not one of %s" % (value, schema["enum"]))
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                self.error(path, "longer than %d characters" % schema["maxLength"])
            if "minLength" in schema and len(value) < schema["minLength"]:
                self.error(path, "shorter than %d characters" % schema["minLength"])
            if "pattern" in schema and not re.search(schema["pattern"], value):
                self.error(path, "%r does not match %s" % (value, schema["pattern"]))
            self.check_format(schema, value, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema:
                if value < schema["minimum"] or (schema.get("exclusiveMinimum") and value == schema["minimum"]):
                    self.error(path, "%r is below the minimum %r" % (value, schema["minimum"]))
            if "maximum" in schema:
                if value > schema["maximum"] or (schema.get("exclusiveMaximum") and value == schema["maximum"]):
                    self.error(path, "%r is above the maximum %r" % (value, schema["maximum"]))
            if "multipleOf" in schema and value % schema["multipleOf"] != 0:
                self.error(path, "%r is not a multiple of %r" % (value, schema["multipleOf"]))
            fmt = schema.get("format")
            if fmt == "int32" and not -(2**31) <= value < 2**31:
                self.error(path, "%r is out of int32 range" % value)
            if fmt == "int64" and not -(2**63) <= value < 2**63:
                self.error(path, "%r is out of int64 range" % value)
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                self.error(path, "more than %d items" % schema["maxItems"])
            if "minItems" in schema and len(value) < schema["minItems"]:
                self.error(path, "fewer than %d items" % schema["minItems"])
            if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
                self.error(path, "items are not unique")
        if isinstance(value, dict):
            if "maxProperties" in schema and len(value) > schema["maxProperties"]:
                self.error(path, "more than %d properties" % schema["maxProperties"])
            if "minProperties" in schema and len(value) < schema["minProperties"]:
                self.error(path, "fewer than %d properties" % schema["minProperties"])
            for key in schema.get("required") or []:
                if key not in value:
                    self.error(path, "required field %r is missing" % key)
        # Value validations in junctors: no types or unknown-field rules of their own.
        for sub in schema.get("allOf") or []:
            self.check_junctor(sub, value, path)
        if schema.get("anyOf") and not any(self.passes(s, value) for s in schema["anyOf"]):
            self.error(path, "matches none of anyOf")
        if schema.get("oneOf") and sum(self.passes(s, value) for s in schema["oneOf"]) != 1:
            self.error(path, "does not match exactly one of oneOf")
        if "not" in schema and self.passes(schema["not"], value):
            self.error(path, "matches the schema under not")

    def passes(self, junctor, value):
        probe = Checker()
        probe.check_junctor(junctor, value, "")
        return not probe.errors

    def check_junctor(self, junctor, value, path):
        self.check_values(junctor, value, path)
        if isinstance(value, dict):
            for key, sub in (junctor.get("properties") or {}).items():
                if key in value:
                    self.check_junctor(sub, value[key], "%s.%s" % (path, key))
        if isinstance(value, list) and isinstance(junctor.get("items"), dict):
            for index, item in enumerate(value):
                self.check_junctor(junctor["items"], item, "%s[%d]" % (path, index))

    def check_format(self, schema, value, path):
        fmt = schema.get("format")
        if not fmt:
            return
        if fmt not in CHECKED_FORMATS:
            self.unchecked_formats.add(fmt)
            return
        if fmt == "date-time" and not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            self.error(path, "%r is not a date-time" % value)
        if fmt == "uri" and not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", value):
            self.error(path, "%r is not a URI" % value)

    def check_object(self, schema, value, path, root):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        embedded = schema.get("x-kubernetes-embedded-resource")
        for key, item in value.items():
            sub_path = "%s.%s" % (path, key) if path else key
            if root and key == "metadata":
                continue  # ObjectMeta: validated by the apiserver itself (check_metadata)
            if key in properties:
                self.check(properties[key], item, sub_path)
            elif isinstance(additional, dict):
                self.check(additional, item, sub_path)
            elif additional is True or preserve:
                continue
            elif (root or embedded) and key in ("apiVersion", "kind", "metadata"):
                continue
            else:
                self.error(sub_path, "unknown field (strict field validation rejects it)")

    def check_list_type(self, schema, value, path):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            if len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
                self.error(path, "duplicate entries in a list of type set")
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen = set()
            for item in value:
                if isinstance(item, dict):
                    key = tuple(json.dumps(item.get(k)) for k in keys)
                    if key in seen:
                        self.error(path, "duplicate entries for map keys %s = %s" % (keys, key))
                    seen.add(key)

    # -- CEL --------------------------------------------------------------------

    def evaluate(self, rule, schema, value, path):
        text = rule["rule"]
        entry = {"path": path, "rule": text}
        if re.search(r"\boldSelf\b", text):
            entry["why"] = "transition rule (reads oldSelf): the apiserver skips it on create"
            self.not_evaluated.append(entry)
            return
        try:
            program = self.env.program(self.env.compile(text))
            result = program.evaluate({"self": to_cel(value, schema)})
        except Exception as e:  # celpy raises its own errors for what it cannot run
            entry["why"] = "celpy could not evaluate it: %s: %s" % (type(e).__name__, str(e)[:300])
            self.not_evaluated.append(entry)
            return
        if isinstance(result, celpy.CELEvalError):
            # Kubernetes treats an evaluation error as a failed rule.
            entry["result"] = "error: %s" % str(result)[:300]
            self.evaluated.append(entry)
            self.error(path, "CEL rule %r could not be evaluated on this object: %s" % (text, str(result)[:300]))
            return
        entry["result"] = bool(result)
        self.evaluated.append(entry)
        if result is not True and result != celtypes.BoolType(True):
            self.error(path, rule.get("message") or "CEL rule failed: %s" % text)


def load_crds(refs, patterns):
    crds = {}
    for pattern in patterns:
        files = sorted(glob.glob(os.path.join(refs, pattern)))
        if not files:
            raise SystemExit("no CRD file matches %s in %s" % (pattern, refs))
        for name in files:
            with open(name) as f:
                for document in yaml.safe_load_all(f):
                    if document and document.get("kind") == "CustomResourceDefinition":
                        spec = document["spec"]
                        crds[(spec["group"], spec["names"]["kind"])] = (os.path.relpath(name, refs), document)
    return crds


def check_metadata(checker, obj):
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        checker.error("metadata.name", "required")
        return
    name = metadata["name"]
    if len(name) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name):
        checker.error("metadata.name", "%r is not a DNS subdomain" % name)
    allowed = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}
    for key in metadata:
        if key not in allowed:
            checker.error("metadata." + key, "unknown or server-set field")


def validate(obj, crd_file, crd):
    checker = Checker()
    api_version = obj.get("apiVersion", "")
    version = api_version.split("/", 1)[1] if "/" in api_version else api_version
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    entry = versions.get(version)
    if entry is None:
        checker.error("apiVersion", "%s is not a version of this CRD (%s)" % (version, ", ".join(versions)))
    elif not entry.get("served"):
        checker.error("apiVersion", "%s is not served (served: false)" % version)
    else:
        schema = entry["schema"]["openAPIV3Schema"]
        obj = copy.deepcopy(obj)
        checker.default(schema, obj)
        check_metadata(checker, obj)
        checker.check(schema, obj, "", root=True)
    return {
        "crd": crd_file,
        "errors": checker.errors,
        "cel_evaluated": checker.evaluated,
        "cel_not_evaluated": checker.not_evaluated,
        "formats_not_checked": sorted(checker.unchecked_formats),
    }


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    refs = sys.argv[1]
    report = []
    failed = False
    cache = {}
    for path in sys.argv[2:]:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for index, obj in enumerate(documents):
            if "apiVersion" not in obj:
                continue
            group = obj["apiVersion"].split("/", 1)[0] if "/" in obj["apiVersion"] else ""
            name = "%s#%d %s/%s" % (path, index, obj.get("kind"), (obj.get("metadata") or {}).get("name"))
            item = {"object": name, "apiVersion": obj["apiVersion"], "kind": obj.get("kind"), "releases": []}
            releases = RELEASES.get(group)
            if releases is None:
                item["error"] = "no CRDs known for API group %r" % group
                failed = True
            for release in releases or []:
                label, patterns = release[0], release[1]
                fallback = release[2] if len(release) > 2 else []
                key = (label, tuple(patterns))
                if key not in cache:
                    cache[key] = load_crds(refs, patterns)
                    if fallback:
                        cache[key + ("fallback",)] = load_crds(refs, fallback)
                crds = cache[key]
                channel = patterns[0]
                found = crds.get((group, obj.get("kind")))
                if found is None and fallback:
                    found = cache[key + ("fallback",)].get((group, obj.get("kind")))
                    channel = fallback[0]
                if found is None:
                    result = {"errors": ["%s has no CRD for %s" % (label, obj.get("kind"))]}
                else:
                    result = validate(obj, found[0], found[1])
                result["release"] = label
                result["channel"] = channel
                failed = failed or bool(result["errors"])
                item["releases"].append(result)
            report.append(item)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
