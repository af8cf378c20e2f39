//! The only code that touches the host: the root context, which parses the
//! configuration, and the two per-request roles it creates. Every host call goes
//! through `host::Host`: `abi::Envoy` in the module, a fake in unit tests.

#[cfg(target_arch = "wasm32")]
mod abi;
mod attempt;
mod deadlines;
#[cfg(test)]
mod fake;
mod gateway;
mod health;
mod host;
#[cfg(test)]
mod tests;

use crate::access::RECORD_PROPERTY;
use crate::config::{Config, Role};
use crate::plan::RouterControl;
use crate::proto;
use host::{Body, Host};
use log::{error, info, warn};
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// A configuration with what can be derived from it once, not per request.
pub struct Prepared {
    pub config: Config,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // read by the wasm root
    pub role: Role,
    /// The router control of each settings block, in rule index order.
    pub routers: Vec<RouterControl>,
    /// Some settings block holds requests until their body is read.
    pub holds_some: bool,
    /// Every model the configuration names: stats use these, all others are `other`.
    pub known_models: BTreeSet<String>,
    /// Envoy metric ids by stat name, defined on first use.
    metrics: RefCell<HashMap<String, u32>>,
    /// Holds of this root's streams that end at a time limit.
    pub deadlines: deadlines::Deadlines,
    /// Envoy knows the access record as a `google.protobuf.Struct` (declared at
    /// configure time), so it is written as one and JSON logs nest it.
    pub typed_record: bool,
}

impl Prepared {
    fn new(config: Config, role: Role) -> Prepared {
        let routers: Vec<RouterControl> = config.all_settings().map(RouterControl::new).collect();
        let holds_some = routers.iter().any(|router| router.hold.is_some());
        let known_models = config
            .all_settings()
            .flat_map(|settings| {
                let chains = settings.chains.iter().chain(&settings.context_chains);
                let chains = chains.chain(&settings.content_policy_chains);
                let keys = chains.clone().map(|(requested, _)| requested.clone());
                let entries = chains
                    .flat_map(|(_, chain)| chain.iter())
                    .chain(&settings.default_chain)
                    .chain(&settings.default_context_chain)
                    .chain(&settings.default_content_policy_chain)
                    .chain(settings.client_chain_allow.iter().flatten())
                    .map(|entry| entry.model.clone());
                keys.chain(entries).collect::<Vec<_>>()
            })
            .collect();
        Prepared {
            config,
            role,
            routers,
            holds_some,
            known_models,
            metrics: RefCell::new(HashMap::new()),
            deadlines: deadlines::Deadlines::default(),
            typed_record: false,
        }
    }

    pub fn metric(&self, host: &dyn Host, metric_type: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.borrow().get(name) {
            return Some(*id);
        }
        match host.define_metric(metric_type, name) {
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
    pub fn count(&self, host: &dyn Host, name: &str, value: u64) {
        let Ok(offset) = i64::try_from(value) else {
            return;
        };
        if offset > 0 {
            if let Some(id) = self.metric(host, MetricType::Counter, name) {
                let _ = host.increment_metric(id, offset);
            }
        }
    }

    /// Records one value in a histogram.
    pub fn observe(&self, host: &dyn Host, name: &str, value: u64) {
        if let Some(id) = self.metric(host, MetricType::Histogram, name) {
            let _ = host.record_metric(id, value);
        }
    }
}

/// Declares the access record's filter state a `google.protobuf.Struct`; `false`
/// (logged) leaves it a JSON string.
fn declare_typed_record(host: &dyn Host) -> bool {
    let arguments = proto::declare_protobuf_property(RECORD_PROPERTY, proto::STRUCT_TYPE_URL);
    match host.call_foreign_function("declare_property", &arguments) {
        Ok(()) => true,
        Err(status) => {
            warn!("ai-fallback: the access record stays a JSON string ({status:?})");
            false
        }
    }
}

/// Parses and prepares the plugin configuration; `None` (logged) refuses it.
fn configure(host: &dyn Host, configuration_size: usize) -> Option<Prepared> {
    let Some(bytes) = host.body(Body::PluginConfiguration, 0, configuration_size) else {
        error!("ai-fallback: cannot read the plugin configuration");
        return None;
    };
    match Config::parse(&bytes) {
        Ok(config) => {
            let root_id = host
                .property(&["plugin_root_id"])
                .map(|id| String::from_utf8_lossy(&id).into_owned())
                .unwrap_or_default();
            let role = config.role_for_root_id(&root_id);
            info!(
                "ai-fallback: configured as {role:?} role, {} chains, {} rules",
                config.defaults.chains.len(),
                config.rules.len(),
            );
            let mut prepared = Prepared::new(config, role);
            prepared.typed_record = role == Role::Gateway && declare_typed_record(host);
            Some(prepared)
        }
        Err(config_error) => {
            error!("ai-fallback: {config_error}; the plugin refuses to start");
            None
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use envoy::start;

/// The SDK's traits, on Envoy: each callback hands over to the role's own method.
#[cfg(target_arch = "wasm32")]
mod envoy {
    use super::abi::Envoy;
    use super::attempt::Attempt;
    use super::gateway::Gateway;
    use super::host::Host;
    use super::{configure, Prepared};
    use crate::config::Role;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};
    use std::rc::Rc;

    pub fn start() {
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::<Root>::default());
    }

    fn host() -> Rc<dyn Host> {
        Rc::new(Envoy)
    }

    /// Lets `debug!` through when Envoy's wasm log level is debug, and costs nothing
    /// otherwise: the `log` crate drops filtered records before any host call.
    fn follow_host_log_level(host: &dyn Host) {
        proxy_wasm::set_log_level(host.log_level().unwrap_or(LogLevel::Info));
    }

    #[derive(Default)]
    struct Root {
        prepared: Option<Rc<Prepared>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, configuration_size: usize) -> bool {
            let host = host();
            follow_host_log_level(host.as_ref());
            self.prepared = configure(host.as_ref(), configuration_size).map(Rc::new);
            self.prepared.is_some()
        }

        fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
            // Returning None would make the SDK panic: without a configuration (Envoy
            // does not create streams then, but be sure), a stream passes through.
            let Some(prepared) = self.prepared.clone() else {
                return Some(Box::new(Passthrough));
            };
            Some(match prepared.role {
                Role::Gateway => Box::new(Gateway::new(context_id, prepared, host())),
                Role::Attempt if cfg!(feature = "ablate-attempt") => Box::new(Passthrough),
                Role::Attempt => Box::new(Attempt::new(context_id, prepared, host())),
            })
        }

        fn on_tick(&mut self) {
            if let Some(prepared) = &self.prepared {
                prepared.deadlines.tick(host().as_ref());
            }
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Passthrough;
    impl Context for Passthrough {}
    impl HttpContext for Passthrough {}

    impl Context for Gateway {}

    impl HttpContext for Gateway {
        fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
            self.request_headers(end_of_stream)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.request_body(body_size, end_of_stream)
        }

        fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
            self.request_trailers()
        }

        fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
            self.response_headers(end_of_stream)
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.response_body(body_size, end_of_stream)
        }

        fn on_log(&mut self) {
            self.log();
        }
    }

    impl Context for Attempt {}

    impl HttpContext for Attempt {
        fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
            self.request_headers(end_of_stream)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.request_body(body_size, end_of_stream)
        }

        fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
            self.response_headers(end_of_stream)
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.response_body(body_size, end_of_stream)
        }

        fn on_log(&mut self) {
            self.log();
        }
    }
}
