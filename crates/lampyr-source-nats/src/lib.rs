//! The NATS JetStream message-queue trigger (`[[triggers]]` with
//! `type = "nats"`): each such table of a deployed function is a *source*,
//! a task that consumes one stream through a durable pull consumer and
//! calls the function with batches of messages.
//!
//! It owns the connection to the broker, the consumer's configuration, the
//! fetch loop, the event (`{"Records": [...]}`, `event.rs`), and what is
//! done with each message afterwards:
//!
//! * success: acked (and the ack confirmed by the server);
//! * failure (an error, a timeout, a crash, or the message named in the
//!   result's `batchItemFailures`): nak'd with the trigger's backoff delay,
//!   until the message has been delivered `max_retries + 1` times; that
//!   last failure publishes it to `dead_letter_subject` (the broker's ack
//!   awaited) and then terminates it. Deliveries are counted from the
//!   message's own metadata, so JetStream's `max_deliver` is not used: it
//!   would leave the message in the stream unannounced.
//! * while an invocation runs, every message of its batch gets an
//!   in-progress ack every third of `ack_wait`, so a slow function is not
//!   redelivered. `ack_wait` is half the function's timeout, from 1 s to
//!   30 s: how soon the broker hands out again what a stopped server held.
//!
//! A server that cannot be reached never stops lampyr: the source retries
//! with backoff, logs why, and reports it in [`Trigger::status`]. Deploys
//! replace a function's sources, deletes stop them. The durable consumer
//! of a trigger that is gone (removed from the manifest, or its function
//! deleted) is deleted from the broker when lampyr derived its name, and
//! kept when the manifest named it (`durable`). Shutdown stops fetching
//! and lets running batches finish, so their messages are acked or nak'd
//! (or, if the server is killed, redelivered after `ack_wait`).
#![forbid(unsafe_code)]

mod event;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use lampyr_api::sources::SourceStatus;
use lampyr_api::{FunctionSpec, NatsSpec, TriggerKind};
use lampyr_nats::OwnedConsumer;
use lampyr_scheduler::Scheduler;
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::Mutex;

use source::Source;

/// Why a source is not consuming.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Connect(#[from] lampyr_nats::ConnectError),
    #[error("stream \"{stream}\": {message}")]
    Stream { stream: String, message: String },
    #[error("consumer \"{consumer}\" on stream \"{stream}\": {message}")]
    Consumer {
        stream: String,
        consumer: String,
        message: String,
    },
    #[error("fetching messages: {0}")]
    Fetch(String),
}

/// The NATS trigger (see the crate doc).
#[derive(Default)]
pub struct NatsTrigger {
    sched: OnceLock<Scheduler>,
    /// Per function: its sources, in manifest order.
    sources: Mutex<HashMap<String, Vec<Source>>>,
    /// Sources being replaced or stopped, still finishing their batches.
    retiring: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl NatsTrigger {
    pub fn new() -> NatsTrigger {
        NatsTrigger::default()
    }

    fn start_sources(&self, spec: &FunctionSpec) -> Vec<Source> {
        let Some(sched) = self.sched.get() else {
            return Vec::new();
        };
        spec.nats()
            .map(|n| Source::start(sched.clone(), &spec.name, spec.timeout(), n.clone()))
            .collect()
    }

    /// Stops `old`, `function`'s sources that are replaced or gone, and
    /// deletes the consumers lampyr created for them that no source of
    /// `now` uses (a consumer the manifest named is left alone).
    fn retire(&self, function: &str, old: Vec<Source>, now: &[&NatsSpec]) {
        let used: Vec<OwnedConsumer> = now.iter().map(|n| consumer(function, n)).collect();
        let mut retiring = self.retiring.lock();
        retiring.retain(|t| !t.is_finished());
        retiring.extend(old.into_iter().map(|s| {
            let c = consumer(function, &s.spec);
            let gone = s.spec.durable.is_none() && !used.iter().any(|u| u.same_as(&c));
            let trigger = s.spec.name.clone();
            lampyr_nats::retire(s.stop(), gone.then_some(c), function, &trigger)
        }));
    }
}

/// The consumer a source of `function` reads.
fn consumer(function: &str, n: &NatsSpec) -> OwnedConsumer {
    OwnedConsumer {
        servers: n.servers.clone(),
        auth: n.auth.clone(),
        stream: n.stream.clone(),
        name: n.durable_name(function),
    }
}

/// Whether a running source for `old` can go on serving `new`.
fn same(
    old: &NatsSpec,
    old_timeout: std::time::Duration,
    new: &NatsSpec,
    spec: &FunctionSpec,
) -> bool {
    old == new && old_timeout == spec.timeout()
}

impl Trigger for NatsTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Nats
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let _ = self.sched.set(ctx.scheduler.clone());
        let mut sources = self.sources.lock();
        for spec in &ctx.functions {
            let s = self.start_sources(spec);
            if !s.is_empty() {
                sources.insert(spec.name.clone(), s);
            }
        }
        Ok(())
    }

    fn deployed(&self, spec: &Arc<FunctionSpec>) {
        if self.sched.get().is_none() {
            return;
        }
        let mut sources = self.sources.lock();
        let old = sources.remove(&spec.name).unwrap_or_default();
        let unchanged = old.len() == spec.nats().count()
            && old
                .iter()
                .zip(spec.nats())
                .all(|(o, n)| same(&o.spec, o.timeout, n, spec));
        if unchanged {
            if !old.is_empty() {
                sources.insert(spec.name.clone(), old);
            }
            return;
        }
        drop(sources);
        self.retire(&spec.name, old, &spec.nats().collect::<Vec<_>>());
        let new = self.start_sources(spec);
        if !new.is_empty() {
            self.sources.lock().insert(spec.name.clone(), new);
        }
    }

    fn deleted(&self, name: &str) {
        let old = self.sources.lock().remove(name).unwrap_or_default();
        self.retire(name, old, &[]);
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let all: Vec<Source> = self.sources.lock().drain().flat_map(|(_, s)| s).collect();
        let mut tasks: Vec<_> = all.into_iter().map(Source::stop).collect();
        tasks.extend(self.retiring.lock().drain(..));
        Box::pin(async move {
            futures_util::future::join_all(tasks).await;
        })
    }

    fn status(&self, function: &str) -> Vec<SourceStatus> {
        self.sources
            .lock()
            .get(function)
            .map(|s| s.iter().map(|s| s.status.lock().clone()).collect())
            .unwrap_or_default()
    }
}
