//! What the README's "Deploy" section ships, checked without a cluster: every YAML
//! file parses; the Docker harness's Envoy config is the example's but for what a
//! container network needs; every Kubernetes object under deploy/ passes the real
//! CRDs of the minimum and the latest supported releases (deploy/check/crd_validate.py,
//! CEL rules included), and mistakes a cluster would refuse are refused; the minimum
//! versions are stated where they are needed. (Each Envoy config is also run through
//! `envoy --mode validate` by tests/configs.rs; the Istio and Envoy Gateway manifests
//! run in Envoy in tests/deploy_istio.rs and tests/deploy_envoy_gateway.rs; `make
//! docker-test` runs the Docker stack for real.)

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `.yaml`/`.yml` file of the project, outside build outputs and tool dirs.
fn shipped_yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                let skipped = name.starts_with('.') || ["target", "results"].contains(&&*name);
                if !skipped {
                    walk(&path, found);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo_root(), &mut found);
    found.sort();
    found
}

/// The documents of a (multi-document) YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

#[test]
fn every_shipped_yaml_file_parses() {
    let files = shipped_yaml_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    for expected in ["envoy/envoy.yaml", "envoy/docker-compose.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not found in {names:?}"
        );
    }
    for path in &files {
        assert!(
            !yaml_documents(path).is_empty(),
            "{} has no YAML document",
            path.display()
        );
    }
}

/// The example's and the Docker config's plugin configuration (the text both roles
/// share), replaced by a placeholder.
fn take_plugin_text(config: &mut Value) -> String {
    let manager = connection_manager(config);
    let gateway = &mut manager["http_filters"][0]["typed_config"]["config"]["configuration"];
    let text = gateway["value"].as_str().unwrap().to_string();
    gateway["value"] = json!("(plugin configuration)");
    let attempt = &mut manager["http_filters"][1]["typed_config"]["upstream_http_filters"][0]
        ["typed_config"]["config"]["configuration"];
    assert_eq!(
        attempt["value"].as_str(),
        Some(text.as_str()),
        "both roles share it"
    );
    attempt["value"] = json!("(plugin configuration)");
    text
}

#[test]
fn the_docker_config_is_the_example_but_for_addresses_and_chains() {
    let mut example = load_yaml(&repo_root().join("envoy/envoy.yaml"));
    let mut docker = load_yaml(&repo_root().join("envoy/envoy-docker.yaml"));

    let socket =
        |config: &mut Value, pointer: &str| -> Value { config.pointer(pointer).unwrap().clone() };
    let admin = "/admin/address/socket_address";
    let listener = "/static_resources/listeners/0/address/socket_address";
    let upstream = "/static_resources/clusters/0/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address";
    assert_eq!(
        socket(&mut docker, admin),
        json!({"address": "0.0.0.0", "port_value": 9901})
    );
    assert_eq!(
        socket(&mut docker, listener),
        json!({"address": "0.0.0.0", "port_value": 10000})
    );
    assert_eq!(
        socket(&mut docker, upstream),
        json!({"address": "mock", "port_value": 10001})
    );
    for pointer in [admin, listener, upstream] {
        *docker.pointer_mut(pointer).unwrap() = socket(&mut example, pointer);
    }

    let example_plugin: Value = serde_json::from_str(&take_plugin_text(&mut example)).unwrap();
    let docker_plugin: Value = serde_json::from_str(&take_plugin_text(&mut docker)).unwrap();
    // The demo's chains stay, so the README's curl works against the stack too.
    for (model, chain) in example_plugin["chains"].as_object().unwrap() {
        assert_eq!(&docker_plugin["chains"][model], chain, "chain of {model}");
    }
    assert_eq!(
        docker, example,
        "envoy/envoy-docker.yaml must differ from envoy/envoy.yaml only in its addresses \
         and its plugin configuration"
    );
}

// ---------------------------------------------------------------------------------
// Kubernetes manifests (deploy/istio, deploy/envoy-gateway) against the real CRDs

/// The published CRDs the validator reads (never copied into the repository).
fn deploy_refs() -> PathBuf {
    let path = repo_root().join("../shared/deploy-refs");
    assert!(path.is_dir(), "{} is missing", path.display());
    path
}

/// deploy/check/crd_validate.py on `files`, with the venv's Python (cel-python and
/// jsonschema's dependencies, installed by `make setup`): (passed, report).
fn crd_validate(files: &[PathBuf]) -> (bool, Value) {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (or `make test`)",
        python.display()
    );
    let output = std::process::Command::new(python)
        .arg(repo_root().join("deploy/check/crd_validate.py"))
        .arg(deploy_refs())
        .args(files)
        .output()
        .expect("run crd_validate.py");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "crd_validate.py: {e}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

fn deploy_files() -> Vec<PathBuf> {
    shipped_yaml_files()
        .into_iter()
        .filter(|path| path.starts_with(repo_root().join("deploy")))
        .collect()
}

/// Every object's errors, one line each.
fn errors(report: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for object in report.as_array().unwrap() {
        if let Some(error) = object.get("error") {
            lines.push(format!("{}: {error}", object["object"]));
        }
        for release in object["releases"].as_array().unwrap() {
            for error in release["errors"].as_array().unwrap() {
                lines.push(format!(
                    "{} ({}): {}",
                    object["object"],
                    release["release"],
                    error.as_str().unwrap()
                ));
            }
        }
    }
    lines
}

#[test]
fn every_manifest_passes_the_real_crds_at_the_minimum_and_latest_releases() {
    let (passed, report) = crd_validate(&deploy_files());
    assert!(passed, "{}", errors(&report).join("\n"));
    let checked: BTreeSet<String> = report
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|object| {
            let kind = format!(
                "{} {}",
                object["apiVersion"].as_str().unwrap(),
                object["kind"].as_str().unwrap()
            );
            object["releases"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| format!("{kind} @ {}", r["release"].as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut expected = BTreeSet::new();
    for release in ["Istio 1.28.0", "Istio 1.30.3"] {
        for kind in [
            "networking.istio.io/v1alpha3 EnvoyFilter",
            "networking.istio.io/v1 Gateway",
            "networking.istio.io/v1 VirtualService",
            "networking.istio.io/v1 ServiceEntry",
            "networking.istio.io/v1 DestinationRule",
        ] {
            expected.insert(format!("{kind} @ {release}"));
        }
    }
    for release in ["Envoy Gateway 1.6.0", "Envoy Gateway 1.9.0"] {
        for kind in [
            "EnvoyExtensionPolicy",
            "EnvoyPatchPolicy",
            "Backend",
            "BackendTrafficPolicy",
        ] {
            expected.insert(format!("gateway.envoyproxy.io/v1alpha1 {kind} @ {release}"));
        }
    }
    for kind in ["GatewayClass", "Gateway", "HTTPRoute", "BackendTLSPolicy"] {
        expected.insert(format!(
            "gateway.networking.k8s.io/v1 {kind} @ Gateway API 1.6.1"
        ));
    }
    assert_eq!(checked, expected);
    for object in report.as_array().unwrap() {
        for release in object["releases"].as_array().unwrap() {
            if object["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("gateway.networking.k8s.io/")
            {
                assert!(
                    release["channel"].as_str().unwrap().contains("-standard-"),
                    "{} needs the experimental channel",
                    object["object"]
                );
            }
        }
    }
}

/// The CEL rules the manifests reach: every one evaluated (and true), but the
/// transition rules the apiserver skips on create.
#[test]
fn every_cel_rule_the_manifests_reach_is_evaluated() {
    let (_, report) = crd_validate(&deploy_files());
    let mut evaluated = 0;
    let mut not_evaluated = BTreeSet::new();
    for object in report.as_array().unwrap() {
        for release in object["releases"].as_array().unwrap() {
            for rule in release["cel_evaluated"].as_array().unwrap() {
                assert_eq!(rule["result"], true, "{}: {rule}", object["object"]);
                evaluated += 1;
            }
            for rule in release["cel_not_evaluated"].as_array().unwrap() {
                not_evaluated.insert(format!(
                    "{} {}: {} ({})",
                    object["kind"].as_str().unwrap(),
                    rule["path"].as_str().unwrap(),
                    rule["rule"].as_str().unwrap(),
                    rule["why"].as_str().unwrap()
                ));
            }
            assert_eq!(
                release["formats_not_checked"],
                json!([]),
                "{}",
                object["object"]
            );
        }
    }
    assert!(evaluated > 100, "only {evaluated} CEL rules evaluated");
    assert_eq!(
        not_evaluated,
        BTreeSet::from([
            "GatewayClass spec.controllerName: self == oldSelf (transition rule (reads oldSelf): the apiserver skips it on create)".to_string()
        ])
    );
}

/// A change that makes a manifest wrong, and what the report must say about it.
type Mistake = (&'static str, fn(&mut Value), &'static str);

#[test]
fn the_validator_refuses_what_a_cluster_refuses() {
    let mistakes: Vec<Mistake> = vec![
        (
            "BackendTLSPolicy",
            |d| d["apiVersion"] = json!("gateway.networking.k8s.io/v1alpha3"),
            "v1alpha3 is not served",
        ),
        (
            "EnvoyFilter",
            |d| d["spec"]["configPatches"][0]["applyTo"] = json!("UPSTREAM_FILTER"),
            "is not one of",
        ),
        (
            "EnvoyFilter",
            |d| d["spec"]["configPatches"][0]["patch"]["operaton"] = json!("ADD"),
            "operaton: unknown field",
        ),
        (
            "EnvoyFilter",
            |d| {
                d["spec"]["targetRefs"] =
                    json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "x"}])
            },
            "only one of targetRefs or workloadSelector",
        ),
        (
            "DestinationRule",
            |d| d["spec"]["trafficPolicy"]["connectionPool"]["http"]["maxRetry"] = json!(1024),
            "maxRetry: unknown field",
        ),
        (
            "DestinationRule",
            |d| d["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["connectTimeout"] = json!("0s"),
            "must be a valid duration greater than 1ms",
        ),
        (
            "ServiceEntry",
            |d| d["spec"]["hosts"][0] = json!("*"),
            "hostname cannot be wildcard",
        ),
        (
            "VirtualService",
            |d| d["spec"]["http"][0]["timeout"] = json!(300),
            "must be of type string",
        ),
        (
            "EnvoyExtensionPolicy",
            |d| d["spec"]["wasm"][0]["code"]["type"] = json!("HTTP"),
            "If type is HTTP, http field needs to be set",
        ),
        (
            "EnvoyExtensionPolicy",
            |d| d["spec"]["wasm"][0]["rootId"] = json!("x"),
            "rootId: unknown field",
        ),
        (
            "EnvoyPatchPolicy",
            |d| d["spec"]["jsonPatches"][0]["operation"]["op"] = json!("merge"),
            "is not one of",
        ),
        (
            "EnvoyPatchPolicy",
            |d| d["spec"]["jsonPatches"][0]["type"] = json!("Listener"),
            "is not one of",
        ),
        (
            "Backend",
            |d| d["spec"]["endpoints"][0]["fqdn"]["port"] = json!(70000),
            "above the maximum",
        ),
        (
            "BackendTLSPolicy",
            |d| {
                d["spec"]["validation"]
                    .as_object_mut()
                    .unwrap()
                    .remove("hostname");
            },
            "required field 'hostname' is missing",
        ),
        (
            "BackendTLSPolicy",
            |d| {
                d["spec"]["validation"]["caCertificateRefs"] =
                    json!([{"group": "", "kind": "ConfigMap", "name": "ca"}])
            },
            "must not contain both CACertificateRefs and WellKnownCACertificates",
        ),
        (
            "HTTPRoute",
            |d| d["spec"]["rules"][0]["timeouts"]["request"] = json!("5 minutes"),
            "does not match",
        ),
        (
            "HTTPRoute",
            |d| d["spec"]["rules"][0]["timeouts"]["backendRequest"] = json!("600s"),
            "backendRequest timeout cannot be longer than request timeout",
        ),
        (
            "Gateway",
            |d| {
                let l = d["spec"]["listeners"][0].clone();
                d["spec"]["listeners"].as_array_mut().unwrap().push(l);
            },
            "Listener name must be unique within the Gateway",
        ),
        (
            "GatewayClass",
            |d| d["metadata"]["name"] = json!("AI_Fallback"),
            "is not a DNS subdomain",
        ),
    ];
    let manifests: Vec<Value> = deploy_files()
        .iter()
        .flat_map(|p| yaml_documents(p))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (index, (kind, mistake, _)) in mistakes.iter().enumerate() {
        let mut document = manifests
            .iter()
            .find(|d| {
                d["kind"] == *kind
                    && d["apiVersion"].as_str().is_some_and(|v| {
                        !v.starts_with("networking.istio.io") || *kind != "Gateway"
                    })
            })
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone();
        mistake(&mut document);
        let file = dir.path().join(format!("{index}.yaml"));
        std::fs::write(&file, serde_yaml::to_string(&document).unwrap()).unwrap();
        files.push(file);
    }
    let (passed, report) = crd_validate(&files);
    assert!(!passed);
    for (index, (kind, _, expected)) in mistakes.iter().enumerate() {
        let object = &report[index];
        assert_eq!(object["kind"], *kind);
        for release in object["releases"].as_array().unwrap() {
            let errors: Vec<&str> = release["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap())
                .collect();
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{kind} at {}: expected an error containing {expected:?}, got {errors:?}",
                release["release"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The minimum versions: Istio 1.28, Envoy Gateway 1.6, Envoy 1.35

/// Fields of Envoy's API that came after Envoy 1.35 (the oldest Envoy these
/// manifests support): none may appear in them.
const NEWER_THAN_ENVOY_1_35: [&str; 1] = ["request_body_buffer_limit"];

#[test]
fn the_minimum_versions_are_stated_and_kept() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let deploy = readme
        .split("\n## ")
        .find(|section| section.starts_with("Deploy"))
        .expect("README has a Deploy section");
    for minimum in ["Istio 1.28", "Envoy Gateway 1.6", "Envoy 1.35"] {
        assert!(
            deploy.contains(minimum),
            "README Deploy does not state {minimum}"
        );
    }
    let istio = std::fs::read_to_string(repo_root().join("deploy/istio/ai-fallback.yaml")).unwrap();
    assert!(istio.contains("Istio 1.28 or later"));
    let eg =
        std::fs::read_to_string(repo_root().join("deploy/envoy-gateway/ai-fallback.yaml")).unwrap();
    assert!(eg.contains("Envoy Gateway (1.6 or later)"));
    for path in deploy_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for field in NEWER_THAN_ENVOY_1_35 {
            assert!(!text.contains(field), "{} uses {field}", path.display());
        }
    }
    // The validator's releases are the minimum and the latest.
    let validator =
        std::fs::read_to_string(repo_root().join("deploy/check/crd_validate.py")).unwrap();
    for release in [
        "Istio 1.28.0",
        "Istio 1.30.3",
        "Envoy Gateway 1.6.0",
        "Envoy Gateway 1.9.0",
        "Gateway API 1.6.1",
    ] {
        assert!(validator.contains(release), "{release}");
    }
}
