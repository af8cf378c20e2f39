//! The rewrite's own speed on the host: the pure functions the filter runs per request
//! (`ai_fallback::body`) against a full `serde_json::Value` parse, modify, serialise.
//!
//! `cargo bench --bench rewrite [-- --json PATH]`. Plain `std::time::Instant`
//! timing: each case is calibrated to run for a fixed time per sample, and the
//! median of the samples is reported. `BENCH_QUICK=1` shortens the samples.
//! `make bench` reads the JSON file into results/bench.md.

use ai_fallback::body::{model_literal, model_name, rewritten_prefix, scan};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../bench/src/payload.rs"]
mod payload;

use payload::{chat_body, Position, Size, SIZES};

const MODEL: &str = "bench-model";
const FALLBACK: &str = "bench-fallback";

struct Case {
    size: usize,
    position: Position,
    name: &'static str,
    ns_per_op: f64,
}

fn main() {
    let mut json_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--json" {
            json_path = args.next();
        }
        // cargo bench adds `--bench`; anything else is ignored as well.
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let sample = if quick {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(60)
    };

    let mut cases = Vec::new();
    for size in SIZES {
        for position in Position::ALL {
            let body = chat_body(size, MODEL, position);
            let Ok(top) = scan(&body) else {
                eprintln!("rewrite bench: the {} body does not scan", Size(size));
                std::process::exit(1);
            };
            let Some(span) = top.model else {
                eprintln!("rewrite bench: no model in the {} body", Size(size));
                std::process::exit(1);
            };
            let before_model = body.get(..span.start).unwrap_or_default();
            let literal = model_literal(FALLBACK);
            let mut add = |name, ns_per_op| {
                cases.push(Case {
                    size,
                    position,
                    name,
                    ns_per_op,
                })
            };
            // The gateway, once per request: one pass over the top level.
            add(
                "scan",
                measure(sample, || {
                    black_box(scan(black_box(&body)).ok());
                }),
            );
            add(
                "model_name",
                measure(sample, || {
                    black_box(model_name(black_box(&body), span.clone()));
                }),
            );
            add(
                "model_literal",
                measure(sample, || {
                    black_box(model_literal(black_box(FALLBACK)));
                }),
            );
            // The attempt role, once per fallback: the new body prefix.
            add(
                "rewritten_prefix",
                measure(sample, || {
                    black_box(rewritten_prefix(black_box(before_model), &literal));
                }),
            );
            // Everything the filter computes for a request that falls back once.
            add(
                "filter total",
                measure(sample, || {
                    let Ok(top) = scan(black_box(&body)) else {
                        return;
                    };
                    let Some(span) = top.model else { return };
                    let name = model_name(&body, span.clone());
                    let literal = model_literal(FALLBACK);
                    let prefix =
                        rewritten_prefix(body.get(..span.start).unwrap_or_default(), &literal);
                    black_box((name, prefix));
                }),
            );
            add(
                "serde_json round trip",
                measure(sample, || {
                    let Ok(mut value) =
                        serde_json::from_slice::<serde_json::Value>(black_box(&body))
                    else {
                        return;
                    };
                    if let Some(object) = value.as_object_mut() {
                        object.insert("model".to_owned(), FALLBACK.into());
                    }
                    black_box(serde_json::to_vec(&value).ok());
                }),
            );
        }
    }

    print_table(&cases);
    if let Some(path) = json_path {
        if let Err(e) = std::fs::write(&path, to_json(&cases)) {
            eprintln!("rewrite bench: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}

/// Median nanoseconds per call of `f`, over 5 samples of about `sample` each.
fn measure(sample: Duration, mut f: impl FnMut()) -> f64 {
    // Calibrate: double the iterations until one batch lasts a tenth of a sample.
    let mut iterations: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        let elapsed = start.elapsed();
        if elapsed >= sample / 10 || iterations >= 1 << 30 {
            let per_op = elapsed.as_secs_f64() / iterations as f64;
            iterations = ((sample.as_secs_f64() / per_op.max(1e-9)) as u64).max(1);
            break;
        }
        iterations *= 2;
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e9 / iterations as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples.get(2).copied().unwrap_or(f64::NAN)
}

fn mb_per_s(size: usize, ns_per_op: f64) -> f64 {
    size as f64 / ns_per_op * 1e9 / 1e6
}

fn print_table(cases: &[Case]) {
    println!(
        "{:<8} {:<6} {:<22} {:>14} {:>14}",
        "body", "model", "function", "ns/op", "MB/s"
    );
    for case in cases {
        println!(
            "{:<8} {:<6} {:<22} {:>14.1} {:>14.0}",
            Size(case.size).to_string(),
            case.position.name(),
            case.name,
            case.ns_per_op,
            mb_per_s(case.size, case.ns_per_op)
        );
    }
}

fn to_json(cases: &[Case]) -> String {
    let rows: Vec<String> = cases
        .iter()
        .map(|case| {
            format!(
                "{{\"size\":{},\"position\":\"{}\",\"function\":\"{}\",\"ns_per_op\":{:.1},\"mb_per_s\":{:.1}}}",
                case.size,
                case.position.name(),
                case.name,
                case.ns_per_op,
                mb_per_s(case.size, case.ns_per_op)
            )
        })
        .collect();
    format!("[\n{}\n]\n", rows.join(",\n"))
}
