//! The only code that touches proxy-wasm: the root context, which parses the
//! configuration, and the two per-request roles it creates.

mod attempt;
mod gateway;
mod health;
mod host;

use crate::config::{Config, Role};
use crate::plan::RouterControl;
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::MetricType;
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}

/// A configuration with what can be derived from it once, not per request.
pub struct Prepared {
    pub config: Config,
    pub role: Role,
    /// The router control of each settings block, in rule index order.
    pub routers: Vec<RouterControl>,
    /// Every model the configuration names: stats use these, all others are `other`.
    pub known_models: BTreeSet<String>,
    /// Envoy metric ids by stat name, defined on first use.
    metrics: RefCell<HashMap<String, u32>>,
}

impl Prepared {
    fn new(config: Config, role: Role) -> Prepared {
        let routers = config.all_settings().map(RouterControl::new).collect();
        let known_models = config
            .all_settings()
            .flat_map(|settings| {
                let chains = settings.chains.iter().chain(&settings.context_chains);
                let keys = chains.clone().map(|(requested, _)| requested.clone());
                let entries = chains
                    .flat_map(|(_, chain)| chain.iter())
                    .chain(&settings.default_chain)
                    .chain(&settings.default_context_chain)
                    .map(|entry| entry.model.clone());
                keys.chain(entries).collect::<Vec<_>>()
            })
            .collect();
        Prepared {
            config,
            role,
            routers,
            known_models,
            metrics: RefCell::new(HashMap::new()),
        }
    }

    pub fn metric(&self, metric_type: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.borrow().get(name) {
            return Some(*id);
        }
        match hostcalls::define_metric(metric_type, name) {
            Ok(id) => {
                self.metrics.borrow_mut().insert(name.to_string(), id);
                Some(id)
            }
            Err(status) => {
                warn!("ai-fallback: cannot define metric {name} ({status:?})");
                None
            }
        }
    }

    /// Adds `value` to a counter; Envoy rejects increments of zero.
    pub fn count(&self, name: &str, value: u64) {
        let Ok(offset) = i64::try_from(value) else {
            return;
        };
        if offset > 0 {
            if let Some(id) = self.metric(MetricType::Counter, name) {
                let _ = hostcalls::increment_metric(id, offset);
            }
        }
    }

    /// Records one value in a histogram.
    pub fn observe(&self, name: &str, value: u64) {
        if let Some(id) = self.metric(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[derive(Default)]
struct Root {
    prepared: Option<Rc<Prepared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, configuration_size: usize) -> bool {
        follow_host_log_level();
        let bytes = match host::plugin_configuration(configuration_size) {
            Ok(bytes) => bytes,
            Err(status) => {
                error!("ai-fallback: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match Config::parse(&bytes) {
            Ok(config) => {
                let root_id = host::property("plugin_root_id")
                    .map(|id| String::from_utf8_lossy(&id).into_owned())
                    .unwrap_or_default();
                let role = config.role_for_root_id(&root_id);
                info!(
                    "ai-fallback: configured as {role:?} role, {} chains, {} rules",
                    config.defaults.chains.len(),
                    config.rules.len(),
                );
                self.prepared = Some(Rc::new(Prepared::new(config, role)));
                true
            }
            Err(config_error) => {
                error!("ai-fallback: {config_error}; the plugin refuses to start");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would make the SDK panic: without a configuration (Envoy does
        // not create streams then, but be sure), a stream passes through untouched.
        let Some(prepared) = self.prepared.clone() else {
            return Some(Box::new(Passthrough));
        };
        Some(match prepared.role {
            Role::Gateway => Box::new(gateway::Gateway::new(context_id, prepared)),
            Role::Attempt => Box::new(attempt::Attempt::new(context_id, prepared)),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Passthrough;
impl Context for Passthrough {}
impl HttpContext for Passthrough {}

/// Lets `debug!` through when Envoy's wasm log level is debug, and costs nothing
/// otherwise: the `log` crate drops filtered records before any host call.
fn follow_host_log_level() {
    let level = proxy_wasm::hostcalls::get_log_level().unwrap_or(LogLevel::Info);
    proxy_wasm::set_log_level(level);
}
