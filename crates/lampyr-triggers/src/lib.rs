//! The trigger layer: every way a function is called implements
//! [`Trigger`], and the server runs them together as a [`TriggerSet`].
//!
//! A trigger turns something that happens (an HTTP request, a timer, a
//! message) into a [`lampyr_scheduler::Call`] and does what its source
//! expects with the answer. It is started once with the function service
//! and the functions whose manifest lists it (`[[triggers]]` with its
//! `type`), hears of every deploy and delete after that, and is shut down
//! before the function service stops, so that what it accepted is
//! answered first.
//!
//! Adding a trigger: a `lampyr_api::TriggerSpec` variant (its manifest
//! table, validated with the rest of the manifest), a
//! `lampyr_api::TriggerKind` for its records, a type implementing
//! [`Trigger`] (in a module or crate of its own), and a line in the
//! server's assembly that adds it to the set.
#![forbid(unsafe_code)]

pub mod webhook;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use lampyr_api::{FunctionSpec, TriggerKind};
use lampyr_scheduler::{Change, Scheduler};
use tokio::sync::broadcast::error::RecvError;

/// Why a trigger could not start.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The trigger's own explanation, naming what is wrong.
    #[error("the {kind} trigger could not start: {message}")]
    Start { kind: TriggerKind, message: String },
}

/// What a trigger starts with.
#[derive(Clone)]
pub struct Context {
    /// The function service, which every call goes to.
    pub scheduler: Scheduler,
    /// The functions deployed now whose manifest lists this trigger.
    pub functions: Vec<Arc<FunctionSpec>>,
}

/// One way of calling functions.
pub trait Trigger: Send + Sync + 'static {
    /// What the records call invocations from it.
    fn kind(&self) -> TriggerKind;

    /// Starts serving. Called once, before any of the other methods.
    fn start(&self, ctx: Context) -> Result<(), TriggerError>;

    /// A function's current version is now `spec`: it may have started or
    /// stopped using this trigger (see [`uses`]), or changed how.
    fn deployed(&self, spec: &Arc<FunctionSpec>);

    /// A function was deleted.
    fn deleted(&self, name: &str);

    /// Stops accepting work and finishes what was accepted (within the
    /// trigger's own limit).
    fn shutdown(&self) -> BoxFuture<'static, ()>;

    /// How this trigger's sources for `function` are doing (event-source
    /// triggers: one entry per `[[triggers]]` table). Cheap: it reads what
    /// the trigger already knows.
    fn status(&self, _function: &str) -> Vec<lampyr_api::sources::SourceStatus> {
        Vec::new()
    }
}

/// Whether `spec` lists a trigger of `kind`.
pub fn uses(spec: &FunctionSpec, kind: TriggerKind) -> bool {
    spec.triggers.iter().any(|t| t.kind() == kind)
}

/// The server's triggers, run together.
#[derive(Default)]
pub struct TriggerSet {
    triggers: Vec<Arc<dyn Trigger>>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl TriggerSet {
    pub fn new() -> TriggerSet {
        TriggerSet::default()
    }

    pub fn add(&mut self, trigger: Arc<dyn Trigger>) {
        self.triggers.push(trigger);
    }

    /// The kinds of the triggers in the set, in the order they were added.
    pub fn kinds(&self) -> Vec<TriggerKind> {
        self.triggers.iter().map(|t| t.kind()).collect()
    }

    /// Starts every trigger with the functions that use it, then passes
    /// every deploy and delete on to all of them. Must be called inside a
    /// tokio runtime.
    pub fn start(&mut self, scheduler: &Scheduler) -> Result<(), TriggerError> {
        // Subscribed before the functions are read: no change falls between.
        let mut changes = scheduler.changes();
        let functions = scheduler.functions();
        for t in &self.triggers {
            let kind = t.kind();
            t.start(Context {
                scheduler: scheduler.clone(),
                functions: functions
                    .iter()
                    .filter(|f| uses(f, kind))
                    .cloned()
                    .collect(),
            })?;
            tracing::debug!(trigger = %kind, "trigger started");
        }
        let triggers = self.triggers.clone();
        let sched = scheduler.clone();
        self.follower = Some(tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(Change::Deployed(spec)) => {
                        for t in &triggers {
                            t.deployed(&spec);
                        }
                    }
                    Ok(Change::Deleted(name)) => {
                        for t in &triggers {
                            t.deleted(&name);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        // Changes were missed: every trigger hears of every
                        // function's current version again.
                        tracing::warn!(missed = n, "triggers fell behind deploys; resynchronising");
                        for spec in sched.functions() {
                            for t in &triggers {
                                t.deployed(&spec);
                            }
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }));
        Ok(())
    }

    /// How the event sources of `function` are doing, every trigger's.
    pub fn status(&self, function: &str) -> Vec<lampyr_api::sources::SourceStatus> {
        self.triggers
            .iter()
            .flat_map(|t| t.status(function))
            .collect()
    }

    /// A handle that reads [`TriggerSet::status`] from elsewhere (the API,
    /// `/metrics`), for the triggers added so far.
    pub fn statuses(&self) -> Statuses {
        Statuses(self.triggers.clone().into())
    }

    /// Shuts every trigger down, all at once, and waits for them.
    pub async fn shutdown(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        futures_util::future::join_all(self.triggers.iter().map(|t| t.shutdown())).await;
    }
}

/// How the event sources of a function are doing, read from outside the
/// set (see [`TriggerSet::statuses`]).
#[derive(Clone)]
pub struct Statuses(Arc<[Arc<dyn Trigger>]>);

impl Statuses {
    pub fn of(&self, function: &str) -> Vec<lampyr_api::sources::SourceStatus> {
        self.0.iter().flat_map(|t| t.status(function)).collect()
    }
}
