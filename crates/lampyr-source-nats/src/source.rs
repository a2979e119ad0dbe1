//! One source: a function's `[[triggers]]` table of type `nats`, consumed
//! by one task (see the crate doc).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lampyr_api::sources::{SourceState, SourceStatus};
use lampyr_api::{FunctionError, NatsSpec, TriggerKind};
use lampyr_nats::async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use lampyr_nats::async_nats::jetstream::{self, AckKind, Message};
use lampyr_nats::{Connected, Report, MAX_BACKOFF};
use lampyr_scheduler::{
    new_request_id, Answer, Call, Credential, InvocationType, Outcome, Scheduler, SchedulerError,
};
use parking_lot::Mutex;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::event::{self, Delivered};
use crate::SourceError;

/// A running source.
pub(crate) struct Source {
    pub spec: NatsSpec,
    /// The function's timeout it was started with.
    pub timeout: Duration,
    pub status: Arc<Mutex<SourceStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the source's tasks share.
struct Ctx {
    sched: Scheduler,
    function: String,
    spec: NatsSpec,
    ack_wait: Duration,
    status: Arc<Mutex<SourceStatus>>,
}

/// The consumer's `ack_wait` for a function with `timeout`: half of it,
/// from 1 s to 30 s. In-progress acks extend it while the function runs.
pub fn ack_wait(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

impl Source {
    pub(crate) fn start(
        sched: Scheduler,
        function: &str,
        timeout: Duration,
        spec: NatsSpec,
    ) -> Source {
        let mut detail = BTreeMap::new();
        detail.insert("servers".to_string(), spec.servers.join(","));
        detail.insert("stream".to_string(), spec.stream.clone());
        detail.insert("consumer".to_string(), spec.durable_name(function));
        if let Some(s) = &spec.subject {
            detail.insert("subject".to_string(), s.clone());
        }
        let status = Arc::new(Mutex::new(SourceStatus {
            trigger: spec.name.clone(),
            kind: TriggerKind::Nats,
            state: SourceState::Connecting,
            lag: None,
            lag_unit: Some("messages".to_string()),
            last_error: None,
            last_error_at: None,
            delivered: 0,
            detail,
        }));
        let ctx = Arc::new(Ctx {
            sched,
            function: function.to_string(),
            spec: spec.clone(),
            ack_wait: ack_wait(timeout),
            status: status.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(ctx, stopped));
        Source {
            spec,
            timeout,
            status,
            stop,
            task,
        }
    }

    /// Stops fetching; the task ends once its running batches are settled.
    pub(crate) fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        self.task
    }
}

impl Ctx {
    fn set_state(&self, state: SourceState) {
        self.status.lock().state = state;
    }

    fn error(&self, message: &str, state: Option<SourceState>) {
        let mut s = self.status.lock();
        if let Some(state) = state {
            s.state = state;
        }
        s.last_error = Some(message.to_string());
        s.last_error_at =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
}

impl Report for Ctx {
    fn names(&self) -> (&str, &str) {
        (&self.function, &self.spec.name)
    }

    fn state(&self, state: SourceState) {
        self.set_state(state);
    }

    fn failed(&self, message: &str) {
        self.error(message, Some(SourceState::Retrying));
    }

    fn note(&self, message: &str) {
        tracing::warn!(function = %self.function, trigger = %self.spec.name, "NATS trigger: {message}");
        self.error(message, None);
    }
}

/// Connects, consumes, and on any failure tries again with backoff, until
/// stopped.
async fn run(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    lampyr_nats::keep_trying("NATS trigger", &*ctx, stop, |stop, connected| {
        consume(ctx.clone(), stop, connected)
    })
    .await;
}

/// One connection's life: the consumer, then batches until stopped or an
/// error. Running batches are settled before it returns.
async fn consume(
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    connected: Connected,
) -> Result<(), SourceError> {
    let ctx = &ctx;
    let stop = &mut stop;
    let spec = &ctx.spec;
    let connect = lampyr_nats::connect(
        &spec.servers,
        &spec.auth,
        format!("lampyr {}/{}", ctx.function, spec.name),
        ctx.clone(),
    );
    let client = tokio::select! {
        c = connect => c?,
        _ = stop.changed() => return Ok(()),
    };
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| SourceError::Stream {
            stream: spec.stream.clone(),
            message: format!("{e} (lampyr consumes a stream; it does not create it)"),
        })?;
    let durable = spec.durable_name(&ctx.function);
    lampyr_nats::deleted_first(&crate::consumer(&ctx.function, spec)).await;
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!(
                "lampyr function {}, trigger {}",
                ctx.function, spec.name
            )),
            filter_subject: spec.subject.clone().unwrap_or_default(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ctx.ack_wait,
            // lampyr counts deliveries itself and dead-letters the last.
            max_deliver: -1,
            max_ack_pending: (spec.concurrency * spec.batch_size) as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| SourceError::Consumer {
            stream: spec.stream.clone(),
            consumer: durable.clone(),
            message: format!("{e} (a consumer's filter cannot change on this server: give the trigger a new `durable`)"),
        })?;
    connected.set();
    ctx.set_state(SourceState::Connected);
    tracing::info!(function = %ctx.function, trigger = %spec.name, stream = %spec.stream, consumer = %durable, "NATS trigger consuming");
    let permits = Arc::new(Semaphore::new(spec.concurrency as usize));
    let mut running = JoinSet::new();
    let result = loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let batch = tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            b = lampyr_nats::fetch(&consumer, spec.batch_size as usize, spec.max_batching_window()) => b.map_err(SourceError::Fetch),
        };
        match batch {
            Err(e) => break Err(e),
            Ok(b) if b.is_empty() => {
                if let Ok(info) = consumer.info().await {
                    ctx.status.lock().lag = Some(info.num_pending);
                }
                ctx.set_state(SourceState::Connected);
            }
            Ok(b) => {
                ctx.set_state(SourceState::Connected);
                running.spawn(process(ctx.clone(), js.clone(), b, permit));
            }
        }
    };
    while running.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    result
}

/// How an invocation of a batch went.
enum Verdict {
    /// It ran; these stream sequences failed (`batchItemFailures`).
    Done(HashSet<u64>),
    /// The whole batch failed, for this reason.
    Failed(String),
    /// The function is gone: the messages go back at once.
    Abandon,
}

async fn process(
    ctx: Arc<Ctx>,
    js: jetstream::Context,
    msgs: Vec<Message>,
    _permit: OwnedSemaphorePermit,
) {
    let meta: Vec<Delivered> = msgs
        .iter()
        .map(|m| {
            event::delivered(m).unwrap_or(Delivered {
                stream_sequence: 0,
                delivered: 1,
                pending: 0,
            })
        })
        .collect();
    if let Some(last) = meta.last() {
        ctx.status.lock().lag = Some(last.pending);
    }
    let body = event::event(&msgs);
    let progress = {
        let msgs = msgs.clone();
        let every = ctx.ack_wait / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
        })
    };
    let verdict = invoke(&ctx, &meta, body).await;
    progress.abort();
    ctx.status.lock().delivered += msgs.len() as u64;
    for (m, d) in msgs.iter().zip(&meta) {
        let reason = match &verdict {
            Verdict::Done(failed) if !failed.contains(&d.stream_sequence) => {
                if let Err(e) = m.double_ack().await {
                    ctx.note(&format!(
                        "ack of stream sequence {} failed ({e}); the broker will deliver it again",
                        d.stream_sequence
                    ));
                }
                continue;
            }
            Verdict::Done(_) => "named in the result's batchItemFailures".to_string(),
            Verdict::Failed(why) => why.clone(),
            Verdict::Abandon => {
                let _ = m.ack_with(AckKind::Nak(None)).await;
                continue;
            }
        };
        settle_failure(&ctx, &js, m, d, &reason).await;
    }
}

/// Naks a failed message with its backoff, or dead-letters its last
/// allowed delivery.
async fn settle_failure(
    ctx: &Ctx,
    js: &jetstream::Context,
    m: &Message,
    d: &Delivered,
    reason: &str,
) {
    let spec = &ctx.spec;
    if d.delivered <= spec.max_retries as u64 {
        let delay = spec.retry_delay(d.delivered);
        if let Err(e) = m.ack_with(AckKind::Nak(Some(delay))).await {
            ctx.note(&format!(
                "nak of stream sequence {} failed: {e}",
                d.stream_sequence
            ));
        }
        return;
    }
    let Some(dlq) = &spec.dead_letter_subject else {
        tracing::warn!(
            function = %ctx.function,
            trigger = %spec.name,
            stream_sequence = d.stream_sequence,
            deliveries = d.delivered,
            "message dropped after {} deliveries (no dead_letter_subject): {reason}",
            d.delivered
        );
        let _ = m.double_ack_with(AckKind::Term).await;
        return;
    };
    let mut headers = m.headers.clone().unwrap_or_default();
    headers.insert("Lampyr-Function", ctx.function.as_str());
    headers.insert("Lampyr-Trigger", spec.name.as_str());
    headers.insert("Lampyr-Original-Subject", m.subject.as_str());
    headers.insert("Lampyr-Stream", spec.stream.as_str());
    headers.insert(
        "Lampyr-Stream-Sequence",
        d.stream_sequence.to_string().as_str(),
    );
    headers.insert("Lampyr-Deliveries", d.delivered.to_string().as_str());
    let short: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    headers.insert("Lampyr-Error", short.as_str());
    let published = match js
        .publish_with_headers(dlq.clone(), headers, m.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => {
            tracing::info!(
                function = %ctx.function,
                trigger = %spec.name,
                stream_sequence = d.stream_sequence,
                deliveries = d.delivered,
                dead_letter_subject = %dlq,
                "message dead-lettered: {reason}"
            );
            if let Err(e) = m.double_ack_with(AckKind::Term).await {
                ctx.note(&format!(
                    "terminating stream sequence {} after dead-lettering failed: {e}",
                    d.stream_sequence
                ));
            }
        }
        Err(e) => {
            // Kept, and tried again at its next delivery.
            ctx.note(&format!(
                "publishing stream sequence {} to the dead-letter subject {dlq} failed ({e}): does a stream store that subject? it stays in the stream",
                d.stream_sequence
            ));
            let _ = m
                .ack_with(AckKind::Nak(Some(spec.retry_delay(d.delivered))))
                .await;
        }
    }
}

/// Calls the function with the batch until it ran (a full function waits
/// and tries again: that is not a delivery failure).
async fn invoke(ctx: &Ctx, meta: &[Delivered], body: Vec<u8>) -> Verdict {
    let seqs: Vec<u64> = meta.iter().map(|d| d.stream_sequence).collect();
    let attempt = meta.iter().map(|d| d.delivered).max().unwrap_or(1) as u32;
    let mut throttled = Duration::from_millis(50);
    // The alias the trigger names, else the newest version.
    let target = match &ctx.spec.alias {
        Some(a) => format!("{}@{a}", ctx.function),
        None => ctx.function.clone(),
    };
    loop {
        let call = Call {
            function: &target,
            request_id: new_request_id(),
            event: body.clone(),
            trigger: TriggerKind::Nats,
            invocation_type: InvocationType::RequestResponse,
            credential: Credential::Operator,
            attempt: Some(attempt),
            idempotency_key: None,
            routing_key: None,
            extras: None,
        };
        match ctx.sched.call(call).await {
            Ok(Answer::Ran(inv)) => {
                return match &inv.outcome {
                    Outcome::Ok(result) => match event::failed_items(result, &seqs) {
                        Ok(failed) => Verdict::Done(failed),
                        Err(why) => Verdict::Failed(why),
                    },
                    Outcome::FunctionError(e) => {
                        let fe = FunctionError::parse(e, "Error");
                        Verdict::Failed(format!("{}: {}", fe.error_type, fe.error_message))
                    }
                    Outcome::Timeout { timeout } => Verdict::Failed(format!(
                        "Runtime.Timeout: timed out after {:.2} s",
                        timeout.as_secs_f64()
                    )),
                    Outcome::Crashed { reason } => {
                        Verdict::Failed(format!("Runtime.ExitError: {reason}"))
                    }
                    Outcome::OutOfMemory { limit_mb } => Verdict::Failed(format!(
                        "Runtime.OutOfMemory: exceeded its memory limit of {limit_mb} MiB"
                    )),
                }
            }
            Ok(Answer::Queued(_)) => return Verdict::Done(HashSet::new()),
            Err(refused) => match refused.error() {
                SchedulerError::QueueFull { .. } | SchedulerError::QueueTimeout { .. } => {
                    drop(refused);
                    tokio::time::sleep(throttled).await;
                    throttled = (throttled * 2).min(MAX_BACKOFF);
                }
                SchedulerError::NotFound(_) | SchedulerError::Deleted(_) => {
                    return Verdict::Abandon
                }
                other => return Verdict::Failed(other.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_wait_is_half_the_timeout_within_bounds() {
        assert_eq!(ack_wait(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(ack_wait(Duration::from_millis(500)), Duration::from_secs(1));
        assert_eq!(ack_wait(Duration::from_secs(900)), Duration::from_secs(30));
    }
}
