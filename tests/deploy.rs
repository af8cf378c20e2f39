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

// ---------------------------------------------------------------------------------
// Kubernetes manifests (deploy/istio, deploy/envoy-gateway)

/// The validator `make setup` installs into the venv (PyPI `check-jsonschema`).
fn check_jsonschema() -> PathBuf {
    let path = repo_root().join(".venv/bin/check-jsonschema");
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (or `make test`)",
        path.display()
    );
    path
}

/// Every Kubernetes object under deploy/: (file, object).
fn kubernetes_manifests() -> Vec<(PathBuf, Value)> {
    shipped_yaml_files()
        .into_iter()
        .filter(|path| path.starts_with(repo_root().join("deploy")))
        .flat_map(|path| {
            yaml_documents(&path)
                .into_iter()
                .map(move |document| (path.clone(), document))
        })
        .filter(|(_, document)| document.get("apiVersion").is_some())
        .collect()
}

/// The vendored schema of an object's kind: tests/data/crd-schemas/<group>_<version>_<Kind>.json.
fn schema_of(document: &Value) -> PathBuf {
    let api_version = document["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let kind = document["kind"].as_str().unwrap();
    repo_root().join(format!(
        "tests/data/crd-schemas/{group}_{version}_{kind}.json"
    ))
}

/// Runs check-jsonschema on `documents` (written as JSON files), grouped by schema;
/// returns the failures' output.
fn validate(documents: &[(String, Value)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut by_schema: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for (index, (name, document)) in documents.iter().enumerate() {
        let schema = schema_of(document);
        assert!(
            schema.exists(),
            "{name}: no vendored schema {}",
            schema.display()
        );
        let file = dir
            .path()
            .join(format!("{index}-{}.json", name.replace('/', "_")));
        std::fs::write(&file, document.to_string()).unwrap();
        by_schema.entry(schema).or_default().push(file);
    }
    let mut failures = String::new();
    for (schema, files) in by_schema {
        let output = std::process::Command::new(check_jsonschema())
            .arg("--schemafile")
            .arg(&schema)
            .args(&files)
            .output()
            .expect("run check-jsonschema");
        if !output.status.success() {
            failures.push_str(&format!(
                "{}:\n{}{}\n",
                schema.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

fn named(manifests: &[(PathBuf, Value)]) -> Vec<(String, Value)> {
    manifests
        .iter()
        .map(|(path, document)| {
            let file = path.strip_prefix(repo_root()).unwrap().display();
            (
                format!(
                    "{file}#{}/{}",
                    document["kind"].as_str().unwrap(),
                    document["metadata"]["name"].as_str().unwrap()
                ),
                document.clone(),
            )
        })
        .collect()
}

#[test]
fn kubernetes_manifests_match_their_crd_schemas() {
    let manifests = kubernetes_manifests();
    let kinds: std::collections::BTreeSet<String> = manifests
        .iter()
        .map(|(_, d)| {
            format!(
                "{}/{}",
                d["apiVersion"].as_str().unwrap(),
                d["kind"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "networking.istio.io/v1alpha3/EnvoyFilter",
        "networking.istio.io/v1/ServiceEntry",
        "networking.istio.io/v1/DestinationRule",
        "gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy",
        "gateway.envoyproxy.io/v1alpha1/EnvoyPatchPolicy",
        "gateway.envoyproxy.io/v1alpha1/Backend",
        "gateway.networking.k8s.io/v1alpha3/BackendTLSPolicy",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} under deploy/: {kinds:?}"
        );
    }
    if let Err(failures) = validate(&named(&manifests)) {
        panic!("manifests that do not match their schema:\n{failures}");
    }
}

/// A change that makes a manifest wrong.
type Mistake = fn(&mut Value);

/// The vendored schemas are strict enough to catch what a cluster would refuse.
#[test]
fn the_vendored_schemas_reject_mistakes() {
    let manifests = named(&kubernetes_manifests());
    let find = |kind: &str| {
        manifests
            .iter()
            .find(|(_, d)| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let mistakes: Vec<(&str, Mistake)> = vec![
        ("EnvoyFilter", |d| {
            d["spec"]["configPatches"][0]["applyTo"] = json!("UPSTREAM_FILTER")
        }),
        ("EnvoyFilter", |d| {
            d["spec"]["configPatches"][0]["patch"]["operaton"] = json!("ADD")
        }),
        ("DestinationRule", |d| {
            d["spec"]["trafficPolicy"]["connectionPool"]["http"]["maxRetry"] = json!(1024)
        }),
        ("ServiceEntry", |d| {
            d["spec"]["ports"][0]["protocol"] = json!("HTTPX")
        }),
        ("EnvoyExtensionPolicy", |d| {
            d["spec"]["wasm"][0]["code"]["type"] = json!("OCI")
        }),
        ("EnvoyExtensionPolicy", |d| {
            d["spec"]["wasm"][0]["rootId"] = json!("x")
        }),
        ("EnvoyPatchPolicy", |d| {
            d["spec"]["jsonPatches"][0]["operation"]["op"] = json!("merge")
        }),
        ("EnvoyPatchPolicy", |d| {
            d["spec"]["jsonPatches"][0]["type"] = json!("Listener")
        }),
        ("Backend", |d| {
            d["spec"]["endpoints"][0]["fqdn"]["port"] = json!(0)
        }),
        ("BackendTLSPolicy", |d| {
            d["spec"]["validation"]
                .as_object_mut()
                .unwrap()
                .remove("hostname");
        }),
        ("HTTPRoute", |d| {
            d["spec"]["rules"][0]["timeouts"]["request"] = json!("5 minutes")
        }),
    ];
    for (kind, mistake) in mistakes {
        let (name, mut document) = find(kind);
        mistake(&mut document);
        assert!(
            validate(&[(name.clone(), document.clone())]).is_err(),
            "the schema of {kind} accepts a mistake: {document}"
        );
    }
}

// ---------------------------------------------------------------------------------
// What the manifests put into Envoy, run in Envoy: each deploy path's patches are
// applied to the example by hand (no cluster here), with the module from disk
// instead of a registry, and a fallback goes through them.

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn test_plugin() -> Value {
    json!({"chains": {"a+status-502": ["b"]}})
}

/// The one object of `kind` under deploy/`dir`.
fn manifest(dir: &str, kind: &str) -> Value {
    let found: Vec<Value> = kubernetes_manifests()
        .into_iter()
        .filter(|(path, d)| {
            path.starts_with(repo_root().join("deploy").join(dir)) && d["kind"] == kind
        })
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} under deploy/{dir}");
    found.into_iter().next().unwrap()
}

/// The chains of envoy/envoy-provider-tls.yaml, which every deploy path uses too.
fn provider_example_plugin() -> Value {
    let mut config = load_yaml(&repo_root().join("envoy/envoy-provider-tls.yaml"));
    let text = connection_manager(&mut config)["http_filters"][0]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_str(&text).unwrap()
}

fn plugin_of(wasm_config: &Value) -> Value {
    serde_json::from_str(wasm_config["configuration"]["value"].as_str().unwrap()).unwrap()
}

/// A Wasm PluginConfig with the built module and the test chains.
fn localize(wasm_config: &mut Value) {
    wasm_config["vm_config"]["code"] =
        json!({"local": {"filename": wasm_path().display().to_string()}});
    wasm_config["configuration"]["value"] = json!(test_plugin().to_string());
}

/// The example, with its own placement of both roles taken out, in front of `mock`.
fn bare_example(mock: &Mock) -> Value {
    let mut config = example_config(mock.port(), &test_plugin());
    // ECDS from files needs a node identity.
    config["node"] = json!({"id": "deploy-test", "cluster": "deploy-test"});
    let manager = connection_manager(&mut config);
    manager["http_filters"][1]["typed_config"]
        .as_object_mut()
        .unwrap()
        .remove("upstream_http_filters");
    let vhost = manager["route_config"]["virtual_hosts"][0]
        .as_object_mut()
        .unwrap();
    vhost.remove("include_request_attempt_count");
    vhost.remove("request_body_buffer_limit");
    config
}

async fn assert_falls_back(envoy: &Envoy, mock: &Mock) {
    let response = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("a+status-502"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "b");
    assert_eq!(models_seen(mock), ["a+status-502", "b"]);
}

#[tokio::test]
async fn the_istio_envoy_filter_runs_in_envoy() {
    let filter = manifest("istio", "EnvoyFilter");
    let service_entry = manifest("istio", "ServiceEntry");
    let destination_rule = manifest("istio", "DestinationRule");
    let gateway = manifest("istio", "Gateway");
    let virtual_service = manifest("istio", "VirtualService");
    let patches = filter["spec"]["configPatches"].as_array().unwrap();
    let patch = |apply_to: &str| -> Vec<&Value> {
        patches
            .iter()
            .filter(|p| p["applyTo"] == apply_to)
            .collect()
    };

    // The ECDS resources: the two roles, one module, one plugin configuration.
    let extensions: std::collections::BTreeMap<String, Value> = patch("EXTENSION_CONFIG")
        .into_iter()
        .map(|p| {
            let value = &p["patch"]["value"];
            assert_eq!(value["typed_config"]["@type"], WASM_TYPE);
            (
                value["name"].as_str().unwrap().to_string(),
                value["typed_config"].clone(),
            )
        })
        .collect();
    let roles: Vec<&str> = extensions
        .values()
        .map(|t| t["config"]["root_id"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["ai_fallback_attempt", "ai_fallback_gateway"]);
    for typed in extensions.values() {
        assert_eq!(typed["config"]["allow_on_headers_stop_iteration"], true);
        assert_eq!(typed["config"]["failure_policy"], "FAIL_RELOAD");
        assert_eq!(plugin_of(&typed["config"]), provider_example_plugin());
    }

    // The provider's names agree across the manifests.
    let host = service_entry["spec"]["hosts"][0].clone();
    let port = service_entry["spec"]["ports"][0]["number"].clone();
    let cluster_patch = patch("CLUSTER")[0];
    assert_eq!(cluster_patch["match"]["cluster"]["service"], host);
    assert_eq!(cluster_patch["match"]["cluster"]["portNumber"], port);
    assert_eq!(destination_rule["spec"]["host"], host);
    assert_eq!(
        destination_rule["spec"]["trafficPolicy"]["tls"]["sni"],
        host
    );
    let destination = &virtual_service["spec"]["http"][0]["route"][0]["destination"];
    assert_eq!(destination["host"], host);
    assert_eq!(destination["port"]["number"], port);
    let server = &gateway["spec"]["servers"][0];
    let vhost_patch = patch("VIRTUAL_HOST")[0];
    assert_eq!(
        vhost_patch["match"]["routeConfiguration"]["vhost"]["name"],
        format!(
            "{}:{}",
            server["hosts"][0].as_str().unwrap(),
            server["port"]["number"]
        )
    );

    // Applied to the example, with the ECDS resources served from files.
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let serve_from_file = |filter: &mut Value| {
        let name = filter["name"].as_str().unwrap().to_string();
        let mut typed = extensions[&name].clone();
        localize(&mut typed["config"]);
        let file = dir.path().join(format!("{name}.json"));
        let resources = json!({"resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name, "typed_config": typed}]});
        std::fs::write(&file, resources.to_string()).unwrap();
        assert!(filter["config_discovery"]["config_source"]["ads"].is_object());
        filter["config_discovery"]["config_source"] =
            json!({"path_config_source": {"path": file.display().to_string()}});
    };
    let mut config = bare_example(&mock);
    let manager = connection_manager(&mut config);

    let http_filter_patch = patch("HTTP_FILTER")[0];
    assert_eq!(http_filter_patch["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        http_filter_patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let mut gateway_filter = http_filter_patch["patch"]["value"].clone();
    serve_from_file(&mut gateway_filter);
    manager["http_filters"][0] = gateway_filter;

    for (key, value) in vhost_patch["patch"]["value"].as_object().unwrap() {
        manager["route_config"]["virtual_hosts"][0][key] = value.clone();
    }

    let mut options = cluster_patch["patch"]["value"]["typed_extension_protocol_options"].clone();
    for upstream_filter in options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["http_filters"]
        .as_array_mut()
        .unwrap()
    {
        if upstream_filter.get("config_discovery").is_some() {
            serve_from_file(upstream_filter);
        }
    }
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = options;

    let envoy = Envoy::start(&config);
    assert_falls_back(&envoy, &mock).await;
}

/// An EnvoyPatchPolicy patch that adds one field to the object named `target` (by
/// `jsonPath`) of the xDS resource `resource`: the field and its value.
fn field_patch(patch: &Value, resource: &str, target: &str) -> (String, Value) {
    assert_eq!(patch["name"], resource);
    let operation = &patch["operation"];
    assert!(
        operation["jsonPath"]
            .as_str()
            .unwrap()
            .contains(&format!("'{target}'")),
        "{operation}"
    );
    assert_eq!(operation["op"], "add");
    let key = operation["path"].as_str().unwrap().trim_start_matches('/');
    (key.to_string(), operation["value"].clone())
}

#[tokio::test]
async fn the_envoy_gateway_policies_run_in_envoy() {
    let extension = manifest("envoy-gateway", "EnvoyExtensionPolicy");
    let patch_policy = manifest("envoy-gateway", "EnvoyPatchPolicy");
    let gateway = manifest("envoy-gateway", "Gateway");
    let route = manifest("envoy-gateway", "HTTPRoute");
    let backend = manifest("envoy-gateway", "Backend");
    let tls = manifest("envoy-gateway", "BackendTLSPolicy");
    let proxy = manifest("envoy-gateway", "EnvoyProxy");

    // Names, as Envoy Gateway derives them from the Gateway API objects.
    let namespace = gateway["metadata"]["namespace"].as_str().unwrap();
    let gateway_name = gateway["metadata"]["name"].as_str().unwrap();
    let listener = &gateway["spec"]["listeners"][0];
    let listener_name = format!(
        "{namespace}/{gateway_name}/{}",
        listener["name"].as_str().unwrap()
    );
    let vhost_name = format!(
        "{listener_name}/{}",
        listener["hostname"].as_str().unwrap().replace('.', "_")
    );
    let cluster_name = format!(
        "httproute/{}/{}/rule/0",
        route["metadata"]["namespace"].as_str().unwrap(),
        route["metadata"]["name"].as_str().unwrap()
    );
    let wasm_filter_name = format!(
        "envoy.filters.http.wasm/envoyextensionpolicy/{}/{}/0",
        extension["metadata"]["namespace"].as_str().unwrap(),
        extension["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(patch_policy["spec"]["targetRef"]["name"], gateway_name);
    assert_eq!(
        extension["spec"]["targetRefs"][0]["name"],
        route["metadata"]["name"]
    );
    let backend_ref = &route["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(backend_ref["name"], backend["metadata"]["name"]);
    assert_eq!(
        tls["spec"]["targetRefs"][0]["name"],
        backend["metadata"]["name"]
    );
    assert_eq!(
        tls["spec"]["validation"]["hostname"],
        backend["spec"]["endpoints"][0]["fqdn"]["hostname"]
    );

    let wasm = &extension["spec"]["wasm"][0];
    assert_eq!(wasm["rootID"], "ai_fallback_gateway");
    assert_eq!(wasm["config"], provider_example_plugin());

    let patches = patch_policy["spec"]["jsonPatches"].as_array().unwrap();
    let of_type = |suffix: &str| -> Vec<&Value> {
        patches
            .iter()
            .filter(|p| p["type"].as_str().unwrap().ends_with(suffix))
            .collect()
    };
    // The listener patches set what the EnvoyExtensionPolicy cannot on the gateway
    // role's filter: the hold on the request headers, and a VM reloaded when it fails.
    let gateway_role_patches: serde_json::Map<String, Value> = of_type("Listener")
        .into_iter()
        .map(|patch| field_patch(patch, &listener_name, &wasm_filter_name))
        .collect();
    assert_eq!(
        gateway_role_patches["allow_on_headers_stop_iteration"],
        true
    );
    assert_eq!(gateway_role_patches["failure_policy"], "FAIL_RELOAD");
    assert!(gateway_role_patches["reload_config"]["backoff"]["base_interval"].is_string());
    // Envoy refuses fail_open (what failOpen: true renders) beside failure_policy.
    assert_ne!(wasm["failOpen"], true);

    let cluster_patch = of_type("Cluster")[0];
    assert_eq!(cluster_patch["name"], cluster_name);
    assert_eq!(
        cluster_patch["operation"]["path"],
        "/typed_extension_protocol_options"
    );
    let mut options = cluster_patch["operation"]["value"].clone();
    let upstream_filters = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["http_filters"]
        .as_array_mut()
        .unwrap();
    let attempt = &mut upstream_filters[0]["typed_config"]["config"];
    assert_eq!(attempt["root_id"], "ai_fallback_attempt");
    assert_eq!(attempt["failure_policy"], "FAIL_RELOAD");
    assert_eq!(plugin_of(attempt), provider_example_plugin());
    // The module the EnvoyProxy mounts.
    let mount = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
        ["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(
        attempt["vm_config"]["code"]["local"]["filename"],
        format!("{mount}/plugin.wasm")
    );
    localize(attempt);

    let route_patches = of_type("RouteConfiguration");
    assert_eq!(route_patches.len(), 2);

    // Applied to the example: the gateway role as Envoy Gateway renders the
    // EnvoyExtensionPolicy (root id, configuration as JSON text, the legacy
    // fail_open only when failOpen is true, as in its golden listeners) with the
    // listener patches; the cluster and virtual host patches as they are.
    let mock = Mock::start();
    let mut config = bare_example(&mock);
    let manager = connection_manager(&mut config);
    let gateway_role = &mut manager["http_filters"][0]["typed_config"]["config"];
    let rendered = gateway_role.as_object_mut().unwrap();
    for key in [
        "allow_on_headers_stop_iteration",
        "failure_policy",
        "reload_config",
    ] {
        rendered.remove(key);
    }
    rendered.insert("root_id".into(), wasm["rootID"].clone());
    if wasm["failOpen"] == true {
        rendered.insert("fail_open".into(), json!(true));
    }
    rendered.extend(gateway_role_patches);
    for patch in route_patches {
        let (key, value) = field_patch(patch, &listener_name, &vhost_name);
        manager["route_config"]["virtual_hosts"][0][key] = value;
    }
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = options;

    let envoy = Envoy::start(&config);
    assert_falls_back(&envoy, &mock).await;
}
