//! Fallback across providers and endpoints under the real Envoy binary: the shipped
//! two-provider example, pointed at three mocks that each expect their own API key.

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

const CHAT: &str = "/v1/chat/completions";
const CLIENT_KEY: &str = "Bearer sk-client-own-key";

struct Providers {
    envoy: Envoy,
    /// openai, its EU endpoint, openrouter.
    openai: Mock,
    openai_eu: Mock,
    openrouter: Mock,
}

fn mock(name: &str, key: &str) -> Mock {
    Mock::start_with(MockOptions {
        expected_api_key: Some(key.to_string()),
        name: name.to_string(),
    })
}

fn plugin() -> Value {
    json!({
        "providers": {
            "openai_eu": {},
            "openrouter": {"base_path": "/api/v1"}
        },
        "chains": {
            "gpt+status-502": [
                {"model": "eu+status-502", "provider": "openai_eu"},
                {"model": "or-name", "provider": "openrouter"}
            ],
            "regional+status-503": [{"model": "eu-ok", "provider": "openai_eu"}],
            "s+status-502": [
                {"model": "eu+status-502", "provider": "openai_eu"},
                {"model": "or-stream+chunks-3+gap-50", "provider": "openrouter"}
            ],
            "pay+status-402": [{"model": "eu-ok", "provider": "openai_eu"}],
            "quota+status-429+body-quota": [{"model": "eu-ok", "provider": "openai_eu"}],
            "same+status-402": ["same-provider-model"],
            "down+status-502": [
                {"model": "eu-pay+status-402", "provider": "openai_eu"},
                {"model": "eu-pay-again", "provider": "openai_eu"}
            ]
        }
    })
}

/// `envoy/envoy-two-providers.yaml` with local mocks instead of the providers: no
/// TLS, static addresses, the keys inline instead of from the environment.
fn start() -> Providers {
    let openai = mock("openai", "key-a");
    let openai_eu = mock("openai_eu", "key-a");
    let openrouter = mock("openrouter", "key-b");
    let mut config = load_yaml(&repo_root().join("envoy/envoy-two-providers.yaml"));
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
        json!(0);
    for secret in config["static_resources"]["secrets"]
        .as_array_mut()
        .unwrap()
    {
        let key = if secret["name"] == "openai_key" {
            "key-a"
        } else {
            "key-b"
        };
        secret["generic_secret"]["secret"] = json!({"inline_string": key});
    }
    let wasm = wasm_path().display().to_string();
    let plugin_text = plugin().to_string();
    let set_wasm = |filter: &mut Value| {
        let config = &mut filter["typed_config"]["config"];
        config["vm_config"]["code"]["local"]["filename"] = json!(wasm);
        config["configuration"]["value"] = json!(plugin_text);
    };
    set_wasm(&mut connection_manager(&mut config)["http_filters"][0]);
    for cluster in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        let port = match cluster["name"].as_str().unwrap() {
            "openai" => openai.port(),
            "openai_eu" => openai_eu.port(),
            _ => openrouter.port(),
        };
        cluster["type"] = json!("STATIC");
        cluster.as_object_mut().unwrap().remove("transport_socket");
        let endpoint =
            &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        endpoint["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": port});
        let options = &mut cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        set_wasm(&mut options["http_filters"][0]);
    }
    let envoy = Envoy::start(&config);
    Providers {
        envoy,
        openai,
        openai_eu,
        openrouter,
    }
}

async fn chat(envoy: &Envoy, body: &Value) -> (u16, String) {
    let response = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .header("authorization", CLIENT_KEY)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn seen(mock: &Mock) -> Vec<(String, String, String)> {
    mock.requests()
        .into_iter()
        .map(|r| {
            (
                r.model.clone().unwrap_or_default(),
                r.header("authorization").unwrap_or_default().to_string(),
                r.path.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_failing_provider_is_answered_by_the_next_under_its_own_name_and_key() {
    let p = start();
    let (status, body) = chat(
        &p.envoy,
        &json!({"model": "gpt+status-502", "messages": []}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["model"], "or-name");
    let key_a = "Bearer key-a".to_string();
    let chat = CHAT.to_string();
    assert_eq!(
        seen(&p.openai),
        [("gpt+status-502".into(), key_a.clone(), chat.clone())]
    );
    assert_eq!(seen(&p.openai_eu), [("eu+status-502".into(), key_a, chat)]);
    assert_eq!(
        seen(&p.openrouter),
        [(
            "or-name".into(),
            "Bearer key-b".into(),
            "/api/v1/chat/completions".into()
        )],
        "the second provider sees its own model name, key and path, never the first's key"
    );
    let everywhere = [&p.openai, &p.openai_eu, &p.openrouter];
    for mock in everywhere {
        for request in mock.requests() {
            assert_ne!(request.header("authorization"), Some(CLIENT_KEY));
            assert_eq!(request.header("x-envoy-attempt-count"), None);
            assert_eq!(request.header("x-envoy-original-host"), None);
        }
    }
}

#[tokio::test]
async fn an_endpoint_fallback_within_one_provider() {
    let p = start();
    let (status, body) = chat(
        &p.envoy,
        &json!({"model": "regional+status-503", "messages": []}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(models_seen(&p.openai), ["regional+status-503"]);
    assert_eq!(models_seen(&p.openai_eu), ["eu-ok"]);
    assert!(p.openrouter.requests().is_empty());
}

#[tokio::test]
async fn a_stream_crosses_providers() {
    let p = start();
    let request = json!({"model": "s+status-502", "stream": true, "messages": []});
    let (status, text) = chat(&p.envoy, &request).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("\"model\":\"or-stream+chunks-3+gap-50\""),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(models_seen(&p.openrouter), ["or-stream+chunks-3+gap-50"]);
}

#[tokio::test]
async fn the_chain_order_holds_over_many_requests() {
    let p = start();
    for _ in 0..20 {
        let (status, _) = chat(
            &p.envoy,
            &json!({"model": "gpt+status-502", "messages": []}),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(models_seen(&p.openai), vec!["gpt+status-502"; 20]);
    assert_eq!(models_seen(&p.openai_eu), vec!["eu+status-502"; 20]);
    assert_eq!(models_seen(&p.openrouter), vec!["or-name"; 20]);
}

/// The `class` counters of the filter's attempts, by stat name.
fn attempt_classes(envoy: &Envoy) -> Vec<String> {
    let (_, stats) = envoy.admin_get("/stats?filter=ai_fallback.attempts_total");
    stats
        .lines()
        .filter(|line| !line.ends_with(": 0"))
        .map(str::to_string)
        .collect()
}

/// A 402 (or a 429 saying the quota is gone) is about one provider's key or
/// account: the next model on another provider, with its own key, answers.
#[tokio::test]
async fn a_refused_key_falls_back_to_another_provider() {
    let p = start();
    for model in ["pay+status-402", "quota+status-429+body-quota"] {
        let (status, body) = chat(&p.envoy, &json!({"model": model, "messages": []})).await;
        assert_eq!(status, 200, "{model}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["model"], "eu-ok");
    }
    assert_eq!(models_seen(&p.openai_eu), ["eu-ok", "eu-ok"]);
    let classes = attempt_classes(&p.envoy);
    assert_eq!(
        classes
            .iter()
            .filter(|line| line.contains("class.provider_denied: 1"))
            .count(),
        2,
        "{classes:?}"
    );
}

/// The same refusal with the next model on the same provider (or one the route's
/// cluster serves) is final: never the same credentials again.
#[tokio::test]
async fn a_refused_key_is_final_on_the_same_provider() {
    let p = start();
    let (status, body) = chat(
        &p.envoy,
        &json!({"model": "same+status-402", "messages": []}),
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(models_seen(&p.openai), ["same+status-402"]);
    assert!(p.openai_eu.requests().is_empty());
    // The second model's provider refuses; the third is on that provider too.
    let (status, body) = chat(
        &p.envoy,
        &json!({"model": "down+status-502", "messages": []}),
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(models_seen(&p.openai_eu), ["eu-pay+status-402"]);
    assert!(p.openrouter.requests().is_empty());
}
