//! The bench's Envoy configuration: one Envoy, one listener per arm, all against the
//! same mock cluster.
//!
//! It starts from the example a user copies (`envoy/envoy.yaml`): the connection
//! manager, the route settings and the cluster are the example's, and the `wasm`
//! listener's filters are the example's filters as they are, with only the `.wasm`
//! path and the chains changed. Every other arm swaps the filter list only, so the
//! arms differ by their filters and nothing else.

use serde_json::{json, Value};
use std::path::Path;
use testkit::config::{for_each_wasm_filter, load_yaml, set_cluster_port, set_wasm_file};

/// The models of the bench: `MODEL` has a chain and is answered 200; `FAILING` has
/// the same chain and the mock answers it 502, so each of its requests falls back once.
pub const MODEL: &str = "bench-model";
pub const FAILING: &str = "bench-model+status-502";
pub const FALLBACK: &str = "bench-fallback";

/// The gateway role's configuration in the bench.
pub fn plugin_config() -> String {
    json!({ "chains": { MODEL: [FALLBACK], FAILING: [FALLBACK] } }).to_string()
}

/// Listener names; the bench asks Envoy for their ports.
pub const LISTENERS: [&str; 5] = ["router", "noop", "wasm", "lua", "retry"];

pub struct Paths<'a> {
    pub example: &'a Path,
    pub wasm: &'a Path,
    pub noop_wasm: &'a Path,
}

pub fn build(paths: &Paths<'_>, mock_port: u16) -> Result<Value, String> {
    let example = load_yaml(paths.example)?;
    let manager = example
        .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .cloned()
        .ok_or("the example has no connection manager in its first listener")?;
    // The example's access log is left out of every arm: it costs the same with or
    // without a filter, and the bench measures filters, not a log pipe.
    let mut manager = manager;
    if let Some(manager) = manager.as_object_mut() {
        manager.remove("access_log");
    }
    let example_filters = manager["http_filters"]
        .as_array()
        .cloned()
        .ok_or("the example's connection manager has no http_filters")?;
    let router = example_filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.router")
        .cloned()
        .ok_or("the example has no router filter")?;
    let cluster_name = manager
        .pointer("/route_config/virtual_hosts/0/routes/0/route/cluster")
        .and_then(Value::as_str)
        .ok_or("the example's first route has no cluster")?
        .to_owned();
    let mut cluster = example
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .and_then(|clusters| clusters.iter().find(|c| c["name"] == cluster_name.as_str()))
        .cloned()
        .ok_or("the example's route names a cluster it does not define")?;
    // The example's endpoint is on 127.0.0.1, as the mock is.
    set_cluster_port(&mut cluster, mock_port);

    // The ai-fallback arm: the example's filters, this build's .wasm, the bench chains.
    let mut wasm_filters = Value::Array(example_filters.clone());
    set_wasm_file(&mut wasm_filters, paths.wasm);
    // The gateway's configuration is replaced; so is the attempt role's where the
    // example shares one configuration between both roles.
    let mut example_plugin_config = Value::Null;
    for_each_wasm_filter(&mut wasm_filters, |config| {
        if config["root_id"] == "ai_fallback_gateway" {
            example_plugin_config = config["configuration"]["value"].clone();
        }
    });
    for_each_wasm_filter(&mut wasm_filters, |config| {
        if config["root_id"] == "ai_fallback_gateway"
            || config["configuration"]["value"] == example_plugin_config
        {
            config["configuration"]["value"] = json!(plugin_config());
        }
    });

    // The router as a user has it before adding any filter: no upstream filters.
    let mut plain_router = router.clone();
    if let Some(typed) = plain_router["typed_config"].as_object_mut() {
        typed.remove("upstream_http_filters");
    }

    let noop = |name: &str| {
        json!({
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "root_id": "noop",
                    // The example's policy, so that the arms differ by filter only.
                    "failure_policy": "FAIL_RELOAD",
                    "vm_config": {
                        "vm_id": "noop",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": paths.noop_wasm.display().to_string() } }
                    }
                }
            }
        })
    };
    let noop_filters = json!([
        noop("noop"),
        router_with_upstream(&router, noop("noop_upstream")),
    ]);
    let lua_filters = json!([
        lua("lua_gateway", LUA_GATEWAY),
        router_with_upstream(&router, lua("lua_attempt", LUA_ATTEMPT)),
    ]);

    let mut listeners = Vec::new();
    for name in LISTENERS {
        let filters = match name {
            "router" | "retry" => json!([plain_router]),
            "noop" => noop_filters.clone(),
            "wasm" => wasm_filters.clone(),
            _ => lua_filters.clone(),
        };
        let mut manager = manager.clone();
        manager["stat_prefix"] = json!(name);
        manager["http_filters"] = filters;
        for host in array_mut(&mut manager["route_config"]["virtual_hosts"]) {
            for route in array_mut(&mut host["routes"]) {
                // A fallback's backoff: base 1 ms makes Envoy's first jittered
                // backoff `random % 1 ms` = 0, so the fallback measurement is not
                // Envoy's 25 ms default jitter. Without a retry_on it retries nothing.
                let mut policy = json!({
                    "retry_back_off": { "base_interval": "0.001s", "max_interval": "0.001s" }
                });
                if name == "retry" {
                    // The router retrying a 502 once with no filter: what a fallback
                    // costs Envoy itself, without any rewrite.
                    policy["retry_on"] = json!("retriable-status-codes");
                    policy["retriable_status_codes"] = json!([502]);
                    policy["num_retries"] = json!(1);
                }
                route["route"]["retry_policy"] = policy;
            }
        }
        listeners.push(json!({
            "name": name,
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
            "filter_chains": [ { "filters": [ {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager
            } ] } ]
        }));
    }

    Ok(json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": listeners, "clusters": [cluster] }
    }))
}

/// The listeners of a config `build` made, and a copy of its `wasm` listener: the
/// bench's modes add listeners made from it.
pub fn listeners_and_wasm(config: &mut Value) -> Result<(&mut Vec<Value>, Value), String> {
    let listeners = config
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .ok_or("the bench config has no listeners")?;
    let wasm = listeners
        .iter()
        .find(|listener| listener["name"] == "wasm")
        .cloned()
        .ok_or("the bench config has no wasm listener")?;
    Ok((listeners, wasm))
}

fn router_with_upstream(router: &Value, filter: Value) -> Value {
    let mut router = router.clone();
    router["typed_config"]["upstream_http_filters"] = json!([
        filter,
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
            }
        }
    ]);
    router
}

fn lua(name: &str, source: &str) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": { "inline_string": source }
        }
    })
}

fn array_mut(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value.as_array_mut().into_iter().flatten()
}

/// The Lua equivalent of the gateway role, as a user would write it: buffer the body,
/// find `model` with a pattern, and set the same router control headers.
const LUA_GATEWAY: &str = r#"
local chains = {
  ["bench-model"] = {"bench-fallback"},
  ["bench-model+status-502"] = {"bench-fallback"},
}
local paths = {
  ["/v1/chat/completions"] = true, ["/v1/completions"] = true,
  ["/v1/responses"] = true, ["/v1/embeddings"] = true,
}
function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(":method") ~= "POST" then return end
  local path = (headers:get(":path") or ""):match("^[^?]*")
  if not paths[path] then return end
  local body = handle:body()
  if body == nil then return end
  local raw = body:getBytes(0, body:length())
  local model = raw:match('"model"%s*:%s*"([^"\\]*)"')
  local chain = model and chains[model]
  if not chain then return end
  -- Waiting for the body ended the first wrapper's scope; the headers are still held.
  headers = handle:headers()
  headers:replace("x-envoy-retry-on", "retriable-status-codes,reset,connect-failure,refused-stream")
  headers:replace("x-envoy-max-retries", tostring(#chain))
  headers:replace("x-envoy-retriable-status-codes", "500,502,503,504,524")
end
"#;

/// The Lua equivalent of the attempt role: strip the control headers, and from the
/// second attempt on, rewrite `model` to the chain's next entry.
const LUA_ATTEMPT: &str = r#"
local chains = {
  ["bench-model"] = {"bench-fallback"},
  ["bench-model+status-502"] = {"bench-fallback"},
}
local control = {
  "x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-retriable-status-codes",
  "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
  "x-envoy-attempt-count",
}
function envoy_on_request(handle)
  local headers = handle:headers()
  local attempt = tonumber(headers:get("x-envoy-attempt-count") or "1") or 1
  for _, name in ipairs(control) do headers:remove(name) end
  if attempt < 2 then return end
  local body = handle:body()
  if body == nil then return end
  local raw = body:getBytes(0, body:length())
  local first, last, model = raw:find('"model"%s*:%s*"([^"\\]*)"')
  local chain = model and chains[model]
  if not chain then return end
  local next_model = chain[attempt - 1] or chain[#chain]
  local rewritten = raw:sub(1, first - 1) .. '"model":"' .. next_model .. '"' .. raw:sub(last + 1)
  body:setBytes(rewritten)
  handle:headers():replace("content-length", tostring(#rewritten))
end
"#;
