//! The Prometheus rules (`deploy/prometheus/ai-fallback.rules.yaml`), the README's
//! PromQL examples and the Grafana dashboard's queries, evaluated by a real
//! Prometheus scraping a real Envoy's `/stats/prometheus` while the mock fails and
//! succeeds.
//!
//! Every series the test looks at exists before Prometheus's first scrape (a warm-up
//! request of each kind), so that the measured requests are increments Prometheus
//! sees: `rate` cannot see the first increment of a series that appears with it.
//! Then every ratio is exact (all series share their first and last samples), and
//! rates are checked against the known counts within their extrapolation.
//!
//! Runs `/usr/bin/prometheus` (Debian's `prometheus` package; `make integration`
//! installs it) or `PROMETHEUS_BIN`. Without one it skips, unless `CI` is set.

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
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::http_get;

const CHAT: &str = "/v1/chat/completions";
const RULES: &str = "deploy/prometheus/ai-fallback.rules.yaml";
const DASHBOARD: &str = "deploy/grafana/ai-fallback.json";

/// Generous: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(90);

fn prometheus_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    [PathBuf::from("/usr/bin/prometheus")]
        .into_iter()
        .chain(on_path)
        .find(|path| path.is_file())
}

/// A running Prometheus with its own configuration, storage and port; dropping it
/// stops it (and prints its log if the test is failing).
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Prometheus {
    fn start(binary: &Path, envoy_admin_port: u16) -> Prometheus {
        let mut failures = Vec::new();
        // A free port can be taken between our probe and Prometheus's bind: retry.
        for _ in 0..3 {
            match Prometheus::try_start(binary, envoy_admin_port) {
                Ok(prometheus) => return prometheus,
                Err(log) => failures.push(log),
            }
        }
        panic!("Prometheus did not start:\n{}", failures.join("\n-----\n"));
    }

    fn try_start(binary: &Path, envoy_admin_port: u16) -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rules = repo_root().join(RULES);
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.display().to_string()],
            "scrape_configs": [{
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [format!("127.0.0.1:{envoy_admin_port}")]}]
            }]
        });
        // JSON is YAML.
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut prometheus = Prometheus { child, dir, port };
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", prometheus.log()));
            }
            if http_get(port, "/-/ready").0 == 200 {
                return Ok(prometheus);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("not ready in {PATIENCE:?}:\n{}", prometheus.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path);
        assert_eq!(status, 200, "{path}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{path}: {body}");
        answer["data"].clone()
    }

    /// An instant query: each series' labels (without `__name__` and the scrape's
    /// `instance` and `job`) and value.
    fn query(&self, query: &str) -> Vec<(Labels, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(query)));
        assert_eq!(data["resultType"], "vector", "{query}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(name, _)| !["__name__", "instance", "job"].contains(&name.as_str()))
                    .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_string()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Prometheus log -----\n{}\n----- end of Prometheus log -----",
                self.log()
            );
        }
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type Labels = BTreeMap<String, String>;

/// What one series of a query's answer must be.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// This value, up to floating point.
    Is(f64),
    /// An increase: at least the count, at most the count and what Prometheus
    /// extrapolates (half a scrape interval at the start, up to one at the end: a
    /// few percent of the test's minute).
    Count(f64),
    /// A rate over 5 minutes of this many events: its increase is `Count`.
    Per5m(f64),
    /// 0 / 0: a model with no attempts in the window.
    NaN,
}

impl Want {
    fn holds(self, value: f64) -> bool {
        match self {
            Want::Is(want) => (value - want).abs() <= 1e-9 * want.abs().max(1.0),
            Want::Count(count) => value >= count * (1.0 - 1e-9) && value <= count * 1.3 + 1e-9,
            Want::Per5m(count) => Want::Count(count).holds(value * 300.0),
            Want::NaN => value.is_nan(),
        }
    }
}

/// A query and what its answer must be: the series by their labels.
struct Check {
    query: String,
    want: Vec<(Labels, Want)>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn check(query: &str, want: Vec<(&[(&str, &str)], Want)>) -> Check {
    Check {
        query: normalize(query),
        want: want
            .into_iter()
            .map(|(pairs, want)| (labels(pairs), want))
            .collect(),
    }
}

/// One space for any run of white space, so that a query compares the same wherever
/// it is written.
fn normalize(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Check {
    fn mismatch(&self, got: &[(Labels, f64)]) -> Option<String> {
        let got_labels: BTreeSet<&Labels> = got.iter().map(|(labels, _)| labels).collect();
        let want_labels: BTreeSet<&Labels> = self.want.iter().map(|(labels, _)| labels).collect();
        if got_labels != want_labels {
            return Some(format!("series {got_labels:?}, want {want_labels:?}"));
        }
        for (labels, want) in &self.want {
            let value = got.iter().find(|(l, _)| l == labels).unwrap().1;
            if !want.holds(value) {
                return Some(format!("{labels:?} is {value}, want {want:?}"));
            }
        }
        None
    }

    /// Polls until Prometheus's answer is the one wanted.
    fn wait_for(&self, prometheus: &Prometheus) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = prometheus.query(&self.query);
            let Some(why) = self.mismatch(&got) else {
                return;
            };
            if Instant::now() > deadline {
                panic!("`{}`: {why}\ngot {got:?}", self.query);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `/stats/prometheus` of Envoy: each sample line's name{labels} and value.
fn envoy_samples(envoy: &Envoy) -> BTreeMap<String, f64> {
    let (_, text) = envoy.admin_get("/stats/prometheus");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

/// Waits until Envoy's flushed histograms hold `planned` requests and `successes`.
fn wait_for_histograms(envoy: &Envoy, planned: f64, successes: f64) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let samples = envoy_samples(envoy);
        let counts = (
            sample(
                &samples,
                r#"ai_fallback_attempts_per_request_count{route="openai"}"#,
            ),
            sample(
                &samples,
                r#"ai_fallback_time_to_success_ms_count{route="openai"}"#,
            ),
        );
        if counts == (planned, successes) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's histograms count {counts:?}, want {:?}",
            (planned, successes)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prometheus's `histogram_quantile` on the buckets' increments between two of
/// Envoy's snapshots.
fn quantile(q: f64, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    const PREFIX: &str = r#"ai_fallback_time_to_success_ms_bucket{route="openai",le=""#;
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|name| {
            let bound = name.strip_prefix(PREFIX)?.strip_suffix("\"}")?;
            let upper = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap()
            };
            Some((upper, sample(after, name) - sample(before, name)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2 && buckets.last().unwrap().0.is_infinite());
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let b = buckets
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap();
    if b == buckets.len() - 1 {
        return buckets[b - 1].0;
    }
    let (start, below) = if b == 0 { (0.0, 0.0) } else { buckets[b - 1] };
    let (end, count) = buckets[b];
    start + (end - start) * (rank - below) / (count - below)
}

/// The ```promql blocks of README.md.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    readme
        .split("```promql\n")
        .skip(1)
        .map(|block| normalize(block.split("```").next().unwrap()))
        .collect()
}

/// Every `record:` of the rules file, and the number of rules in it.
fn recording_rules() -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let rules: Value = serde_yaml::from_str(&text).unwrap();
    let all: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    let records = all
        .iter()
        .filter_map(|rule| rule["record"].as_str().map(str::to_string))
        .collect();
    (records, all.len())
}

/// Every panel target's `expr` in the dashboard (panels inside rows too).
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    fn collect(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(normalize(target["expr"].as_str().unwrap()));
            }
            collect(&panel["panels"], out);
        }
    }
    let mut queries = Vec::new();
    collect(&dashboard["panels"], &mut queries);
    queries
}

#[tokio::test]
async fn rules_readme_queries_and_dashboard_on_a_real_prometheus() {
    let Some(binary) = prometheus_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and there is no prometheus binary: `make prometheus-tools` installs it"
        );
        eprintln!(
            "SKIPPED: no prometheus binary (/usr/bin/prometheus, PATH or PROMETHEUS_BIN); \
             `make prometheus-tools` installs Debian's prometheus package"
        );
        return;
    };

    let mock = Mock::start();
    // Top level: fallbacks, no cooldowns, no budget. `tight.example`: a 500 ms
    // budget. `cool.example`: a model cools down at its first failure, for 5 minutes.
    // The delayed models answer in 270 ms, so that the successes' times fall into
    // known histogram buckets as far as scheduling allows.
    let plugin = json!({
        "chains": {
            "gpt-4o+delay-270": ["gpt-4o-mini"],
            "primary+status-502": ["secondary+status-500", "backup+delay-270"],
            "ex+status-500": ["ex2+status-503"]
        },
        "rules": [
            {"name": "tight", "match": {"host": "tight.example"}, "budget_ms": 500,
             "chains": {"slow+delay-3000": ["slow2+delay-3000"]}},
            {"name": "cooling", "match": {"host": "cool.example"},
             "cooldown_failures": 1, "cooldown_ms": 300000,
             "chains": {"cool+status-503": ["cool-backup+delay-270"]}}
        ]
    });
    let mut config = example_config(mock.port(), &plugin);
    config["stats_flush_interval"] = json!("0.5s");
    let envoy = Envoy::start(&config);

    let send = |model: &'static str, host: &'static str| {
        let url = envoy.url(CHAT);
        async move {
            client()
                .post(url)
                .header("host", host)
                .header("content-type", "application/json")
                .body(chat_body(model))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let ok = "gpt-4o+delay-270";
    let fallback = "primary+status-502";
    let exhausted = "ex+status-500";
    let slow = "slow+delay-3000";
    let cool = "cool+status-503";
    let passthrough = "nochain";
    let round = |times: [usize; 6]| {
        let send = &send;
        async move {
            let kinds = [
                (ok, "localhost", 200),
                (fallback, "localhost", 200),
                (exhausted, "localhost", 503),
                (slow, "tight.example", 504),
                (cool, "cool.example", 200),
                (passthrough, "localhost", 200),
            ];
            for ((model, host, status), times) in kinds.into_iter().zip(times) {
                for _ in 0..times {
                    assert_eq!(send(model, host).await, status, "{model}");
                }
            }
        }
    };

    // Warm-up, before Prometheus: every series appears. The first `cool` request
    // fails over and cools the model; the second skips it.
    round([1, 1, 1, 1, 2, 1]).await;
    let before = wait_for_histograms(&envoy, 6.0, 4.0);

    let prometheus = Prometheus::start(&binary, envoy.admin_port);
    // Every requests_total series has been scraped at least twice.
    check(
        r#"count(count_over_time(ai_fallback_requests_total[5m]) >= 2)"#,
        vec![(&[], Want::Is(7.0))],
    )
    .wait_for(&prometheus);

    // The measured requests. Planned: 3 ok, 2 fallback_ok (3 attempts each), 1
    // exhausted (2 attempts), 1 budget_exceeded (1 attempt), 2 ok for the cooling
    // model (it is skipped: its fallback answers first); and 2 passthrough.
    round([3, 2, 1, 1, 2, 2]).await;
    let after = wait_for_histograms(&envoy, 15.0, 11.0);
    // Prometheus has scraped the end.
    check(
        "sum(ai_fallback_requests_total)",
        vec![(&[], Want::Is(18.0))],
    )
    .wait_for(&prometheus);
    check(
        "sum(ai_fallback_time_to_success_ms_count)",
        vec![(&[], Want::Is(11.0))],
    )
    .wait_for(&prometheus);

    let r = |model: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![("route", "openai"), ("model", model)]
    };
    let (ok_l, fb_l, ex_l, slow_l, cool_l) = (
        r("gpt-4o_delay-270"),
        r("primary_status-502"),
        r("ex_status-500"),
        r("slow_delay-3000"),
        r("cool_status-503"),
    );
    let route: &[(&str, &str)] = &[("route", "openai")];
    let count_of = |name: &str| sample(&after, name) - sample(&before, name);
    // The cooling model's measured requests. README says `model` is the requested
    // model, but the filter counts a request whose requested model was cooling under
    // the model its first attempt went to (the plan's chain after cooling models
    // moved last). The rules must hold either way: Envoy's counters say which.
    let counted_under_first_tried = count_of(
        r#"ai_fallback_requests_total{route="openai",model="cool-backup_delay-270",outcome="ok"}"#,
    ) == 2.0;
    if counted_under_first_tried {
        eprintln!(
            "NOTE: requests whose requested model was cooling are counted under the model \
             tried first (cool-backup_delay-270), not the requested one"
        );
    } else {
        assert_eq!(
            count_of(
                r#"ai_fallback_requests_total{route="openai",model="cool_status-503",outcome="ok"}"#
            ),
            2.0,
            "the cooling model's requests are counted under one of the two"
        );
    }
    let cool_backup_l = r("cool-backup_delay-270");
    // By requested model: ok, fallback, exhausted, slow, then the cooling model's.
    let per_model = |values: [Want; 4], cooling: Want| -> Vec<(&[(&str, &str)], Want)> {
        let mut want = vec![
            (&ok_l[..], values[0]),
            (&fb_l[..], values[1]),
            (&ex_l[..], values[2]),
            (&slow_l[..], values[3]),
        ];
        if counted_under_first_tried {
            // Its warm-up series, with nothing in the window: 0 / 0.
            want.push((&cool_l[..], Want::NaN));
            want.push((&cool_backup_l[..], cooling));
        } else {
            want.push((&cool_l[..], cooling));
        }
        want
    };
    let success_quantile = |q| Want::Is(quantile(q, &before, &after));
    let mean_time_to_success = count_of(r#"ai_fallback_time_to_success_ms_sum{route="openai"}"#)
        / count_of(r#"ai_fallback_time_to_success_ms_count{route="openai"}"#);
    assert!(
        (270.0 * 0.95..2000.0).contains(&mean_time_to_success),
        "{mean_time_to_success}"
    );
    let sent = |model: &'static str, class: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![("route", "openai"), ("model", model), ("class", class)]
    };
    let failures = [
        sent("primary_status-502", "failure_status"),
        sent("secondary_status-500", "failure_status"),
        sent("ex_status-500", "failure_status"),
        sent("ex2_status-503", "failure_status"),
        sent("slow_delay-3000", "no_answer"),
        sent("cool_status-503", "failure_status"),
    ];
    let attempts_sent = |values: [(&'static str, Want); 9]| {
        values
            .into_iter()
            .map(|(model, want)| (vec![("route", "openai"), ("model", model)], want))
            .collect::<Vec<_>>()
    };
    let failure_shares = attempts_sent([
        ("gpt-4o_delay-270", Want::Is(0.0)),
        ("primary_status-502", Want::Is(1.0)),
        ("secondary_status-500", Want::Is(1.0)),
        ("backup_delay-270", Want::Is(0.0)),
        ("ex_status-500", Want::Is(1.0)),
        ("ex2_status-503", Want::Is(1.0)),
        ("slow_delay-3000", Want::Is(1.0)),
        ("cool-backup_delay-270", Want::Is(0.0)),
        // Skipped in every measured request: no attempts, 0 / 0.
        ("cool_status-503", Want::NaN),
    ]);

    // 9 planned requests: 2 answered by a fallback, 1 exhausted, 1 out of budget;
    // 5 fallbacks (2 + 2 + 1), so 14 attempts.
    let checks = vec![
        check(
            "route:ai_fallback_fallback_ratio:rate5m",
            vec![(route, Want::Is(2.0 / 9.0))],
        ),
        check(
            "route_model:ai_fallback_fallback_ratio:rate5m",
            per_model(
                [Want::Is(0.0), Want::Is(1.0), Want::Is(0.0), Want::Is(0.0)],
                Want::Is(0.0),
            ),
        ),
        check(
            "route_model:ai_fallback_fallbacks:rate5m",
            vec![
                (&fb_l[..], Want::Per5m(4.0)),
                (&ex_l[..], Want::Per5m(1.0)),
                (&cool_l[..], Want::Is(0.0)),
            ],
        ),
        check(
            "route_model:ai_fallback_attempts_per_request:rate5m",
            per_model(
                [Want::Is(1.0), Want::Is(3.0), Want::Is(2.0), Want::Is(1.0)],
                Want::Is(1.0),
            ),
        ),
        check(
            "route:ai_fallback_attempts_per_request:rate5m",
            vec![(route, Want::Is(14.0 / 9.0))],
        ),
        check(
            "route:ai_fallback_time_to_success_ms:p50_rate5m",
            vec![(route, success_quantile(0.5))],
        ),
        check(
            "route:ai_fallback_time_to_success_ms:p95_rate5m",
            vec![(route, success_quantile(0.95))],
        ),
        check(
            "route:ai_fallback_time_to_success_ms:p99_rate5m",
            vec![(route, success_quantile(0.99))],
        ),
        check(
            "route:ai_fallback_time_to_success_ms:mean_rate5m",
            vec![(route, Want::Is(mean_time_to_success))],
        ),
        Check {
            query: "route_model:ai_fallback_attempt_failure_ratio:rate5m".into(),
            want: failure_shares
                .iter()
                .map(|(pairs, want)| (labels(pairs), *want))
                .collect(),
        },
        check(
            "route:ai_fallback_exhausted_ratio:rate5m",
            vec![(route, Want::Is(1.0 / 9.0))],
        ),
        check(
            "route:ai_fallback_budget_exceeded_ratio:rate5m",
            vec![(route, Want::Is(1.0 / 9.0))],
        ),
        check(
            "route_model:ai_fallback_skipped:rate5m",
            vec![(&cool_l[..], Want::Per5m(2.0))],
        ),
        // README: the share of requests that needed a fallback.
        check(
            r#"sum by (route) (rate(ai_fallback_requests_total{outcome="fallback_ok"}[5m]))
                 / sum by (route) (rate(ai_fallback_requests_total{outcome!="passthrough"}[5m]))"#,
            vec![(route, Want::Is(2.0 / 9.0))],
        ),
        // README: which models fail, and how.
        check(
            r#"sum by (route, model, class) (increase(ai_fallback_attempts_total{class!="success"}[1h]))"#,
            failures
                .iter()
                .zip([2.0, 2.0, 1.0, 1.0, 1.0, 0.0])
                .map(|(pairs, count)| {
                    let want = if count == 0.0 {
                        Want::Is(0.0)
                    } else {
                        Want::Count(count)
                    };
                    (&pairs[..], want)
                })
                .collect(),
        ),
        // The dashboard's gauges of cooling models and of Wasm VMs.
        check("ai_fallback_cooling_models", vec![(&[], Want::Is(1.0))]),
        check(
            "instance:ai_fallback_vm_reloads:sum",
            vec![(&[], Want::Is(0.0))],
        ),
        check(
            "increase(instance:ai_fallback_vm_reloads:sum[10m])",
            vec![(&[], Want::Is(0.0))],
        ),
        check(
            "sum by (instance) (increase(envoy_wasm_envoy_wasm_runtime_v8_created[10m]))",
            vec![(&[], Want::Is(0.0))],
        ),
    ];
    let evaluated: BTreeSet<&str> = checks.iter().map(|c| c.query.as_str()).collect();
    for check in &checks {
        check.wait_for(&prometheus);
    }

    // Every recording rule, every README query and every dashboard query was
    // among them.
    let (records, rule_count) = recording_rules();
    for record in &records {
        assert!(
            evaluated.contains(record.as_str()),
            "the recording rule {record} is not checked"
        );
    }
    for query in readme_queries() {
        assert!(
            evaluated.contains(query.as_str()),
            "README's PromQL example `{query}` is not checked: add what it must return"
        );
    }
    let panels = dashboard_queries();
    assert!(panels.len() >= 10, "{panels:?}");
    for query in &panels {
        assert!(
            evaluated.contains(query.as_str()),
            "the dashboard's query `{query}` is not one this test evaluates"
        );
    }

    // Every rule evaluates without error on real data.
    let groups = prometheus.api("/api/v1/rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), rule_count, "{groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Of the alerts, only the cooling model's is on its way (pending for 15
    // minutes): the failing models and the exhausted and timed-out requests are
    // too few to page on.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alerts = prometheus.api("/api/v1/alerts")["alerts"].clone();
        let active: Vec<(String, String, String)> = alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| {
                (
                    alert["labels"]["alertname"].as_str().unwrap().to_string(),
                    alert["labels"]["model"].as_str().unwrap_or("").to_string(),
                    alert["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = vec![(
            "AiFallbackModelCoolingLong".to_string(),
            "cool_status-503".to_string(),
            "pending".to_string(),
        )];
        if active == want {
            break;
        }
        assert!(Instant::now() < deadline, "alerts: {alerts}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The dashboard is a Grafana dashboard whose every panel reads the
/// `DS_PROMETHEUS` datasource variable. (Whether its queries return what they
/// should is the test above.)
#[test]
fn the_dashboard_is_a_grafana_dashboard_on_the_prometheus_variable() {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].is_string());
    assert!(dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|variable| variable["name"] == "DS_PROMETHEUS"
                && variable["type"] == "datasource"
                && variable["query"] == "prometheus"),
        "{variables:?}"
    );
    let datasource = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{panel}");
        assert!(panel["gridPos"]["w"].is_u64(), "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], datasource, "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"], datasource, "{}", panel["title"]);
            assert!(target["refId"].is_string(), "{}", panel["title"]);
        }
    }
    assert_eq!(dashboard_queries().len(), {
        let count: usize = panels
            .iter()
            .map(|panel| panel["targets"].as_array().map_or(0, Vec::len))
            .sum();
        count
    });
}
