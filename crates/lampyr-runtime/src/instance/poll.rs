//! Whether instances poll for their next frame instead of sleeping, and
//! the async runtime's matching wait before a worker parks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Invocations in flight on all instances of this process.
pub(super) static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How long an instance keeps polling for its next frame after an INVOKE,
/// when the host asks it to (see `poll_hint`).
pub const POLL_WINDOW: Duration = Duration::from_micros(100);

/// Whether instances should poll for their next frame rather than sleep,
/// with `in_flight` invocations running: only while fewer have run than
/// there are CPUs, for 10 ms in a row. A sleeping process is woken by the
/// next frame, which on a virtual machine costs tens of microseconds on each
/// side of the socket, and a request at low concurrency pays that on its
/// way in and out. Polling then uses a CPU that would otherwise idle; with
/// as many invocations as CPUs it would take CPU from them. (The in-flight
/// count dips at times under load too: hence the quiet period.)
pub(super) fn poll_hint(in_flight: usize) -> bool {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    /// When (since EPOCH, in microseconds) as many ran as there are CPUs.
    static LAST_BUSY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64;
    let (poll, busy) = decide_poll(in_flight, cpus, now, LAST_BUSY.load(Ordering::Relaxed));
    if let Some(busy) = busy {
        LAST_BUSY.store(busy, Ordering::Relaxed);
    }
    if POLLING.load(Ordering::Relaxed) != poll {
        POLLING.store(poll, Ordering::Relaxed);
    }
    poll
}

/// [`poll_hint`]'s decision at `now_us`, given when as many invocations as
/// CPUs last ran: whether to poll, and the new time of that if it is to be
/// recorded. Under load this runs for every invocation, so that time is
/// recorded to the millisecond only (a shared value written less often).
fn decide_poll(
    in_flight: usize,
    cpus: usize,
    now_us: u64,
    last_busy_us: u64,
) -> (bool, Option<u64>) {
    const QUIET_US: u64 = 10_000;
    let since = now_us.saturating_sub(last_busy_us);
    if in_flight >= cpus {
        (false, (since >= 1000).then_some(now_us))
    } else {
        (since >= QUIET_US, None)
    }
}

/// Whether instances are being asked to poll (see `poll_hint`).
static POLLING: AtomicBool = AtomicBool::new(false);

/// The sockets of this process's instances, to see a reply arrive without
/// sleeping.
pub(super) fn replies() -> Option<&'static lampyr_sandbox::ReadySet> {
    static SET: std::sync::OnceLock<Option<lampyr_sandbox::ReadySet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| lampyr_sandbox::ReadySet::new().ok())
        .as_ref()
}

/// For the async runtime's `on_thread_park`: while instances are asked to
/// poll and an invocation is in flight, a worker about to sleep first waits
/// up to [`POLL_WINDOW`] for a reply, yielding its CPU to anything runnable.
/// The reply is then read without the worker being woken.
pub fn poll_before_park() {
    if !POLLING.load(Ordering::Relaxed) || IN_FLIGHT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(set) = replies() else { return };
    let start = Instant::now();
    while start.elapsed() < POLL_WINDOW {
        if set.any_ready() {
            return;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_needs_a_spare_cpu_for_a_quiet_while() {
        // Two CPUs; 50 ms into the process, busy last at 30 ms.
        let (now, busy) = (50_000, 30_000);
        assert_eq!(decide_poll(1, 2, now, busy), (true, None));
        assert_eq!(decide_poll(0, 2, now, busy), (true, None));
        // Busy 5 ms ago: not quiet long enough.
        assert_eq!(decide_poll(1, 2, now, 45_000), (false, None));
        // As many in flight as CPUs: off, and now is the last busy time;
        // recorded to the millisecond.
        assert_eq!(decide_poll(2, 2, now, busy), (false, Some(now)));
        assert_eq!(decide_poll(5, 2, now, now - 300), (false, None));
        // One CPU: never.
        assert_eq!(decide_poll(1, 1, now, 0), (false, Some(now)));
    }
}
