//! `bench`: ai-fallback's side-by-side benchmark (`make bench`).
//!
//! One Envoy (`--concurrency 1`) with one listener per arm, the project's mock as the
//! upstream, bench-load (src/bin/bench-load.rs) as the load. Arms run in rounds, their order rotated from round to
//! round and from payload to payload, so that drift on a shared machine spreads over
//! all of them. Every figure is compared with the router-only arm of the same run.
//! Writes results/bench.md, results/bench.svg, results/bench.json and the README's
//! Performance section.

mod ablation;
mod envoy_config;
mod hedging;
mod load;
mod payload;
mod report;
mod system;

use envoy_config::{FAILING, MODEL};
use load::{Load, LoadTool, Run};
use payload::{chat_body, Position, Size};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use system::{cpu_ticks, Mock};
use testkit::{process, Envoy, Launch};

/// One arm: where the load goes and with which model.
#[derive(Clone, Copy, Debug)]
pub struct Arm {
    pub key: &'static str,
    pub label: &'static str,
    /// The Envoy listener, or `None` for the mock itself.
    pub listener: Option<&'static str>,
    pub model: &'static str,
    pub expect: u16,
    /// Also measured closed loop (throughput); the two reference arms for the
    /// fallback figures are measured open loop only.
    pub closed: bool,
}

pub const ARMS: [Arm; 9] = [
    Arm {
        key: "direct",
        label: "direct to mock (floor)",
        listener: None,
        model: MODEL,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "router",
        label: "Envoy router only",
        listener: Some("router"),
        model: MODEL,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "noop",
        label: "no-op wasm, both places",
        listener: Some("noop"),
        model: MODEL,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "wasm",
        label: "ai-fallback, happy path",
        listener: Some("wasm"),
        model: MODEL,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "wasm-fb",
        label: "ai-fallback, one fallback",
        listener: Some("wasm"),
        model: FAILING,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "lua",
        label: "Lua rewrite, happy path",
        listener: Some("lua"),
        model: MODEL,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "lua-fb",
        label: "Lua rewrite, one fallback",
        listener: Some("lua"),
        model: FAILING,
        expect: 200,
        closed: true,
    },
    Arm {
        key: "direct-502",
        label: "failing model, direct to mock",
        listener: None,
        model: FAILING,
        expect: 502,
        closed: false,
    },
    Arm {
        key: "retry",
        label: "router retrying the 502, no filter",
        listener: Some("retry"),
        model: FAILING,
        expect: 502,
        closed: false,
    },
];

/// Arms whose figures do not depend on where `model` is in the body.
pub const POSITION_BLIND: [&str; 3] = ["direct", "noop", "direct-502"];

pub fn arm(key: &str) -> Option<&'static Arm> {
    ARMS.iter().find(|a| a.key == key)
}

/// What a run measures and for how long.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub open: Duration,
    pub closed: Duration,
    pub warmup: Duration,
    pub sizes: Vec<usize>,
    pub positions: Vec<Position>,
    pub open_connections: u32,
    pub closed_connections: u32,
    pub burst_requests: u32,
    pub memory_arms: Vec<&'static str>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                rounds: 1,
                open: Duration::from_millis(1500),
                closed: Duration::from_millis(1000),
                warmup: Duration::from_millis(700),
                sizes: vec![16 * 1024, 200 * 1024],
                positions: vec![Position::First],
                open_connections: 32,
                closed_connections: 16,
                burst_requests: 100,
                memory_arms: vec!["router", "wasm"],
            }
        } else {
            Settings {
                quick,
                rounds: 3,
                open: Duration::from_millis(2500),
                closed: Duration::from_millis(1000),
                warmup: Duration::from_millis(1500),
                sizes: payload::SIZES.to_vec(),
                positions: Position::ALL.to_vec(),
                open_connections: 32,
                closed_connections: 16,
                burst_requests: 200,
                memory_arms: vec!["router", "noop", "wasm", "lua"],
            }
        }
    }

    /// Open-loop rate for a body size: well under what the slowest arm sustains on
    /// this machine, so latency is service time, not queueing.
    pub fn rate(&self, size: usize) -> u32 {
        // About a third of what the slowest arm (one fallback per request) sustains
        // on a shared 2-core machine: higher, and queueing shows in the fallback arms.
        match size {
            s if s <= 16 * 1024 => 400,
            s if s <= 256 * 1024 => 150,
            _ => 40,
        }
    }
}

/// One arm's measurements in one round for one payload.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub open: Run,
    /// Envoy's CPU ticks during the open-loop run.
    pub open_ticks: u64,
    pub closed: Option<Run>,
    pub closed_ticks: u64,
    pub closed_wall: f64,
    /// The mock's CPU ticks during the open-loop run.
    pub mock_ticks: u64,
}

pub type Key = (usize, Position, &'static str);

/// Everything a run produced, for the report.
pub struct Outcome {
    pub settings: Settings,
    pub samples: HashMap<Key, Vec<Sample>>,
    pub ticks_per_second: u64,
    pub memory: Vec<report::Memory>,
    pub wasm_bytes: u64,
    pub noop_wasm_bytes: u64,
    pub rewrite: Option<serde_json::Value>,
    pub nproc: usize,
    pub cpu_model: String,
    pub envoy_version: String,
    pub date: String,
    pub warnings: Vec<String>,
    pub elapsed: Duration,
    pub pinning: String,
    /// /proc/loadavg's 1-minute figure when the run started and when it ended: other
    /// work on the machine shows here, and in the p99s.
    pub load: (f64, f64),
    /// The commit the filter was built from, and whether src/ had changes on top.
    pub revision: String,
}

struct Args {
    envoy: PathBuf,
    load: PathBuf,
    mock: PathBuf,
    wasm: PathBuf,
    noop_wasm: PathBuf,
    example: PathBuf,
    out: PathBuf,
    rewrite_json: PathBuf,
    readme: PathBuf,
    quick: bool,
    report_only: bool,
    ablation: bool,
    hedging: bool,
}

const USAGE: &str =
    "usage: bench [--quick | --report-only | --ablation | --hedging] [--envoy BIN] [--load BIN] [--mock BIN] [--wasm FILE]
             [--noop-wasm FILE] [--example envoy.yaml] [--out DIR] [--rewrite-json FILE]
             [--readme README.md]
Run from the repository root (make bench). BENCH_QUICK=1 is --quick. --report-only
writes the report again from OUT/bench.json, without measuring. --ablation measures
the ablate-* builds (make bench-ablation) -> OUT/ablation.md. --hedging measures a
first model that stalls, waited for, cut off or hedged -> OUT/hedging.md.
BENCH_ENVOY_CPUS / BENCH_LOAD_CPUS choose the CPUs (taskset lists; default 0 and 1).";

fn parse_args() -> Result<Args, String> {
    let env_quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut args = Args {
        envoy: testkit::envoy_bin(),
        load: PathBuf::from("target/release/bench-load"),
        mock: PathBuf::from("target/release/mock-upstream"),
        wasm: PathBuf::from("target/wasm32-wasip1/release/ai_fallback.wasm"),
        noop_wasm: PathBuf::from("target/noop-wasm/wasm32-wasip1/release/noop_wasm.wasm"),
        example: PathBuf::from("envoy/envoy.yaml"),
        out: PathBuf::from("results"),
        rewrite_json: PathBuf::from("results/tmp/rewrite.json"),
        readme: PathBuf::from("README.md"),
        quick: env_quick,
        report_only: false,
        ablation: false,
        hedging: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--quick" => args.quick = true,
            "--report-only" => args.report_only = true,
            "--ablation" => args.ablation = true,
            "--hedging" => args.hedging = true,
            "--envoy" => args.envoy = value()?,
            "--load" => args.load = value()?,
            "--mock" => args.mock = value()?,
            "--wasm" => args.wasm = value()?,
            "--noop-wasm" => args.noop_wasm = value()?,
            "--example" => args.example = value()?,
            "--out" => args.out = value()?,
            "--rewrite-json" => args.rewrite_json = value()?,
            "--readme" => args.readme = value()?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if args.report_only {
        return Ok(args);
    }
    for (what, path) in [
        ("Envoy", &args.envoy),
        ("bench-load", &args.load),
        ("mock-upstream", &args.mock),
        ("ai_fallback.wasm", &args.wasm),
        ("noop_wasm.wasm", &args.noop_wasm),
        ("the example config", &args.example),
    ] {
        if !path.exists() {
            return Err(format!(
                "{what} not found at {}: run `make bench`",
                path.display()
            ));
        }
    }
    // Envoy runs with its own working directory semantics; give it absolute paths.
    for path in [&mut args.wasm, &mut args.noop_wasm] {
        *path = std::fs::canonicalize(&*path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = if args.report_only {
        report_again(&args)
    } else if args.ablation {
        run_ablation(&args)
    } else if args.hedging {
        run_hedging(&args)
    } else {
        run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the ablation and hedging modes share: a mock, the CPUs, a scratch directory
/// and the header of their report.
struct Side {
    tmp: PathBuf,
    mock: Mock,
    envoy_cpus: Option<String>,
    load_cpus: Option<String>,
    header: String,
}

fn side_run(args: &Args) -> Result<Side, String> {
    let (nproc, cpu_model) = system::machine();
    let (envoy_cpus, load_cpus) = cpu_sets(nproc);
    let tmp = args.out.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mock = Mock::start(&args.mock, load_cpus.as_deref())?;
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"]);
    let header = format!(
        "{} on {nproc} CPUs ({cpu_model}), Envoy 1.40.0, filter at {commit}; Envoy on CPU {}, \
         the load and the mock on CPU {}.",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        envoy_cpus.as_deref().unwrap_or("any"),
        load_cpus.as_deref().unwrap_or("any"),
    );
    Ok(Side {
        tmp,
        mock,
        envoy_cpus,
        load_cpus,
        header,
    })
}

fn run_ablation(args: &Args) -> Result<(), String> {
    let side = side_run(args)?;
    let load_tool = LoadTool {
        bin: &args.load,
        cpus: side.load_cpus.as_deref(),
    };
    let setup = ablation::Setup {
        envoy_bin: &args.envoy,
        load_tool: &load_tool,
        mock: &side.mock,
        example: &args.example,
        noop_wasm: &args.noop_wasm,
        envoy_cpus: side.envoy_cpus.as_deref(),
        tmp: &side.tmp,
        // Many short rounds: a burst of noise on a shared machine (another guest's
        // load, the hypervisor's steal) then falls on a few rounds of every arm,
        // which the median leaves out, instead of on whole figures of a few arms.
        rounds: if args.quick { 1 } else { 15 },
        requests: if args.quick { 2000 } else { 4000 },
    };
    ablation::run(&setup, &args.out, &side.header)
}

fn run_hedging(args: &Args) -> Result<(), String> {
    let side = side_run(args)?;
    let load_tool = LoadTool {
        bin: &args.load,
        cpus: side.load_cpus.as_deref(),
    };
    let setup = hedging::Setup {
        envoy_bin: &args.envoy,
        load_tool: &load_tool,
        mock: &side.mock,
        paths: envoy_config::Paths {
            example: &args.example,
            wasm: &args.wasm,
            noop_wasm: &args.noop_wasm,
        },
        envoy_cpus: side.envoy_cpus.as_deref(),
        tmp: &side.tmp,
        requests: if args.quick { 40 } else { 200 },
    };
    hedging::run(&setup, &args.out, &side.header)
}

fn report_again(args: &Args) -> Result<(), String> {
    let path = args.out.join("bench.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    report::write(&report::outcome_from_json(&json)?, &args.out, &args.readme)
}

/// CPUs for Envoy and for the load (the load and the mock): one each when there are two.
fn cpu_sets(nproc: usize) -> (Option<String>, Option<String>) {
    let envoy = std::env::var("BENCH_ENVOY_CPUS").ok();
    let load = std::env::var("BENCH_LOAD_CPUS").ok();
    if nproc < 2 {
        return (envoy, load);
    }
    (
        envoy.or_else(|| Some("0".to_owned())),
        load.or_else(|| {
            Some(if nproc == 2 {
                "1".to_owned()
            } else {
                format!("1-{}", nproc - 1)
            })
        }),
    )
}

fn run(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let load_at_start = system::load_average();
    let settings = Settings::new(args.quick);
    let (nproc, cpu_model) = system::machine();
    let (envoy_cpus, load_cpus) = cpu_sets(nproc);
    let tmp = args.out.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut warnings = Vec::new();

    eprintln!(
        "bench: {} run on {nproc} CPUs ({cpu_model}); Envoy on CPU {}, the load and the mock on CPU {}",
        if settings.quick { "quick" } else { "full" },
        envoy_cpus.as_deref().unwrap_or("any"),
        load_cpus.as_deref().unwrap_or("any"),
    );

    // The bodies, one file per size, position and model.
    let mut bodies: HashMap<(usize, Position, &'static str), PathBuf> = HashMap::new();
    let mut sizes = settings.sizes.clone();
    if !sizes.contains(&(1024 * 1024)) {
        sizes.push(1024 * 1024); // the memory burst
    }
    for &size in &sizes {
        for position in Position::ALL {
            for model in [MODEL, FAILING] {
                let path = tmp.join(format!(
                    "body-{size}-{}-{}.json",
                    position.name(),
                    model.replace('+', "_")
                ));
                std::fs::write(&path, chat_body(size, model, position))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                bodies.insert((size, position, model), path);
            }
        }
    }
    let body = |size: usize, position: Position, model: &'static str| -> Result<&PathBuf, String> {
        bodies
            .get(&(size, position, model))
            .ok_or_else(|| format!("no body file for {size} {position:?} {model}"))
    };

    let mock = Mock::start(&args.mock, load_cpus.as_deref())?;
    let paths = envoy_config::Paths {
        example: &args.example,
        wasm: &args.wasm,
        noop_wasm: &args.noop_wasm,
    };
    let config = envoy_config::build(&paths, mock.port)?;
    let envoy = start_envoy(
        &args.envoy,
        &config,
        &tmp.join("envoy"),
        envoy_cpus.as_deref(),
    )?;
    let load_tool = LoadTool {
        bin: &args.load,
        cpus: load_cpus.as_deref(),
    };
    let url = |arm: &Arm, envoy: &Envoy| -> Result<String, String> {
        let port = match arm.listener {
            Some(listener) => envoy.listener_port(listener)?,
            None => mock.port,
        };
        Ok(format!("http://127.0.0.1:{port}/v1/chat/completions"))
    };

    // Every arm answers as it should before anything is measured.
    for arm in &ARMS {
        let body_bytes = chat_body(1024, arm.model, Position::First);
        let port = match arm.listener {
            Some(listener) => envoy.listener_port(listener)?,
            None => mock.port,
        };
        let (status, answer) = system::http(
            port,
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            &body_bytes,
        );
        let answered_by_fallback = answer.contains("\"bench-fallback\"");
        let wants_fallback = arm.expect == 200 && arm.model == FAILING;
        if status != arm.expect || answered_by_fallback != wants_fallback {
            return Err(format!(
                "sanity check of arm {}: status {status}, answer {answer}\nEnvoy log:\n{}",
                arm.key,
                envoy.log()
            ));
        }
    }
    eprintln!("bench: every arm answers as expected; warming up");
    for arm in &ARMS {
        load_tool.run(
            &url(arm, &envoy)?,
            body(16 * 1024, Position::First, arm.model)?,
            Load::Closed { connections: 8 },
            settings.warmup,
            arm.expect,
        )?;
    }

    let mut samples: HashMap<Key, Vec<Sample>> = HashMap::new();
    let payloads: Vec<(usize, Position)> = settings
        .sizes
        .iter()
        .flat_map(|&s| settings.positions.iter().map(move |&p| (s, p)))
        .collect();
    for round in 0..settings.rounds {
        for (index, &(size, position)) in payloads.iter().enumerate() {
            // Arms that never read the body measure the same whatever the position:
            // with `model` last they are not run again.
            let mut order: Vec<&Arm> = ARMS
                .iter()
                .filter(|arm| position == Position::First || !POSITION_BLIND.contains(&arm.key))
                .collect();
            let len = order.len();
            order.rotate_left((round + index) % len);
            let mut line = format!(
                "bench: round {}/{} {} model {}:",
                round + 1,
                settings.rounds,
                Size(size),
                position.name()
            );
            for arm in order {
                let sample = measure(
                    &load_tool,
                    &envoy,
                    &mock,
                    &settings,
                    arm,
                    &url(arm, &envoy)?,
                    body(size, position, arm.model)?,
                    size,
                )?;
                let ok = sample.open.expected as f64 / sample.open.requests.max(1) as f64;
                if ok < 0.99 {
                    warnings.push(format!(
                        "{} {} model {} round {}: only {:.1}% of answers were {} (statuses {}; errors {})",
                        arm.key,
                        Size(size),
                        position.name(),
                        round + 1,
                        ok * 100.0,
                        arm.expect,
                        sample.open.statuses,
                        sample.open.errors
                    ));
                }
                line.push_str(&format!(" {} {:.0}µs", arm.key, sample.open.p50_us));
                samples
                    .entry((size, position, arm.key))
                    .or_default()
                    .push(sample);
            }
            eprintln!("{line}");
        }
    }

    // A fallback the router dropped silently would make the fallback arms lie.
    for listener in ["wasm", "lua", "retry"] {
        let abandoned = envoy.stat(&format!("http.{listener}.retry_or_shadow_abandoned"));
        if abandoned > 0 {
            warnings.push(format!(
                "{listener}: {abandoned} retries abandoned (body over the retry buffer)"
            ));
        }
    }
    let retries = envoy.stat("cluster.provider.upstream_rq_retry");
    eprintln!("bench: the cluster counted {retries} retries");
    drop(envoy);

    // Memory: a fresh Envoy per arm, so that one arm's buffers do not count for another.
    let mut memory = Vec::new();
    for key in &settings.memory_arms {
        let Some(arm) = arm(key) else { continue };
        let envoy = start_envoy(
            &args.envoy,
            &config,
            &tmp.join(format!("envoy-{key}")),
            envoy_cpus.as_deref(),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let before_rss = process::rss_kib(envoy.pid());
        let before_allocated = envoy.heap_allocated();
        let burst = load_tool.run(
            &url(arm, &envoy)?,
            body(1024 * 1024, Position::First, arm.model)?,
            Load::Count {
                requests: settings.burst_requests,
                connections: 16,
            },
            Duration::ZERO,
            arm.expect,
        )?;
        std::thread::sleep(Duration::from_millis(1000));
        memory.push(report::Memory {
            arm: key,
            requests: burst.expected,
            before_rss_kib: before_rss,
            peak_rss_kib: process::peak_rss_kib(envoy.pid()),
            after_rss_kib: process::rss_kib(envoy.pid()),
            before_allocated,
            after_allocated: envoy.heap_allocated(),
        });
        eprintln!(
            "bench: memory after a burst of 1 MiB bodies on {key}: {:?}",
            memory.last()
        );
    }
    drop(mock);

    let rewrite = std::fs::read_to_string(&args.rewrite_json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    if rewrite.is_none() {
        warnings.push(format!(
            "no rewrite results at {} (run `cargo bench --bench rewrite -- --json {}`)",
            args.rewrite_json.display(),
            args.rewrite_json.display()
        ));
    }
    let outcome = Outcome {
        settings,
        samples,
        ticks_per_second: system::clock_ticks_per_second(),
        memory,
        wasm_bytes: file_size(&args.wasm),
        noop_wasm_bytes: file_size(&args.noop_wasm),
        rewrite,
        nproc,
        cpu_model,
        envoy_version: envoy_version(&args.envoy),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        warnings,
        elapsed: started.elapsed(),
        load: (load_at_start, system::load_average()),
        revision: revision(),
        pinning: format!(
            "Envoy pinned to CPU {}, the load and the mock to CPU {}",
            envoy_cpus.as_deref().unwrap_or("any"),
            load_cpus.as_deref().unwrap_or("any")
        ),
    };
    for warning in &outcome.warnings {
        eprintln!("bench: warning: {warning}");
    }
    report::write(&outcome, &args.out, &args.readme)
}

/// Runs one arm on one payload: open loop (latency, CPU per request), then closed loop
/// (throughput).
#[allow(clippy::too_many_arguments)]
fn measure(
    load_tool: &LoadTool<'_>,
    envoy: &Envoy,
    mock: &Mock,
    settings: &Settings,
    arm: &Arm,
    url: &str,
    body: &Path,
    size: usize,
) -> Result<Sample, String> {
    let mut sample = Sample::default();
    let (envoy_before, mock_before) = (cpu_ticks(envoy.pid()), cpu_ticks(mock.pid()));
    sample.open = load_tool.run(
        url,
        body,
        Load::Open {
            rate: settings.rate(size),
            connections: settings.open_connections,
        },
        settings.open,
        arm.expect,
    )?;
    sample.open_ticks = cpu_ticks(envoy.pid()).saturating_sub(envoy_before);
    sample.mock_ticks = cpu_ticks(mock.pid()).saturating_sub(mock_before);
    std::thread::sleep(Duration::from_millis(100));
    if arm.closed {
        let before = cpu_ticks(envoy.pid());
        let started = Instant::now();
        sample.closed = Some(load_tool.run(
            url,
            body,
            Load::Closed {
                connections: settings.closed_connections,
            },
            settings.closed,
            arm.expect,
        )?);
        sample.closed_wall = started.elapsed().as_secs_f64();
        sample.closed_ticks = cpu_ticks(envoy.pid()).saturating_sub(before);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(sample)
}

/// Envoy as the bench runs it: one worker, a quiet log, on the bench's Envoy CPUs,
/// its config and log kept in `dir`.
pub fn start_envoy(
    bin: &Path,
    config: &serde_json::Value,
    dir: &Path,
    cpus: Option<&str>,
) -> Result<Envoy, String> {
    Launch::new(bin)
        .concurrency(1)
        .log_level("warning")
        .pinned(cpus)
        .dir(dir)
        .ready_within(Duration::from_secs(60))
        .start(config)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `git rev-parse --short HEAD`, noting uncommitted changes to the filter's sources.
fn revision() -> String {
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        return "unknown revision".to_owned();
    }
    let dirty = command_line("git", &["status", "--porcelain", "--", "src", "Cargo.toml"]);
    if dirty.is_empty() {
        format!("filter at {commit}")
    } else {
        format!("filter at {commit} with uncommitted changes in src/")
    }
}

fn envoy_version(envoy: &Path) -> String {
    let text = command_line(&envoy.display().to_string(), &["--version"]);
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    text.rsplit("version:")
        .next()
        .and_then(|v| v.trim().split('/').nth(1))
        .unwrap_or("unknown")
        .to_owned()
}

/// The bodies, checked here: payload.rs is also included by the root crate's cargo
/// bench, which has no test harness.
#[cfg(test)]
mod tests {
    use crate::payload::{chat_body, Position, SIZES};

    #[test]
    fn bodies_are_exact_valid_json_with_model_where_asked() {
        for size in SIZES {
            for position in Position::ALL {
                let body = chat_body(size, "bench-model+status-502", position);
                assert_eq!(body.len(), size);
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(value["model"], "bench-model+status-502");
                let text = String::from_utf8(body.clone()).unwrap();
                assert_eq!(text.matches("\"model\"").count(), 1);
                match position {
                    Position::First => assert!(text.starts_with("{\"model\":")),
                    Position::Last => {
                        assert!(text.ends_with("\"model\":\"bench-model+status-502\"}"))
                    }
                }
            }
        }
    }
}
