//! `bench --ablation` (`make bench-ablation`): what each part of the filter costs,
//! measured by switching it off in a bench-only build (the crate's `ablate-*`
//! features; the shipped module has none) and comparing Envoy's CPU per request with
//! the full module's. Each build runs in its own Envoy, in rounds with the order
//! rotated, against the no-op wasm arm of the same Envoy. Writes results/ablation.md.

use crate::envoy_config::{self, FAILING, MODEL};
use crate::load::{Load, LoadTool};
use crate::payload::{chat_body, Position};
use crate::system::{clock_ticks_per_second, cpu_ticks, Mock};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The builds: the feature switched off (`None`: the shipped module), and what that
/// part is.
pub const PARTS: [(Option<&str>, &str); 7] = [
    (None, "nothing: the full module"),
    (
        Some("record"),
        "the access record (built, encoded, four filter-state writes)",
    ),
    (Some("stats"), "the stats (names, counters, histograms)"),
    (Some("usage"), "keeping the answer's last bytes for `usage`"),
    (
        Some("inspect"),
        "holding a 2xx JSON answer to read it for an error envelope",
    ),
    (
        Some("plan"),
        "the body copy, scan and plan (no plan: the attempt role passes everything)",
    ),
    (
        Some("attempt"),
        "the attempt role (a no-op context in its place)",
    ),
];

pub struct Setup<'a> {
    pub envoy_bin: &'a Path,
    pub load_tool: &'a LoadTool<'a>,
    pub mock: &'a Mock,
    pub example: &'a Path,
    pub noop_wasm: &'a Path,
    pub envoy_cpus: Option<&'a str>,
    pub tmp: &'a Path,
    pub rounds: usize,
    pub requests: u32,
}

/// The module built with `ablate-<part>`, or the shipped one.
pub fn wasm_of(part: Option<&str>) -> PathBuf {
    match part {
        None => PathBuf::from("target/wasm32-wasip1/release/ai_fallback.wasm"),
        Some(part) => PathBuf::from(format!(
            "target/ablate-{part}/wasm32-wasip1/release/ai_fallback.wasm"
        )),
    }
}

/// Envoy CPU microseconds per request: (happy path, one fallback, no-op arm).
type Costs = (f64, f64, f64);

fn measure(setup: &Setup<'_>, wasm: &Path, body_dir: &Path) -> Result<Costs, String> {
    let wasm = std::fs::canonicalize(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let paths = envoy_config::Paths {
        example: setup.example,
        wasm: &wasm,
        noop_wasm: setup.noop_wasm,
    };
    let config = envoy_config::build(&paths, setup.mock.port)?;
    let envoy = crate::start_envoy(
        setup.envoy_bin,
        &config,
        &setup.tmp.join("envoy-ablation"),
        setup.envoy_cpus,
    )?;
    let ticks = clock_ticks_per_second() as f64;
    let per_request = |listener: &str, model: &'static str| -> Result<f64, String> {
        let port = envoy.listener_port(listener)?;
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let body = body_dir.join(format!("ablation-{}.json", model.replace('+', "_")));
        std::fs::write(&body, chat_body(16 * 1024, model, Position::First))
            .map_err(|e| format!("{}: {e}", body.display()))?;
        let count = |requests: u32| Load::Count {
            requests,
            connections: 4,
        };
        setup
            .load_tool
            .run(&url, &body, count(500), Duration::ZERO, 200)?;
        let before = cpu_ticks(envoy.pid());
        let run = setup
            .load_tool
            .run(&url, &body, count(setup.requests), Duration::ZERO, 200)?;
        let used = cpu_ticks(envoy.pid()).saturating_sub(before) as f64;
        if model == MODEL && run.expected != u64::from(setup.requests) {
            return Err(format!(
                "{} on {listener}: {} of {} answered 200 ({})",
                wasm.display(),
                run.expected,
                setup.requests,
                run.statuses
            ));
        }
        Ok(used / ticks * 1e6 / f64::from(setup.requests))
    };
    Ok((
        per_request("wasm", MODEL)?,
        per_request("wasm", FAILING)?,
        per_request("noop", MODEL)?,
    ))
}

/// Whether a build still falls back: without a plan or an attempt role it cannot.
fn falls_back(part: Option<&str>) -> bool {
    !matches!(part, Some("plan" | "attempt"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(setup: &Setup<'_>, out: &Path, header: &str) -> Result<(), String> {
    for (part, _) in PARTS {
        let wasm = wasm_of(part);
        if !wasm.exists() {
            return Err(format!(
                "{} not found: run `make bench-ablation`",
                wasm.display()
            ));
        }
    }
    let mut samples: Vec<Vec<Costs>> = vec![Vec::new(); PARTS.len()];
    for round in 0..setup.rounds {
        for offset in 0..PARTS.len() {
            let index = (offset + round) % PARTS.len();
            let Some((part, _)) = PARTS.get(index) else {
                continue;
            };
            let costs = measure(setup, &wasm_of(*part), setup.tmp)?;
            eprintln!(
                "bench: ablation round {} {:>8}: happy {:.0} µs, fallback {:.0} µs, no-op {:.0} µs",
                round + 1,
                part.unwrap_or("full"),
                costs.0,
                costs.1,
                costs.2
            );
            if let Some(list) = samples.get_mut(index) {
                list.push(costs);
            }
        }
    }
    let medians: Vec<Costs> = samples
        .iter()
        .map(|list| {
            let pick = |f: fn(&Costs) -> f64| median(&mut list.iter().map(f).collect::<Vec<_>>());
            (pick(|c| c.0), pick(|c| c.1), pick(|c| c.2))
        })
        .collect();
    let Some(&(full_happy, full_fallback, _)) = medians.first() else {
        return Err("no measurement".to_owned());
    };
    let mut noop: Vec<f64> = samples.iter().flatten().map(|c| c.2).collect();
    let noop = median(&mut noop);
    let noop_low = samples
        .iter()
        .flatten()
        .map(|c| c.2)
        .fold(f64::INFINITY, f64::min);
    let noop_high = samples.iter().flatten().map(|c| c.2).fold(0.0, f64::max);
    let mut text = String::new();
    let _ = writeln!(text, "# ai-fallback ablation: what each part costs\n");
    let _ = writeln!(text, "{header}\n");
    let _ = writeln!(
        text,
        "Generated by `make bench-ablation` (bench/src/ablation.rs); do not edit by hand. \
         Each row is the module built with one part switched off (a bench-only cargo \
         feature, `ablate-<part>`; the shipped module has none), in its own Envoy \
         (`--concurrency 1`, pinned), 16 KiB bodies with `model` first, {} requests \
         closed loop over 4 connections per figure, the median of {} rounds with the \
         builds' order rotated. Envoy's CPU per request, from its process CPU time; the \
         no-op wasm arm (the same module in both places doing nothing) is measured in \
         the same Envoys: {noop:.0} µs per request (median), from {noop_low:.0} to \
         {noop_high:.0} µs from one Envoy to the next. That spread, for a module that \
         does the same thing every time, is this machine's noise: a part whose cost \
         is smaller than it is not told apart from nothing. \"Costs\" is the full \
         module's figure minus the row's: what that part adds.\n",
        setup.requests, setup.rounds
    );
    let _ = writeln!(
        text,
        "| switched off | happy path µs/req | part costs (happy) | one fallback µs/req | part costs (fallback) |"
    );
    let _ = writeln!(text, "|---|--:|--:|--:|--:|");
    for ((part, what), (happy, fallback, _)) in PARTS.iter().zip(&medians) {
        let name = match part {
            None => what.to_string(),
            Some(part) => format!("`{part}`: {what}"),
        };
        let (happy_cost, fallback_cost) = match part {
            None => (
                format!("{:+.0} over no-op", full_happy - noop),
                format!("{:+.0} over no-op", full_fallback - noop),
            ),
            Some(_) if falls_back(*part) => (
                format!("{:.0}", full_happy - happy),
                format!("{:.0}", full_fallback - fallback),
            ),
            Some(_) => (format!("{:.0}", full_happy - happy), "–".to_owned()),
        };
        let fallback = if falls_back(*part) {
            format!("{fallback:.0}")
        } else {
            "– (cannot fall back)".to_owned()
        };
        let _ = writeln!(
            text,
            "| {name} | {happy:.0} | {happy_cost} | {fallback} | {fallback_cost} |"
        );
    }
    let path = out.join("ablation.md");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
