//! `bench --ablation` (`make bench-ablation`): what each part of the filter costs,
//! measured by switching it off in a bench-only build (the crate's `ablate-*`
//! features; the shipped module has none) and comparing Envoy's CPU per request with
//! the full module's. Every build has its own listener (and VM) in one Envoy, beside
//! the router-only, no-op wasm and Lua arms and the Lua script's work written in
//! proxy-wasm (bench/rewrite-wasm), measured in rounds with the order
//! rotated: the builds are compared in the same process, whose cost per request
//! moves from one Envoy to the next by more than most parts cost. Writes
//! results/ablation.md.

use crate::envoy_config::{self, FAILING, MODEL};
use crate::load::{Load, LoadTool};
use crate::payload::{chat_body, Position};
use crate::system::{clock_ticks_per_second, cpu_ticks, Mock};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::config::for_each_wasm_filter;

/// The builds: the feature switched off (`None`: the shipped module), and what that
/// part is.
pub const PARTS: [(Option<&str>, &str); 8] = [
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
    (
        Some("control"),
        "the router's retry headers (Envoy's retry state and body copy, which the Lua arm sets up too)",
    ),
];

/// The arms every build is compared with: the bench's own, and the Lua rewrite's
/// work written in proxy-wasm (bench/rewrite-wasm).
const REFERENCES: [(&str, &str, bool); 4] = [
    ("router", "Envoy router only", false),
    ("noop", "no-op wasm, both places", false),
    ("lua", "Lua rewrite", true),
    (
        REWRITE_LISTENER,
        "the Lua rewrite's work in proxy-wasm (bench/rewrite-wasm)",
        true,
    ),
];

const REWRITE_LISTENER: &str = "rewrite-wasm";

/// The Lua script's job done call for call by a proxy-wasm module
/// (bench/rewrite-wasm): the least the same work costs in wasm.
const REWRITE_WASM: &str = "target/rewrite-wasm/wasm32-wasip1/release/rewrite_wasm.wasm";

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

/// The listener of a build.
fn listener_of(part: Option<&str>) -> String {
    match part {
        None => "wasm".to_owned(),
        Some(part) => format!("ablate-{part}"),
    }
}

/// Whether a build still falls back: without a plan, an attempt role or the
/// router's retries it cannot.
fn falls_back(part: Option<&str>) -> bool {
    !matches!(part, Some("plan" | "attempt" | "control"))
}

/// A copy of `template` named `name`, whose wasm filters load `module` in a VM of
/// their own; `edit` changes each filter's config further.
fn listener_with_module(
    template: &Value,
    name: &str,
    module: &Path,
    edit: impl Fn(&mut Value),
) -> Result<Value, String> {
    let module = std::fs::canonicalize(module)
        .map_err(|e| format!("{}: {e}: run `make bench-ablation`", module.display()))?;
    let mut listener = template.clone();
    listener["name"] = json!(name);
    listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = json!(name);
    for_each_wasm_filter(&mut listener, |filter| {
        filter["vm_config"]["code"]["local"]["filename"] = json!(module.display().to_string());
        filter["vm_config"]["vm_id"] = json!(name);
        edit(filter);
    });
    Ok(listener)
}

/// The bench's config, one more listener per build (the `wasm` listener with that
/// build's module), and the rewrite-wasm arm (the `noop` listener with that module).
fn config(setup: &Setup<'_>) -> Result<Value, String> {
    let full = std::fs::canonicalize(wasm_of(None))
        .map_err(|e| format!("{}: {e}", wasm_of(None).display()))?;
    let paths = envoy_config::Paths {
        example: setup.example,
        wasm: &full,
        noop_wasm: setup.noop_wasm,
    };
    let mut config = envoy_config::build(&paths, setup.mock.port)?;
    let (listeners, wasm) = envoy_config::listeners_and_wasm(&mut config)?;
    for (part, _) in PARTS {
        let Some(part) = part else {
            continue;
        };
        let name = listener_of(Some(part));
        listeners.push(listener_with_module(
            &wasm,
            &name,
            &wasm_of(Some(part)),
            |_| {},
        )?);
    }
    let noop = listeners
        .iter()
        .find(|listener| listener["name"] == "noop")
        .cloned()
        .ok_or("the bench config has no noop listener")?;
    let rewrite =
        listener_with_module(&noop, REWRITE_LISTENER, Path::new(REWRITE_WASM), |filter| {
            let role = if filter["name"] == "noop" {
                "rewrite_gateway"
            } else {
                "rewrite_attempt"
            };
            filter["root_id"] = json!(role);
            // Both roles hold the request until its body is in, as the Lua script does.
            filter["allow_on_headers_stop_iteration"] = json!(true);
        })?;
    listeners.push(rewrite);
    Ok(config)
}

/// One row of the table: a listener, and whether its requests can fall back.
struct Arm {
    listener: String,
    label: String,
    part: Option<&'static str>,
    falls_back: bool,
}

fn arms() -> Vec<Arm> {
    let references = REFERENCES.iter().map(|(listener, label, falls_back)| Arm {
        listener: (*listener).to_owned(),
        label: (*label).to_owned(),
        part: None,
        falls_back: *falls_back,
    });
    let builds = PARTS.iter().map(|(part, what)| Arm {
        listener: listener_of(*part),
        label: match part {
            None => (*what).to_owned(),
            Some(part) => format!("`{part}` off: {what}"),
        },
        part: *part,
        falls_back: falls_back(*part),
    });
    references.chain(builds).collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(setup: &Setup<'_>, out: &Path, header: &str) -> Result<(), String> {
    let config = config(setup)?;
    let envoy = crate::start_envoy(
        setup.envoy_bin,
        &config,
        &setup.tmp.join("envoy-ablation"),
        setup.envoy_cpus,
    )?;
    let mut bodies = Vec::new();
    for model in [MODEL, FAILING] {
        let body = setup
            .tmp
            .join(format!("ablation-{}.json", model.replace('+', "_")));
        std::fs::write(&body, chat_body(16 * 1024, model, Position::First))
            .map_err(|e| format!("{}: {e}", body.display()))?;
        bodies.push(body);
    }
    let (happy_body, failing_body) = match bodies.as_slice() {
        [happy, failing] => (happy.as_path(), failing.as_path()),
        _ => return Err("no bodies".to_owned()),
    };
    let ticks = clock_ticks_per_second() as f64;
    let per_request = |listener: &str, body: &Path| -> Result<f64, String> {
        let port = envoy.listener_port(listener)?;
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let count = |requests: u32| Load::Count {
            requests,
            connections: 4,
        };
        setup
            .load_tool
            .run(&url, body, count(200), Duration::ZERO, 200)?;
        let before = cpu_ticks(envoy.pid());
        let run = setup
            .load_tool
            .run(&url, body, count(setup.requests), Duration::ZERO, 200)?;
        let used = cpu_ticks(envoy.pid()).saturating_sub(before) as f64;
        if run.expected != u64::from(setup.requests) {
            return Err(format!(
                "{listener}: {} of {} answered 200 ({})",
                run.expected, setup.requests, run.statuses
            ));
        }
        Ok(used / ticks * 1e6 / f64::from(setup.requests))
    };
    let arms = arms();
    // Per arm: the happy path's and (where it can) one fallback's µs per request.
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); arms.len()];
    for round in 0..setup.rounds {
        for offset in 0..arms.len() {
            let index = (offset + round) % arms.len();
            let (Some(arm), Some((happy, fallback))) = (arms.get(index), samples.get_mut(index))
            else {
                continue;
            };
            happy.push(per_request(&arm.listener, happy_body)?);
            if arm.falls_back {
                fallback.push(per_request(&arm.listener, failing_body)?);
            }
            eprintln!(
                "bench: ablation round {} {:>16}: happy {:.0} µs, fallback {}",
                round + 1,
                arm.listener,
                happy.last().copied().unwrap_or(f64::NAN),
                fallback
                    .last()
                    .map_or("–".to_owned(), |us| format!("{us:.0} µs"))
            );
        }
    }
    let medians: Vec<(f64, Option<f64>)> = samples
        .iter_mut()
        .zip(&arms)
        .map(|((happy, fallback), arm)| (median(happy), arm.falls_back.then(|| median(fallback))))
        .collect();
    let figures = |listener: &str| {
        let index = arms.iter().position(|arm| arm.listener == listener)?;
        Some((*medians.get(index)?, &samples.get(index)?.0))
    };
    let (
        Some(((router, _), _)),
        Some(((noop, _), _)),
        Some(((full_happy, full_fallback), full_rounds)),
    ) = (figures("router"), figures("noop"), figures("wasm"))
    else {
        return Err("no measurement".to_owned());
    };
    // `median` sorted each arm's rounds: the middle half of them.
    let quartile = |q: usize| {
        full_rounds
            .get(full_rounds.len().saturating_sub(1) * q / 4)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (low, high) = (quartile(1), quartile(3));

    let mut text = String::new();
    let _ = writeln!(text, "# ai-fallback ablation: what each part costs\n");
    let _ = writeln!(text, "{header}\n");
    let _ = writeln!(
        text,
        "Generated by `make bench-ablation` (bench/src/ablation.rs); do not edit by hand. \
         Each `off` row is the module built with one part switched off (a bench-only cargo \
         feature, `ablate-<part>`; the shipped module has none). Every build has its own \
         listener and VM in one Envoy (`--concurrency 1`, pinned), beside the bench's \
         router-only, no-op wasm and Lua arms and the Lua script's job done call for \
         call in proxy-wasm (bench/rewrite-wasm: the least that job costs in wasm); \
         16 KiB bodies with `model` first, {} \
         requests closed loop over 4 connections per figure, the median of {} rounds \
         with the order rotated. Envoy's CPU per request, from its process CPU time. \
         \"Part costs\" is the full module's figure minus the row's: what that part \
         adds. The middle half of the full module's own rounds spans {low:.0} to {high:.0} \
         µs: a difference smaller than that is not told apart from noise.\n",
        setup.requests, setup.rounds
    );
    let _ = writeln!(
        text,
        "| build | happy path µs/req | part costs (happy) | one fallback µs/req | part costs (fallback) |"
    );
    let _ = writeln!(text, "|---|--:|--:|--:|--:|");
    for (arm, (happy, fallback)) in arms.iter().zip(&medians) {
        let happy_cost = match arm.listener.as_str() {
            "router" => "–".to_owned(),
            "noop" | "lua" | REWRITE_LISTENER => format!("{:+.0} over the router", happy - router),
            "wasm" => format!(
                "{:+.0} over the router, {:+.0} over no-op",
                full_happy - router,
                full_happy - noop
            ),
            _ => format!("{:.0}", full_happy - happy),
        };
        let (fallback, fallback_cost) = match (fallback, full_fallback) {
            (Some(fallback), _) if arm.part.is_none() => (
                format!("{fallback:.0}"),
                format!("{:+.0} over the router's happy path", fallback - router),
            ),
            (Some(fallback), Some(full)) => {
                (format!("{fallback:.0}"), format!("{:.0}", full - fallback))
            }
            _ if arm.part.is_some() => ("– (cannot fall back)".to_owned(), "–".to_owned()),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            text,
            "| {} | {happy:.0} | {happy_cost} | {fallback} | {fallback_cost} |",
            arm.label
        );
    }
    let path = out.join("ablation.md");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
