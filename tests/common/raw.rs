//! A raw HTTP/1.1 upstream for tests whose answers the mock cannot give: bytes that
//! are not UTF-8, a 1xx before the answer, a body that comes late or compressed.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request's headers, names lowercased.
pub type HeaderList = Vec<(String, String)>;

/// What a raw upstream received: each request's model and headers, in order.
pub type Seen = Arc<Mutex<Vec<(String, HeaderList)>>>;

/// The request headers a raw upstream hands to its answer.
pub type Headers = [(String, String)];

/// An HTTP/1.1 upstream that answers each request with the raw bytes `answer`
/// gives for its model, the number of earlier requests for that model, and its
/// headers.
pub fn raw_upstream(
    answer: impl Fn(&str, usize, &Headers) -> Vec<u8> + Send + 'static,
) -> (u16, Seen) {
    raw_upstream_in_parts(move |model, nth, headers| vec![(0, answer(model, nth, headers))])
}

/// Parts of an answer, each sent after a pause of so many milliseconds.
pub type Parts = Vec<(u64, Vec<u8>)>;

/// `raw_upstream` whose answers come in parts, each connection on its own thread.
pub fn raw_upstream_in_parts(
    answer: impl Fn(&str, usize, &Headers) -> Parts + Send + 'static,
) -> (u16, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some((headers, body)) = read_request(&mut stream) else {
                continue;
            };
            let model = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|body| body["model"].as_str().map(str::to_string))
                .unwrap_or_default();
            let count = counts.entry(model.clone()).or_default();
            let parts = answer(&model, *count, &headers);
            *count += 1;
            log.lock().unwrap().push((model, headers));
            std::thread::spawn(move || {
                for (pause_ms, bytes) in parts {
                    std::thread::sleep(Duration::from_millis(pause_ms));
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// One request's headers (names lowercased) and body.
fn read_request(stream: &mut std::net::TcpStream) -> Option<(HeaderList, Vec<u8>)> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        let Some(head_end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_string();
        let headers: HeaderList = head
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect();
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok())
            .unwrap_or(0);
        if request.len() >= head_end + 4 + length {
            let body = request[head_end + 4..head_end + 4 + length].to_vec();
            return Some((headers, body));
        }
    }
}

pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn json_ok(model: &str) -> Vec<u8> {
    let body = json!({"model": model, "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "hello"}}]});
    response(
        "200 OK",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn bad_gateway() -> Vec<u8> {
    response(
        "502 Bad Gateway",
        &[("content-type", "text/html")],
        b"<html>502</html>",
    )
}

pub fn models(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(m, _)| m.clone())
        .collect()
}
