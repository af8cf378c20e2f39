//! Holds with a time limit. A stream a role holds waits for the host's next
//! callback, which may never come in time (an answer whose body stalls); the root
//! context's tick ends such a hold instead: it lets a held answer go on, or sends
//! the local reply the role prepared. The tick runs only while a hold is waiting.

use super::host::{Host, HostExt};
use log::{debug, warn};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Tick period while a hold waits: the precision of every limit here.
pub const TICK_MS: u64 = 10;

/// What ends a hold when its time is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnExpiry {
    /// The held answer goes on as it is.
    Release,
    /// This JSON answer replaces it.
    Reply { status: u32, body: String },
}

#[derive(Default)]
pub struct Deadlines {
    waiting: RefCell<BTreeMap<u32, (u64, OnExpiry)>>,
    /// Holds the tick ended, until their role asks.
    expired: RefCell<BTreeSet<u32>>,
}

impl Deadlines {
    /// Ends the hold of stream `context_id` at `at_ms` unless `clear`ed first.
    pub fn set(&self, host: &dyn Host, context_id: u32, at_ms: u64, on_expiry: OnExpiry) {
        let first = {
            let mut waiting = self.waiting.borrow_mut();
            waiting.insert(context_id, (at_ms, on_expiry));
            waiting.len() == 1
        };
        if first {
            if let Err(status) = host.set_tick_period(TICK_MS) {
                warn!("ai-fallback: cannot start the tick ({status:?}); holds wait for the host");
            }
        }
    }

    /// Stops waiting for `context_id`; `true` when its time was up and the tick ended
    /// the hold already.
    pub fn clear(&self, host: &dyn Host, context_id: u32) -> bool {
        let removed = self.waiting.borrow_mut().remove(&context_id).is_some();
        if removed && self.waiting.borrow().is_empty() {
            let _ = host.set_tick_period(0);
        }
        self.expired.borrow_mut().remove(&context_id)
    }

    /// Whether the tick ended the hold of `context_id`.
    pub fn expired(&self, context_id: u32) -> bool {
        self.expired.borrow().contains(&context_id)
    }

    /// Ends every hold whose time is up.
    pub fn tick(&self, host: &dyn Host) {
        let now = host.now_ms();
        let due: Vec<(u32, OnExpiry)> = {
            let mut waiting = self.waiting.borrow_mut();
            let ids: Vec<u32> = waiting
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| waiting.remove(&id).map(|(_, action)| (id, action)))
                .collect()
        };
        for (context_id, action) in due {
            // A stream that ended meanwhile is gone: nothing to do for it.
            if host.set_effective_context(context_id).is_err() {
                continue;
            }
            self.expired.borrow_mut().insert(context_id);
            let ended = match &action {
                OnExpiry::Release => host.resume_response(),
                OnExpiry::Reply { status, body } => host.send_json(*status, body),
            };
            match ended {
                Ok(()) => debug!("#{context_id} hold ended by its deadline"),
                Err(status) => warn!("#{context_id} cannot end a hold ({status:?})"),
            }
        }
        if self.waiting.borrow().is_empty() {
            let _ = host.set_tick_period(0);
        }
    }
}
