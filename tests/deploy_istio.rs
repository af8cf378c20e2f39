//! The Istio manifests (deploy/istio/) against the xDS istiod generates for an ingress
//! gateway, in a real Envoy.
//!
//! The gateway's resources are built the way istiod 1.28 builds them (istio/istio at
//! 1.28.0): the listener `0.0.0.0_8080` and its HTTP connection manager from
//! pilot/pkg/networking/core/listener_builder.go (buildHTTPConnectionManager: RDS
//! `http.8080` over ADS, use_remote_address, websocket upgrades, path normalization,
//! then the HTTP filters grpc_stats, fault, cors, router from pilot/pkg/xds/filters);
//! the virtual host `ai.example.com:80` from pilot/pkg/networking/core/gateway.go; the
//! cluster `outbound|443||api.openai.com` as the ServiceEntry (DNS) and
//! DestinationRule (connect timeout, maxRetries) make it. Left out: the filters only
//! Istio's own proxy build has (istio.metadata_exchange, istio.alpn, istio.stats),
//! and the DestinationRule's TLS (the mock speaks plain HTTP).
//!
//! The EnvoyFilter's patches are applied as istiod applies them
//! (pilot/pkg/networking/core/envoyfilter: INSERT_BEFORE the router; MERGE with
//! pkg/proto/merge, where lists append, map entries and Any values are replaced,
//! messages merge); its EXTENSION_CONFIG resources are served over file-based ECDS
//! the way the Istio agent serves them (pkg/wasm/convert.go: the remote module
//! rewritten to a local file, or, when the fetch fails, an RBAC filter in its place).

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
#[path = "deploy_support.rs"]
mod support;

use common::*;
use serde_json::{json, Value};
use support::*;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const EXTENSION_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const CLUSTER: &str = "outbound|443||api.openai.com";

fn typed(kind: &str) -> Value {
    json!({"@type": format!("type.googleapis.com/{kind}")})
}

/// The gateway's listener, route configuration and provider cluster, as istiod makes them.
fn istiod_xds(mock: &Mock) -> (Value, Value, Value) {
    let router = json!({"name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router")});
    let mut grpc_stats = typed("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig");
    grpc_stats["emit_filter_state"] = json!(true);
    grpc_stats["stats_for_all_methods"] = json!(false);
    let listener = json!({
        "name": "0.0.0.0_8080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_0.0.0.0_8080",
                "codec_type": "AUTO",
                "rds": {
                    "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                    "route_config_name": "http.8080"
                },
                "http_filters": [
                    {"name": "envoy.filters.http.grpc_stats", "typed_config": grpc_stats},
                    {"name": "envoy.filters.http.fault", "typed_config": typed("envoy.extensions.filters.http.fault.v3.HTTPFault")},
                    {"name": "envoy.filters.http.cors", "typed_config": typed("envoy.extensions.filters.http.cors.v3.Cors")},
                    router
                ],
                "access_log": [],
                "use_remote_address": true,
                "normalize_path": true,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
                "stream_idle_timeout": "0s"
            }
        }]}]
    });
    let gateway = deploy_object("istio", "Gateway");
    let virtual_service = deploy_object("istio", "VirtualService");
    let server = &gateway["spec"]["servers"][0];
    let host = server["hosts"][0].as_str().unwrap();
    let http = &virtual_service["spec"]["http"][0];
    let routes = json!({
        "name": "http.8080",
        "virtual_hosts": [{
            // util.DomainName(hostname, port)
            "name": format!("{host}:{}", server["port"]["number"]),
            "domains": [host],
            "routes": [{
                "name": http["name"],
                "match": {"prefix": http["match"][0]["uri"]["prefix"], "case_sensitive": true},
                "route": {
                    "cluster": CLUSTER,
                    "timeout": http["timeout"],
                    "host_rewrite_literal": http["rewrite"]["authority"]
                }
            }]
        }],
        "validate_clusters": false,
        "ignore_port_in_host_matching": true
    });
    let rule = deploy_object("istio", "DestinationRule");
    let pool = &rule["spec"]["trafficPolicy"]["connectionPool"];
    let cluster = json!({
        "name": CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": pool["tcp"]["connectTimeout"],
        "dns_lookup_family": "V4_ONLY",
        "circuit_breakers": {"thresholds": [{
            "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 4294967295u32, "max_retries": pool["http"]["maxRetries"],
            "track_remaining": true
        }]},
        "load_assignment": {"cluster_name": CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": mock.port()}}}}]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "3600s"},
                "explicit_http_config": {"http_protocol_options": {}}
            }
        }
    });
    (listener, routes, cluster)
}

/// pkg/proto/merge: lists append, map entries and Any values are replaced, messages
/// merge field by field.
fn proto_merge(dst: &mut Value, src: &Value) {
    const MAPS: [&str; 3] = [
        "typed_extension_protocol_options",
        "typed_per_filter_config",
        "filter_metadata",
    ];
    for (key, value) in src.as_object().unwrap() {
        match value {
            Value::Object(entries) if MAPS.contains(&key.as_str()) => {
                for (entry, item) in entries {
                    dst[key][entry] = item.clone();
                }
            }
            Value::Object(object) if !object.contains_key("@type") && dst[key].is_object() => {
                proto_merge(&mut dst[key], value)
            }
            Value::Array(items) if dst[key].is_array() => dst[key]
                .as_array_mut()
                .unwrap()
                .extend(items.iter().cloned()),
            _ => dst[key] = value.clone(),
        }
    }
}

fn patches(filter: &Value, apply_to: &str) -> Vec<Value> {
    filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == apply_to)
        .cloned()
        .collect()
}

/// What the Istio agent hands Envoy for an EXTENSION_CONFIG resource: the module
/// fetched and the code rewritten to the local file, or, when the fetch failed, the
/// RBAC filter convert.go builds (allow-all when the Wasm configuration fails open:
/// failure_policy FAIL_OPEN, or no failure_policy and fail_open; deny-all otherwise).
fn agent_resource(resource: &Value, fetched: bool) -> Value {
    let name = resource["name"].clone();
    let config = &resource["typed_config"]["config"];
    if fetched {
        let mut typed_config = resource["typed_config"].clone();
        assert!(config["vm_config"]["code"]["remote"]["http_uri"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("oci://"));
        typed_config["config"]["vm_config"]["code"] =
            json!({"local": {"filename": wasm_path().display().to_string()}});
        return json!({"@type": EXTENSION_TYPE, "name": name, "typed_config": typed_config});
    }
    let fail_open = match config["failure_policy"].as_str() {
        Some(policy) => policy == "FAIL_OPEN",
        None => config["fail_open"] == true,
    };
    let rbac = if fail_open {
        json!({"@type": RBAC_TYPE, "rules_stat_prefix": "wasm-default-allow"})
    } else {
        json!({"@type": RBAC_TYPE, "rules": {}, "rules_stat_prefix": "wasm-default-deny"})
    };
    json!({"@type": EXTENSION_TYPE, "name": name, "typed_config": rbac})
}

/// The manifests' xDS for `mock`, the EnvoyFilter applied, each ECDS resource served
/// as `serve` makes it from the EnvoyFilter's resource.
fn patched_config(
    filter: &Value,
    mock: &Mock,
    dir: &std::path::Path,
    serve: &dyn Fn(&Value) -> Value,
) -> Value {
    let (mut listener, routes, mut cluster) = istiod_xds(mock);
    let ecds_source = |name: &str| -> Value {
        let resource = patches(filter, "EXTENSION_CONFIG")
            .into_iter()
            .map(|p| p["patch"]["value"].clone())
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no EXTENSION_CONFIG {name}"));
        xds_file(dir, name, &[serve(&resource)])
    };

    for patch in patches(filter, "HTTP_FILTER") {
        assert_eq!(patch["match"]["context"], "GATEWAY");
        assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
        let sub_filter = patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            .as_str()
            .unwrap();
        let manager = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        let filters = manager["http_filters"].as_array_mut().unwrap();
        let at = filters
            .iter()
            .position(|f| f["name"] == sub_filter)
            .unwrap();
        let mut value = patch["patch"]["value"].clone();
        assert!(value["config_discovery"]["config_source"]["ads"].is_object());
        value["config_discovery"]["config_source"] = ecds_source(value["name"].as_str().unwrap());
        filters.insert(at, value);
    }
    for patch in patches(filter, "CLUSTER") {
        assert_eq!(patch["patch"]["operation"], "MERGE");
        let matched = &patch["match"]["cluster"];
        assert_eq!(
            CLUSTER,
            format!(
                "outbound|{}||{}",
                matched["portNumber"],
                matched["service"].as_str().unwrap()
            )
        );
        let mut value = patch["patch"]["value"].clone();
        for options in value["typed_extension_protocol_options"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            for upstream in options["http_filters"].as_array_mut().unwrap() {
                if upstream.get("config_discovery").is_some() {
                    let name = upstream["name"].as_str().unwrap().to_string();
                    upstream["config_discovery"]["config_source"] = ecds_source(&name);
                }
            }
        }
        proto_merge(&mut cluster, &value);
    }
    let mut routes = routes;
    for patch in patches(filter, "VIRTUAL_HOST") {
        assert_eq!(patch["patch"]["operation"], "MERGE");
        let name = &patch["match"]["routeConfiguration"]["vhost"]["name"];
        let vhost = routes["virtual_hosts"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no virtual host {name}"));
        proto_merge(vhost, &patch["patch"]["value"]);
    }
    routes["@type"] = json!("type.googleapis.com/envoy.config.route.v3.RouteConfiguration");
    listener["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"] =
        xds_file(dir, "rds", &[routes]);
    json!({
        "node": {"id": "istio-deploy-test", "cluster": "istio-deploy-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]}
    })
}

/// The EnvoyFilter with `plugin` as both roles' configuration.
fn envoy_filter(plugin: &Value) -> Value {
    let mut filter = deploy_object("istio", "EnvoyFilter");
    for patch in filter["spec"]["configPatches"].as_array_mut().unwrap() {
        if patch["applyTo"] == "EXTENSION_CONFIG" {
            patch["patch"]["value"]["typed_config"]["config"]["configuration"]["value"] =
                json!(plugin.to_string());
        }
    }
    filter
}

async fn post(envoy: &Envoy, model: &str) -> u16 {
    let response = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("host", "ai.example.com")
        .header("content-type", "application/json")
        .body(chat_body(model))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

#[test]
fn both_roles_are_one_module_in_one_vm_failing_by_reload() {
    let filter = deploy_object("istio", "EnvoyFilter");
    let resources: Vec<Value> = patches(&filter, "EXTENSION_CONFIG")
        .into_iter()
        .map(|p| p["patch"]["value"]["typed_config"].clone())
        .collect();
    assert_eq!(resources.len(), 2);
    let roles: Vec<&Value> = resources.iter().map(|t| &t["config"]["root_id"]).collect();
    assert_eq!(
        roles,
        [&json!("ai_fallback_gateway"), &json!("ai_fallback_attempt")]
    );
    for typed_config in &resources {
        let config = &typed_config["config"];
        assert_eq!(typed_config["@type"], WASM_TYPE);
        assert_eq!(
            config["vm_config"], resources[0]["config"]["vm_config"],
            "one VM id, one module"
        );
        assert_eq!(
            config["configuration"],
            resources[0]["config"]["configuration"]
        );
        assert_eq!(config["allow_on_headers_stop_iteration"], true);
        assert_eq!(config["failure_policy"], "FAIL_RELOAD");
        assert_eq!(config["reload_config"]["backoff"]["base_interval"], "0.5s");
        assert!(config.get("fail_open").is_none());
    }
    // Both filter slots take what the agent may send in the module's place.
    let text = serde_json::to_string(&filter).unwrap();
    assert_eq!(text.matches(WASM_TYPE).count(), 4, "2 resources, 2 slots");
    assert_eq!(text.matches(RBAC_TYPE).count(), 2, "both slots list RBAC");
}

#[tokio::test]
async fn the_patched_gateway_falls_back_with_one_vm_for_both_roles() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let filter = envoy_filter(&cooldown_plugin());
    let config = patched_config(&filter, &mock, dir.path(), &|r| agent_resource(r, true));
    let envoy = Envoy::start(&config);

    assert_eq!(post(&envoy, "a+status-502").await, 200);
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    // Cooled by the attempt role, skipped by the gateway role: one VM.
    assert_eq!(post(&envoy, "a+status-502").await, 200);
    assert_eq!(models_seen(&mock), ["a+status-502", "b", "b"]);
    // Envoy took FAIL_RELOAD for both roles (two ECDS dumps: HTTP and upstream filters).
    let (_, dump) = envoy.admin_get("/config_dump");
    assert_eq!(
        dump.matches("\"failure_policy\": \"FAIL_RELOAD\"").count(),
        2
    );
}

#[tokio::test]
async fn two_vm_ids_would_not_share_cooldowns() {
    // The control: the attempt role in a VM of its own forgets what the gateway's knows.
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let filter = envoy_filter(&cooldown_plugin());
    let serve = |resource: &Value| {
        let mut served = agent_resource(resource, true);
        if resource["name"] == "ai-fallback-attempt" {
            served["typed_config"]["config"]["vm_config"]["vm_id"] = json!("ai_fallback_attempt");
        }
        served
    };
    let envoy = Envoy::start(&patched_config(&filter, &mock, dir.path(), &serve));
    for _ in 0..2 {
        assert_eq!(post(&envoy, "a+status-502").await, 200);
    }
    assert_eq!(
        models_seen(&mock),
        ["a+status-502", "b", "a+status-502", "b"]
    );
}

/// Both roles' modules could not be fetched; the agent's substitute for a
/// configuration that fails open (FAIL_OPEN) or not (the shipped FAIL_RELOAD).
fn substitute(fail_open: bool) -> impl Fn(&Value) -> Value {
    move |resource: &Value| {
        let mut resource = resource.clone();
        resource["typed_config"]["config"]["failure_policy"] = json!(if fail_open {
            "FAIL_OPEN"
        } else {
            "FAIL_RELOAD"
        });
        agent_resource(&resource, false)
    }
}

#[tokio::test]
async fn the_allow_all_substitute_lets_requests_through_without_fallbacks() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let filter = envoy_filter(&cooldown_plugin());
    let envoy = Envoy::start(&patched_config(
        &filter,
        &mock,
        dir.path(),
        &substitute(true),
    ));
    assert_eq!(post(&envoy, "b").await, 200);
    assert_eq!(
        post(&envoy, "a+status-502").await,
        502,
        "no fallback, no 500"
    );
    assert_eq!(models_seen(&mock), ["b", "a+status-502"]);
}

#[tokio::test]
async fn the_shipped_fail_reload_gets_the_deny_all_substitute() {
    // What the agent sends for the shipped configuration: deny-all, so every request
    // through the gateway is refused (403), never reaching the provider. Not 500.
    let filter = deploy_object("istio", "EnvoyFilter");
    let shipped = &patches(&filter, "EXTENSION_CONFIG")[0]["patch"]["value"];
    assert_eq!(
        agent_resource(shipped, false)["typed_config"]["rules_stat_prefix"],
        "wasm-default-deny"
    );
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let filter = envoy_filter(&cooldown_plugin());
    let envoy = Envoy::start(&patched_config(
        &filter,
        &mock,
        dir.path(),
        &substitute(false),
    ));
    assert_eq!(post(&envoy, "b").await, 403);
    assert!(models_seen(&mock).is_empty());
}

#[tokio::test]
async fn without_the_rbac_type_the_substitute_is_a_500_for_every_request() {
    // Issue 16.3, the old shape: type_urls listing only the Wasm type. Envoy rejects
    // the substitute and the filter has no configuration.
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let mut filter = envoy_filter(&cooldown_plugin());
    let old = serde_json::to_string(&filter)
        .unwrap()
        .replace(&format!(",\"{RBAC_TYPE}\""), "");
    filter = serde_json::from_str(&old).unwrap();
    assert!(!old.contains(RBAC_TYPE));
    let envoy = Envoy::start(&patched_config(
        &filter,
        &mock,
        dir.path(),
        &substitute(true),
    ));
    assert_eq!(post(&envoy, "b").await, 500);
    assert!(models_seen(&mock).is_empty());
}
