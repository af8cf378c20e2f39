//! The launcher under the real Envoy (`ENVOY_BIN` or `make setup`'s): a config
//! without the filter, two named listeners that answer by themselves.

use serde_json::{json, Value};
use std::time::Duration;
use testkit::{envoy_bin, http_get, process, Launch};

fn listener(name: &str, body: &str) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [ { "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [ {
                    "name": "all", "domains": ["*"],
                    "routes": [ { "match": { "prefix": "/" },
                                  "direct_response": { "status": 200, "body": { "inline_string": body } } } ]
                } ] },
                "http_filters": [ {
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                } ]
            }
        } ] } ]
    })
}

fn config() -> Value {
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": { "listeners": [ listener("first", "one"), listener("second", "two") ] }
    })
}

fn launch() -> Launch {
    let bin = envoy_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `make setup` or set ENVOY_BIN",
        bin.display()
    );
    Launch::new(bin).concurrency(1).log_level("info")
}

#[test]
fn envoy_starts_on_free_ports_and_is_killed_when_dropped() {
    let mut envoy = launch().start(&config()).unwrap();
    assert_eq!(envoy.listeners().len(), 2);
    assert_eq!(envoy.port, envoy.listener_port("first").unwrap());
    let second = envoy.listener_port("second").unwrap();
    assert!(envoy.listener_port("third").is_err());
    assert_eq!(http_get(envoy.port, "/"), (200, "one".to_owned()));
    assert_eq!(http_get(second, "/"), (200, "two".to_owned()));
    assert_eq!(envoy.admin_get("/ready").0, 200);
    assert_eq!(envoy.stat("http.second.downstream_rq_2xx"), 1);
    assert_eq!(envoy.stats().get("http.first.downstream_rq_2xx"), Some(&1));
    assert_eq!(envoy.stat("no.such.stat"), 0);
    assert!(envoy.heap_allocated() > 0);
    assert!(envoy.log_path().exists());
    assert!(envoy.alive());
    let pid = envoy.pid();
    assert!(process::rss_kib(pid) > 0);
    let log_dir = envoy.log_path().parent().unwrap().to_path_buf();
    drop(envoy);
    assert!(!log_dir.exists(), "the temporary directory is removed");
    let (status, _) = http_get(second, "/");
    assert_eq!(status, 0, "Envoy no longer answers");
}

#[test]
fn a_kept_directory_and_a_pinned_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("envoy");
    let launch = launch()
        .dir(&kept)
        .pinned(Some("0"))
        .args(["--file-flush-interval-msec", "50"]);
    let envoy = launch.start(&config()).unwrap();
    let affinity = std::fs::read_to_string(format!("/proc/{}/status", envoy.pid())).unwrap();
    assert!(
        affinity.contains("Cpus_allowed_list:\t0\n"),
        "Envoy itself is pinned, not a wrapper:\n{affinity}"
    );
    drop(envoy);
    for file in ["envoy.json", "envoy.log", "admin-address"] {
        assert!(kept.join(file).exists(), "{file} is kept");
    }
    // The same directory again: the old admin address is not taken for the new one.
    let again = launch.start(&config()).unwrap();
    assert_eq!(http_get(again.port, "/").0, 200);
}

#[test]
fn a_config_envoy_refuses_is_an_error_with_its_log() {
    let mut bad = config();
    bad["static_resources"]["listeners"][1]["no_such_field"] = json!(1);
    let error = launch()
        .ready_within(Duration::from_secs(20))
        .start(&bad)
        .err()
        .unwrap();
    assert!(
        error.starts_with("Envoy exited with exit status: 1"),
        "{error}"
    );
    assert!(
        error.contains("no_such_field"),
        "the log names the field: {error}"
    );
}
