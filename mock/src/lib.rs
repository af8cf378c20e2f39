//! A scriptable mock of an OpenAI-compatible upstream, for ai-fallback's
//! integration tests and demo.
//!
//! Every request is recorded, then answered according to the top-level `model`
//! of its JSON body. The model name is split on `+`; parts that are directives
//! script the answer, other parts are just a name:
//!
//! | directive | effect |
//! | --- | --- |
//! | `status-NNN` | answer with status NNN (200..=999) and an OpenAI-style error body |
//! | `html` | CDN-style HTML error page (`text/html`) |
//! | `body-noinstances`, `body-chutenotfound`, `body-overloaded`, `body-errorenvelope`, `body-ctxlen`, `body-empty` | canned provider bodies (status from `status-NNN`, else 200) |
//! | `body-keyecho-N` | an error body quoting the request's API key (the `authorization` value, without `Bearer `; a fake key when absent), shape N from 0 to 7: `key=KEY`, `provided: KEY.`, `Authorization='Bearer KEY'`, `"KEY"`, `the key KEY is`, `{"detail": "...: Bearer KEY"}`, `{"error": "KEY"}`, `{"message": "... KEY ..."}` |
//! | `retry-after-S` | add a `retry-after: S` header |
//! | `latin1-NAME` | the answer's header NAME (e.g. `content-type`, `retry-after`, `content-length`, `content-encoding`) carries [`LATIN1_VALUE`], bytes that are not UTF-8, in place of its usual value; with `content-length`, non-streamed answers only |
//! | `delay-MS` | wait MS milliseconds before the response headers |
//! | `drop` | close the connection without answering |
//! | `garbage` | write bytes that are not HTTP, then close |
//! | `chunks-N`, `gap-MS` | streams: N content chunks (default 3), MS between events |
//! | `sse-error`, `sse-dataerror` | streams: a single error event, then a clean end |
//! | `break-N` | streams: role chunk and N content chunks, then abort the connection |
//! | `cut` | non-streamed answers: headers and half the body, then abort the connection |
//! | `chaos-P` | fail with probability P% as one of: 500, 502, 503, 429, no answer for 10 s, `drop`, `garbage`, `break-1` (streams) or `cut`; the draw is seeded by the request header `x-mock-seed` and the model name (see [`chaos_draw`]) |
//!
//! A body that `serde_json` cannot read as a whole (nested deeper than its recursion
//! limit, invalid UTF-8 in some other string) still has its top-level `model` and
//! `stream` read, skipping the other fields without recursion or UTF-8 checks.
//!
//! Requests to paths other than `/v1/chat/completions`, `/v1/completions`,
//! `/v1/responses`, `/v1/embeddings`, or without a string `model`, are echoed back
//! byte for byte, unless the request header `x-mock-script` gives the directives
//! (for a body the mock cannot read: its value is used as the model name). `GET /__mock/requests` lists what was recorded and
//! `DELETE /__mock/requests` forgets it.

mod chaos;
mod reply;
mod script;

pub use chaos::{
    chaos_draw, chaos_percent, ChaosFailure, CHAOS_FAILURES, CHAOS_TIMEOUT, SEED_HEADER,
};

use std::convert::Infallible;
use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream as StdTcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::reply::{Endpoint, StreamItem, StreamPlan};
use crate::script::Script;

/// The default address of the `mock-upstream` binary.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10001";

/// The path of the control endpoint (`GET` lists, `DELETE` clears the recording).
pub const CONTROL_PATH: &str = "/__mock/requests";

/// What `latin1-NAME` sends as the value of header NAME: "café" in Latin-1, which is
/// not UTF-8 (a lone 0xe9).
pub const LATIN1_VALUE: &[u8] = b"caf\xe9";

/// What `garbage` writes instead of an HTTP response.
pub const GARBAGE: &[u8] = b"NOT HTTP AT ALL\r\n\r\n";

const X_MOCK_NAME: HeaderName = HeaderName::from_static("x-mock-name");
const X_MOCK_MODEL: HeaderName = HeaderName::from_static("x-mock-model");
const X_MOCK_ECHO: HeaderName = HeaderName::from_static("x-mock-echo");

/// A request header whose value scripts the answer, as a model name would, for a
/// body without a readable `model` (one that is not valid JSON, say).
pub const SCRIPT_HEADER: &str = "x-mock-script";

// A concrete error type rather than a boxed `dyn Error`: with a trait object here
// the compiler cannot prove the spawned connection future `Send`.
type ResponseBody = BoxBody<Bytes, Aborted>;

/// Per-mock settings.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// When set, requests whose `authorization` is not `Bearer <key>` get a 401.
    pub expected_api_key: Option<String>,
    /// Sent back in the `x-mock-name` header of every response.
    pub name: String,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            expected_api_key: None,
            name: "mock".to_owned(),
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// The path including the query string.
    pub path: String,
    /// Lowercase names; values of one name stay together, names in order of first
    /// arrival. Over HTTP/2 the `:authority` comes first, as `host`.
    pub headers: Vec<(String, String)>,
    /// The complete body (serialized as a UTF-8-lossy string).
    #[serde(serialize_with = "serialize_lossy")]
    pub body: Vec<u8>,
    /// The top-level string `model` of a JSON body.
    pub model: Option<String>,
    /// Whether the JSON body had a top-level `"stream": true`.
    pub stream: bool,
    /// Milliseconds from the start of the mock to the arrival of the request head.
    pub received_ms: u128,
}

fn serialize_lossy<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// State shared by the handle and every connection of one mock.
struct State {
    options: MockOptions,
    started: Instant,
    requests: Mutex<Vec<RecordedRequest>>,
    next_completion_id: AtomicU64,
    /// Seeds chaos draws of requests without an `x-mock-seed` header.
    next_seed: AtomicU64,
}

impl State {
    fn new(options: MockOptions) -> State {
        State {
            options,
            started: Instant::now(),
            requests: Mutex::new(Vec::new()),
            next_completion_id: AtomicU64::new(1),
            next_seed: AtomicU64::new(1),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic elsewhere while holding the lock leaves the list intact.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn completion_id(&self) -> String {
        let n = self.next_completion_id.fetch_add(1, Ordering::Relaxed);
        format!("chatcmpl-mock-{n}")
    }
}

/// A running mock upstream. It serves on a background thread with its own tokio
/// runtime, so it works from plain and from async tests alike; dropping it stops
/// the server and closes its connections.
pub struct Mock {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    /// Starts a mock with default options on 127.0.0.1 and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound or no thread started.
    pub fn start() -> Mock {
        Mock::start_with(MockOptions::default())
    }

    /// Starts a mock with `options` on 127.0.0.1 and a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound or no thread started.
    pub fn start_with(options: MockOptions) -> Mock {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        match Mock::start_on_with(any_port, options) {
            Ok(mock) => mock,
            Err(e) => panic!("mock-upstream: cannot start on 127.0.0.1: {e}"),
        }
    }

    /// Starts a mock with default options on `addr`.
    pub fn start_on(addr: SocketAddr) -> io::Result<Mock> {
        Mock::start_on_with(addr, MockOptions::default())
    }

    /// Starts a mock with `options` on `addr`.
    pub fn start_on_with(addr: SocketAddr, options: MockOptions) -> io::Result<Mock> {
        // Bind here, not on the thread, so that the caller gets the error and can
        // connect as soon as this returns.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = Arc::new(State::new(options));
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("mock-upstream-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::select! {
                                () = accept_loop(listener, thread_state) => {}
                                _ = stop => {}
                            }
                        }
                        Err(e) => eprintln!("mock-upstream: cannot listen on {addr}: {e}"),
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(Mock {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorded().clone()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.state.recorded().clear();
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the mock on `listener` until the returned future is dropped (it never
/// completes on its own). This is what the `mock-upstream` binary runs.
pub async fn serve(listener: TcpListener, options: MockOptions) {
    accept_loop(listener, Arc::new(State::new(options))).await;
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state)));
            }
            Err(e) => {
                // Typically out of file descriptors: wait instead of spinning.
                eprintln!("mock-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    // `drop`, `garbage` and `break-N` act on the socket underneath hyper, so keep
    // a second handle to it: hyper owns the first.
    let (stream, raw) = match duplicate(stream) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("mock-upstream: cannot duplicate socket: {e}");
            return;
        }
    };
    let raw = Arc::new(raw);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let raw = Arc::clone(&raw);
        async move { handle(request, state, raw).await }
    });
    // Errors here are mostly the aborts the scripts ask for, or clients going away.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn duplicate(stream: TcpStream) -> io::Result<(TcpStream, StdTcpStream)> {
    let std_stream = stream.into_std()?;
    let raw = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, raw))
}

/// Why the mock ended a connection without answering (fully).
#[derive(Debug)]
struct Aborted(String);

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mock-upstream aborted the connection: {}", self.0)
    }
}

impl std::error::Error for Aborted {}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
    raw: Arc<StdTcpStream>,
) -> Result<Response<ResponseBody>, Aborted> {
    let received_ms = state.started.elapsed().as_millis();
    let (head, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(Aborted(format!("reading the request body: {e}"))),
    };

    if head.uri.path() == CONTROL_PATH {
        if let Some(response) = control(&head.method, &state) {
            return Ok(response);
        }
    }

    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let (model, stream) = match &json {
        Some(json) => (
            json.get("model").and_then(Value::as_str).map(str::to_owned),
            json.get("stream") == Some(&Value::Bool(true)),
        ),
        None => lenient_top_level(&body),
    };
    let include_usage = json
        .as_ref()
        .and_then(|j| j.pointer("/stream_options/include_usage"))
        == Some(&Value::Bool(true));
    let recorded = RecordedRequest {
        method: head.method.to_string(),
        path: head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: recorded_headers(&head),
        body: body.to_vec(),
        model: model.clone(),
        stream,
        received_ms,
    };
    let authorized = match &state.options.expected_api_key {
        None => true,
        Some(key) => recorded.header(AUTHORIZATION.as_str()) == Some(&format!("Bearer {key}")),
    };
    state.recorded().push(recorded);

    let response = if !authorized {
        json_response(StatusCode::UNAUTHORIZED, &reply::invalid_api_key_json())
    } else {
        let script_header = || {
            head.headers
                .get(SCRIPT_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match (
            Endpoint::from_path(head.uri.path()),
            model.or_else(script_header),
        ) {
            (Some(endpoint), Some(model)) => {
                let seed = head
                    .headers
                    .get(SEED_HEADER)
                    .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                    .unwrap_or_else(|| state.next_seed.fetch_add(1, Ordering::Relaxed));
                let answer = Answer {
                    authorization: head
                        .headers
                        .get(AUTHORIZATION)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    endpoint,
                    model,
                    stream,
                    include_usage,
                    over_http2: head.version == Version::HTTP_2,
                    seed,
                };
                answer.scripted(&state, raw).await?
            }
            _ => echo(body),
        }
    };
    Ok(with_name(response, &state.options.name))
}

/// The top-level `model` (if a string) and `stream` (if `true`) of a body that is not
/// a JSON value `serde_json` reads whole: ignored fields are skipped iteratively and
/// without UTF-8 validation. `(None, false)` if even that fails.
fn lenient_top_level(body: &[u8]) -> (Option<String>, bool) {
    #[derive(Deserialize)]
    struct TopLevel {
        model: Option<String>,
        stream: Option<bool>,
    }
    match serde_json::from_slice::<TopLevel>(body) {
        Ok(top) => (top.model, top.stream == Some(true)),
        Err(_) => (None, false),
    }
}

/// The request headers as strings. HTTP/2 carries the host in the `:authority`
/// pseudo-header, which hyper keeps in the URI: it is recorded as `host` so that
/// tests can check the host the same way whichever protocol the client spoke.
fn recorded_headers(head: &hyper::http::request::Parts) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(head.headers.len() + 1);
    if !head.headers.contains_key(HOST) {
        if let Some(authority) = head.uri.authority() {
            headers.push((HOST.as_str().to_owned(), authority.as_str().to_owned()));
        }
    }
    headers.extend(head.headers.iter().map(|(name, value)| {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        (name.as_str().to_owned(), value)
    }));
    headers
}

/// Answers the control endpoint, or `None` for methods it does not handle.
fn control(method: &Method, state: &State) -> Option<Response<ResponseBody>> {
    let response = match *method {
        Method::GET => {
            let listing = serde_json::to_value(&*state.recorded()).unwrap_or(Value::Null);
            json_response(StatusCode::OK, &listing)
        }
        Method::DELETE => {
            state.recorded().clear();
            response(StatusCode::NO_CONTENT, None, Bytes::new())
        }
        _ => return None,
    };
    Some(with_name(response, &state.options.name))
}

fn echo(body: Bytes) -> Response<ResponseBody> {
    let mut response = response(StatusCode::OK, Some("application/octet-stream"), body);
    response
        .headers_mut()
        .insert(X_MOCK_ECHO, HeaderValue::from_static("1"));
    response
}

/// A request to an OpenAI endpoint with a model, to be answered as scripted.
struct Answer {
    /// The request's `authorization` value, for bodies that echo it.
    authorization: Option<String>,
    endpoint: Endpoint,
    model: String,
    stream: bool,
    include_usage: bool,
    over_http2: bool,
    /// Seed of a `chaos-P` draw.
    seed: u64,
}

impl Answer {
    async fn scripted(
        self,
        state: &State,
        raw: Arc<StdTcpStream>,
    ) -> Result<Response<ResponseBody>, Aborted> {
        let mut script = Script::parse(&self.model);
        if let Some(percent) = script.chaos {
            if let Some(failure) = chaos_draw(self.seed, &self.model, percent) {
                script.apply_chaos(failure, self.stream);
            }
        }
        if !script.delay.is_zero() {
            tokio::time::sleep(script.delay).await;
        }
        if script.garbage {
            write_raw(&raw, GARBAGE).await;
            // Half-close only: a full close could turn into a reset that makes the
            // client discard the garbage before reading it.
            let _ = raw.shutdown(Shutdown::Write);
            return Err(Aborted("garbage".to_owned()));
        }
        if script.drop_connection {
            // Over HTTP/2 the error below resets just this stream; over HTTP/1 the
            // shutdown makes sure the client sees the end of the connection at once.
            if !self.over_http2 {
                let _ = raw.shutdown(Shutdown::Both);
            }
            return Err(Aborted("drop".to_owned()));
        }

        let status = script.status.unwrap_or(StatusCode::OK);
        let mut response = if let Some(canned) = script.body {
            let (content_type, body) = reply::canned(canned, status, self.authorization.as_deref());
            response(status, Some(content_type), body)
        } else if status != StatusCode::OK {
            json_response(status, &reply::failure_json(status, &self.model))
        } else if self.endpoint == Endpoint::Embeddings {
            json_response(status, &reply::embeddings_json(&self.model))
        } else if self.stream {
            let plan = StreamPlan {
                id: state.completion_id(),
                model: self.model.clone(),
                created: reply::unix_now(),
                chunks: script.chunks,
                gap: script.gap,
                include_usage: self.include_usage,
                failure: script.stream_failure,
                anthropic: self.endpoint == Endpoint::Messages,
            };
            event_stream(plan, (!self.over_http2).then_some(raw))
        } else if script.cut {
            let completion = reply::chat_completion_json(&state.completion_id(), &self.model);
            cut_json_response(&completion, (!self.over_http2).then_some(raw))
        } else if self.endpoint == Endpoint::Messages {
            json_response(
                status,
                &reply::message_json(&state.completion_id(), &self.model),
            )
        } else {
            let completion = reply::chat_completion_json(&state.completion_id(), &self.model);
            json_response(status, &completion)
        };

        let headers = response.headers_mut();
        if let Ok(model) = HeaderValue::from_str(&self.model) {
            headers.insert(X_MOCK_MODEL, model);
        }
        if let Some(seconds) = script.retry_after.as_deref() {
            if let Ok(seconds) = HeaderValue::from_str(seconds) {
                headers.insert(RETRY_AFTER, seconds);
            }
        }
        if let Some(name) = script.latin1_header.as_deref() {
            // hyper sends a value as it is, content-length included when the body's
            // length is known, so the bytes reach the wire unchanged.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(LATIN1_VALUE),
            ) {
                headers.insert(name, value);
            }
        }
        Ok(response)
    }
}

/// Writes `bytes` straight onto the socket, behind hyper's back. The socket is
/// non-blocking, so a full send buffer means waiting a little and trying again.
async fn write_raw(raw: &StdTcpStream, mut bytes: &[u8]) {
    let mut socket = raw;
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A `text/event-stream` response whose events are produced by `plan` on its own
/// task. `raw` is the HTTP/1 socket to shut down for `break-N`; over HTTP/2 the
/// body error alone resets the stream.
fn event_stream(plan: StreamPlan, raw: Option<Arc<StdTcpStream>>) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(plan.run(tx));
    let body = EventBody { rx, raw };
    let mut response = Response::new(BoxBody::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// A 200 JSON answer whose `content-length` promises the whole body, of which only
/// the first half is sent before the connection is aborted (`raw`, HTTP/1) or the
/// stream reset (HTTP/2).
fn cut_json_response(value: &Value, raw: Option<Arc<StdTcpStream>>) -> Response<ResponseBody> {
    let body = value.to_string().into_bytes();
    let half = Bytes::copy_from_slice(body.get(..body.len() / 2).unwrap_or_default());
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        if tx.send(StreamItem::Event(half)).await.is_ok() {
            // Let the half reach the client before the break, as `break-N` does.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(StreamItem::Abort).await;
        }
    });
    let mut response = Response::new(BoxBody::new(EventBody { rx, raw }));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// A response body fed one SSE event at a time, so that each event becomes its own
/// HTTP chunk (or HTTP/2 DATA frame) and leaves when it is produced.
struct EventBody {
    rx: mpsc::Receiver<StreamItem>,
    raw: Option<Arc<StdTcpStream>>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(StreamItem::Event(bytes))) => {
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(StreamItem::Abort)) => {
                if let Some(raw) = self.raw.take() {
                    let _ = raw.shutdown(Shutdown::Both);
                }
                // The body error makes hyper give up on the response without
                // ending it properly: no terminating chunk, or a stream reset.
                Poll::Ready(Some(Err(Aborted("break".to_owned()))))
            }
        }
    }
}

/// A request body for HTTP clients built on `http-body` (`reqwest::Body::wrap`): the
/// `chunks` as data frames, then `trailers`, so tests can send request trailers.
pub fn body_with_trailers(chunks: Vec<Vec<u8>>, trailers: hyper::HeaderMap) -> TrailersBody {
    let mut frames: std::collections::VecDeque<Frame<Bytes>> = chunks
        .into_iter()
        .map(|c| Frame::data(Bytes::from(c)))
        .collect();
    frames.push_back(Frame::trailers(trailers));
    TrailersBody { frames }
}

/// See [`body_with_trailers`].
pub struct TrailersBody {
    frames: std::collections::VecDeque<Frame<Bytes>>,
}

impl Body for TrailersBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

fn response(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
) -> Response<ResponseBody> {
    let body = Full::new(body).map_err(|never: Infallible| match never {});
    let mut response = Response::new(BoxBody::new(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    response(
        status,
        Some("application/json"),
        Bytes::from(value.to_string()),
    )
}

fn with_name(mut response: Response<ResponseBody>, name: &str) -> Response<ResponseBody> {
    if let Ok(name) = HeaderValue::from_str(name) {
        response.headers_mut().insert(X_MOCK_NAME, name);
    }
    response
}
