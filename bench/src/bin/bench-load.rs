//! `bench-load`: the benchmark's HTTP/1.1 load, built with the bench (no tool to
//! install first). One blocking thread per connection, each with its own keep-alive
//! connection, POSTing one body over and over.
//!
//! ```text
//! bench-load --url http://127.0.0.1:PORT/path --body FILE --connections N
//!            (--rate R --duration MS | --duration MS | --requests N)
//! ```
//!
//! With `--rate`, open loop: request k is due at `start + k / rate` whoever sends it,
//! and its latency counts from when it was due (a request that waited for a free
//! connection waited for the server). Without, closed loop: each connection sends
//! its next request as soon as its answer ended, for `--duration` or until
//! `--requests` were sent. Requests under way when the duration ends are waited
//! for and counted. Prints one JSON object: requests, statuses, errors, seconds and
//! the latency percentiles in microseconds, from the request to the answer's end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Options {
    /// `host:port`, also the `host` header.
    address: String,
    path: String,
    body: Vec<u8>,
    connections: u32,
    rate: Option<u32>,
    duration: Option<Duration>,
    requests: Option<u64>,
}

const USAGE: &str = "usage: bench-load --url URL --body FILE --connections N \
                     (--rate R --duration MS | --duration MS | --requests N)";

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut body, mut connections) = (None, None, 1);
    let (mut rate, mut duration, mut requests) = (None, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: String| text.parse::<u64>().map_err(|e| format!("{text}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--body" => {
                let file = value()?;
                body = Some(std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?);
            }
            "--connections" => connections = u32::try_from(number(value()?)?).unwrap_or(1),
            "--rate" => rate = Some(u32::try_from(number(value()?)?).unwrap_or(u32::MAX)),
            "--duration" => duration = Some(Duration::from_millis(number(value()?)?)),
            "--requests" => requests = Some(number(value()?)?),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    let url = url.ok_or(USAGE)?;
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("{url}: only http:// URLs"))?;
    let (address, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if duration.is_none() && requests.is_none() {
        return Err(format!("--duration or --requests\n{USAGE}"));
    }
    if rate.is_some_and(|rate| rate == 0) {
        return Err("--rate must be above 0".into());
    }
    Ok(Options {
        address: address.to_string(),
        path: path.to_string(),
        body: body.ok_or(USAGE)?,
        connections: connections.max(1),
        rate,
        duration,
        requests,
    })
}

/// What one connection's thread saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// One keep-alive connection, opened again after an error or a `connection: close`.
struct Connection {
    address: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    /// Sends `request` and reads the whole answer; its status.
    fn exchange(&mut self, request: &[u8]) -> Result<u16, String> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream =
                    TcpStream::connect(&self.address).map_err(|e| format!("connect: {e}"))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("nodelay: {e}"))?;
                self.buffer.clear();
                self.stream.insert(stream)
            }
        };
        let result = stream
            .write_all(request)
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| read_answer(stream, &mut self.buffer));
        match result {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

/// Reads more bytes into `buffer`; an error at the connection's end.
fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 65536];
    let read = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
    if read == 0 {
        return Err("read: connection closed".into());
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| at + from)
}

/// Reads one answer (status line, headers, a body framed by `content-length`, by
/// chunks or by the connection's end; none after 1xx, 204 and 304) and takes it out
/// of `buffer`; its status and whether the connection stays open.
fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(u16, bool), String> {
    let head_end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n", 0) {
            break at + 4;
        }
        fill(stream, buffer)?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("read: no status line")?;
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_string())
    };
    let keep_alive = header("connection").is_none_or(|value| value != "close");
    let end = if status == 204 || status == 304 || status < 200 {
        head_end
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| "read: bad content-length")?;
        while buffer.len() < head_end + length {
            fill(stream, buffer)?;
        }
        head_end + length
    } else if header("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(end) = find(buffer, b"\r\n", at) {
                    break end;
                }
                fill(stream, buffer)?;
            };
            let size_text = String::from_utf8_lossy(&buffer[at..line_end]).to_string();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16)
                .map_err(|_| format!("read: bad chunk size {size_text:?}"))?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, if any, up to an empty line.
                loop {
                    let end = loop {
                        if let Some(end) = find(buffer, b"\r\n", at) {
                            break end;
                        }
                        fill(stream, buffer)?;
                    };
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        break;
                    }
                }
                break at;
            }
            while buffer.len() < at + size + 2 {
                fill(stream, buffer)?;
            }
            at += size + 2;
        }
    } else {
        while fill(stream, buffer).is_ok() {}
        buffer.len()
    };
    buffer.drain(..end);
    Ok((status, keep_alive))
}

/// Asks Linux to wake this thread's sleeps on time: the default slack (50 µs) would
/// be added to every open-loop latency.
#[cfg(target_os = "linux")]
fn tight_timer_slack() {
    const PR_SET_TIMERSLACK: i32 = 29;
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: prctl(PR_SET_TIMERSLACK, ns) only changes this thread's timer slack.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn tight_timer_slack() {}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => Arc::new(options),
        Err(error) => {
            eprintln!("bench-load: {error}");
            return ExitCode::from(2);
        }
    };
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        options.path,
        options.address,
        options.body.len()
    )
    .into_bytes();
    request.extend_from_slice(&options.body);
    let request = Arc::new(request);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = options.duration.map(|duration| start + duration);
    let interval_ns = options.rate.map(|rate| 1e9 / f64::from(rate));
    let workers: Vec<_> = (0..options.connections)
        .map(|_| {
            let (options, request, next) = (options.clone(), request.clone(), next.clone());
            thread::spawn(move || {
                tight_timer_slack();
                let mut tally = Tally::default();
                let mut connection = Connection {
                    address: options.address.clone(),
                    stream: None,
                    buffer: Vec::with_capacity(1 << 16),
                };
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if options.requests.is_some_and(|requests| k >= requests) {
                        break;
                    }
                    let due = match interval_ns {
                        Some(ns) => start + Duration::from_nanos((k as f64 * ns) as u64),
                        None => Instant::now(),
                    };
                    if end.is_some_and(|end| due >= end) {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    match connection.exchange(&request) {
                        Ok(status) => {
                            let latency = due.elapsed().as_micros();
                            tally
                                .latencies_us
                                .push(u32::try_from(latency).unwrap_or(u32::MAX));
                            *tally.statuses.entry(status).or_insert(0) += 1;
                        }
                        Err(error) => *tally.errors.entry(error).or_insert(0) += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for worker in workers {
        let Ok(tally) = worker.join() else {
            eprintln!("bench-load: a connection's thread panicked");
            return ExitCode::FAILURE;
        };
        all.latencies_us.extend(tally.latencies_us);
        for (status, count) in tally.statuses {
            *all.statuses.entry(status).or_insert(0) += count;
        }
        for (error, count) in tally.errors {
            *all.errors.entry(error).or_insert(0) += count;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let sorted = &all.latencies_us;
    let summary = serde_json::json!({
        "requests": sorted.len() as u64 + all.errors.values().sum::<u64>(),
        "seconds": seconds,
        "p50_us": percentile(sorted, 0.50),
        "p90_us": percentile(sorted, 0.90),
        "p99_us": percentile(sorted, 0.99),
        "statuses": all.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "errors": all.errors,
    });
    println!("{summary}");
    ExitCode::SUCCESS
}
