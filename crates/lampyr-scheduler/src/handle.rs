//! The seam between the scheduling rules and the instances they place
//! work on: [`state`](crate::state) and [`pool`](crate::pool) see an
//! instance only through [`InstanceHandle`], so their rules are unit-tested
//! with stand-ins.

/// What the scheduling rules need of an instance.
pub(crate) trait InstanceHandle: Send + Sync + 'static {
    /// Its id, e.g. `hello-3`.
    fn id(&self) -> &str;
    /// Whether its processes have exited.
    fn exited(&self) -> bool;
    /// Stops it; `reason` is what its exit reports.
    fn kill(&self, reason: &str);
    /// Its memory use in bytes, where measured.
    fn memory_current(&self) -> Option<u64>;
}

impl InstanceHandle for lampyr_runtime::Instance {
    fn id(&self) -> &str {
        lampyr_runtime::Instance::id(self)
    }

    fn exited(&self) -> bool {
        self.exit_report().is_some()
    }

    fn kill(&self, reason: &str) {
        lampyr_runtime::Instance::kill(self, reason)
    }

    fn memory_current(&self) -> Option<u64> {
        lampyr_runtime::Instance::memory_current(self)
    }
}

/// A stand-in instance for unit tests: it records being killed.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use parking_lot::Mutex;

    #[derive(Debug, Default)]
    pub(crate) struct Fake {
        pub(crate) id: String,
        pub(crate) exited: AtomicBool,
        pub(crate) killed: Mutex<Option<String>>,
        pub(crate) memory: Option<u64>,
    }

    impl Fake {
        pub(crate) fn new(id: &str) -> Arc<Fake> {
            Arc::new(Fake {
                id: id.to_string(),
                ..Default::default()
            })
        }

        /// Why it was killed, if it was.
        pub(crate) fn killed(&self) -> Option<String> {
            self.killed.lock().clone()
        }
    }

    impl super::InstanceHandle for Fake {
        fn id(&self) -> &str {
            &self.id
        }

        fn exited(&self) -> bool {
            self.exited.load(Ordering::Relaxed)
        }

        fn kill(&self, reason: &str) {
            self.killed.lock().get_or_insert_with(|| reason.to_string());
            self.exited.store(true, Ordering::Relaxed);
        }

        fn memory_current(&self) -> Option<u64> {
            self.memory
        }
    }
}
