//! Every Envoy YAML the project ships is valid for Envoy 1.40, and a plugin
//! configuration the filter rejects keeps Envoy from serving with it.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn shipped_envoy_configs() -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(repo_root().join("envoy"))
        .expect("envoy/")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|e| e == "yaml") && {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                text.contains("static_resources:")
            }
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_shipped_envoy_config_validates() {
    wasm_path(); // the configs load the built module
    let configs = shipped_envoy_configs();
    assert!(!configs.is_empty(), "no Envoy config found under envoy/");
    for path in configs {
        let output = Command::new(envoy_bin())
            .current_dir(repo_root())
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .expect("run envoy --mode validate");
        assert!(
            output.status.success(),
            "{} does not validate:\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_rejected_plugin_configuration_stops_envoy_from_starting() {
    let mock = Mock::start();
    for bad in [
        json!({"chains": {"a": []}}),
        json!({"chain": {}}),
        json!({"fallback_statuses": [200]}),
    ] {
        let config = example_config(mock.port(), &bad);
        match Envoy::try_start(&config) {
            Ok(mut envoy) => {
                let exited = envoy.exit_status(Duration::from_secs(5));
                assert!(
                    exited.is_some_and(|s| !s.success()),
                    "Envoy serves with the rejected plugin configuration {bad}"
                );
            }
            Err(_log) => {} // refused at startup: what an operator should see
        }
    }
    assert!(mock.requests().is_empty());
}
