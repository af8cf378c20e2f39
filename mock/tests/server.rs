//! End-to-end tests of the mock over real sockets: reqwest for ordinary HTTP/1.1
//! and h2c, raw TCP where the point is what happens on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mock_upstream::{Mock, MockOptions, GARBAGE};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn chat(mock: &Mock, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

/// Sends `request` as is and reads until the server closes the connection.
/// Returns what was read and whether reading ended in an error (e.g. a reset).
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(request).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return (received, false),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "server hung");
                assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "server hung");
                return (received, true);
            }
        }
    }
}

fn raw_chat_request(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The payloads of the `data:` lines of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn success_json_and_recording() {
    let mock = Mock::start();
    let response = chat(
        &mock,
        json!({"model": "primary", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert_eq!(header(&response, "x-mock-model"), Some("primary"));
    assert_eq!(header(&response, "x-mock-name"), Some("mock"));
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "primary");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from primary"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 18);

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.model.as_deref(), Some("primary"));
    assert!(!request.stream);
    assert_eq!(request.header("Content-Type"), Some("application/json"));
    assert_eq!(request.body_json().unwrap()["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn status_with_json_error() {
    let mock = Mock::start();
    let response = chat(&mock, json!({"model": "primary+status-429+retry-after-3"})).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), Some("3"));
    assert_eq!(
        header(&response, "x-mock-model"),
        Some("primary+status-429+retry-after-3")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "mock failure 429 for model primary+status-429+retry-after-3",
            "type": "server_error",
            "code": "mock_429",
        }})
    );
}

#[tokio::test]
async fn status_with_html_page() {
    let mock = Mock::start();
    let response = chat(&mock, json!({"model": "a+status-502+html"})).await;
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "content-type"), Some("text/html"));
    let body = response.text().await.unwrap();
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert!(body.contains("<title>502 Bad Gateway</title>"), "{body}");
    assert!(body.contains("<center>cloudflare</center>"), "{body}");
}

#[tokio::test]
async fn canned_bodies() {
    let mock = Mock::start();
    let response = chat(&mock, json!({"model": "a+body-errorenvelope"})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "provider_error");

    let response = chat(&mock, json!({"model": "a+status-503+body-noinstances"})).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"detail": "No instances available"}));

    let response = chat(&mock, json!({"model": "a+status-503+body-empty"})).await;
    assert_eq!(response.status(), 503);
    assert!(response.bytes().await.unwrap().is_empty());

    // A body directive wins over streaming.
    let response = chat(&mock, json!({"model": "a+body-ctxlen", "stream": true})).await;
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn embeddings() {
    let mock = Mock::start();
    let response = client()
        .post(format!("{}/v1/embeddings", mock.url()))
        .json(&json!({"model": "embed", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "embed");
    assert_eq!(body["data"][0]["object"], "embedding");
}

#[tokio::test]
async fn stream_arrives_incrementally() {
    let mock = Mock::start();
    let started = Instant::now();
    let mut response = chat(
        &mock,
        json!({
            "model": "s+gap-200",
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("text/event-stream"));

    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        first_event_at.get_or_insert_with(|| started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let finished_at = started.elapsed();
    // role, 3 content, stop, usage, [DONE]: six gaps of 200 ms in all.
    let first_event_at = first_event_at.unwrap();
    assert!(
        finished_at >= Duration::from_millis(1200),
        "{finished_at:?}"
    );
    assert!(
        first_event_at + Duration::from_millis(800) < finished_at,
        "first event at {first_event_at:?}, end at {finished_at:?}"
    );

    let data = sse_data(&text);
    assert_eq!(data.len(), 7, "{text}");
    assert_eq!(data[6], "[DONE]");
    let chunks: Vec<Value> = data[..6]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["model"] == "s+gap-200" && c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 ");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14})
    );
    assert!(mock.requests()[0].stream);
}

#[tokio::test]
async fn stream_over_h2c() {
    let mock = Mock::start();
    let response = h2c_client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&json!({"model": "s+chunks-5", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    // role, 5 content, stop, [DONE]; no usage chunk unless asked for.
    assert_eq!(data.len(), 8, "{text}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let host = mock.addr().to_string();
    assert_eq!(mock.requests()[0].header("host"), Some(host.as_str()));
}

#[tokio::test]
async fn sse_error_event() {
    let mock = Mock::start();
    let response = chat(&mock, json!({"model": "s+sse-error", "stream": true})).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("event: error\ndata: "), "{text}");
    let data = sse_data(&text);
    assert_eq!(data.len(), 1);
    let error: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(error["error"]["code"], "stream_error");
}

#[tokio::test]
async fn delay_holds_back_the_headers() {
    let mock = Mock::start();
    let started = Instant::now();
    let response = chat(&mock, json!({"model": "slow+delay-300"})).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), 200);
}

#[test]
fn drop_closes_without_answer() {
    let mock = Mock::start();
    let started = Instant::now();
    let (received, _reset) =
        raw_exchange(mock.addr(), &raw_chat_request(&json!({"model": "x+drop"})));
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The request was still read and recorded.
    assert_eq!(mock.requests()[0].model.as_deref(), Some("x+drop"));
}

#[tokio::test]
async fn drop_is_an_error_for_http_clients() {
    let mock = Mock::start();
    for client in [client(), h2c_client()] {
        let result = client
            .post(format!("{}/v1/chat/completions", mock.url()))
            .json(&json!({"model": "x+drop"}))
            .send()
            .await;
        assert!(result.is_err(), "{result:?}");
    }
}

#[test]
fn garbage_is_not_http() {
    let mock = Mock::start();
    let (received, _reset) = raw_exchange(
        mock.addr(),
        &raw_chat_request(&json!({"model": "x+garbage"})),
    );
    assert_eq!(received, GARBAGE);
}

#[test]
fn break_truncates_the_stream() {
    let mock = Mock::start();
    let request = raw_chat_request(&json!({"model": "s+break-2", "stream": true}));
    let (received, _reset) = raw_exchange(mock.addr(), &request);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("\"role\":\"assistant\""), "{text}");
    assert!(text.contains("tok1 "), "{text}");
    assert!(!text.contains("tok2 "), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "stream was ended properly: {text}"
    );
}

#[tokio::test]
async fn break_is_a_body_error_for_http_clients() {
    let mock = Mock::start();
    for client in [client(), h2c_client()] {
        let mut response = client
            .post(format!("{}/v1/chat/completions", mock.url()))
            .json(&json!({"model": "s+break-1+gap-10", "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut text = String::new();
        let error = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(None) => panic!("stream ended cleanly: {text}"),
                Err(e) => break e,
            }
        };
        assert!(text.contains("tok0 "), "{text} / {error}");
    }
}

#[tokio::test]
async fn echo_non_json_byte_for_byte() {
    let mock = Mock::start();
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let response = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-mock-echo"), Some("1"));
    assert_eq!(
        header(&response, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(mock.requests()[0].body, bytes);

    // JSON with a model, but not to an OpenAI path: echoed too, query kept.
    let body = json!({"model": "x+status-500"}).to_string();
    let response = client()
        .post(format!("{}/other?a=1", mock.url()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), body);
    assert_eq!(mock.requests()[1].path, "/other?a=1");
}

#[tokio::test]
async fn script_header_answers_a_body_without_a_model() {
    let mock = Mock::start();
    let url = format!("{}/v1/chat/completions", mock.url());
    let response = client()
        .post(&url)
        .header(mock_upstream::SCRIPT_HEADER, "h+status-502")
        .body(r#"{"model":"a","n":01}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-mock-echo"), None);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "mock failure 502 for model h+status-502"
    );

    // A readable model wins over the header.
    let response = client()
        .post(&url)
        .header(mock_upstream::SCRIPT_HEADER, "h+status-502")
        .json(&json!({"model": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn key_echo_quotes_the_authorization_header() {
    let mock = Mock::start();
    let response = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .header("authorization", "Bearer gsk_abc123")
        .json(&json!({"model": "m+status-500+body-keyecho-0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "model not found for key=gsk_abc123"
    );
}

#[tokio::test]
async fn api_key_check() {
    let mock = Mock::start_with(MockOptions {
        expected_api_key: Some("sekrit".into()),
        name: "backup-provider".into(),
    });
    let url = format!("{}/v1/chat/completions", mock.url());
    let body = json!({"model": "m"});

    let response = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(header(&response, "x-mock-name"), Some("backup-provider"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");

    let response = client()
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client()
        .post(&url)
        .bearer_auth("sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-mock-name"), Some("backup-provider"));
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(
        mock.requests()[2].header("authorization"),
        Some("Bearer sekrit")
    );
}

#[tokio::test]
async fn control_endpoint_lists_and_clears() {
    let mock = Mock::start();
    let control = format!("{}/__mock/requests", mock.url());
    chat(&mock, json!({"model": "one"})).await;
    client()
        .post(format!("{}/raw", mock.url()))
        .body(vec![b'a', 0xff, b'b'])
        .send()
        .await
        .unwrap();

    let listing: Value = client()
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listing = listing.as_array().unwrap();
    assert_eq!(listing.len(), 2, "{listing:?}");
    assert_eq!(listing[0]["model"], "one");
    assert_eq!(listing[0]["path"], "/v1/chat/completions");
    assert_eq!(listing[0]["body"], r#"{"model":"one"}"#);
    assert!(listing[0]["headers"]
        .as_array()
        .unwrap()
        .contains(&json!(["content-type", "application/json"])));
    assert_eq!(listing[1]["model"], Value::Null);
    assert_eq!(listing[1]["body"], "a\u{fffd}b");
    assert!(listing[0]["received_ms"].as_u64() <= listing[1]["received_ms"].as_u64());

    let response = client().delete(&control).send().await.unwrap();
    assert!(response.status().is_success());
    let listing: Value = client()
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing, json!([]));
    assert!(mock.requests().is_empty());
}

#[test]
fn clear_and_stop_from_sync_code() {
    let mock = Mock::start();
    let addr = mock.addr();
    let (received, _) = raw_exchange(
        addr,
        b"GET /hello HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200 OK"));
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(mock.requests()[0].method, "GET");
    mock.clear();
    assert!(mock.requests().is_empty());

    drop(mock);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

#[test]
fn start_on_a_taken_address_fails() {
    let mock = Mock::start();
    assert!(Mock::start_on(mock.addr()).is_err());
}

#[test]
fn cut_sends_half_of_a_json_answer() {
    let mock = Mock::start();
    let (received, _reset) =
        raw_exchange(mock.addr(), &raw_chat_request(&json!({"model": "c+cut"})));
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let promised: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(!body.is_empty() && body.len() < promised, "{text}");
    assert!(serde_json::from_str::<Value>(body).is_err());
}

#[tokio::test]
async fn chaos_answers_as_drawn_for_the_seed() {
    use mock_upstream::{chaos_draw, ChaosFailure, SEED_HEADER};
    let mock = Mock::start();
    let model = "m+chaos-60";
    let mut seen = std::collections::HashSet::new();
    for seed in 0..60u64 {
        let drawn = chaos_draw(seed, model, 60);
        if drawn == Some(ChaosFailure::Timeout) {
            continue; // 10 s; its effect is the `delay` directive's
        }
        let result = client()
            .post(format!("{}/v1/chat/completions", mock.url()))
            .header(SEED_HEADER, seed.to_string())
            .json(&json!({"model": model}))
            .send()
            .await;
        let outcome = match result {
            Err(_) => "error".to_string(),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(body) if serde_json::from_slice::<Value>(&body).is_ok() => {
                        status.to_string()
                    }
                    _ => "cut".to_string(),
                }
            }
        };
        let expected = match drawn {
            None => "200".to_string(),
            Some(ChaosFailure::Status(code)) => code.to_string(),
            Some(ChaosFailure::Reset | ChaosFailure::Garbage) => "error".to_string(),
            Some(ChaosFailure::Break) => "cut".to_string(),
            Some(ChaosFailure::Timeout) => unreachable!(),
        };
        assert_eq!(outcome, expected, "seed {seed}: drawn {drawn:?}");
        seen.insert(expected);
    }
    assert!(seen.len() >= 4, "{seen:?}");
}

#[tokio::test]
async fn model_is_read_from_bodies_serde_json_cannot_parse_whole() {
    let mock = Mock::start();
    let deep = format!(
        r#"{{"model":"deep+status-503","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut invalid_utf8 = br#"{"content":"caf"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xe9, 0xff]);
    invalid_utf8.extend_from_slice(br#"","model":"latin1+status-500","stream":true}"#);
    for (body, status) in [(deep.into_bytes(), 503), (invalid_utf8, 500)] {
        let response = client()
            .post(format!("{}/v1/chat/completions", mock.url()))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(mock.requests().last().unwrap().body, body);
    }
    assert!(mock.requests()[1].stream);
}

#[test]
fn latin1_puts_bytes_that_are_not_utf8_in_the_named_header() {
    let mock = Mock::start();
    for name in [
        "content-type",
        "retry-after",
        "content-length",
        "content-encoding",
    ] {
        for status in ["+status-502", ""] {
            let body = json!({"model": format!("m{status}+latin1-{name}")}).to_string();
            let request = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let (received, _reset) = raw_exchange(mock.addr(), request.as_bytes());
            let end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = &received[..end + 2];
            let code = if status.is_empty() { "200" } else { "502" };
            assert!(head.starts_with(format!("HTTP/1.1 {code} ").as_bytes()));
            let mut line = format!("\r\n{name}: ").into_bytes();
            line.extend_from_slice(mock_upstream::LATIN1_VALUE);
            line.extend_from_slice(b"\r\n");
            let lines = head.windows(line.len()).filter(|w| *w == line).count();
            let named = head
                .windows(name.len() + 2)
                .filter(|w| *w == format!("\n{name}:").as_bytes())
                .count();
            assert_eq!(
                (lines, named),
                (1, 1),
                "{name} {code}: {}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
