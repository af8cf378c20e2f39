//! What the README's "Deploy" section ships, checked without a cluster: every YAML
//! file parses; the Docker harness's Envoy config is the example's but for what a
//! container network needs; the provider TLS example keeps its key out of the config
//! and the logs. (Each Envoy config is also run through `envoy --mode validate` by
//! tests/configs.rs; `make docker-test` runs the Docker stack for real.)

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
