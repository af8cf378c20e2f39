//! A host in memory for unit tests of the roles: one stream's header maps, bodies,
//! filter state and shared data, where any kind of call can be made to fail.

use super::host::{Body, Headers, Host, Map, Shared};
use proxy_wasm::types::{LogLevel, MetricType, Status};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A kind of host call, to make fail or to see made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    Now,
    LogLevel,
    Header,
    SetHeader,
    Property,
    SetProperty,
    Body,
    SetBody,
    SendResponse,
    DefineMetric,
    IncrementMetric,
    RecordMetric,
    SharedData,
    SetSharedData,
    SetTickPeriod,
    SetEffectiveContext,
    ResumeResponse,
    ForeignFunction,
}

pub const ALL_CALLS: [Call; 18] = [
    Call::Now,
    Call::LogLevel,
    Call::Header,
    Call::SetHeader,
    Call::Property,
    Call::SetProperty,
    Call::Body,
    Call::SetBody,
    Call::SendResponse,
    Call::DefineMetric,
    Call::IncrementMetric,
    Call::RecordMetric,
    Call::SharedData,
    Call::SetSharedData,
    Call::SetTickPeriod,
    Call::SetEffectiveContext,
    Call::ResumeResponse,
    Call::ForeignFunction,
];

#[derive(Default)]
pub struct State {
    pub now_ms: u64,
    pub request_headers: BTreeMap<String, Vec<u8>>,
    pub response_headers: BTreeMap<String, Vec<u8>>,
    /// Properties by their path segments joined with `.`.
    pub properties: BTreeMap<String, Vec<u8>>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    /// Local answers sent: status and body.
    pub sent: Vec<(u32, Vec<u8>)>,
    pub metric_names: Vec<String>,
    pub metric_values: BTreeMap<String, u64>,
    pub shared: BTreeMap<String, (Vec<u8>, u32)>,
    pub tick_period_ms: u64,
    pub effective_context: Option<u32>,
    /// Held answers let go, by the context that was effective.
    pub resumed: Vec<Option<u32>>,
    /// Foreign functions called: name and arguments.
    pub foreign_calls: Vec<(String, Vec<u8>)>,
    /// Kinds of call that fail (a getter returns nothing, a setter an error).
    pub failing: BTreeSet<Call>,
    /// Kinds of call made so far.
    pub made: BTreeSet<Call>,
    /// Calls made so far, in order.
    pub log: Vec<Call>,
}

#[derive(Default)]
pub struct FakeHost {
    pub state: RefCell<State>,
}

impl FakeHost {
    /// Notes the call; `true` when it is to fail.
    fn call(&self, call: Call) -> bool {
        let mut state = self.state.borrow_mut();
        state.made.insert(call);
        state.log.push(call);
        state.failing.contains(&call)
    }

    fn check(&self, call: Call) -> Result<(), Status> {
        if self.call(call) {
            Err(Status::InternalFailure)
        } else {
            Ok(())
        }
    }

    pub fn metric(&self, name: &str) -> u64 {
        let state = self.state.borrow();
        state.metric_values.get(name).copied().unwrap_or(0)
    }

    pub fn property_text(&self, name: &str) -> Option<String> {
        let state = self.state.borrow();
        let bytes = state.properties.get(name)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn splice(buffer: &mut Vec<u8>, start: usize, len: usize, bytes: &[u8]) {
    let start = start.min(buffer.len());
    let end = start.saturating_add(len).min(buffer.len());
    buffer.splice(start..end, bytes.iter().copied());
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        if self.call(Call::Now) {
            return 0;
        }
        self.state.borrow().now_ms
    }

    fn log_level(&self) -> Option<LogLevel> {
        (!self.call(Call::LogLevel)).then_some(LogLevel::Debug)
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let Headers(pairs) = self.headers(map)?;
        let mut pairs = pairs.into_iter();
        pairs
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value)
    }

    fn headers(&self, map: Map) -> Option<Headers> {
        if self.call(Call::Header) {
            return None;
        }
        let state = self.state.borrow();
        let headers = match map {
            Map::Request => &state.request_headers,
            Map::Response => &state.response_headers,
        };
        let pairs = headers.iter();
        Some(Headers(
            pairs
                .map(|(name, value)| (name.as_bytes().to_vec(), value.clone()))
                .collect(),
        ))
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
        self.check(Call::SetHeader)?;
        let mut state = self.state.borrow_mut();
        let headers = match map {
            Map::Request => &mut state.request_headers,
            Map::Response => &mut state.response_headers,
        };
        match value {
            Some(value) => headers.insert(name.to_string(), value.to_vec()),
            None => headers.remove(name),
        };
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if self.call(Call::Property) {
            return None;
        }
        self.state.borrow().properties.get(&path.join(".")).cloned()
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.check(Call::SetProperty)?;
        let mut state = self.state.borrow_mut();
        state.properties.insert(name.to_string(), value.to_vec());
        Ok(())
    }

    fn body(&self, body: Body, start: usize, len: usize) -> Option<Vec<u8>> {
        if self.call(Call::Body) {
            return None;
        }
        let state = self.state.borrow();
        let buffer = match body {
            Body::Request => &state.request_body,
            Body::Response => &state.response_body,
            Body::PluginConfiguration => &state.plugin_configuration,
        };
        let start = start.min(buffer.len());
        let end = start.saturating_add(len).min(buffer.len());
        buffer.get(start..end).map(<[u8]>::to_vec)
    }

    fn set_body(&self, body: Body, start: usize, len: usize, bytes: &[u8]) -> Result<(), Status> {
        self.check(Call::SetBody)?;
        let mut state = self.state.borrow_mut();
        let buffer = match body {
            Body::Request => &mut state.request_body,
            Body::Response => &mut state.response_body,
            Body::PluginConfiguration => &mut state.plugin_configuration,
        };
        splice(buffer, start, len, bytes);
        Ok(())
    }

    fn send_response(
        &self,
        status: u32,
        _headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        self.check(Call::SendResponse)?;
        self.state.borrow_mut().sent.push((status, body.to_vec()));
        Ok(())
    }

    fn define_metric(&self, _kind: MetricType, name: &str) -> Result<u32, Status> {
        self.check(Call::DefineMetric)?;
        let mut state = self.state.borrow_mut();
        state.metric_names.push(name.to_string());
        Ok(u32::try_from(state.metric_names.len() - 1).unwrap_or(u32::MAX))
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        self.check(Call::IncrementMetric)?;
        let mut state = self.state.borrow_mut();
        let name = state.metric_names[id as usize].clone();
        *state.metric_values.entry(name).or_default() += offset as u64;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        self.check(Call::RecordMetric)?;
        let mut state = self.state.borrow_mut();
        let name = state.metric_names[id as usize].clone();
        state.metric_values.insert(name, value);
        Ok(())
    }

    fn set_tick_period(&self, ms: u64) -> Result<(), Status> {
        self.check(Call::SetTickPeriod)?;
        self.state.borrow_mut().tick_period_ms = ms;
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Status> {
        self.check(Call::SetEffectiveContext)?;
        self.state.borrow_mut().effective_context = Some(context_id);
        Ok(())
    }

    fn resume_response(&self) -> Result<(), Status> {
        self.check(Call::ResumeResponse)?;
        let mut state = self.state.borrow_mut();
        let context = state.effective_context;
        state.resumed.push(context);
        Ok(())
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), Status> {
        self.check(Call::ForeignFunction)?;
        let call = (name.to_string(), arguments.to_vec());
        self.state.borrow_mut().foreign_calls.push(call);
        Ok(())
    }

    fn shared_data(&self, key: &str) -> Result<Shared, Status> {
        self.check(Call::SharedData)?;
        let state = self.state.borrow();
        Ok(match state.shared.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.check(Call::SetSharedData)?;
        let mut state = self.state.borrow_mut();
        let current = state.shared.get(key).map(|(_, cas)| *cas);
        if cas.is_some() && cas != current {
            return Err(Status::CasMismatch);
        }
        let next = current.unwrap_or(0) + 1;
        state.shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}
