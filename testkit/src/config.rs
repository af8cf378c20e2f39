//! Edits of an Envoy configuration (as JSON) that the tests, the soak and the bench
//! all make to the shipped example before running it: free ports, this build's
//! `.wasm`, another plugin configuration, the upstream pointed at the mock.

use serde_json::{json, Value};
use std::path::Path;

/// A YAML file (an Envoy config) as JSON.
pub fn load_yaml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The example config at `example` with every port 0 (Envoy picks free ones, the
/// launcher asks which), every wasm filter loading `wasm` with `plugin` as its
/// configuration, and every static cluster's endpoints on `upstream_port`.
pub fn example_config(
    example: &Path,
    wasm: &Path,
    upstream_port: u16,
    plugin: &str,
) -> Result<Value, String> {
    let mut config = load_yaml(example)?;
    ports_to_zero(&mut config);
    set_upstream_port(&mut config, upstream_port);
    set_wasm_file(&mut config, wasm);
    set_plugin_configuration(&mut config, plugin);
    Ok(config)
}

/// The admin interface and every static listener on port 0.
pub fn ports_to_zero(config: &mut Value) {
    if let Some(admin) = config.get_mut("admin") {
        admin["address"]["socket_address"]["port_value"] = json!(0);
    }
    for listener in static_resources(config, "listeners") {
        listener["address"]["socket_address"]["port_value"] = json!(0);
    }
}

/// Every endpoint of every static cluster on `port` (same host).
pub fn set_upstream_port(config: &mut Value, port: u16) {
    for cluster in static_resources(config, "clusters") {
        set_cluster_port(cluster, port);
    }
}

/// Every endpoint of one cluster on `port` (same host).
pub fn set_cluster_port(cluster: &mut Value, port: u16) {
    let Some(assignment) = cluster.get_mut("load_assignment") else {
        return;
    };
    for endpoints in array_at(assignment, "endpoints") {
        for endpoint in array_at(endpoints, "lb_endpoints") {
            endpoint["endpoint"]["address"]["socket_address"]["port_value"] = json!(port);
        }
    }
}

/// Every wasm HTTP filter loads `wasm`.
pub fn set_wasm_file(value: &mut Value, wasm: &Path) {
    let wasm = wasm.display().to_string();
    for_each_wasm_filter(value, |config| {
        config["vm_config"]["code"]["local"]["filename"] = json!(wasm);
    });
}

/// Every wasm HTTP filter gets `plugin` as its configuration (a StringValue's
/// `value`): ai-fallback's two roles share one.
pub fn set_plugin_configuration(value: &mut Value, plugin: &str) {
    for_each_wasm_filter(value, |config| {
        config["configuration"]["value"] = json!(plugin);
    });
}

/// Calls `f` with the `config` (a wasm PluginConfig) of every wasm HTTP filter in
/// `value`, a whole Envoy config or any part of it (a filter list): the connection
/// managers' `http_filters` and the routers' `upstream_http_filters` alike.
pub fn for_each_wasm_filter(value: &mut Value, mut f: impl FnMut(&mut Value)) {
    walk(value, &mut f);
}

fn walk(value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match value {
        Value::Object(object) => {
            let is_wasm = object
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"));
            if is_wasm {
                f(object.entry("config").or_insert(Value::Null));
            } else {
                object.values_mut().for_each(|child| walk(child, f));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|child| walk(child, f)),
        _ => {}
    }
}

/// The static listeners or clusters of a config.
fn static_resources<'a>(config: &'a mut Value, kind: &str) -> impl Iterator<Item = &'a mut Value> {
    config
        .get_mut("static_resources")
        .and_then(|resources| resources.get_mut(kind))
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The array under `key`, without creating the key as `IndexMut` would.
fn array_at<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn example() -> PathBuf {
        crate::repo_root().join("envoy/envoy.yaml")
    }

    fn wasm_configs(config: &mut Value) -> Vec<Value> {
        let mut found = Vec::new();
        for_each_wasm_filter(config, |c| found.push(c.clone()));
        found
    }

    #[test]
    fn the_example_gets_free_ports_this_wasm_and_the_plugin_configuration() {
        let wasm = Path::new("/abs/ai_fallback.wasm");
        let mut config = example_config(&example(), wasm, 4321, r#"{"chains":{}}"#).unwrap();
        assert_eq!(
            config["admin"]["address"]["socket_address"]["port_value"],
            0
        );
        let listeners = config["static_resources"]["listeners"].as_array().unwrap();
        assert!(!listeners.is_empty());
        for listener in listeners {
            assert_eq!(listener["address"]["socket_address"]["port_value"], 0);
        }
        let endpoint = &config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
            [0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(endpoint["port_value"], 4321);
        assert_eq!(endpoint["address"], "127.0.0.1");
        // Both roles: the gateway downstream and the attempt role upstream.
        let configs = wasm_configs(&mut config);
        let roots: Vec<_> = configs.iter().map(|c| c["root_id"].clone()).collect();
        assert_eq!(roots, ["ai_fallback_gateway", "ai_fallback_attempt"]);
        for c in configs {
            assert_eq!(
                c["vm_config"]["code"]["local"]["filename"],
                wasm.to_str().unwrap()
            );
            assert_eq!(c["configuration"]["value"], r#"{"chains":{}}"#);
            // The rest of the plugin configuration is the example's.
            assert_eq!(c["vm_config"]["vm_id"], "ai_fallback");
        }
    }

    #[test]
    fn a_filter_list_and_other_filters_are_walked_without_adding_keys() {
        let mut filters = json!([
            {"name": "lua", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}},
            {"name": "no_typed_config"},
            {"name": "router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "upstream_http_filters": [
                    {"name": "up", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": {"root_id": "up"}}}
                ]}},
            {"name": "net", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": {"root_id": "network"}}}
        ]);
        let before = filters.clone();
        let configs = wasm_configs(&mut filters);
        assert_eq!(configs, [json!({"root_id": "up"})]);
        assert_eq!(filters, before, "walking alone changes nothing");
    }

    #[test]
    fn a_config_without_admin_or_clusters_is_left_as_it_is() {
        for empty in [json!({}), json!({"static_resources": {}})] {
            let mut config = empty.clone();
            ports_to_zero(&mut config);
            set_upstream_port(&mut config, 1);
            assert_eq!(config, empty);
        }
    }

    #[test]
    fn a_missing_file_names_itself() {
        let error = load_yaml(Path::new("/nonexistent/envoy.yaml")).unwrap_err();
        assert!(error.starts_with("/nonexistent/envoy.yaml: "), "{error}");
    }
}
