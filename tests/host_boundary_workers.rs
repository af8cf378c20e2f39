//! Bytes that are not UTF-8 in the headers the filter reads, from a client and from a
//! provider, under the real Envoy binary with two workers (issue 13).
//!
//! proxy-wasm 0.2.5's header getters unwrap `String::from_utf8`: one such byte panics
//! in the filter and kills that worker's wasm VM (both roles share it), and with
//! `failure_policy: FAIL_OPEN` every later request on that worker passed through
//! without fallbacks (the examples now use FAIL_RELOAD). Each test sends one such request (or has the mock
//! answer with such a header), then checks what that request got, that every
//! worker still falls back, that the filter counted every one of those fallbacks,
//! that Envoy's wasm VM stats did not move, and that nothing panicked.
//!
//! What Envoy 1.40 itself refuses before any filter runs (its HTTP/1 codec answers
//! `400 Bad Request`): a `content-length`, a `host` or a request target with such
//! bytes, and an upstream answer whose `content-length` has them (a protocol error
//! the router retries, like an answer that is not HTTP).

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CHAT: &[u8] = b"/v1/chat/completions";
const NOT_UTF8: &[u8] = b"\xff\xfe";
/// "café" in Latin-1.
const LATIN1: &[u8] = b"caf\xe9";
const WORKERS: usize = 2;
/// The listener's stat prefix.
const LISTENER: &str = "boundary";
/// Connections held open at once per worker in the every-worker check.
const CONNECTIONS_PER_WORKER: usize = 2;
/// The model of the client-request cases: a 502, then `b`'s 200.
const FAILING: &str = "a+status-502";
/// The model of the every-worker check (a chain like `FAILING`'s, counted apart).
const PROBE: &str = "w+status-502";
const FALLBACK: &str = "b";
/// Generous: two cores are shared with other work.
const PATIENCE: Duration = Duration::from_secs(60);

/// The first models of the answer cases (`latin1-NAME`: see mock/src/lib.rs).
const ANSWER_MODELS: [&str; 8] = [
    "a+status-502+latin1-content-type",
    "a+latin1-content-type",
    "a+status-502+latin1-retry-after",
    "a+latin1-retry-after",
    "a+status-502+latin1-content-length",
    "a+latin1-content-length",
    "a+status-502+latin1-content-encoding",
    "a+latin1-content-encoding",
];

/// Every test model falls back to `b`. The rule makes the gateway read `:authority`
/// (it matches on the host); no test request is for that host.
fn plugin() -> Value {
    let mut chains = serde_json::Map::new();
    for model in [FAILING, PROBE].into_iter().chain(ANSWER_MODELS) {
        chains.insert(model.to_string(), json!([FALLBACK]));
    }
    json!({
        "chains": chains,
        "rules": [{"name": "by-host", "match": {"host": "other.example"}}],
    })
}

/// What the request that carries the bytes must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `b`'s 200, after the first model and `b` reached the mock.
    FallsBack,
    /// The first model's answer with this status, after one attempt.
    FirstAnswer(u16),
    /// Envoy's own `400`; nothing reaches the mock.
    RefusedByEnvoy,
}

struct Case {
    /// The bytes of one HTTP/1.1 request, sent as they are.
    request: Vec<u8>,
    /// The model in its body.
    model: &'static str,
    expect: Expect,
    /// Both roles' `failure_policy`; `None` keeps the example's (FAIL_RELOAD).
    policy: Option<&'static str>,
}

/// A client request for `FAILING` with `header: value` (`:path` sets the target).
fn request_case(header: &str, value: &[u8], expect: Expect) -> Case {
    Case {
        request: chat_request(FAILING, Some((header, value))),
        model: FAILING,
        expect,
        policy: None,
    }
}

/// An ordinary request whose first model the mock answers with a Latin-1 header.
fn answer_case(model: &'static str, expect: Expect) -> Case {
    assert!(ANSWER_MODELS.contains(&model), "{model} has no chain");
    Case {
        request: chat_request(model, None),
        model,
        expect,
        policy: None,
    }
}

/// A chat request for `model` on a connection that closes after the answer, with
/// `header` replacing the default of that name or added (`:path`: the target,
/// `:authority`: the host).
fn chat_request(model: &str, header: Option<(&str, &[u8])>) -> Vec<u8> {
    let body = chat_body(model);
    let length = body.len().to_string();
    let mut target = CHAT;
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("host", b"localhost"),
        ("content-type", b"application/json"),
        ("content-length", length.as_bytes()),
        ("connection", b"close"),
    ];
    match header {
        None => {}
        Some((":path", value)) => target = value,
        Some((name, value)) => {
            let name = if name == ":authority" { "host" } else { name };
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some(default) => default.1 = value,
                None => headers.push((name, value)),
            }
        }
    }
    let mut request = [b"POST ", target, b" HTTP/1.1\r\n"].concat();
    for (name, value) in headers {
        request.extend_from_slice(&[name.as_bytes(), b": ", value, b"\r\n"].concat());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body.as_bytes());
    request
}

/// What came back on one connection.
struct RawAnswer {
    status: u16,
    text: String,
}

impl RawAnswer {
    /// The body is a chat completion from `model`.
    fn is_from(&self, model: &str) -> bool {
        self.status == 200 && self.text.contains(&format!("\"model\":\"{model}\""))
    }
}

impl std::fmt::Display for RawAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = self.text.chars().take(300).collect();
        write!(f, "{}: {text:?}", self.status)
    }
}

fn connect(envoy: &Envoy) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Writes `request` and reads until Envoy closes the connection (every request here
/// asks it to); status 0 when no HTTP answer came.
fn exchange(mut stream: TcpStream, request: &[u8]) -> RawAnswer {
    stream.write_all(request).unwrap();
    let mut received = Vec::new();
    if let Err(e) = stream.read_to_end(&mut received) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no answer within {PATIENCE:?}"
        );
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .unwrap_or(0);
    RawAnswer { status, text }
}

/// Envoy (the example config; `policy` for both roles, if set) with `WORKERS`
/// workers that take fresh connections in turn while they are open (`exact_balance`
/// hands a connection to the worker holding the fewest).
fn start(mock: &Mock, policy: Option<&str>) -> Envoy {
    let mut config = example_config(mock.port(), &plugin());
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["connection_balance_config"] = json!({"exact_balance": {}});
    // Its stats are named after the configured address otherwise, port 0.
    listener["stat_prefix"] = json!(LISTENER);
    for (pointer, root_id) in [
        ("/http_filters/0/typed_config/config", "ai_fallback_gateway"),
        (
            "/http_filters/1/typed_config/upstream_http_filters/0/typed_config/config",
            "ai_fallback_attempt",
        ),
    ] {
        let plugin_config = connection_manager(&mut config)
            .pointer_mut(pointer)
            .unwrap();
        assert_eq!(plugin_config["root_id"], root_id);
        match policy {
            None => assert_eq!(plugin_config["failure_policy"], "FAIL_RELOAD"),
            Some(policy) => plugin_config["failure_policy"] = json!(policy),
        }
    }
    let workers = WORKERS.to_string();
    Envoy::try_start_with(&config, &["--concurrency", &workers])
        .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
}

/// Envoy 1.40's own record of wasm VMs: a VM created, lost or reloaded moves one of
/// these. A crash under FAIL_RELOAD moves `vm_reload_success` (or `_backoff`,
/// `_failure`) of both plugins and `v8.created`; under FAIL_OPEN Envoy counts nothing,
/// so there the filter's own counter (`fallbacks_counted`) is the witness.
const VM_STATS: [&str; 11] = [
    "wasm.envoy.wasm.runtime.v8.created",
    "wasm.envoy.wasm.runtime.v8.active",
    "wasm.wasm_vm_count",
    "wasm.ai_fallback.vm_reload",
    "wasm.ai_fallback.vm_reload_success",
    "wasm.ai_fallback.vm_reload_failure",
    "wasm.ai_fallback.vm_reload_backoff",
    "wasm.ai_fallback_attempt.vm_reload",
    "wasm.ai_fallback_attempt.vm_reload_success",
    "wasm.ai_fallback_attempt.vm_reload_failure",
    "wasm.ai_fallback_attempt.vm_reload_backoff",
];

fn vm_stats(envoy: &Envoy) -> Vec<(&'static str, u64)> {
    VM_STATS
        .iter()
        .map(|name| (*name, envoy.stat(name)))
        .collect()
}

/// The gateway's count of requests for `PROBE` that fell back and succeeded; a
/// request on a worker whose VM died is not counted. Waits (a little) for `expected`:
/// the count is written when a request's log runs, just after its answer.
fn fallbacks_counted(envoy: &Envoy, expected: u64) -> u64 {
    let name =
        "wasmcustom.ai_fallback.requests_total.route.openai.model.w_status-502.outcome.fallback_ok";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = envoy.stat(name);
        if counted >= expected || Instant::now() > deadline {
            return counted;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listener_stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("listener.{LISTENER}.{name}"))
}

/// Waits until Envoy holds `count` client connections.
fn wait_for_connections(envoy: &Envoy, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while listener_stat(envoy, "downstream_cx_active") != count as u64 {
        assert!(
            Instant::now() < deadline,
            "Envoy did not come to hold {count} connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `CONNECTIONS_PER_WORKER` connections per worker, all at once, and checks
/// that each worker holds its share; then sends `PROBE` on each and returns what is
/// wrong: any answer but `b`'s 200 after exactly `PROBE` and `b` at the mock.
fn every_worker_falls_back(envoy: &Envoy, mock: &Mock) -> Vec<String> {
    // Earlier connections gone first, so that the balancer deals out only these.
    wait_for_connections(envoy, 0);
    let total = WORKERS * CONNECTIONS_PER_WORKER;
    let streams: Vec<TcpStream> = (0..total).map(|_| connect(envoy)).collect();
    wait_for_connections(envoy, total);
    for worker in 0..WORKERS {
        let held = listener_stat(envoy, &format!("worker_{worker}.downstream_cx_active"));
        assert_eq!(
            held, CONNECTIONS_PER_WORKER as u64,
            "worker_{worker}'s connections"
        );
    }
    let mut problems = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        mock.clear();
        let answer = exchange(stream, &chat_request(PROBE, None));
        let seen = models_seen(mock);
        if !answer.is_from(FALLBACK) || seen != [PROBE, FALLBACK] {
            problems.push(format!(
                "connection {i} of {total}: mock saw {seen:?}; client got {answer}"
            ));
        }
    }
    mock.clear();
    problems
}

/// Sends `case`'s request, then checks everything this file is about; fails once with
/// every problem found.
fn check(case: Case) {
    let mock = Mock::start();
    let envoy = start(&mock, case.policy);
    let vms_before = vm_stats(&envoy);
    assert!(vms_before[0].1 > 0, "no wasm VM counted: {vms_before:?}");
    let mut problems = Vec::new();

    let answer = exchange(connect(&envoy), &case.request);
    let seen = models_seen(&mock);
    mock.clear();
    let as_expected = match case.expect {
        Expect::FallsBack => answer.is_from(FALLBACK) && seen == [case.model, FALLBACK],
        Expect::FirstAnswer(status) => {
            answer.status == status
                && (status != 200 || answer.is_from(case.model))
                && seen == [case.model]
        }
        Expect::RefusedByEnvoy => {
            answer.status == 400 && answer.text.ends_with("Bad Request") && seen.is_empty()
        }
    };
    if !as_expected {
        problems.push(format!(
            "the request itself: expected {:?}; mock saw {seen:?}; client got {answer}",
            case.expect
        ));
    }

    problems.extend(every_worker_falls_back(&envoy, &mock));
    let sent = (WORKERS * CONNECTIONS_PER_WORKER) as u64;
    let counted = fallbacks_counted(&envoy, sent);
    if counted != sent {
        problems.push(format!(
            "the filter counted {counted} of the {sent} fallbacks (a dead VM counts none)"
        ));
    }
    for ((name, before), (_, after)) in vms_before.iter().zip(vm_stats(&envoy)) {
        if after != *before {
            problems.push(format!("{name} moved: {before} -> {after}"));
        }
    }
    let log = envoy.log();
    if let Some(line) = log.lines().find(|line| line.contains("panicked")) {
        problems.push(format!("Envoy's log: {line}"));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

// A client's request.

#[test]
fn request_timeout_header_not_utf8() {
    check(request_case(
        "x-ai-fallback-timeout-ms",
        NOT_UTF8,
        Expect::FallsBack,
    ));
}

#[test]
fn request_content_type_not_utf8() {
    check(request_case("content-type", NOT_UTF8, Expect::FallsBack));
}

/// Not `identity`, so the body is not read and the request is sent on as it is.
#[test]
fn request_content_encoding_not_utf8() {
    check(request_case(
        "content-encoding",
        NOT_UTF8,
        Expect::FirstAnswer(502),
    ));
}

#[test]
fn request_content_length_not_utf8_is_refused_by_envoy() {
    check(request_case(
        "content-length",
        NOT_UTF8,
        Expect::RefusedByEnvoy,
    ));
}

#[test]
fn request_host_not_utf8_is_refused_by_envoy() {
    check(request_case(":authority", NOT_UTF8, Expect::RefusedByEnvoy));
}

#[test]
fn request_host_latin1_is_refused_by_envoy() {
    check(request_case(
        ":authority",
        b"caf\xe9.example",
        Expect::RefusedByEnvoy,
    ));
}

/// In the query, which the filter ignores when it matches paths.
#[test]
fn request_query_not_utf8_is_refused_by_envoy() {
    check(request_case(
        ":path",
        b"/v1/chat/completions?api-version=\xff\xfe",
        Expect::RefusedByEnvoy,
    ));
}

#[test]
fn request_path_latin1_is_refused_by_envoy() {
    check(request_case(
        ":path",
        b"/v1/chat/completions/caf\xe9",
        Expect::RefusedByEnvoy,
    ));
}

#[test]
fn request_id_not_utf8() {
    check(request_case("x-request-id", NOT_UTF8, Expect::FallsBack));
}

/// Under FAIL_OPEN a crash shows in no Envoy stat: the filter's own counter tells.
#[test]
fn request_timeout_header_not_utf8_under_fail_open() {
    check(Case {
        policy: Some("FAIL_OPEN"),
        ..request_case("x-ai-fallback-timeout-ms", LATIN1, Expect::FallsBack)
    });
}

// A provider's answer to the first attempt: a 502 falls back; a 200 is the answer.

#[test]
fn answer_content_type_latin1_on_502() {
    check(answer_case(
        "a+status-502+latin1-content-type",
        Expect::FallsBack,
    ));
}

#[test]
fn answer_content_type_latin1_on_200() {
    check(answer_case(
        "a+latin1-content-type",
        Expect::FirstAnswer(200),
    ));
}

#[test]
fn answer_retry_after_latin1_on_502() {
    check(answer_case(
        "a+status-502+latin1-retry-after",
        Expect::FallsBack,
    ));
}

#[test]
fn answer_retry_after_latin1_on_200() {
    check(answer_case(
        "a+latin1-retry-after",
        Expect::FirstAnswer(200),
    ));
}

/// Envoy's codec refuses the answer (a protocol error), which the router retries.
#[test]
fn answer_content_length_latin1_on_502_is_refused_by_envoy() {
    check(answer_case(
        "a+status-502+latin1-content-length",
        Expect::FallsBack,
    ));
}

#[test]
fn answer_content_length_latin1_on_200_is_refused_by_envoy() {
    check(answer_case("a+latin1-content-length", Expect::FallsBack));
}

#[test]
fn answer_content_encoding_latin1_on_502() {
    check(answer_case(
        "a+status-502+latin1-content-encoding",
        Expect::FallsBack,
    ));
}

#[test]
fn answer_content_encoding_latin1_on_200() {
    check(answer_case(
        "a+latin1-content-encoding",
        Expect::FirstAnswer(200),
    ));
}

/// Under FAIL_OPEN a crash shows in no Envoy stat: the filter's own counter tells.
#[test]
fn answer_content_type_latin1_on_502_under_fail_open() {
    check(Case {
        policy: Some("FAIL_OPEN"),
        ..answer_case("a+status-502+latin1-content-type", Expect::FallsBack)
    });
}
