//! The Envoy Gateway manifests (deploy/envoy-gateway/) against the xDS Envoy Gateway
//! itself generates, in a real Envoy.
//!
//! Envoy Gateway's golden test output for Wasm extension policies
//! (../shared/deploy-refs/envoy-gateway-xds/, v1.9.0 internal/xds/translator/testdata)
//! gives the shapes: the listener with one disabled Wasm filter per policy, named
//! `envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<policy>/wasm/<n>`, VM id
//! `envoyextensionpolicy/<ns>/<policy>/wasm/<n>`, remote code from Envoy Gateway's
//! server (`wasm_cluster`) with its sha256; the route enabling it per route; the EDS
//! cluster. These are renamed for this repository's Gateway, HTTPRoute and
//! EnvoyExtensionPolicy as the translator names things (sources in the comments), the
//! EnvoyPatchPolicy's operations are applied as Envoy Gateway applies them
//! (tests/deploy_support.rs), and the result runs in Envoy with the fresh module,
//! served over HTTP the way Envoy Gateway serves it, in front of the mock.
//!
//! What differs from a cluster: the module is served over plain HTTP on 127.0.0.1
//! (Envoy Gateway's server uses TLS with its own CA), the provider's cluster reaches
//! the plain-HTTP mock (the BackendTLSPolicy's TLS is left out), and xDS comes from
//! files instead of ADS. Envoy Gateway's protojson round trip and proto validation
//! after each patch are not reproduced; Envoy's own config loading checks the result.

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

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const GOLDEN: &str = "envoy-gateway-xds/v1.9.0-out-xds-ir-wasm";

/// The names Envoy Gateway gives this repository's objects (default name scheme).
struct Names {
    /// Listener, its default filter chain and its route configuration:
    /// `<gateway namespace>/<gateway>/<listener>` (internal/gatewayapi irListenerName).
    listener: String,
    /// `<listener>/<hostname with . as _>` (translator virtual host naming).
    vhost: String,
    /// `httproute/<ns>/<route>/rule/<n>/match/<m>/<hostname with . as _>`.
    route: String,
    /// `httproute/<ns>/<route>/rule/<n>`.
    cluster: String,
    /// `envoyextensionpolicy/<ns>/<policy>/wasm/<index>` (irConfigNameForWasm): the
    /// VM id, and after `envoy.filters.http.wasm/` the filter name (wasmFilterName).
    wasm: String,
}

impl Names {
    fn of(gateway: &Value, route: &Value, policy: &Value) -> Names {
        let listener = &gateway["spec"]["listeners"][0];
        let listener_name = format!(
            "{}/{}/{}",
            gateway["metadata"]["namespace"].as_str().unwrap(),
            gateway["metadata"]["name"].as_str().unwrap(),
            listener["name"].as_str().unwrap()
        );
        let host = listener["hostname"].as_str().unwrap().replace('.', "_");
        let rule = format!(
            "httproute/{}/{}/rule/0",
            route["metadata"]["namespace"].as_str().unwrap(),
            route["metadata"]["name"].as_str().unwrap()
        );
        Names {
            vhost: format!("{listener_name}/{host}"),
            route: format!("{rule}/match/0/{host}"),
            listener: listener_name,
            cluster: rule,
            wasm: format!(
                "envoyextensionpolicy/{}/{}/wasm/0",
                policy["metadata"]["namespace"].as_str().unwrap(),
                policy["metadata"]["name"].as_str().unwrap()
            ),
        }
    }
    fn filter(&self) -> String {
        format!("envoy.filters.http.wasm/{}", self.wasm)
    }
}

/// The xDS Envoy Gateway generates for the manifests, in its golden files' shapes.
struct Xds {
    names: Names,
    listener: Value,
    routes: Value,
    cluster: Value,
    wasm_cluster: Value,
}

/// Renders the manifests (with `plugin` as the EnvoyExtensionPolicy's `config`) the
/// way Envoy Gateway's translator does, the module served by `server`.
fn render(plugin: &Value, server: &WasmServer, fail_open: Option<bool>) -> Xds {
    let gateway = deploy_object("envoy-gateway", "Gateway");
    let route = deploy_object("envoy-gateway", "HTTPRoute");
    let mut policy = deploy_object("envoy-gateway", "EnvoyExtensionPolicy");
    policy["spec"]["wasm"][0]["config"] = plugin.clone();
    if let Some(fail_open) = fail_open {
        policy["spec"]["wasm"][0]["failOpen"] = json!(fail_open);
    }
    let names = Names::of(&gateway, &route, &policy);
    let wasm = &policy["spec"]["wasm"][0];

    let golden_listener = snake_case_keys(&reference(&format!("{GOLDEN}.listeners.yaml"))[0]);
    let golden_routes = snake_case_keys(&reference(&format!("{GOLDEN}.routes.yaml"))[0]);
    let golden_clusters = snake_case_keys(&reference(&format!("{GOLDEN}.clusters.yaml")));

    // The listener: the golden one, with this policy's filter in the shape of the
    // golden's route-level policy filter (translator/wasm.go buildHCMWasmFilter and
    // wasmConfig), then the router.
    let mut listener = golden_listener.clone();
    listener["name"] = json!(names.listener);
    listener["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    let chain = &mut listener["default_filter_chain"];
    chain["name"] = json!(names.listener);
    let manager = &mut chain["filters"][0]["typed_config"];
    manager["rds"]["route_config_name"] = json!(names.listener);
    let filters = manager["http_filters"].as_array().unwrap().clone();
    let mut filter = filters
        .iter()
        .find(|f| {
            f["name"]
                .as_str()
                .unwrap()
                .ends_with("/default/policy-for-http-route/wasm/0")
        })
        .unwrap()
        .clone();
    assert_eq!(
        filter["disabled"], true,
        "disabled on the listener, enabled per route"
    );
    filter["name"] = json!(names.filter());
    let config = &mut filter["typed_config"]["config"];
    config["name"] = wasm["name"].clone(); // WasmName: the policy's wasm name
    config["root_id"] = wasm["rootID"].clone();
    config["configuration"]["value"] = json!(wasm["config"].to_string());
    if wasm["failOpen"] == true {
        config["fail_open"] = json!(true);
    } else {
        // protojson leaves out a false bool
        config.as_object_mut().unwrap().remove("fail_open");
    }
    let vm = &mut config["vm_config"];
    vm["vm_id"] = json!(names.wasm);
    vm["code"]["remote"]["http_uri"]["uri"] = json!(format!(
        "http://127.0.0.1:{}/unguessable-path.wasm",
        server.port
    ));
    vm["code"]["remote"]["sha256"] = json!(server.sha256);
    let router = filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.router")
        .unwrap()
        .clone();
    manager["http_filters"] = json!([filter, router]);

    // The route configuration: the golden route, renamed, enabling this policy's
    // filter; the HTTPRoute's PathPrefix /v1/ as path_separated_prefix /v1
    // (translator/route.go trims the slash), its request timeout and host rewrite.
    let mut routes = golden_routes.clone();
    routes["name"] = json!(names.listener);
    let mut route_entry = golden_routes["virtual_hosts"][0]["routes"][0].clone();
    route_entry["name"] = json!(names.route);
    let rule = &route["spec"]["rules"][0];
    let prefix = rule["matches"][0]["path"]["value"].as_str().unwrap();
    route_entry["match"] = json!({"path_separated_prefix": prefix.trim_end_matches('/')});
    route_entry["route"]["cluster"] = json!(names.cluster);
    route_entry["route"]["timeout"] = rule["timeouts"]["request"].clone();
    route_entry["route"]["host_rewrite_literal"] =
        rule["filters"][0]["urlRewrite"]["hostname"].clone();
    route_entry["typed_per_filter_config"] = json!({
        names.filter(): {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
    });
    let hostname = gateway["spec"]["listeners"][0]["hostname"].clone();
    routes["virtual_hosts"] = json!([{
        "name": names.vhost, "domains": [hostname], "routes": [route_entry]
    }]);

    let mut cluster = golden_clusters[0].clone();
    cluster["name"] = json!(names.cluster);
    cluster["eds_cluster_config"]["service_name"] = json!(names.cluster);

    // Envoy Gateway's module server, in plain HTTP here.
    let mut wasm_cluster = golden_clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wasm_cluster")
        .unwrap()
        .clone();
    let object = wasm_cluster.as_object_mut().unwrap();
    object.remove("transport_socket");
    object.remove("typed_extension_protocol_options");
    wasm_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"] = json!({"address": "127.0.0.1", "port_value": server.port});

    Xds {
        names,
        listener,
        routes,
        cluster,
        wasm_cluster,
    }
}

/// The EnvoyPatchPolicy's entries applied to `xds`: each entry's result.
fn patch(xds: &mut Xds, policy: &Value) -> Vec<Result<(), String>> {
    policy["spec"]["jsonPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let kind = entry["type"].as_str().unwrap();
            let name = entry["name"].as_str().unwrap();
            let resource = match kind {
                LISTENER_TYPE if xds.listener["name"] == name => &mut xds.listener,
                ROUTE_TYPE if xds.routes["name"] == name => &mut xds.routes,
                CLUSTER_TYPE if xds.cluster["name"] == name => &mut xds.cluster,
                _ => return Err(format!("resource not found: {kind}/{name}")),
            };
            apply_eg_patch(resource, &entry["operation"])
        })
        .collect()
}

fn patch_policy() -> Value {
    deploy_object("envoy-gateway", "EnvoyPatchPolicy")
}

/// Envoy with `xds` (route configuration and endpoints over file-based xDS).
fn envoy_config(xds: &Xds, mock: &Mock, dir: &std::path::Path) -> Value {
    let mut listener = xds.listener.clone();
    let manager = &mut listener["default_filter_chain"]["filters"][0]["typed_config"];
    manager["rds"]["config_source"] = xds_file(
        dir,
        "rds",
        &[{
            let mut r = xds.routes.clone();
            r["@type"] = json!(ROUTE_TYPE);
            r
        }],
    );
    let mut cluster = xds.cluster.clone();
    cluster["eds_cluster_config"]["eds_config"] = xds_file(
        dir,
        "eds",
        &[json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": xds.names.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": mock.port()}}}}]}]
        })],
    );
    json!({
        "node": {"id": "envoy-gateway-deploy-test", "cluster": "envoy-gateway-deploy-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [xds.wasm_cluster, cluster]
        }
    })
}

fn upstream_filters(listener: &Value) -> Option<&Value> {
    listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.router")
        .and_then(|router| router["typed_config"].get("upstream_http_filters"))
}

fn gateway_role(listener: &Value) -> &Value {
    &listener["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["config"]
}

async fn post(envoy: &Envoy, model: &str) -> (u16, Value) {
    let response = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("host", "ai.example.com")
        .header("content-type", "application/json")
        .body(chat_body(model))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn every_patch_applies_to_the_xds_envoy_gateway_generates() {
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, None);
    let results = patch(&mut xds, &patch_policy());
    assert_eq!(results.len(), 8);
    for (index, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "patch {}: {result:?}", index + 1);
    }

    let gateway = gateway_role(&xds.listener);
    assert_eq!(gateway["allow_on_headers_stop_iteration"], true);
    assert_eq!(gateway["failure_policy"], "FAIL_RELOAD");
    assert_eq!(gateway["reload_config"]["backoff"]["base_interval"], "0.5s");
    assert!(
        gateway.get("fail_open").is_none(),
        "failOpen: false leaves it unset"
    );

    // The attempt role: same VM id, same code (Envoy Gateway's remote source and its
    // sha256), same plugin configuration; its own root id.
    let upstream = upstream_filters(&xds.listener).unwrap();
    let attempt = &upstream[0]["typed_config"]["config"];
    assert_eq!(attempt["root_id"], "ai_fallback_attempt");
    assert_eq!(attempt["vm_config"], gateway["vm_config"]);
    assert_eq!(attempt["vm_config"]["vm_id"], xds.names.wasm);
    assert_eq!(
        attempt["vm_config"]["code"]["remote"]["sha256"],
        server.sha256
    );
    assert_eq!(attempt["configuration"], gateway["configuration"]);
    assert_eq!(attempt["allow_on_headers_stop_iteration"], true);
    assert_eq!(attempt["failure_policy"], "FAIL_RELOAD");
    assert_eq!(
        upstream[1]["name"], "envoy.filters.http.upstream_codec",
        "the codec ends the upstream chain"
    );

    let vhost = &xds.routes["virtual_hosts"][0];
    assert_eq!(vhost["include_request_attempt_count"], true);
    assert_eq!(vhost["per_request_buffer_limit_bytes"], 8388608);
}

#[test]
fn the_old_filter_name_finds_nothing() {
    // Issue 16.1: the patch named `.../ai-fallback/0`; Envoy Gateway names the filter
    // `.../ai-fallback/wasm/0`, so the flag was never set.
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, None);
    let mut operation = patch_policy()["spec"]["jsonPatches"][0]["operation"].clone();
    let old = operation["jsonPath"]
        .as_str()
        .unwrap()
        .replace("/ai-fallback/wasm/0", "/ai-fallback/0");
    operation["jsonPath"] = json!(old);
    let error = apply_eg_patch(&mut xds.listener, &operation).unwrap_err();
    assert!(error.contains("no jsonPointers were found"), "{error}");
    assert!(gateway_role(&xds.listener)
        .get("allow_on_headers_stop_iteration")
        .is_none());
}

#[test]
fn the_copies_apply_only_where_the_first_filter_is_the_policys() {
    // Another extension before the gateway role (here a CORS filter, which Envoy
    // Gateway orders first): the copies' `from` would read the wrong filter, so the
    // guarded operations find nothing and change nothing.
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, None);
    let filters = xds.listener["default_filter_chain"]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap();
    filters.insert(
        0,
        json!({"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
    );
    let results = patch(&mut xds, &patch_policy());
    for index in [0, 1, 2, 6, 7] {
        assert!(
            results[index].is_ok(),
            "patch {}: {:?}",
            index + 1,
            results[index]
        );
    }
    for index in [3, 4, 5] {
        let error = results[index].as_ref().unwrap_err();
        assert!(
            error.contains("no jsonPointers"),
            "patch {}: {error}",
            index + 1
        );
    }
    assert!(upstream_filters(&xds.listener).is_none());
}

#[tokio::test]
async fn the_patched_configuration_falls_back_with_one_vm_for_both_roles() {
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, None);
    assert!(patch(&mut xds, &patch_policy()).iter().all(Result::is_ok));
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(&envoy_config(&xds, &mock, dir.path()));

    // A fallback: the attempt role rewrote the model of the second attempt.
    let (status, body) = post(&envoy, "a+status-502").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "b");
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);

    // The attempt role saw the 502 and cooled the model; the gateway role, in the
    // same VM, skips it on the next request.
    let (status, body) = post(&envoy, "a+status-502").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        models_seen(&mock),
        ["a+status-502", "b", "b"],
        "the gateway role skips the model the attempt role cooled"
    );

    // Envoy took FAIL_RELOAD for both roles.
    let (_, dump) = envoy.admin_get("/config_dump?resource=static_listeners");
    assert_eq!(dump.matches("FAIL_RELOAD").count(), 2, "{dump}");
}

#[tokio::test]
async fn two_vm_ids_would_not_share_cooldowns() {
    // Issue 16.2, the old shape: the attempt role in a VM of its own
    // (`ai_fallback_attempt`) does not see what the other VM knows, so the control
    // proves the check above can fail.
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, None);
    assert!(patch(&mut xds, &patch_policy()).iter().all(Result::is_ok));
    let filters = xds.listener["default_filter_chain"]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap();
    let router = filters.last_mut().unwrap();
    router["typed_config"]["upstream_http_filters"][0]["typed_config"]["config"]["vm_config"]
        ["vm_id"] = json!("ai_fallback_attempt");
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(&envoy_config(&xds, &mock, dir.path()));
    for _ in 0..2 {
        assert_eq!(post(&envoy, "a+status-502").await.0, 200);
    }
    assert_eq!(
        models_seen(&mock),
        ["a+status-502", "b", "a+status-502", "b"]
    );
}

#[test]
fn fail_open_true_cannot_carry_fail_reload() {
    // With failOpen: true Envoy Gateway renders the legacy fail_open, and Envoy
    // refuses a plugin that sets both it and failure_policy: why the policy says false.
    let server = WasmServer::start(&wasm_path());
    let mut xds = render(&cooldown_plugin(), &server, Some(true));
    assert!(patch(&mut xds, &patch_policy()).iter().all(Result::is_ok));
    assert_eq!(gateway_role(&xds.listener)["fail_open"], true);
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let log = Envoy::try_start(&envoy_config(&xds, &mock, dir.path()))
        .err()
        .expect("Envoy refuses the configuration");
    assert!(
        log.contains("only one of fail_open or failure_policy can be set"),
        "{log}"
    );
}

#[test]
fn the_json_path_engine_reproduces_envoy_gateways_own_cases() {
    // internal/utils/jsonpatch/jsonpathtopointer_test.go (v1.9.0), the cases of the
    // subset this engine supports (no `**`, no `=~`); results sorted as there.
    let nested = json!({"a": "b", "v": [{"x": "test1", "y": "hello"}, {"x": "test2", "y": "world"}],
        "f": {"w": "hi", "q": "welcome", "y": "ciao"}, "y": "c"});
    let escaping = json!({"values": [{"name": "test1", "dotted.key": "Hello"},
        {"name": "test2", "dotted.key": "there"}, {"name": "test3", "~abc": "tilde"},
        {"name": "test4", "//abc": "slash"}, {"name": "test5", "~/abc/~": "mixed"}]});
    let route = json!({"name": "default/eg/http", "virtual_hosts": [
        {"name": "default/eg/http/www_test_com", "routes": [{"name": "httproute/default/backend/rule/0/match/0/www_test_com", "route": {"cluster": "c0", "upgrade_configs": [{"upgrade_type": "websocket"}]}}]},
        {"name": "default/eg/http/www_example_com", "routes": [{"name": "httproute/default/backend/rule/1/match/1/www_example_com", "route": {"cluster": "c1", "upgrade_configs": [{"upgrade_type": "websocket"}]}}]}]});
    let simple = json!({"a": "b"});
    let cases: Vec<(&Value, &str, &str, Vec<&str>)> = vec![
        (&simple, "$.xyz", "", vec![]),
        (&simple, "$.xyz", "doesnotexist", vec![]),
        (&simple, "$.a", "", vec!["/a"]),
        (&nested, "$.v[?(@.x=='test2')]", "", vec!["/v/1"]),
        (&nested, "..v[?(@.x=='test1')].y", "", vec!["/v/0/y"]),
        (&nested, "$.v[?(@.x=='test2')].y", "", vec!["/v/1/y"]),
        (&nested, "$.v[*].y", "", vec!["/v/0/y", "/v/1/y"]),
        (&nested, "$.v[?(@.x=='UNKNOWN')].y", "", vec![]),
        (&simple, ".a", "", vec!["/a"]),
        (&simple, "a", "", vec!["/a"]),
        (&nested, "f.w", "", vec!["/f/w"]),
        (&nested, "f.*", "", vec!["/f/q", "/f/w", "/f/y"]),
        (&nested, "v.*", "", vec!["/v/0", "/v/1"]),
        (&nested, "$..y", "", vec!["/f/y", "/v/0/y", "/v/1/y", "/y"]),
        (&nested, "..y", "", vec!["/f/y", "/v/0/y", "/v/1/y", "/y"]),
        (
            &route,
            "..routes[?(@.name=='httproute/default/backend/rule/1/match/1/www_example_com')].route.upgrade_configs",
            "",
            vec!["/virtual_hosts/1/routes/0/route/upgrade_configs"],
        ),
        (&escaping, "$.values[?(@.name=='test2')]", "dotted.key", vec!["/values/1/dotted.key"]),
        (&escaping, "$.values[?(@.name=='test2')]['dotted.key']", "", vec!["/values/1/dotted.key"]),
        (&escaping, "$.values[?(@.name=='test3')].~abc", "", vec!["/values/2/~0abc"]),
        (&escaping, "$.values[?(@.name=='test4')]['//abc']", "", vec!["/values/3/~1~1abc"]),
        (&escaping, "$.values[?(@.name=='test5')]['~/abc/~']", "", vec!["/values/4/~0~1abc~1~0"]),
        // and what the manifests add: a filter reading an index below `@`, and `&&`
        (&nested, "$[?(@[1].x=='test2')]", "", vec!["/v"]),
        (&nested, "$.v[?(@.x=='test1' && $.a=='b')].y", "", vec!["/v/0/y"]),
        (&nested, "$.v[?(@.x=='test1' && $.a=='c')].y", "", vec![]),
    ];
    for (document, json_path, path, expected) in cases {
        let mut found = eg_json_path(document, json_path, path).unwrap();
        found.sort();
        assert_eq!(found, expected, "{json_path} + {path:?}");
    }
    assert!(
        eg_json_path(&simple, "$", "").is_err(),
        "root alone is refused"
    );
}

#[test]
fn the_json_patch_engine_follows_evanphx_json_patch() {
    let mut doc = json!({"a": {"list": [1, 2, 3]}});
    // EnsurePathExistsOnAdd creates what is missing on the way.
    json_patch(&mut doc, &json!({"op": "add", "path": "/b/c", "value": 1})).unwrap();
    assert_eq!(doc["b"], json!({"c": 1}));
    // add inserts into arrays, "-" appends, negative indices count from the end
    json_patch(
        &mut doc,
        &json!({"op": "add", "path": "/a/list/0", "value": 0}),
    )
    .unwrap();
    json_patch(
        &mut doc,
        &json!({"op": "add", "path": "/a/list/-", "value": 4}),
    )
    .unwrap();
    assert_eq!(doc["a"]["list"], json!([0, 1, 2, 3, 4]));
    json_patch(
        &mut doc,
        &json!({"op": "copy", "from": "/a/list/-1", "path": "/d"}),
    )
    .unwrap();
    assert_eq!(doc["d"], 4);
    // copy needs its destination's parent; replace needs its target
    assert!(json_patch(
        &mut doc,
        &json!({"op": "copy", "from": "/d", "path": "/x/y"})
    )
    .is_err());
    assert!(json_patch(
        &mut doc,
        &json!({"op": "replace", "path": "/nope", "value": 1})
    )
    .is_err());
    assert!(json_patch(&mut doc, &json!({"op": "remove", "path": "/nope"})).is_err());
    assert!(json_patch(&mut doc, &json!({"op": "test", "path": "/d", "value": 4})).is_ok());
    assert!(json_patch(&mut doc, &json!({"op": "test", "path": "/d", "value": 5})).is_err());
    // An entry that fails at one pointer is dropped whole.
    let mut resource = json!({"v": [{"x": 1}, {"y": 2}]});
    let before = resource.clone();
    let result = apply_eg_patch(
        &mut resource,
        &json!({"op": "replace", "jsonPath": "$.v[*]", "path": "/x", "value": 9}),
    );
    assert!(result.is_err());
    assert_eq!(resource, before);
}
