//! The one way to call a function, whatever the trigger: [`Scheduler::call`].
//!
//! A [`Call`] names the function, the request id, the event, the trigger
//! kind, the invocation type and what the caller presented. The service
//! checks access, finds or starts an instance, runs the invocation and
//! records it, refusals included; it answers with an [`Invocation`] (the
//! handler ran: its outcome) or a [`Refused`] (it did not: why). The
//! trigger only maps its input to an event and the answer to its output.
//!
//! The record is written when the answer is dropped, with what the trigger
//! says it delivered ([`Invocation::delivered`]): a trigger that holds the
//! answer until its response is out (the HTTP trigger does) has the
//! record, and the refill of a pool the invocation took an instance from,
//! wait until then. Starting an instance takes CPU the response still
//! needs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lampyr_api::{FunctionError, StartKind, Status, TriggerKind};
use lampyr_runtime::{FirstInvoke, InvokeOutcome, PendingInvoke};

use crate::state::{self, FunctionState, Grant, SlotGrant, SlotId};
use crate::{records, Scheduler, SchedulerError, TriggerAccess, Version};

/// The most a streamed reply [`Scheduler::call`] collects holds: what one
/// RESULT frame can.
pub const COLLECT_LIMIT: usize = lampyr_runtime::protocol::MAX_FRAME;

/// How the caller waits for the invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvocationType {
    /// The caller waits for the result.
    #[default]
    RequestResponse,
    /// The event is queued durably and run later, with retries; the
    /// caller gets its request id at once ([`Answer::Queued`]).
    Event,
}

impl std::str::FromStr for InvocationType {
    type Err = String;

    /// The value of `x-lampyr-invocation-type` (Lambda's spellings too).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "requestresponse" | "request-response" | "sync" => Ok(InvocationType::RequestResponse),
            "event" | "async" => Ok(InvocationType::Event),
            other => Err(format!(
                "x-lampyr-invocation-type: '{other}' is not an invocation type: use \"event\" (queued, answered 202) or \"request-response\" (the default)"
            )),
        }
    }
}

/// An event for the asynchronous queue.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub function: String,
    pub request_id: String,
    pub trigger: TriggerKind,
    pub payload: Vec<u8>,
    /// Events with the same key for the same function within the
    /// idempotency window are one event.
    pub idempotency_key: Option<String>,
}

/// An event accepted by the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The event's request id: the first event's, for a repeated
    /// idempotency key.
    pub request_id: String,
    /// The key was seen before: nothing was queued.
    pub duplicate: bool,
}

/// Where [`InvocationType::Event`] calls go: the durable event queue.
pub trait EventSink: Send + Sync + 'static {
    /// Commits `event` durably, then answers.
    fn enqueue(
        &self,
        event: NewEvent,
    ) -> futures_util::future::BoxFuture<'static, Result<Queued, SchedulerError>>;
}

/// The answer to a call.
#[derive(Debug)]
// `Ran` is the common answer, on the request path: boxing it would cost an
// allocation per call.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// The handler ran (a request-response call).
    Ran(Invocation),
    /// The event was queued (an event call).
    Queued(Queued),
}

impl Answer {
    /// The invocation, for a request-response call.
    pub fn ran(self) -> Option<Invocation> {
        match self {
            Answer::Ran(i) => Some(i),
            Answer::Queued(_) => None,
        }
    }
}

/// What the caller presented to be let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// lampyr itself, or a caller the edge authenticated as an operator
    /// (with the management API's token): every function is open to it.
    Operator,
    /// A caller of a trigger, with the bearer token it sent, if any.
    Bearer(Option<&'a str>),
}

/// One call of a function.
#[derive(Debug)]
pub struct Call<'a> {
    /// `NAME`, or `NAME@N`, `NAME@ALIAS`, `NAME@$LATEST` for a version
    /// (`versions.rs`).
    pub function: &'a str,
    pub request_id: String,
    /// The event, JSON.
    pub event: Vec<u8>,
    pub trigger: TriggerKind,
    pub invocation_type: InvocationType,
    pub credential: Credential<'a>,
    /// Which attempt this is, for an event that is retried.
    pub attempt: Option<u32>,
    /// For an event call: the caller's idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Keeps a caller on one version of a weighted alias
    /// (`x-lampyr-routing-key`).
    pub routing_key: Option<&'a str>,
    /// What the call brings besides its event, as JSON for the runtime
    /// (`client_context`, `identity`, `trace_id`: Lambda's Invoke API);
    /// request-response calls only, as on Lambda.
    pub extras: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    /// A request-response call by lampyr itself.
    pub fn new(
        function: &'a str,
        request_id: String,
        event: Vec<u8>,
        trigger: TriggerKind,
    ) -> Self {
        Call {
            function,
            request_id,
            event,
            trigger,
            invocation_type: InvocationType::RequestResponse,
            credential: Credential::Operator,
            attempt: None,
            idempotency_key: None,
            routing_key: None,
            extras: None,
        }
    }

    /// An event source's event for the durable queue, with the idempotency
    /// key that drops it when its source delivers it again.
    pub fn source_event(
        function: &'a str,
        event: Vec<u8>,
        trigger: TriggerKind,
        idempotency_key: &'a str,
    ) -> Self {
        Call {
            invocation_type: InvocationType::Event,
            idempotency_key: Some(idempotency_key),
            ..Call::new(function, new_request_id(), event, trigger)
        }
    }
}

/// Time spent in each phase of one invocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Waiting for a free instance.
    pub queue: Duration,
    /// Making the version's code available (cold start only).
    pub code: Option<Duration>,
    /// Building the sandbox (cold start only).
    pub sandbox: Option<Duration>,
    /// Starting the language runtime (cold start only).
    pub runtime: Option<Duration>,
    /// Loading the function's module and running its init code (cold start only).
    pub init: Option<Duration>,
    /// Running the handler.
    pub exec: Duration,
}

/// How the handler's part of an invocation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler's result as JSON.
    Ok(Bytes),
    /// The handler threw: the error object as JSON.
    FunctionError(Bytes),
    /// The handler ran past the function's timeout; its instance is killed.
    Timeout { timeout: Duration },
    /// The instance died while running the invocation.
    Crashed { reason: String },
    /// The instance exceeded its memory limit and the kernel killed it.
    OutOfMemory { limit_mb: u32 },
}

impl Outcome {
    /// How the records call it, and the error type they note.
    fn recorded_as(&self) -> (Status, Option<String>) {
        match self {
            Outcome::Ok(_) => (Status::Ok, None),
            Outcome::FunctionError(e) => (
                Status::Error,
                Some(FunctionError::parse(e, "Error").error_type),
            ),
            Outcome::Timeout { .. } => (Status::Timeout, Some("Runtime.Timeout".into())),
            Outcome::OutOfMemory { .. } => {
                (Status::OutOfMemory, Some("Runtime.OutOfMemory".into()))
            }
            Outcome::Crashed { .. } => (Status::Crashed, Some("Runtime.ExitError".into())),
        }
    }
}

/// What the trigger did with an answer, for its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The HTTP status it answered with, if it answered over HTTP.
    pub http_status: Option<u16>,
    /// The bytes of the response body.
    pub response_bytes: u64,
}

/// An invocation whose handler ran: its outcome and how it went. Its
/// record is written when it is dropped (see the module doc).
pub struct Invocation {
    pub request_id: String,
    pub function: String,
    pub version: u64,
    /// The alias the call was routed through.
    pub alias: Option<Arc<str>>,
    pub start: StartKind,
    pub phases: Phases,
    pub outcome: Outcome,
    pub memory_mb: u32,
    /// When the call reached the function service.
    pub started_at: SystemTime,
    /// The instance that ran it.
    pub instance: String,
    /// A streamed reply (`stream.rs`).
    pub(crate) stream: Option<crate::stream::Streaming>,
    /// From the start of execution to the end of a streamed reply.
    pub(crate) stream_duration: Option<Duration>,
    /// The bytes a streamed reply carried.
    pub(crate) stream_bytes: u64,
    /// Taken when the record is written.
    after: Option<After>,
}

/// What happens when an [`Invocation`] is dropped.
struct After {
    sched: Scheduler,
    trigger: TriggerKind,
    attempt: Option<u32>,
    delivery: Delivery,
    sandbox: Arc<lampyr_sandbox::SandboxControl>,
    /// The pool the instance came from, refilled then.
    refill: Option<lampyr_api::Runtime>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("request_id", &self.request_id)
            .field("function", &self.function)
            .field("version", &self.version)
            .field("start", &self.start)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Invocation {
    /// Notes what the trigger delivered, for the record.
    pub fn delivered(&mut self, delivery: Delivery) {
        if let Some(after) = &mut self.after {
            after.delivery = delivery;
        }
    }

    /// An invocation whose caller stopped reading its streamed reply: the
    /// record waits for the stream's end, in a task of its own.
    fn record_at_stream_end(&mut self) -> bool {
        if !self.streaming() {
            return false;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let mut rest = Invocation {
            request_id: std::mem::take(&mut self.request_id),
            function: std::mem::take(&mut self.function),
            version: self.version,
            alias: self.alias.take(),
            start: self.start,
            phases: self.phases,
            outcome: Outcome::Ok(Bytes::new()),
            memory_mb: self.memory_mb,
            started_at: self.started_at,
            instance: std::mem::take(&mut self.instance),
            stream: self.stream.take(),
            stream_duration: None,
            stream_bytes: 0,
            after: self.after.take(),
        };
        rt.spawn(async move {
            let done = match rest.stream.as_mut() {
                Some(s) => s.finish().await,
                None => None,
            };
            rest.stream_ended(done);
        });
        true
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        if self.record_at_stream_end() {
            return;
        }
        let Some(after) = self.after.take() else {
            return;
        };
        let ms = lampyr_api::millis;
        let p = self.phases;
        let exec_ms = ms(p.exec);
        // A streamed reply lasts until its end.
        let duration_ms = self.stream_duration.map_or(exec_ms, ms);
        let billed_ms = (duration_ms.ceil() as u64).max(1);
        let (status, error_type) = self.outcome.recorded_as();
        let record = lampyr_api::InvocationRecord {
            request_id: std::mem::take(&mut self.request_id),
            function: std::mem::take(&mut self.function),
            version: self.version,
            trigger: after.trigger,
            // Formatted by the record writer, off the request path.
            start_time: String::new(),
            start: self.start,
            phases: lampyr_api::PhaseTimes {
                queue: ms(p.queue),
                code: p.code.map(ms),
                sandbox: p.sandbox.map(ms),
                runtime: p.runtime.map(ms),
                init: p.init.map(ms),
                exec: exec_ms,
            },
            duration_ms,
            billed_ms,
            gb_seconds: f64::from(self.memory_mb) / 1024.0 * billed_ms as f64 / 1000.0,
            memory_mb: self.memory_mb,
            max_memory_used_mb: None,
            status,
            error_type,
            http_status: after.delivery.http_status,
            response_bytes: after.delivery.response_bytes,
            instance: Some(std::mem::take(&mut self.instance)),
            attempt: after.attempt,
            stream_bytes: self.stream.is_some().then_some(self.stream_bytes),
        };
        let inner = &after.sched.inner;
        inner.recorder.record(records::Draft {
            record,
            started_at: self.started_at,
            instance: Some(after.sandbox.clone()),
            report: true,
        });
        if let Some(rt) = after.refill {
            inner.pools.replenish(rt);
        }
    }
}

/// A call that did not run the handler, and why. Refusals that are
/// invocations of a function (throttled, an instance that did not start)
/// are recorded when this is dropped.
pub struct Refused {
    error: SchedulerError,
    record: Option<(Scheduler, lampyr_api::InvocationRecord, SystemTime)>,
}

impl Refused {
    /// A refusal that is not recorded.
    fn unrecorded(error: SchedulerError) -> Refused {
        Refused {
            error,
            record: None,
        }
    }

    /// Why the call was refused.
    pub fn error(&self) -> &SchedulerError {
        &self.error
    }

    /// Notes the HTTP status the trigger answered with, for the record.
    pub fn delivered(&mut self, http_status: Option<u16>) {
        if let Some((_, r, _)) = &mut self.record {
            r.http_status = http_status;
        }
    }
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Refused").field(&self.error).finish()
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Drop for Refused {
    fn drop(&mut self) {
        if let Some((sched, record, started_at)) = self.record.take() {
            sched.inner.recorder.record(records::Draft {
                record,
                started_at,
                instance: None,
                report: false,
            });
        }
    }
}

impl Scheduler {
    /// How many calls that wait for the function's answer
    /// ([`InvocationType::RequestResponse`]) [`Scheduler::call`] has taken
    /// so far, refused ones too: how busy waiting callers keep the service.
    pub fn waiting_calls(&self) -> u64 {
        self.inner.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one call of a function (see the module doc). A streamed reply
    /// is collected into `Outcome::Ok` (at most [`COLLECT_LIMIT`] bytes;
    /// see [`Invocation::collect`]): the answer for callers that want the
    /// whole result.
    pub async fn call(&self, call: Call<'_>) -> Result<Answer, Refused> {
        let mut answer = self.call_streamed(call).await?;
        if let Answer::Ran(inv) = &mut answer {
            inv.collect(COLLECT_LIMIT).await;
        }
        Ok(answer)
    }

    /// Runs one call of a function (see the module doc), whose reply may be
    /// a stream still to be read ([`Invocation::streaming`],
    /// [`Invocation::next_chunk`]).
    ///
    /// The invocation runs in a task of its own: if the caller goes away
    /// (a client disconnected), it still finishes or times out and gives
    /// its slot back properly, and a cold start it began still completes.
    pub async fn call_streamed(&self, call: Call<'_>) -> Result<Answer, Refused> {
        if call.invocation_type == InvocationType::RequestResponse {
            self.inner
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Call {
            function,
            request_id,
            event,
            trigger,
            invocation_type,
            credential,
            attempt,
            idempotency_key,
            routing_key,
            extras,
        } = call;
        let crate::versions::Target { state, alias } = self
            .target(function, trigger, routing_key)
            .map_err(Refused::unrecorded)?;
        check_access(&state, trigger, credential).map_err(Refused::unrecorded)?;
        if invocation_type == InvocationType::Event {
            if function.contains('@') {
                return Err(Refused::unrecorded(SchedulerError::BadQualifier {
                    target: function.to_string(),
                    message: format!(
                        "asynchronous calls run the function's newest version: queue the event for '{}' without a version or alias",
                        state.name
                    ),
                }));
            }
            let function = state.name.as_str();
            let sink = self.inner.events.get().cloned().ok_or_else(|| {
                Refused::unrecorded(SchedulerError::AsyncUnavailable(function.to_string()))
            })?;
            let queued = sink
                .enqueue(NewEvent {
                    function: function.to_string(),
                    request_id,
                    // Its attempts are the event queue's invocations: an
                    // HTTP or API caller's event runs as `async`, an event
                    // source's as that source.
                    trigger: match trigger {
                        TriggerKind::Http | TriggerKind::Api => TriggerKind::Async,
                        other => other,
                    },
                    payload: event,
                    idempotency_key: idempotency_key.map(str::to_string),
                })
                .await
                .map_err(Refused::unrecorded)?;
            return Ok(Answer::Queued(queued));
        }
        let sched = self.clone();
        let task = tokio::spawn(async move {
            let started_at = SystemTime::now();
            let queued_at = Instant::now();
            match sched
                .run(&state, &request_id, &event, extras.as_deref())
                .await
            {
                Ok(done) => Ok(Answer::Ran(done.into_invocation(
                    &sched, request_id, started_at, trigger, attempt, alias,
                ))),
                Err(error) => Err(sched.refused(
                    &state,
                    error,
                    Called {
                        request_id,
                        trigger,
                        attempt,
                        started_at,
                        queued_at,
                    },
                )),
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(Refused::unrecorded(SchedulerError::Internal(format!(
                "the invocation task failed: {e}"
            )))),
        }
    }

    /// Sets where event calls go (once, at start-up).
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.inner.events.set(sink);
    }

    /// Whether a caller with `credential` may call `function` through
    /// `trigger`, and who may: for a trigger to refuse early, before it
    /// reads a request's body. [`Scheduler::call`] checks again.
    pub fn check_access(
        &self,
        function: &str,
        trigger: TriggerKind,
        credential: Credential<'_>,
        routing_key: Option<&str>,
    ) -> Result<TriggerAccess, SchedulerError> {
        let target = self.target(function, trigger, routing_key)?;
        check_access(&target.state, trigger, credential)
    }

    /// The refusal of a call, with its record if it is recorded.
    fn refused(&self, state: &FunctionState, error: SchedulerError, c: Called) -> Refused {
        let Called {
            request_id,
            trigger,
            attempt,
            started_at,
            queued_at,
        } = c;
        let Some((status, error_type)) = error.recorded_as() else {
            return Refused::unrecorded(error);
        };
        let version = state.current();
        let record = lampyr_api::InvocationRecord {
            request_id,
            function: state.name.clone(),
            version: version.record.version,
            trigger,
            start_time: String::new(),
            start: StartKind::Cold,
            phases: lampyr_api::PhaseTimes {
                queue: lampyr_api::millis(queued_at.elapsed()),
                ..Default::default()
            },
            duration_ms: 0.0,
            billed_ms: 0,
            gb_seconds: 0.0,
            memory_mb: version.spec().memory_mb,
            max_memory_used_mb: None,
            status,
            error_type,
            http_status: None,
            response_bytes: 0,
            instance: None,
            attempt,
            stream_bytes: None,
        };
        Refused {
            error,
            record: Some((self.clone(), record, started_at)),
        }
    }

    /// Finds a slot and runs the invocation on it.
    async fn run(
        &self,
        state: &Arc<FunctionState>,
        request_id: &str,
        event: &[u8],
        extras: Option<&[u8]>,
    ) -> Result<Ran, SchedulerError> {
        let queued_at = Instant::now();
        let mut phases = Phases::default();
        let timeout = state.current().spec().timeout();
        let first = FirstInvoke {
            request_id,
            event,
            extras,
            timeout,
            on_sent: None,
        };
        let (lease, start, sent) = self.acquire(state, &mut phases, first).await?;
        if phases.code.is_none() {
            phases.queue = queued_at.elapsed();
        }
        let version = lease.version.clone();
        let spec = version.spec();
        let timeout = spec.timeout();
        let exec_started = Instant::now();
        let pending = match sent {
            // A cold start sent this invocation along with its LOAD.
            Some(p) => p,
            None => {
                self.log_start(&state.name, &version, lease.instance.id(), request_id);
                lease
                    .instance
                    .start_invoke(request_id, SystemTime::now() + timeout, extras, event)
            }
        };
        let outcome = tokio::time::timeout(timeout, pending.outcome()).await;
        phases.exec = exec_started.elapsed();
        let mut stream = None;
        let outcome = match outcome {
            Ok(InvokeOutcome::Ok(b)) => Outcome::Ok(b),
            // The runtime logged the error and its stack.
            Ok(InvokeOutcome::Error(b)) => Outcome::FunctionError(b),
            Ok(InvokeOutcome::Exited(report)) => {
                self.ended(&lease, request_id, Ended::Exited(report))
            }
            Err(_) => self.ended(&lease, request_id, Ended::TimedOut(timeout)),
            Ok(InvokeOutcome::Stream(reply)) => {
                // The slot goes with the stream, given back at its end.
                let ran = Ran {
                    version: version.record.version,
                    start,
                    phases,
                    outcome: Outcome::Ok(Bytes::new()),
                    memory_mb: spec.memory_mb,
                    instance: lease.instance.id().to_string(),
                    sandbox: lease.instance.sandbox(),
                    refill: (start == StartKind::Pooled).then_some(spec.runtime),
                    function: state.name.clone(),
                    stream: None,
                };
                stream = Some(crate::stream::pump(
                    self.clone(),
                    lease,
                    request_id.to_string(),
                    reply,
                    exec_started,
                    timeout,
                ));
                return Ok(Ran { stream, ..ran });
            }
        };
        Ok(Ran {
            version: version.record.version,
            start,
            phases,
            outcome,
            memory_mb: spec.memory_mb,
            instance: lease.instance.id().to_string(),
            sandbox: lease.instance.sandbox(),
            // A pooled start refills its pool once the answer is dropped.
            refill: (start == StartKind::Pooled).then_some(spec.runtime),
            function: state.name.clone(),
            stream,
        })
    }

    /// The outcome of an invocation that its instance's exit or its
    /// timeout ended, logged; the instance is replaced.
    pub(crate) fn ended(&self, lease: &Lease, request_id: &str, how: Ended) -> Outcome {
        let name = &lease.state.name;
        let spec = lease.version.spec();
        match how {
            Ended::Exited(report) => {
                lease.poison("crashed");
                if report.oom {
                    self.platform_log(
                        lease,
                        request_id,
                        "ERROR",
                        format!(
                            "Runtime.OutOfMemory: function '{name}' exceeded its memory limit of {} MiB; instance {} was killed",
                            spec.memory_mb,
                            lease.instance.id()
                        ),
                    );
                    Outcome::OutOfMemory {
                        limit_mb: spec.memory_mb,
                    }
                } else {
                    self.platform_log(
                        lease,
                        request_id,
                        "ERROR",
                        format!(
                            "instance {} exited during the invocation: {}",
                            lease.instance.id(),
                            report.reason
                        ),
                    );
                    Outcome::Crashed {
                        reason: report.reason,
                    }
                }
            }
            Ended::TimedOut(timeout) => {
                self.platform_log(
                    lease,
                    request_id,
                    "ERROR",
                    format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
                );
                lease.poison(&format!(
                    "an invocation timed out after {:.2} s",
                    timeout.as_secs_f64()
                ));
                Outcome::Timeout { timeout }
            }
        }
    }

    /// The START line of an invocation, for followers of the live log
    /// (reads rebuild it from the invocation's record).
    pub(crate) fn log_start(
        &self,
        function: &str,
        version: &Version,
        instance: &str,
        request_id: &str,
    ) {
        if self.inner.logs.following() {
            let version = version.record.version;
            self.inner.logs.announce(
                SystemTime::now(),
                function,
                version,
                instance,
                request_id,
                crate::logs::start_message(request_id, version),
            );
        }
    }

    pub(crate) fn platform_log(
        &self,
        lease: &Lease,
        request_id: &str,
        level: &str,
        message: String,
    ) {
        self.inner.logs.platform(
            &lease.state.name,
            lease.version.record.version,
            lease.instance.id(),
            Some(request_id),
            level,
            message,
        );
    }

    /// Takes a slot: warm if possible, else a cold start, else a place in line.
    /// A cold start sends `first` along with the LOAD and returns it sent.
    async fn acquire(
        &self,
        state: &Arc<FunctionState>,
        phases: &mut Phases,
        first: FirstInvoke<'_>,
    ) -> Result<(Lease, StartKind, Option<PendingInvoke>), SchedulerError> {
        let started = Instant::now();
        loop {
            match state.try_acquire()? {
                state::Acquire::Slot(grant) => {
                    return Ok((Lease::new(state.clone(), grant), StartKind::Warm, None))
                }
                state::Acquire::Start(version) => {
                    phases.queue = started.elapsed();
                    let (grant, kind, sent) =
                        self.cold_start(state, version, phases, Some(first)).await?;
                    let grant = grant.expect("a claimed start returns a slot");
                    return Ok((Lease::new(state.clone(), grant), kind, sent));
                }
                state::Acquire::Wait(rx) => {
                    let version = state.current();
                    let spec = version.spec();
                    let left = spec.queue_timeout().saturating_sub(started.elapsed());
                    let mut rx = rx;
                    match tokio::time::timeout(left, &mut rx).await {
                        Ok(Ok(Grant::Slot(g))) => {
                            return Ok((Lease::new(state.clone(), g), StartKind::Warm, None))
                        }
                        Ok(Ok(Grant::Retry)) => continue,
                        Ok(Err(_)) => return Err(SchedulerError::Deleted(state.name.clone())),
                        Err(_) => {
                            // A slot handed over just as the wait ran out is
                            // used, not lost.
                            rx.close();
                            if let Ok(Grant::Slot(g)) = rx.try_recv() {
                                return Ok((Lease::new(state.clone(), g), StartKind::Warm, None));
                            }
                            return Err(SchedulerError::QueueTimeout {
                                function: state.name.clone(),
                                max_instances: spec.max_instances,
                                concurrency: spec.concurrency,
                                waited_ms: started.elapsed().as_millis() as u64,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Whether `credential` opens `state`'s function through `trigger`.
fn check_access(
    state: &FunctionState,
    trigger: TriggerKind,
    credential: Credential<'_>,
) -> Result<TriggerAccess, SchedulerError> {
    let version = state.current();
    if trigger == TriggerKind::Http && !version.spec().has_http_trigger() {
        return Err(SchedulerError::NoTrigger {
            function: state.name.clone(),
            trigger,
        });
    }
    let access = version.access.clone();
    match (&access, credential) {
        (_, Credential::Operator) | (TriggerAccess::Public, _) => Ok(access),
        (TriggerAccess::Token(token), Credential::Bearer(given)) => {
            if given.is_some_and(|g| token_eq(g, token)) {
                Ok(access)
            } else {
                Err(SchedulerError::Unauthorized {
                    function: state.name.clone(),
                })
            }
        }
    }
}

/// A new request id: a time-ordered (version 7) UUID, random bits from the
/// thread's fast generator (no system call per request). Being ordered by
/// time, ids sort like the requests did and index cheaply.
pub fn new_request_id() -> String {
    let millis = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
        .into_uuid()
        .to_string()
}

/// Compares two tokens in time independent of where they differ.
pub fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who called, for the record of a refusal.
struct Called {
    request_id: String,
    trigger: TriggerKind,
    attempt: Option<u32>,
    started_at: SystemTime,
    queued_at: Instant,
}

/// What ran, before it becomes an [`Invocation`].
struct Ran {
    function: String,
    version: u64,
    start: StartKind,
    phases: Phases,
    outcome: Outcome,
    memory_mb: u32,
    instance: String,
    sandbox: Arc<lampyr_sandbox::SandboxControl>,
    refill: Option<lampyr_api::Runtime>,
    stream: Option<crate::stream::Streaming>,
}

/// How an invocation ended without an answer.
pub(crate) enum Ended {
    Exited(lampyr_runtime::ExitReport),
    TimedOut(Duration),
}

impl Ran {
    fn into_invocation(
        self,
        sched: &Scheduler,
        request_id: String,
        started_at: SystemTime,
        trigger: TriggerKind,
        attempt: Option<u32>,
        alias: Option<Arc<str>>,
    ) -> Invocation {
        Invocation {
            request_id,
            function: self.function,
            version: self.version,
            alias,
            start: self.start,
            phases: self.phases,
            outcome: self.outcome,
            memory_mb: self.memory_mb,
            started_at,
            instance: self.instance,
            stream: self.stream,
            stream_duration: None,
            stream_bytes: 0,
            after: Some(After {
                sched: sched.clone(),
                trigger,
                attempt,
                delivery: Delivery::default(),
                sandbox: self.sandbox,
                refill: self.refill,
            }),
        }
    }
}

/// One taken slot on an instance; giving it back (dropping it) frees the slot
/// or hands it to the next waiter.
pub(crate) struct Lease {
    state: Arc<FunctionState>,
    slot: SlotId,
    instance: Arc<lampyr_runtime::Instance>,
    version: Arc<Version>,
}

impl Lease {
    fn new(state: Arc<FunctionState>, grant: SlotGrant<lampyr_runtime::Instance>) -> Self {
        Lease {
            state,
            slot: grant.slot,
            instance: grant.instance,
            version: grant.version,
        }
    }

    /// The instance must not take new work and is killed once idle.
    fn poison(&self, reason: &str) {
        self.state.poison(self.slot, reason);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((inst, reason)) = self.state.release(self.slot) {
            inst.kill(&reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_recorded_with_their_error_type() {
        let thrown = Outcome::FunctionError(Bytes::from_static(
            br#"{"errorType":"TypeError","errorMessage":"x"}"#,
        ));
        assert_eq!(
            thrown.recorded_as(),
            (Status::Error, Some("TypeError".into()))
        );
        let odd = Outcome::FunctionError(Bytes::from_static(b"not json"));
        assert_eq!(odd.recorded_as(), (Status::Error, Some("Error".into())));
        assert_eq!(
            Outcome::OutOfMemory { limit_mb: 64 }.recorded_as(),
            (Status::OutOfMemory, Some("Runtime.OutOfMemory".into()))
        );
        assert_eq!(Outcome::Ok(Bytes::new()).recorded_as(), (Status::Ok, None));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("abc", "abcd"));
    }
}
