//! `soak`: a fault soak of ai-fallback under the real Envoy (`make soak`).
//!
//! Sends many requests at a fixed concurrency through Envoy, built from the shipped
//! example config, to the project's mock, whose `chaos-P` models fail at random:
//! 500, 502, 503, 429, no answer (per-attempt timeout), reset, garbage, and a break
//! in the middle of the body. Every request carries its seed (`x-mock-seed`), and the
//! mock's draw is a pure function of seed and model, so the driver knows beforehand
//! how each model of a chain will answer and which answer the client must get. It
//! counts what came back (success, clean JSON error, stream cut by the upstream,
//! hung, malformed), checks each against the prediction, watches Envoy's memory and
//! its wasm VMs, and exits non-zero when a goal is missed.
//!
//! With `--cooldowns` the plugin also skips models that are failing right now
//! (`cooldown_failures`); which models a request tries then depends on the requests
//! before it, so each answer is checked for what any order allows instead: a success
//! from a model of its chain, a stream cut by a flaky model, or the JSON error of an
//! exhausted chain, and a success whenever the chain has a model that never fails.
//!
//! `soak [--requests N] [--concurrency C] [--seed S] [--workers W] [--warmup N] [--cooldowns]`

mod expect;

use expect::{classify_answer, predict, Expected, Got, Route, ROUTES};
use futures_util::StreamExt;
use mock_upstream::{Mock, SEED_HEADER};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::process::rss_kib;
use testkit::{Envoy, Launch};

/// A request the client waited this long for is counted as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-attempt limits set through the plugin: the mock's chaos timeout (10 s) is cut
/// off here and the next model tried.
const ATTEMPT_TIMEOUT_MS: u64 = 500;

struct Args {
    requests: u64,
    concurrency: usize,
    seed: u64,
    workers: usize,
    warmup: u64,
    cooldowns: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        requests: 50_000,
        concurrency: 32,
        seed: 1,
        workers: 2,
        warmup: 2_000,
        cooldowns: false,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        if flag == "--cooldowns" {
            args.cooldowns = true;
            continue;
        }
        let mut value = || -> Result<u64, String> {
            iter.next()
                .ok_or(format!("{flag} needs a value"))?
                .parse()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--requests" => args.requests = value()?,
            "--concurrency" => args.concurrency = value()? as usize,
            "--seed" => args.seed = value()?,
            "--workers" => args.workers = value()? as usize,
            "--warmup" => args.warmup = value()?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    args.warmup = args.warmup.min(args.requests);
    Ok(args)
}

fn plugin_config(cooldowns: bool) -> serde_json::Value {
    let chains: serde_json::Map<String, serde_json::Value> = ROUTES
        .iter()
        .filter(|route| !route.chain.is_empty())
        .map(|route| (route.model.to_string(), json!(route.chain)))
        .collect();
    let mut plugin = json!({
        "chains": chains,
        "attempt_timeout_ms": ATTEMPT_TIMEOUT_MS,
        "first_byte_timeout_ms": ATTEMPT_TIMEOUT_MS,
    });
    if cooldowns {
        plugin["cooldown_failures"] = json!(3);
        plugin["cooldown_window_ms"] = json!(2_000);
        plugin["cooldown_ms"] = json!(1_000);
    }
    plugin
}

/// One request: its seed picks the route, whether it streams, and the mock's draws.
struct Request {
    seed: u64,
    route: &'static Route,
    stream: bool,
}

fn request_for(global_seed: u64, index: u64) -> Request {
    let seed = global_seed
        .wrapping_mul(1_000_003)
        .wrapping_add(index)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let total: u64 = ROUTES.iter().map(|r| r.weight).sum();
    let mut pick = (seed >> 11) % total;
    let mut route = &ROUTES[0];
    for candidate in ROUTES.iter() {
        if pick < candidate.weight {
            route = candidate;
            break;
        }
        pick -= candidate.weight;
    }
    Request {
        seed,
        route,
        stream: (seed >> 40) % 100 < 35,
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    by_got: BTreeMap<String, u64>,
    as_predicted: u64,
    mismatches: BTreeMap<String, u64>,
    mismatch_examples: Vec<String>,
    healthy_chains: u64,
    healthy_chains_answered: u64,
    latencies_ms: Vec<u64>,
}

async fn send(client: &reqwest::Client, url: &str, request: &Request) -> Got {
    let body = json!({
        "model": request.route.model,
        "stream": request.stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    });
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header(SEED_HEADER, request.seed.to_string())
        .body(body.to_string())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Got::Hung,
        Err(e) => return Got::Malformed(format!("no answer: {e}")),
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut bytes = Vec::new();
    let mut cut = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Got::Hung,
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        }
    }
    classify_answer(status, &content_type, &bytes, cut, request.stream)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let wasm = testkit::built_wasm();
    if !wasm.exists() {
        return Err(format!("{} is missing: run `make build`", wasm.display()));
    }
    let mock = Mock::start();
    // The shipped example with its ports, the module's path and the plugin
    // configuration changed, run with a quiet log.
    let config = testkit::config::example_config(
        &testkit::repo_root().join("envoy/envoy.yaml"),
        &wasm,
        mock.port(),
        &plugin_config(args.cooldowns).to_string(),
    )?;
    let mut envoy = Launch::new(testkit::envoy_bin())
        .concurrency(args.workers)
        .log_level("warning")
        .start(&config)?;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", envoy.port);
    println!(
        "soak: {} requests at concurrency {}, seed {}, Envoy with {} workers on port {}, per-attempt timeout {} ms{}",
        args.requests,
        args.concurrency,
        args.seed,
        args.workers,
        envoy.port,
        ATTEMPT_TIMEOUT_MS,
        if args.cooldowns { ", cooldowns on" } else { "" }
    );
    for route in ROUTES.iter() {
        println!(
            "  {:>3}% {:<18} chain {:?}",
            route.weight, route.model, route.chain
        );
    }

    let stats_before = envoy.stats();
    let rss_start = rss_kib(envoy.pid());
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let completed = Arc::new(AtomicU64::new(0));
    let mut memory_marks: Vec<(u64, u64, u64)> = Vec::new(); // (requests done, RSS KiB, heap allocated)
    let started = Instant::now();
    let mut phase_start = 0;
    // Warm-up, then the rest in slices, measuring memory between them.
    let mut boundaries = vec![args.warmup];
    let slice = (args.requests / 5).max(1);
    let mut next = args.warmup;
    while next < args.requests {
        next = (next + slice).min(args.requests);
        boundaries.push(next);
    }
    for end in boundaries {
        if end <= phase_start {
            continue;
        }
        futures_util::stream::iter(phase_start..end)
            .map(|index| {
                let client = client.clone();
                let url = url.clone();
                let tally = Arc::clone(&tally);
                let completed = Arc::clone(&completed);
                let mock = &mock;
                async move {
                    let request = request_for(args.seed, index);
                    let expected = if args.cooldowns {
                        Expected::AnyOrder
                    } else {
                        predict(request.seed, request.route, request.stream)
                    };
                    let began = Instant::now();
                    let got = send(&client, &url, &request).await;
                    let elapsed = began.elapsed().as_millis() as u64;
                    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                    record(&mut tally, &request, &expected, &got, elapsed);
                    if completed.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                        mock.clear(); // the mock records every request; keep it small
                    }
                }
            })
            .buffer_unordered(args.concurrency)
            .collect::<Vec<()>>()
            .await;
        phase_start = end;
        // Let Envoy close what it was doing before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let allocated = envoy.heap_allocated();
        memory_marks.push((end, rss_kib(envoy.pid()), allocated));
        println!(
            "  {end:>7} requests  {:>6.1} s  Envoy RSS {:.1} MiB, heap allocated {:.1} MiB",
            started.elapsed().as_secs_f64(),
            mib(rss_kib(envoy.pid())),
            allocated as f64 / 1_048_576.0
        );
    }
    let elapsed = started.elapsed();
    let stats_after = envoy.stats();
    let alive = envoy.alive();
    report(
        &args,
        &tally,
        &envoy,
        alive,
        rss_start,
        &memory_marks,
        &stats_before,
        &stats_after,
        elapsed,
    )
}

fn record(tally: &mut Tally, request: &Request, expected: &Expected, got: &Got, elapsed_ms: u64) {
    tally.sent += 1;
    tally.latencies_ms.push(elapsed_ms);
    *tally.by_got.entry(got.kind().to_string()).or_default() += 1;
    if expected.reaches_a_healthy_model() || expected.has_a_healthy_model(request.route, got) {
        tally.healthy_chains += 1;
        if matches!(got, Got::Success { .. }) {
            tally.healthy_chains_answered += 1;
        }
    }
    if expected.matches(got, request.route) {
        tally.as_predicted += 1;
    } else {
        let key = format!("expected {}, got {}", expected.kind(), got.kind());
        *tally.mismatches.entry(key).or_default() += 1;
        if tally.mismatch_examples.len() < 12 {
            tally.mismatch_examples.push(format!(
                "seed {} model {} stream {}: expected {expected:?}, got {got:?}",
                request.seed, request.route.model, request.stream
            ));
        }
    }
}

fn stat(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats.get(name).copied().unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    tally: &Mutex<Tally>,
    envoy: &Envoy,
    alive: bool,
    rss_start: u64,
    marks: &[(u64, u64, u64)],
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    elapsed: Duration,
) -> Result<bool, String> {
    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    tally.latencies_ms.sort_unstable();
    let count = |kind: &str| tally.by_got.get(kind).copied().unwrap_or(0);
    let hung = count("hung");
    let malformed = count("malformed");
    println!();
    println!(
        "== soak results ({:.1} s, {:.0} requests/s) ==",
        elapsed.as_secs_f64(),
        tally.sent as f64 / elapsed.as_secs_f64()
    );
    println!("sent                      {:>8}", tally.sent);
    for (kind, n) in &tally.by_got {
        println!("  {kind:<24}{n:>8}");
    }
    println!("hung                      {hung:>8}");
    println!("malformed                 {malformed:>8}");
    println!(
        "answered as predicted     {:>8}  ({} mismatches)",
        tally.as_predicted,
        tally.sent - tally.as_predicted
    );
    for (key, n) in &tally.mismatches {
        println!("  {key}: {n}");
    }
    for example in &tally.mismatch_examples {
        println!("    {example}");
    }
    println!(
        "chain reached a healthy model: {} requests, answered successfully: {}",
        tally.healthy_chains, tally.healthy_chains_answered
    );
    println!(
        "latency ms: p50 {}  p90 {}  p99 {}  max {}",
        percentile(&tally.latencies_ms, 0.5),
        percentile(&tally.latencies_ms, 0.9),
        percentile(&tally.latencies_ms, 0.99),
        tally.latencies_ms.last().copied().unwrap_or(0)
    );
    let delta = |name: &str| stat(after, name).saturating_sub(stat(before, name));
    println!(
        "upstream attempts {} (retries {}), retry overflow {}, retries abandoned (buffer) {}",
        delta("cluster.provider.upstream_rq_total"),
        delta("cluster.provider.upstream_rq_retry"),
        delta("cluster.provider.upstream_rq_retry_overflow"),
        delta("cluster.provider.retry_or_shadow_abandoned"),
    );

    // Memory: flat after warm-up is the goal; report the growth.
    let (warm_requests, warm_rss, warm_heap) = marks.first().copied().unwrap_or_default();
    let (end_requests, end_rss, end_heap) = marks.last().copied().unwrap_or_default();
    println!(
        "Envoy RSS: {:.1} MiB before traffic, {:.1} MiB after warm-up ({} requests), {:.1} MiB after {} requests: growth after warm-up {:+.1} MiB ({:+.1}%)",
        mib(rss_start),
        mib(warm_rss),
        warm_requests,
        mib(end_rss),
        end_requests,
        mib(end_rss) - mib(warm_rss),
        if warm_rss > 0 { (end_rss as f64 / warm_rss as f64 - 1.0) * 100.0 } else { 0.0 }
    );
    println!(
        "Envoy heap allocated: {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1} MiB)",
        warm_heap as f64 / 1_048_576.0,
        end_heap as f64 / 1_048_576.0,
        (end_heap as f64 - warm_heap as f64) / 1_048_576.0
    );

    // Crashes: the process, and the wasm VMs (under FAIL_RELOAD a crashed VM is
    // replaced, counted in wasm.<plugin>.vm_reload*, and its worker answers 503
    // meanwhile: both show here or above).
    let vm_names = [
        "wasm.envoy.wasm.runtime.v8.created",
        "wasm.envoy.wasm.runtime.v8.active",
    ];
    let vms_same = vm_names
        .iter()
        .all(|name| stat(before, name) == stat(after, name));
    let reloads: u64 = after
        .iter()
        .filter(|(name, _)| name.contains("vm_reload") && !name.ends_with("vm_reload_backoff"))
        .map(|(_, n)| *n)
        .sum();
    println!(
        "Envoy alive: {}; wasm VMs created {} -> {}, active {} -> {}; VM reloads {}",
        if alive { "yes" } else { "NO" },
        stat(before, vm_names[0]),
        stat(after, vm_names[0]),
        stat(before, vm_names[1]),
        stat(after, vm_names[1]),
        reloads
    );
    let ai_stats: Vec<String> = after
        .iter()
        .filter(|(name, _)| name.starts_with("ai_fallback"))
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    if !ai_stats.is_empty() {
        println!("filter metrics: {}", ai_stats.join(" "));
    }

    let mut goals = vec![
        ("no request hung", hung == 0),
        ("no malformed answer", malformed == 0),
        ("Envoy did not crash", alive),
        (
            "no wasm VM crashed or was replaced",
            vms_same && reloads == 0,
        ),
        (
            "every chain that reached a healthy model answered successfully",
            tally.healthy_chains == tally.healthy_chains_answered,
        ),
        (
            "every answer as predicted",
            tally.as_predicted == tally.sent,
        ),
    ];
    if tally.sent != args.requests {
        goals.push(("every request sent", false));
    }
    println!();
    let mut ok = true;
    for (goal, met) in &goals {
        println!("{} {goal}", if *met { "PASS" } else { "FAIL" });
        ok &= met;
    }
    if !ok && !alive {
        println!("----- Envoy log -----\n{}", envoy.log());
    }
    Ok(ok)
}
