//! The bad-input matrix under the real Envoy binary: requests the filter must not act
//! on, requests it must act on although they look odd, and upstreams that break. For
//! each case: what the client gets, how many attempts reach the mock, and that Envoy
//! (with its wasm VM) goes on serving and falling back afterwards. README.md's "Bad
//! input" section is the table of these answers.

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
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";

/// Every model has a chain (`default_chain`), so a request that passes through does
/// so because of its shape, never for lack of a chain.
fn plugin() -> Value {
    json!({
        "chains": {
            "a+status-502": ["b"],
            "d+drop": ["b"],
            "g+garbage": ["b"],
            "c+cut": ["b"],
            "s+break-2": ["b"],
            "all+drop": ["all2+drop"],
            "gg+garbage": ["gg2+garbage"],
        },
        "default_chain": ["b"],
    })
}

/// What the client got.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            content_type: header_of(&response, "content-type"),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("body").to_vec(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text()))
    }

    /// The body as text, cut to a length that fits in a failure message.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        match text.char_indices().nth(300) {
            Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], self.body.len()),
            None => text.into_owned(),
        }
    }

    /// The mock echoed the request body: it found no string `model` to act on.
    fn is_echo_of(&self, body: &[u8]) -> bool {
        self.status == 200 && self.headers.get("x-mock-echo").is_some() && self.body == body
    }
}

fn header_of(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

async fn post(envoy: &Envoy, body: impl Into<reqwest::Body>) -> Answer {
    post_with(envoy, &[], body).await
}

async fn post_with(
    envoy: &Envoy,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Answer {
    let mut request = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::of(request.body(body).send().await.expect("response")).await
}

/// Envoy answers, and the filter still falls back: `a+status-502` is answered by `b`
/// after two attempts. And no VM failed: under the example's FAIL_RELOAD a crashed VM
/// answers its request 503 and is replaced on the next one, which would fall back
/// again, so the reload counters (0 and present) are what tell.
async fn assert_still_serving(envoy: &Envoy, mock: &Mock) {
    mock.clear();
    let answer = post(envoy, chat_body("a+status-502")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    assert_eq!(models_seen(mock), ["a+status-502", "b"]);
    mock.clear();
    let stats = envoy.stats();
    for plugin in ["ai_fallback", "ai_fallback_attempt"] {
        for counter in [
            "vm_reload_success",
            "vm_reload_failure",
            "vm_reload_backoff",
        ] {
            let name = format!("wasm.{plugin}.{counter}");
            assert_eq!(stats.get(&name), Some(&0), "{name}: a VM failed");
        }
    }
}

/// The gateway's JSON error for a chain whose every model got no answer (a reset,
/// garbage, a refused connection), with the status Envoy chose for the last one.
fn assert_exhausted_without_answers(answer: &Answer, status: u16, models: &[&str]) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.content_type, "application/json");
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "fallbacks_exhausted");
    assert_eq!(error["type"], "upstream_error");
    let attempts = error["attempts"].as_array().unwrap();
    let tried: Vec<&str> = attempts
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(tried, models);
    for attempt in attempts {
        assert_eq!(attempt["status"], Value::Null, "{attempt}");
        assert_eq!(attempt["class"], "no_answer", "{attempt}");
    }
}

/// The bodies the mock received.
fn bodies_seen(mock: &Mock) -> Vec<Vec<u8>> {
    mock.requests().into_iter().map(|r| r.body).collect()
}

/// One passthrough: the mock got the body once, as sent, and the client got the
/// mock's echo of it.
async fn assert_passed_through_once(envoy: &Envoy, mock: &Mock, body: &[u8]) {
    mock.clear();
    let answer = post(envoy, body.to_vec()).await;
    assert!(
        answer.is_echo_of(body),
        "{:?}: {} {}",
        String::from_utf8_lossy(body),
        answer.status,
        answer.text()
    );
    assert_eq!(bodies_seen(mock), [body.to_vec()], "one attempt, untouched");
}

#[tokio::test]
async fn non_json_body_with_json_content_type_passes_through_once() {
    let (envoy, mock) = start_with_plugin(plugin());
    for body in [
        b"not json".as_slice(),
        br#"{"model":"a+status-502""#,
        br#"{"model":"a+status-502"} trailing"#,
        br#"{"model":"a+status-502",}"#,
        b"\xef\xbb\xbf{\"model\":\"a+status-502\"}", // a byte order mark
        b"",
    ] {
        assert_passed_through_once(&envoy, &mock, body).await;
    }
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn json_that_is_not_an_object_passes_through_once() {
    let (envoy, mock) = start_with_plugin(plugin());
    for body in [
        r#"["model","a+status-502"]"#,
        r#"[{"model":"a+status-502"}]"#,
        r#""a+status-502""#,
        "null",
        "502",
    ] {
        assert_passed_through_once(&envoy, &mock, body.as_bytes()).await;
    }
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn model_missing_or_not_a_string_passes_through_once() {
    let (envoy, mock) = start_with_plugin(plugin());
    for body in [
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"messages":[{"model":"a+status-502"}]}"#,
        r#"{"model":502}"#,
        r#"{"model":null}"#,
        r#"{"model":true}"#,
        r#"{"model":["a+status-502"]}"#,
        r#"{"model":{"name":"a+status-502"}}"#,
    ] {
        assert_passed_through_once(&envoy, &mock, body.as_bytes()).await;
    }
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn empty_model_is_a_model_name_like_any_other() {
    let (envoy, mock) = start_with_plugin(plugin());
    // The default chain applies to "" as to any name; the upstream's answer to the
    // first attempt (the mock's 200, a provider's 400) is what the client gets.
    let body = r#"{"model":"","messages":[]}"#;
    let answer = post(&envoy, body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["model"], "");
    assert_eq!(bodies_seen(&mock), [body.as_bytes().to_vec()]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn model_present_twice_passes_through_once() {
    let (envoy, mock) = start_with_plugin(plugin());
    // The mock, like most JSON readers, takes the last one: it fails with 502, and
    // the client gets that 502 after one attempt since the filter will not choose.
    for body in [
        r#"{"model":"b","model":"a+status-502"}"#,
        r#"{"mod\u0065l":"b","messages":[],"model":"a+status-502"}"#,
    ] {
        mock.clear();
        let answer = post(&envoy, body).await;
        assert_eq!(answer.status, 502, "{body}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "mock_502");
        assert_eq!(bodies_seen(&mock), [body.as_bytes().to_vec()]);
    }
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn json_nested_10000_levels_falls_back_with_every_byte_kept() {
    let (envoy, mock) = start_with_plugin(plugin());
    let depth = 10_000;
    let deep = format!("{}0{}", "[{\"x\":".repeat(depth), "}]".repeat(depth));
    for body in [
        format!(r#"{{"model":"a+status-502","messages":{deep}}}"#),
        format!(r#"{{"messages":{deep},"model":"a+status-502"}}"#),
    ] {
        mock.clear();
        let answer = post(&envoy, body.clone()).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["model"], "b");
        assert_eq!(
            bodies_seen(&mock),
            [
                body.as_bytes().to_vec(),
                with_model(body.as_bytes(), "\"a+status-502\"", "\"b\"")
            ]
        );
    }
    // Unbalanced: 10,000 openers and no closers is malformed, so it passes through.
    let unbalanced = format!(r#"{{"model":"a+status-502","x":{}"#, "[".repeat(depth));
    assert_passed_through_once(&envoy, &mock, unbalanced.as_bytes()).await;
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn invalid_utf8_outside_the_model_falls_back_inside_it_passes_through() {
    let (envoy, mock) = start_with_plugin(plugin());
    let mut outside = br#"{"messages":[{"role":"user","content":"caf"#.to_vec();
    outside.extend_from_slice(b"\xe9 \xff\xfe \xc3\x28");
    outside.extend_from_slice(br#""}],"model":"a+status-502","n":1}"#);
    let answer = post(&envoy, outside.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    assert_eq!(
        bodies_seen(&mock),
        [
            outside.clone(),
            with_model(&outside, "\"a+status-502\"", "\"b\"")
        ]
    );

    // A model name that is not UTF-8 is not a string the filter can look up.
    let inside = b"{\"model\":\"a\xff+status-502\"}".to_vec();
    assert_passed_through_once(&envoy, &mock, &inside).await;
    assert_still_serving(&envoy, &mock).await;
}

/// `bytes` as a gzip member with one stored (uncompressed) deflate block.
fn gzip_stored(bytes: &[u8]) -> Vec<u8> {
    let crc = bytes.iter().fold(!0u32, |mut crc, byte| {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
        crc
    }) ^ !0;
    let len = u16::try_from(bytes.len()).unwrap();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
}

#[tokio::test]
async fn gzip_encoded_body_passes_through_once() {
    let (envoy, mock) = start_with_plugin(plugin());
    let json = chat_body("a+status-502");
    let gzipped = gzip_stored(json.as_bytes());
    let answer = post_with(&envoy, &[("content-encoding", "gzip")], gzipped.clone()).await;
    assert!(answer.is_echo_of(&gzipped), "{answer:?}");
    assert_eq!(bodies_seen(&mock), [gzipped]);

    // The header alone decides: a body labelled gzip is never read, even when it is
    // plain JSON (the mock reads it and fails; nothing falls back).
    mock.clear();
    let answer = post_with(&envoy, &[("content-encoding", "gzip")], json.clone()).await;
    assert_eq!(answer.status, 502);
    assert_eq!(models_seen(&mock), ["a+status-502"]);

    // `identity` is no encoding: acted on.
    mock.clear();
    let answer = post_with(&envoy, &[("content-encoding", "identity")], json).await;
    assert_eq!(answer.status, 200);
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    assert_still_serving(&envoy, &mock).await;
}

fn chunked(body: &str, size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(size)
        .map(|c| Ok(c.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn chunked_upload_falls_back_with_a_right_content_length() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"a+status-502"}}"#,
        "chunk ".repeat(2000)
    );
    let answer = post(&envoy, chunked(&body, 7)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, body.as_bytes());
    let rewritten = with_model(body.as_bytes(), "\"a+status-502\"", "\"b\"");
    assert_eq!(requests[1].body, rewritten);
    assert_eq!(
        requests[1].header("content-length"),
        Some(rewritten.len().to_string().as_str())
    );
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn body_at_the_limit_falls_back_one_byte_over_gets_413() {
    let mut plugin = plugin();
    plugin["max_body_bytes"] = json!(1000);
    let (envoy, mock) = start_with_plugin(plugin);
    let sized = |len: usize| {
        let head = r#"{"model":"a+status-502","pad":""#;
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    let at_limit = sized(1000);
    assert_eq!(at_limit.len(), 1000);
    let answer = post(&envoy, at_limit.clone()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);

    mock.clear();
    for body in [reqwest::Body::from(sized(1001)), chunked(&sized(1001), 100)] {
        let answer = post(&envoy, body).await;
        assert_eq!(answer.status, 413);
        assert_eq!(answer.content_type, "application/json");
        let error = answer.json();
        assert_eq!(error["error"]["code"], "request_too_large");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 bytes"));
    }
    assert!(mock.requests().is_empty(), "nothing reached the upstream");
    assert_still_serving(&envoy, &mock).await;
}

fn big_body(len: usize) -> String {
    let head = r#"{"model":"a+status-502","messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let filler: String = (0..len - head.len() - tail.len())
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    format!("{head}{filler}{tail}")
}

#[tokio::test]
async fn body_over_envoys_default_buffer_under_the_limits_is_still_retried() {
    // 3 MiB: over Envoy's 1 MiB default stream buffer, under the filter's 4 MiB
    // default and the example's 8 MiB request_body_buffer_limit.
    let (envoy, mock) = start_with_plugin(plugin());
    let body = big_body(3 * 1024 * 1024);
    let answer = post(&envoy, body.clone()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["model"], "b");
    let bodies = bodies_seen(&mock);
    assert_eq!(bodies.len(), 2);
    assert!(bodies[0] == body.as_bytes());
    assert!(bodies[1] == with_model(body.as_bytes(), "\"a+status-502\"", "\"b\""));
    assert_eq!(envoy.stat("cluster.provider.retry_or_shadow_abandoned"), 0);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn a_body_over_envoys_buffer_limit_says_its_fallback_was_cut_short() {
    // A misconfiguration: the virtual host without request_body_buffer_limit keeps
    // Envoy's 1 MiB, below the filter's default 4 MiB. The request is sent on as it
    // arrives, so Envoy gives up the retry copy past 1 MiB (its
    // retry_or_shadow_abandoned stat); the client's error says the next model could
    // not be tried, and why it may be.
    let mock = Mock::start();
    let mut config = example_config(mock.port(), &plugin());
    let virtual_host = &mut connection_manager(&mut config)["route_config"]["virtual_hosts"][0];
    virtual_host
        .as_object_mut()
        .unwrap()
        .remove("request_body_buffer_limit")
        .expect("the example sets request_body_buffer_limit");
    let envoy = Envoy::start(&config);
    let answer = post(&envoy, big_body(2 * 1024 * 1024)).await;
    assert_eq!(answer.status, 502);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Envoy could not try the next one")
            && message.contains("request_body_buffer_limit"),
        "{message}"
    );
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(envoy.stat("cluster.provider.retry_or_shadow_abandoned"), 1);
    assert_still_serving(&envoy, &mock).await;
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_prior_knowledge_falls_back_like_http1() {
    let (envoy, mock) = start_with_plugin(plugin());
    let client = h2c_client();
    let body = chat_body("a+status-502");
    for upload in [reqwest::Body::from(body.clone()), chunked(&body, 5)] {
        mock.clear();
        let response = client
            .post(envoy.url(CHAT))
            .header("content-type", "application/json")
            .body(upload)
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let answer = Answer::of(response).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["model"], "b");
        assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    }
    // Not acted on over HTTP/2 either: a GET with a body, one attempt.
    mock.clear();
    let response = client
        .get(envoy.url(CHAT))
        .body(r#"{"model":"a+status-502"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(models_seen(&mock), ["a+status-502"]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn get_head_and_put_pass_through_once_post_with_a_query_falls_back() {
    let (envoy, mock) = start_with_plugin(plugin());
    let client = client();
    // No body: the mock echoes nothing.
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        mock.clear();
        let response = client
            .request(method.clone(), envoy.url(CHAT))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.headers()["x-mock-echo"], "1");
        assert!(response.bytes().await.unwrap().is_empty());
        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, method.as_str());
    }
    // A query string does not change the path acted on.
    mock.clear();
    let response = client
        .post(envoy.url(&format!("{CHAT}?api-version=2024-06-01")))
        .header("content-type", "application/json")
        .body(chat_body("a+status-502"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    // With a body naming a failing model: only POST is acted on, so the 502 comes
    // back after one attempt.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        mock.clear();
        let response = client
            .request(method.clone(), envoy.url(CHAT))
            .header("content-type", "application/json")
            .body(chat_body("a+status-502"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{method}");
        assert_eq!(models_seen(&mock), ["a+status-502"]);
    }
    assert_still_serving(&envoy, &mock).await;
}

/// Sends raw bytes and reads until the server closes or `until` is in the answer.
fn raw_exchange(stream: &mut TcpStream, bytes: &[u8], until: &str) -> String {
    stream.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(until) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn expect_100_continue_falls_back() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = chat_body("a+status-502");
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let interim = raw_exchange(&mut stream, head.as_bytes(), "\r\n\r\n");
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    let answer = raw_exchange(&mut stream, body.as_bytes(), "\"model\":\"b\"");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);

    // A declared length over the limit: Envoy has already said 100 Continue when the
    // gateway sees the headers, so the client gets that, then the 413 at once.
    mock.clear();
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        5 * 1024 * 1024
    );
    let answer = raw_exchange(&mut stream, head.as_bytes(), "}}");
    assert!(
        answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\"code\":\"request_too_large\""),
        "{answer}"
    );
    assert!(mock.requests().is_empty());
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn request_trailers_pass_through_once() {
    // Only HTTP/2 delivers request trailers by default; a request with them is sent
    // on as it is, without fallbacks (the 502 comes back after one attempt).
    let (envoy, mock) = start_with_plugin(plugin());
    let body = chat_body("a+status-502");
    let mut trailers = reqwest::header::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let upload = mock_upstream::body_with_trailers(
        body.as_bytes().chunks(10).map(<[u8]>::to_vec).collect(),
        trailers,
    );
    let response = h2c_client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap(upload))
        .send()
        .await
        .unwrap();
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "mock_502");
    assert_eq!(bodies_seen(&mock), [body.as_bytes().to_vec()]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn client_sent_router_headers_do_not_add_retries() {
    // Envoy strips x-envoy-* from external clients, so a passthrough request stays at
    // one attempt and a planned one at its plan.
    let (envoy, mock) = start_with_plugin(plugin());
    let hostile = [
        ("x-envoy-retry-on", "5xx,reset"),
        ("x-envoy-max-retries", "5"),
        ("x-envoy-attempt-count", "3"),
    ];
    let mut request = client()
        .get(envoy.url(CHAT))
        .body(chat_body("a+status-502"));
    for (name, value) in hostile {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 502);
    assert_eq!(models_seen(&mock), ["a+status-502"]);

    mock.clear();
    let answer = post_with(&envoy, &hostile, chat_body("all+drop")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(models_seen(&mock), ["all+drop", "all2+drop"]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn client_gone_mid_upload_leaves_envoy_serving() {
    let (envoy, mock) = start_with_plugin(plugin());
    for _ in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        let head = format!(
            "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 5000\r\n\r\n{{\"model\":\"a+status-502\",\"messages\":["
        );
        stream.write_all(head.as_bytes()).unwrap();
        drop(stream);
    }
    // Envoy notices the closed connections; nothing reaches the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(mock.requests().is_empty());
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn upstream_reset_mid_stream_reaches_the_client_as_an_error() {
    let (envoy, mock) = start_with_plugin(plugin());
    let response = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(json!({"model": "s+break-2", "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "content began: too late to fall back"
    );
    let mut response = response;
    let mut text = String::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => panic!("the stream ended as if complete: {text}"),
            Err(error) => break error,
        }
    };
    assert!(text.contains("tok1 ") && !text.contains("[DONE]"), "{text}");
    assert!(!error.is_timeout(), "{error}");
    assert_eq!(models_seen(&mock), ["s+break-2"]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn upstream_reset_mid_json_body_falls_back() {
    // The attempt role holds a 2xx JSON answer while it reads it (error envelope
    // check), so an answer cut in the middle has not reached the client: the router
    // sees a reset and the next model answers.
    let (envoy, mock) = start_with_plugin(plugin());
    let answer = post(&envoy, chat_body("c+cut")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    assert_eq!(models_seen(&mock), ["c+cut", "b"]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn upstream_closing_without_an_answer_falls_back() {
    let (envoy, mock) = start_with_plugin(plugin());
    let answer = post(&envoy, chat_body("d+drop")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    assert_eq!(models_seen(&mock), ["d+drop", "b"]);

    // Every model drops the connection: the gateway replaces Envoy's 503 text with
    // its JSON error listing the attempts.
    mock.clear();
    let answer = post(&envoy, chat_body("all+drop")).await;
    assert_exhausted_without_answers(&answer, 503, &["all+drop", "all2+drop"]);
    assert_eq!(models_seen(&mock), ["all+drop", "all2+drop"]);
    assert_still_serving(&envoy, &mock).await;
}

#[tokio::test]
async fn upstream_answering_garbage_falls_back() {
    let (envoy, mock) = start_with_plugin(plugin());
    let answer = post(&envoy, chat_body("g+garbage")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["model"], "b");
    assert_eq!(models_seen(&mock), ["g+garbage", "b"]);

    mock.clear();
    let answer = post(&envoy, chat_body("gg+garbage")).await;
    assert_exhausted_without_answers(&answer, 502, &["gg+garbage", "gg2+garbage"]);
    assert_eq!(models_seen(&mock), ["gg+garbage", "gg2+garbage"]);
    assert_still_serving(&envoy, &mock).await;
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn upstream_refusing_connections_tries_each_model_then_answers_json() {
    let envoy = Envoy::start(&example_config(closed_port(), &plugin()));
    for round in 1..=2u64 {
        let answer = post(&envoy, chat_body("a+status-502")).await;
        assert_exhausted_without_answers(&answer, 503, &["a+status-502", "b"]);
        // Two models, two connection attempts per request: each fallback was tried.
        assert_eq!(
            envoy.stat("cluster.provider.upstream_cx_connect_fail"),
            2 * round
        );
        assert_eq!(envoy.stat("cluster.provider.upstream_rq_retry"), round);
    }
    // A request the filter does not act on gets Envoy's own answer.
    let response = client().get(envoy.url(CHAT)).send().await.unwrap();
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.content_type, "text/plain");
    assert_eq!(
        answer.text(),
        "upstream connect error or disconnect/reset before headers. \
         reset reason: remote connection failure"
    );
    assert_eq!(envoy.stat("cluster.provider.upstream_cx_connect_fail"), 5);
}
