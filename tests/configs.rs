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
            // The provider examples read their keys from the environment.
            .env("OPENAI_API_KEY", "placeholder-for-validation")
            .env("OPENROUTER_API_KEY", "placeholder-for-validation")
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

/// A VM that fails at run time is replaced on its worker (FAIL_RELOAD), in every
/// wasm filter of every shipped config, downstream and upstream: FAIL_OPEN would
/// leave that worker without fallbacks for as long as Envoy runs.
#[test]
fn every_shipped_wasm_filter_reloads_a_failed_vm() {
    for path in shipped_envoy_configs() {
        let mut config = load_yaml(&path);
        let mut policies = Vec::new();
        testkit::config::for_each_wasm_filter(&mut config, |plugin| {
            policies.push((plugin["name"].clone(), plugin["failure_policy"].clone()));
        });
        assert!(
            policies.len() >= 2,
            "{}: both roles are wasm filters",
            path.display()
        );
        for (name, policy) in policies {
            assert_eq!(policy, "FAIL_RELOAD", "{}: {name}", path.display());
        }
    }
}

#[test]
fn a_rejected_plugin_configuration_stops_envoy_from_starting() {
    let mock = Mock::start();
    // The same example with a valid configuration starts: a refusal below is the
    // plugin's doing, not the harness's.
    let valid = example_config(mock.port(), &json!({"chains": {"a": ["b"]}}));
    drop(Envoy::try_start(&valid).expect("Envoy starts with a valid configuration"));
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

/// Sets the `failure_policy` of both roles.
fn set_failure_policy(config: &mut serde_json::Value, policy: &str) {
    let manager = connection_manager(config);
    let gateway = &mut manager["http_filters"][0]["typed_config"]["config"];
    assert_eq!(gateway["root_id"], "ai_fallback_gateway");
    gateway["failure_policy"] = json!(policy);
    let attempt = &mut manager["http_filters"][1]["typed_config"]["upstream_http_filters"][0]
        ["typed_config"]["config"];
    assert_eq!(attempt["root_id"], "ai_fallback_attempt");
    attempt["failure_policy"] = json!(policy);
}

/// Envoy must exit with status 1 before serving: `try_start` fails (it waits for
/// readiness) or, should Envoy have become ready, it exits on its own.
fn assert_refused_at_startup(config: &serde_json::Value, what: &str) {
    match Envoy::try_start(config) {
        Ok(mut envoy) => {
            let exited = envoy.exit_status(Duration::from_secs(5));
            panic!("Envoy served with {what} (then exited: {exited:?})");
        }
        Err(log) => assert!(
            log.contains("Envoy exited with exit status: 1"),
            "{what}: Envoy did not exit with status 1:\n{log}"
        ),
    }
}

#[test]
fn a_rejected_plugin_configuration_is_refused_whatever_the_failure_policy() {
    let mock = Mock::start();
    // FAIL_RELOAD is the example's (and the recommended) policy; it is about a VM that
    // crashes while serving, not about one that never started.
    for policy in ["FAIL_OPEN", "FAIL_CLOSED", "FAIL_RELOAD"] {
        let mut config = example_config(mock.port(), &json!({"chains": {"a": []}}));
        set_failure_policy(&mut config, policy);
        assert_refused_at_startup(&config, &format!("a rejected configuration and {policy}"));
    }
    assert!(mock.requests().is_empty());
}

#[test]
fn each_kind_of_rejected_value_stops_envoy_under_the_example_policy() {
    let mock = Mock::start();
    let plugin_texts = [
        "not json".to_string(),
        "[]".to_string(),
        json!({"role": "router"}).to_string(),
        json!({"chains": {"a": ["b", "b"]}}).to_string(),
        json!({"chains": {"a": [""]}}).to_string(),
        json!({"default_chain": "b"}).to_string(),
        json!({"chains": {"a": (0..17).map(|i| format!("m{i}")).collect::<Vec<_>>()}}).to_string(),
        json!({"max_body_bytes": 0}).to_string(),
        json!({"paths": "/v1/chat/completions"}).to_string(),
        json!({"fallback_on_reset": "yes"}).to_string(),
    ];
    for text in plugin_texts {
        let mut config = example_config(mock.port(), &json!({}));
        // The raw text, which need not be JSON, as both roles' configuration.
        testkit::config::set_plugin_configuration(&mut config, &text);
        assert_refused_at_startup(&config, &format!("plugin configuration {text}"));
    }
    assert!(mock.requests().is_empty());
}

/// A free loopback port (bound, then released) for a listener that must keep its
/// address across updates.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Writes the listener as the file-based LDS resource, atomically (a rename in the
/// watched directory is what Envoy reacts to).
fn write_lds(dir: &std::path::Path, listener: &serde_json::Value) {
    let resources = json!({"resources": [listener]});
    let staging = dir.join("lds.json.tmp");
    std::fs::write(&staging, resources.to_string()).unwrap();
    std::fs::rename(&staging, dir.join("lds.json")).unwrap();
}

fn wait_for_stat(envoy: &Envoy, name: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while envoy.stat(name) < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not reach {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn chat(envoy: &Envoy, model: &str) -> (u16, serde_json::Value) {
    let response = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(model))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_rejected_configuration_update_keeps_the_previous_one_serving() {
    // What a control plane (Istio's WasmPlugin, any xDS server) meets: Envoy refuses
    // the listener update whose plugin configuration the filter rejects, and goes on
    // serving with the configuration it had.
    let mock = Mock::start();
    let lds_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = example_config(mock.port(), &json!({"chains": {"a+status-502": ["b"]}}));
    let mut listener = config["static_resources"]["listeners"][0].take();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    listener["address"]["socket_address"]["port_value"] = json!(port);
    write_lds(lds_dir.path(), &listener);
    config["static_resources"]
        .as_object_mut()
        .unwrap()
        .remove("listeners");
    config["node"] = json!({"id": "ai-fallback-test", "cluster": "ai-fallback-test"});
    config["dynamic_resources"] = json!({"lds_config": {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": lds_dir.path().join("lds.json"),
            "watched_directory": {"path": lds_dir.path()},
        },
    }});
    let envoy = Envoy::start(&config);
    assert_eq!(envoy.port, port);
    assert_eq!(chat(&envoy, "a+status-502").await.1["model"], "b");

    let mut rejected = listener.clone();
    set_plugin_config_of_listener(&mut rejected, r#"{"chains": {"a+status-502": []}}"#);
    write_lds(lds_dir.path(), &rejected);
    wait_for_stat(&envoy, "listener_manager.lds.update_rejected", 1);
    mock.clear();
    assert_eq!(chat(&envoy, "a+status-502").await.1["model"], "b");
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);

    // A valid update is taken.
    let mut accepted = listener.clone();
    set_plugin_config_of_listener(&mut accepted, r#"{"chains": {"a+status-502": ["c"]}}"#);
    write_lds(lds_dir.path(), &accepted);
    wait_for_stat(&envoy, "listener_manager.lds.update_success", 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while chat(&envoy, "a+status-502").await.1["model"] != "c" {
        assert!(std::time::Instant::now() < deadline, "update not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), 1);
}

fn set_plugin_config_of_listener(listener: &mut serde_json::Value, text: &str) {
    let manager = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    manager["http_filters"][0]["typed_config"]["config"]["configuration"]["value"] = json!(text);
    manager["http_filters"][1]["typed_config"]["upstream_http_filters"][0]["typed_config"]
        ["config"]["configuration"]["value"] = json!(text);
}
