//! envoy/envoy-provider-tls.yaml, run with its provider swapped for the local mock
//! over plain HTTP (no provider is reachable here; `envoy --mode validate` checks the
//! TLS part, tests/configs.rs): the key from the environment is added to every
//! attempt, replaces the client's, and shows nowhere an operator looks. The attempt
//! role runs from the cluster's upstream filters, as the Istio and Envoy Gateway
//! manifests attach it.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use mock_upstream::MockOptions;
use serde_json::{json, Value};

const KEY_VARIABLE: &str = "OPENAI_API_KEY";
const KEY: &str = "sk-test-ai-fallback-4f1c9e7d2b8a6053";

/// The example with ports 0, the mock as its provider, the built .wasm and `plugin`.
fn config(mock_port: u16, plugin: &Value) -> Value {
    let mut config = load_yaml(&repo_root().join("envoy/envoy-provider-tls.yaml"));
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = json!(0);
    let plugin_text = json!(plugin.to_string());
    let gateway = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        [0]["typed_config"]["config"];
    assert_eq!(gateway["root_id"], "ai_fallback_gateway");
    gateway["configuration"]["value"] = plugin_text.clone();

    let cluster = &mut config["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "openai");
    assert_eq!(
        cluster["transport_socket"]["typed_config"]["sni"],
        "api.openai.com"
    );
    cluster.as_object_mut().unwrap().remove("transport_socket");
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"] = json!({"address": "127.0.0.1", "port_value": mock_port});
    let options = &mut cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    // auto_config picks the protocol by TLS ALPN; the mock speaks plain HTTP/1.1.
    options.as_object_mut().unwrap().remove("auto_config");
    options["explicit_http_config"] = json!({"http_protocol_options": {}});
    let filters = options["http_filters"].as_array_mut().unwrap();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ai_fallback_attempt",
            "envoy.filters.http.credential_injector",
            "envoy.filters.http.upstream_codec"
        ]
    );
    let attempt = &mut filters[0]["typed_config"]["config"];
    assert_eq!(attempt["root_id"], "ai_fallback_attempt");
    attempt["configuration"]["value"] = plugin_text;
    attempt["vm_config"]["code"]["local"]["filename"] = json!(wasm_path().display().to_string());
    gateway_wasm(&mut config)["vm_config"]["code"]["local"]["filename"] =
        json!(wasm_path().display().to_string());
    config
}

fn gateway_wasm(config: &mut Value) -> &mut Value {
    &mut connection_manager(config)["http_filters"][0]["typed_config"]["config"]
}

#[tokio::test]
async fn the_key_reaches_every_attempt_and_nothing_else() {
    // This file's only test, so no other thread reads the environment meanwhile;
    // Envoy inherits it.
    std::env::set_var(KEY_VARIABLE, KEY);
    let mock = Mock::start_with(MockOptions {
        expected_api_key: Some(KEY.to_string()),
        name: "provider".to_string(),
    });
    let envoy = Envoy::start(&config(
        mock.port(),
        &json!({"chains": {"a+status-502": ["b"]}}),
    ));

    let response = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer a-client-key")
        .body(chat_body("a+status-502"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["model"], "b",
        "fell back through the cluster's filters"
    );

    let requests = mock.requests();
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    for request in &requests {
        let authorizations: Vec<&str> = request
            .headers
            .iter()
            .filter(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(authorizations, [format!("Bearer {KEY}")]);
        assert_eq!(request.header("host"), Some("api.openai.com"));
    }

    for (what, text) in [
        ("Envoy's log", envoy.log()),
        (
            "/config_dump",
            envoy.admin_get("/config_dump?include_eds").1,
        ),
        (
            "the secrets' dump",
            envoy.admin_get("/config_dump?resource=static_secrets").1,
        ),
        ("/stats", envoy.admin_get("/stats").1),
        ("/clusters", envoy.admin_get("/clusters").1),
    ] {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(!text.contains(KEY), "the key shows in {what}");
    }
}
