//! A storage trigger's NATS side (`nats_servers`, `nats_subject`, ...):
//! bucket notifications an object store publishes to NATS (MinIO's NATS
//! target), read by one task per trigger and taken exactly as the webhook
//! takes a request's body: the same shapes, filters, one durable
//! asynchronous event per record with the same idempotency key.
//!
//! * **JetStream** (`nats_stream`): a durable pull consumer with explicit
//!   acks. A message is acked only once its records are committed to the
//!   queue; one that could not be queued is nak'd and comes again (its
//!   records already queued are duplicates then, and dropped by their
//!   keys); one that is not a notification is terminated and reported. A
//!   message redelivered after a crash of lampyr is not queued twice.
//! * **Core NATS** (no `nats_stream`): a subscription. Nothing is acked,
//!   so a notification published while lampyr is not subscribed, or one
//!   the queue cannot take (after a few tries), is lost: delivery is at
//!   most once from the broker's side.
//!
//! Connecting, credentials and retrying with backoff are `lampyr-nats`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lampyr_api::sources::SourceState;
use lampyr_api::{StorageNats, StorageSpec};
use lampyr_nats::async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use lampyr_nats::async_nats::jetstream::{self, AckKind};
use lampyr_nats::async_nats::{self, Client};
use lampyr_nats::{Connected, Report};
use lampyr_scheduler::Scheduler;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::notification::{self, Notification};
use crate::{queue, NotQueued, Stats, Why};

/// Messages taken at once (their records are queued in one group).
const BATCH: usize = 64;
/// How long the broker waits for an ack before it delivers a message
/// again: queueing a notification takes milliseconds, and one delivered
/// twice is not queued twice.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Core NATS: tries to queue a notification the queue could not take now.
const CORE_TRIES: u32 = 4;

/// How a NATS-fed storage trigger is doing: its state and lag here, its
/// counts and last error in the trigger's [`Stats`] (shared with its
/// webhook).
pub(crate) struct Feed {
    function: String,
    trigger: String,
    stats: Arc<Stats>,
    pub state: Mutex<SourceState>,
    pub lag: Mutex<Option<u64>>,
    /// Whether the subscription or consumer is made: the connection alone
    /// is not "connected", since a core NATS notification published before
    /// the subscription is lost.
    subscribed: AtomicBool,
}

impl Feed {
    fn subscribed(&self, yes: bool) {
        self.subscribed.store(yes, Ordering::Release);
        if yes {
            *self.state.lock() = SourceState::Connected;
        }
    }
}

impl Report for Feed {
    fn names(&self) -> (&str, &str) {
        (&self.function, &self.trigger)
    }

    fn state(&self, state: SourceState) {
        if state != SourceState::Connected || self.subscribed.load(Ordering::Acquire) {
            *self.state.lock() = state;
        }
    }

    fn failed(&self, message: &str) {
        *self.state.lock() = SourceState::Retrying;
        self.stats.error(message.to_string());
    }

    fn note(&self, message: &str) {
        tracing::warn!(function = %self.function, trigger = %self.trigger, "storage trigger (NATS): {message}");
        self.stats.error(message.to_string());
    }
}

/// A running NATS side of a storage trigger.
pub(crate) struct Subscriber {
    /// The trigger it was started for.
    pub spec: StorageSpec,
    pub feed: Arc<Feed>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the task needs.
struct Ctx {
    sched: Scheduler,
    function: String,
    spec: StorageSpec,
    nats: StorageNats,
    feed: Arc<Feed>,
}

impl Subscriber {
    /// Starts reading NATS for trigger `spec` of `function`, if it has
    /// `nats_*` keys.
    pub(crate) fn start(
        sched: Scheduler,
        function: &str,
        spec: &StorageSpec,
        stats: Arc<Stats>,
    ) -> Option<Subscriber> {
        let nats = spec.nats.clone()?;
        let feed = Arc::new(Feed {
            function: function.to_string(),
            trigger: spec.name.clone(),
            stats,
            state: Mutex::new(SourceState::Connecting),
            lag: Mutex::new(None),
            subscribed: AtomicBool::new(false),
        });
        let ctx = Arc::new(Ctx {
            sched,
            function: function.to_string(),
            spec: spec.clone(),
            nats,
            feed: feed.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(ctx, stopped));
        Some(Subscriber {
            spec: spec.clone(),
            feed,
            stop,
            task,
        })
    }

    /// Stops reading; the task ends once the messages it holds are settled.
    pub(crate) fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        self.task
    }
}

async fn run(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    lampyr_nats::keep_trying(
        "storage trigger (NATS)",
        &*ctx.feed,
        stop,
        |stop, connected| consume(ctx.clone(), stop, connected),
    )
    .await;
}

/// One connection's life: a subscription or a consumer, then messages
/// until stopped or an error.
async fn consume(
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    connected: Connected,
) -> Result<(), String> {
    ctx.feed.subscribed(false);
    let connect = lampyr_nats::connect(
        &ctx.nats.servers,
        &ctx.nats.auth,
        format!("lampyr {}/{} (storage)", ctx.function, ctx.spec.name),
        ctx.feed.clone(),
    );
    let client = tokio::select! {
        c = connect => c.map_err(|e| e.to_string())?,
        _ = stop.changed() => return Ok(()),
    };
    let result = match &ctx.nats.stream {
        None => core(&ctx, &client, &mut stop, &connected).await,
        Some(stream) => consumer(&ctx, &client, stream, &mut stop, &connected).await,
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    result
}

/// Core NATS: a subscription to the subject.
async fn core(
    ctx: &Ctx,
    client: &Client,
    stop: &mut watch::Receiver<bool>,
    connected: &Connected,
) -> Result<(), String> {
    let subject = &ctx.nats.subject;
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| format!("subscribing to {subject}: {e}"))?;
    // Once the server has the subscription, notifications reach it.
    client
        .flush()
        .await
        .map_err(|e| format!("subscribing to {subject}: {e}"))?;
    connected.set();
    ctx.feed.subscribed(true);
    tracing::info!(function = %ctx.function, trigger = %ctx.spec.name, %subject, "storage trigger subscribed to NATS (core NATS: at most once)");
    let result = loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            m = sub.next() => m,
        };
        let Some(first) = first else {
            break Err(format!("the subscription to {subject} ended"));
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match sub.next().now_or_never() {
                Some(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        futures_util::future::join_all(batch.iter().map(|m| take_core(ctx, m))).await;
    };
    let _ = sub.unsubscribe().await;
    result
}

/// One core NATS message: what the queue cannot take now is tried again a
/// few times; what is not taken then is reported lost.
async fn take_core(ctx: &Ctx, m: &async_nats::Message) {
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=CORE_TRIES {
        let why = match take(ctx, m.subject.as_str(), &m.payload).await {
            Fate::Queued | Fate::Gone => return,
            Fate::Again(_) if attempt < CORE_TRIES => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                continue;
            }
            Fate::Again(why) | Fate::Drop(why) => why,
        };
        ctx.feed.note(&format!(
            "{why}; the notification is lost: core NATS does not deliver it again (set nats_stream to read a JetStream stream, at least once)"
        ));
        return;
    }
}

/// JetStream: a durable pull consumer of `stream`, filtered to the
/// subject.
async fn consumer(
    ctx: &Ctx,
    client: &Client,
    stream: &str,
    stop: &mut watch::Receiver<bool>,
    connected: &Connected,
) -> Result<(), String> {
    let js = jetstream::new(client.clone());
    let subject = &ctx.nats.subject;
    let s = js.get_stream(stream).await.map_err(|e| {
        format!("stream \"{stream}\": {e} (lampyr consumes a stream; it does not create it: create one that stores {subject}, e.g. `nats stream add {stream} --subjects '{subject}'`)")
    })?;
    let durable = ctx.nats.durable_name(&ctx.function, &ctx.spec.name);
    if let Some(c) = crate::consumer(&ctx.function, &ctx.spec) {
        lampyr_nats::deleted_first(&c).await;
    }
    let mut consumer: PullConsumer = s
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!(
                "lampyr function {}, storage trigger {}",
                ctx.function, ctx.spec.name
            )),
            filter_subject: subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Messages are nak'd until the queue takes them.
            max_deliver: -1,
            max_ack_pending: (2 * BATCH) as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer \"{durable}\" on stream \"{stream}\": {e} (a consumer's filter cannot change on this server: give the trigger a new `nats_durable`)"))?;
    connected.set();
    ctx.feed.subscribed(true);
    tracing::info!(function = %ctx.function, trigger = %ctx.spec.name, %stream, consumer = %durable, "storage trigger consuming JetStream");
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            b = lampyr_nats::fetch(&consumer, BATCH, Duration::ZERO) => b.map_err(|e| format!("fetching messages: {e}"))?,
        };
        ctx.feed.state(SourceState::Connected);
        let Some(last) = batch.last() else {
            if let Ok(info) = consumer.info().await {
                *ctx.feed.lag.lock() = Some(info.num_pending);
            }
            continue;
        };
        if let Ok(info) = last.info() {
            *ctx.feed.lag.lock() = Some(info.pending);
        }
        // Not cut short by a stop: every message fetched is settled.
        futures_util::future::join_all(batch.iter().map(|m| settle(ctx, m))).await;
    }
}

/// One JetStream message: acked once its records are queued; nak'd with
/// a delay when the queue could not take them now; terminated when it is
/// not a notification.
async fn settle(ctx: &Ctx, m: &jetstream::Message) {
    let (seq, delivered) = m
        .info()
        .map(|i| (i.stream_sequence, i.delivered.max(1) as u32))
        .unwrap_or((0, 1));
    match take(ctx, m.subject.as_str(), &m.payload).await {
        Fate::Queued => {
            if let Err(e) = m.double_ack().await {
                ctx.feed.note(&format!("the ack of stream sequence {seq} failed ({e}): the broker will deliver it again, and its records will not be queued twice"));
            }
        }
        Fate::Again(_) => {
            let delay = Duration::from_secs(1 << (delivered - 1).min(5));
            let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Fate::Gone => {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
        Fate::Drop(why) => {
            ctx.feed.note(&format!(
                "{why} (stream sequence {seq}): it is terminated, not delivered again"
            ));
            let _ = m.double_ack_with(AckKind::Term).await;
        }
    }
}

/// What became of a message.
enum Fate {
    /// Its records are committed to the queue (or it had none to take).
    Queued,
    /// The queue could not take them now.
    Again(String),
    /// The function is gone.
    Gone,
    /// It will never be taken: not a notification, or an event too large.
    Drop(String),
}

/// Reads a message's body as the webhook reads a request's, and queues its
/// records.
async fn take(ctx: &Ctx, subject: &str, body: &[u8]) -> Fate {
    let records = match notification::parse(body) {
        Ok(Notification::Records(r)) => r,
        Ok(Notification::Nothing(_)) => return Fate::Queued,
        Ok(Notification::Confirm { .. }) => {
            return Fate::Drop(format!("an SNS subscription confirmation on {subject} was not taken: SNS confirms over HTTP, at the trigger's webhook"));
        }
        Err(e) => return Fate::Drop(format!("a malformed notification on {subject}: {e}")),
    };
    let q = queue(
        &ctx.sched,
        &ctx.spec,
        &ctx.function,
        &ctx.feed.stats,
        records,
    )
    .await;
    match q.failed {
        None => Fate::Queued,
        Some(NotQueued {
            why: Why::Retry,
            message,
        }) => Fate::Again(message),
        Some(NotQueued { why: Why::Gone, .. }) => Fate::Gone,
        Some(NotQueued {
            why: Why::TooLarge,
            message,
        }) => Fate::Drop(message),
    }
}
