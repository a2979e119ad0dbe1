//! How many asynchronous events run at once: as many as their functions
//! allow while the CPUs have room, fewer while callers wait for a CPU.
//!
//! An event can wait; a caller waiting for the function's answer cannot.
//! Every [`TICK`] the dispatcher asks the governor for its limit. If such
//! callers came in during the tick (synchronous calls other than the
//! dispatcher's own) and the threads that serve them waited for a CPU for
//! more than [`CONTENDED`] of it ([`lampyr_sandbox::caller_cpu_wait`]),
//! the limit halves, down to one event at a time, so that events still
//! move; otherwise it doubles, up to no limit. Synchronous calls keep their
//! CPU whatever the queue holds; the queue builds up meanwhile and drains
//! when they let up. Accepting an event is not such a call: it is cheap,
//! and holding events back while they keep coming would only grow the
//! queue.

use std::time::{Duration, Instant};

/// How often the limit is reconsidered.
pub(crate) const TICK: Duration = Duration::from_millis(20);

/// The share of a tick the caller threads may wait for a CPU before
/// events give way.
const CONTENDED: f64 = 0.05;

/// No limit.
const UNLIMITED: u32 = 1 << 20;

pub(crate) struct Governor {
    at: Instant,
    calls: u64,
    own: u64,
    wait: Option<Duration>,
    limit: u32,
}

impl Governor {
    pub(crate) fn new() -> Governor {
        Governor {
            at: Instant::now(),
            calls: 0,
            own: 0,
            wait: lampyr_sandbox::caller_cpu_wait(),
            limit: UNLIMITED,
        }
    }

    /// The most events that may run at once now. `calls` counts the calls
    /// waiting for an answer the function service has taken, `own` the
    /// dispatcher's.
    pub(crate) fn limit(&mut self, calls: u64, own: u64) -> u32 {
        let elapsed = self.at.elapsed();
        if elapsed < TICK {
            return self.limit;
        }
        let wait = lampyr_sandbox::caller_cpu_wait();
        let callers = calls
            .saturating_sub(self.calls)
            .saturating_sub(own.saturating_sub(self.own));
        let waited = match (wait, self.wait) {
            (Some(now), Some(before)) => now.saturating_sub(before),
            _ => Duration::ZERO,
        };
        self.limit = next_limit(self.limit, callers, waited, elapsed);
        self.at = Instant::now();
        self.calls = calls;
        self.own = own;
        self.wait = wait;
        self.limit
    }

    /// Whether events are held back now.
    pub(crate) fn limited(&self) -> bool {
        self.limit < UNLIMITED
    }
}

/// The limit after a tick of `elapsed` in which `callers` calls came in and
/// the threads serving them waited `waited` for a CPU.
fn next_limit(limit: u32, callers: u64, waited: Duration, elapsed: Duration) -> u32 {
    let contended = waited.as_secs_f64() > CONTENDED * elapsed.as_secs_f64();
    if callers > 0 && contended {
        (limit / 2).max(1)
    } else {
        limit.saturating_mul(2).min(UNLIMITED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_give_way_only_to_callers_kept_waiting_for_a_cpu() {
        let tick = Duration::from_millis(20);
        let busy = Duration::from_millis(5);
        // Callers waiting: halve, down to one at a time.
        assert_eq!(next_limit(64, 100, busy, tick), 32);
        assert_eq!(next_limit(1, 100, busy, tick), 1);
        // Waiting for a CPU with no callers (the queue's own load), or
        // callers that get their CPU: back up, doubling.
        assert_eq!(next_limit(4, 0, busy, tick), 8);
        assert_eq!(next_limit(4, 100, Duration::from_micros(100), tick), 8);
        assert_eq!(next_limit(UNLIMITED, 100, Duration::ZERO, tick), UNLIMITED);
    }
}
