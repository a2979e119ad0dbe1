//! The storage-event trigger (`type = "storage"`): S3-format bucket
//! notifications, as AWS S3, MinIO, Ceph RGW and SNS send them, received
//! at the webhook `POST /sources/storage/FUNCTION/TRIGGER` of the HTTP
//! edge (the [`Webhook`] for kind `storage`), and from NATS where a
//! store publishes them there.
//!
//! * **Auth.** Each trigger has a token: its `token` setting, or the
//!   function's trigger token (`lampyr info`). It is taken as
//!   `Authorization: Bearer TOKEN` (MinIO's one-word `auth_token`), as the
//!   second word of another scheme (MinIO sends a two-word `auth_token` as
//!   is), as the password of Basic credentials (SNS, from
//!   `http://user:TOKEN@host/...`), or, for senders that set no header
//!   (Ceph RGW's HTTP endpoint), as `?token=TOKEN`. A wrong one is 401.
//!   Tokens are never logged.
//! * **Bodies.** A raw S3 `{"Records": [...]}`, MinIO's
//!   `{"EventName", "Key", "Records"}`, or an SNS envelope: a
//!   `Notification`'s `Message` is unwrapped; a `SubscriptionConfirmation`
//!   is confirmed with a GET of its `SubscribeURL` (http or https, no
//!   redirects followed) only when its host is in the trigger's
//!   `sns_confirm_hosts` (otherwise refused, 403, and logged); https
//!   trusts the system's CA certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR`
//!   replace them), and a certificate it refuses is a 502 saying why.
//!   Anything else is 400 with `{"error": {"code", "message"}}`.
//! * **Filters.** Bucket, event type, and the decoded key's prefix and
//!   suffix; records that do not match are counted and dropped.
//! * **Delivery.** One durable asynchronous invocation per matching record
//!   (`Scheduler::call` with `InvocationType::Event`, trigger kind
//!   `storage`), event `{"Records": [record]}` (Lambda's S3 shape, the key
//!   as sent), with an idempotency key of bucket, key, version or eTag,
//!   sequencer (or event time) and event name. The webhook answers 200 only
//!   once every record is committed to the queue; until then, or if one
//!   could not be, the sender gets no 2xx and its own retries cover a
//!   lampyr that was down, and the keys drop the duplicates.
//! * **NATS.** A trigger with `nats_servers` and `nats_subject` also takes
//!   the notifications an object store publishes to NATS (MinIO's NATS
//!   target), in the same shapes and with the same filters, events and
//!   keys (`nats.rs`): from a JetStream stream (`nats_stream`), a message
//!   is acked once its records are committed; from a core NATS
//!   subscription, at most once. Its webhook stays open as well. The
//!   trigger's status then says how the NATS side is doing (connecting,
//!   connected, retrying with backoff; the consumer's pending messages).
#![forbid(unsafe_code)]

mod nats;
pub mod notification;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use lampyr_api::sources::{SourceState, SourceStatus};
use lampyr_api::{FunctionSpec, StorageSpec, TriggerKind};
use lampyr_nats::OwnedConsumer;
use lampyr_scheduler::{Answer, Call, Scheduler, SchedulerError};
use lampyr_triggers::webhook::{Webhook, WebhookReply, WebhookRequest};
use lampyr_triggers::{Context, Trigger, TriggerError};
use parking_lot::{Mutex, RwLock};

use nats::Subscriber;
use notification::{Notification, Record};

/// Why an SNS subscription could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("the SubscribeURL is not an http(s) URL")]
    NotAUrl,
    #[error("host {host} is not in the trigger's sns_confirm_hosts: add \"{host}\" (or \"{host}:{port}\") there if this topic is yours")]
    HostRefused { host: String, port: u16 },
    #[error(transparent)]
    Roots(#[from] lampyr_tls::TlsError),
    #[error("the https server {host} presented a certificate lampyr does not accept: {reason}; lampyr trusts the system's CA certificates (SSL_CERT_FILE or SSL_CERT_DIR in lampyr serve's environment replace them)")]
    Untrusted { host: String, reason: String },
    #[error("the GET of the SubscribeURL failed: {0}")]
    Get(String),
}

/// The storage-event trigger (see the crate doc).
#[derive(Clone)]
pub struct StorageTrigger {
    inner: Arc<Inner>,
}

struct Inner {
    sched: OnceLock<Scheduler>,
    /// Per function using the trigger: its storage triggers and the
    /// function's own trigger token.
    functions: RwLock<HashMap<String, Arc<Entry>>>,
    /// Per function and trigger name, since the server started.
    stats: Mutex<HashMap<(String, String), Arc<Stats>>>,
    /// Per function: the NATS side of its triggers that have one.
    subscribers: Mutex<HashMap<String, Vec<Subscriber>>>,
    /// NATS sides being replaced or stopped, settling what they hold.
    retiring: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set once the functions deployed at start are loaded.
    ready: AtomicBool,
    stopping: AtomicBool,
    agent: ureq::Agent,
}

struct Entry {
    triggers: Vec<StorageSpec>,
    function_token: String,
}

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    filtered: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Stats {
    fn error(&self, message: String) {
        *self.last_error.lock() = Some((message, SystemTime::now()));
    }
}

impl Default for StorageTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl StorageTrigger {
    pub fn new() -> StorageTrigger {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            // A redirect could lead off the allow-list.
            .max_redirects(0)
            .timeout_global(Some(CONFIRM_TIMEOUT))
            .build()
            .into();
        StorageTrigger {
            inner: Arc::new(Inner {
                sched: OnceLock::new(),
                functions: RwLock::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                subscribers: Mutex::new(HashMap::new()),
                retiring: Mutex::new(Vec::new()),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                agent,
            }),
        }
    }

    fn load(&self, spec: &FunctionSpec) {
        let triggers: Vec<StorageSpec> = spec.storage_triggers().cloned().collect();
        if triggers.is_empty() {
            self.inner.functions.write().remove(&spec.name);
            self.subscribe(&spec.name, &[]);
            return;
        }
        let Some(sched) = self.inner.sched.get() else {
            return;
        };
        self.subscribe(&spec.name, &triggers);
        let function_token = match sched.store().get(&spec.name) {
            Ok(rec) => rec.trigger_token,
            Err(e) => {
                tracing::warn!(function = %spec.name, "storage trigger: the function's record could not be read: {e}");
                String::new()
            }
        };
        for t in &triggers {
            tracing::debug!(function = %spec.name, trigger = %t.name, path = %format!("/sources/storage/{}/{}", spec.name, t.name), "storage trigger");
        }
        self.inner.functions.write().insert(
            spec.name.clone(),
            Arc::new(Entry {
                triggers,
                function_token,
            }),
        );
    }

    /// Makes `function`'s NATS sides those of `triggers`: one that is
    /// unchanged goes on, the others are stopped and new ones started.
    fn subscribe(&self, function: &str, triggers: &[StorageSpec]) {
        let mut subscribers = self.inner.subscribers.lock();
        let mut old = subscribers.remove(function).unwrap_or_default();
        let mut now = Vec::new();
        let mut new = Vec::new();
        for t in triggers.iter().filter(|t| t.nats.is_some()) {
            match old.iter().position(|s| s.spec == *t) {
                Some(i) => now.push(old.swap_remove(i)),
                None => new.push(t),
            }
        }
        // The old ones first: a consumer they leave is registered for
        // deletion before a new one can take it (`deleted_first`).
        self.retire(function, triggers, old);
        if let Some(sched) = self.inner.sched.get() {
            for t in new {
                let stats = self.stats(function, &t.name);
                now.extend(Subscriber::start(sched.clone(), function, t, stats));
            }
        }
        if !now.is_empty() {
            subscribers.insert(function.to_string(), now);
        }
    }

    /// Stops `old`, NATS sides that are replaced or gone.
    fn retire(&self, function: &str, triggers: &[StorageSpec], old: Vec<Subscriber>) {
        // The JetStream consumers lampyr created for NATS sides that are
        // gone are deleted; one the manifest named is left alone.
        let used: Vec<OwnedConsumer> = triggers
            .iter()
            .filter_map(|t| consumer(function, t))
            .collect();
        let mut retiring = self.inner.retiring.lock();
        retiring.retain(|t| !t.is_finished());
        retiring.extend(old.into_iter().map(|s| {
            let gone = consumer(function, &s.spec).filter(|c| {
                s.spec.nats.as_ref().is_some_and(|n| n.durable.is_none())
                    && !used.iter().any(|u| u.same_as(c))
            });
            let trigger = s.spec.name.clone();
            lampyr_nats::retire(s.stop(), gone, function, &trigger)
        }));
    }

    fn stats(&self, function: &str, trigger: &str) -> Arc<Stats> {
        self.inner
            .stats
            .lock()
            .entry((function.to_string(), trigger.to_string()))
            .or_default()
            .clone()
    }

    /// Handles one webhook request (see the crate doc).
    pub async fn receive(&self, req: WebhookRequest) -> WebhookReply {
        let WebhookRequest {
            function,
            trigger,
            authorization,
            query,
            body,
        } = req;
        if self.inner.stopping.load(Ordering::Relaxed) {
            return error(503, "unavailable", "lampyr is shutting down: send again").retry(1);
        }
        // The edge may serve before this trigger has started.
        if !self.inner.ready.load(Ordering::Acquire) {
            return error(503, "unavailable", "lampyr is starting: send again").retry(1);
        }
        let (Some(sched), Some(entry)) = (
            self.inner.sched.get().cloned(),
            self.inner.functions.read().get(&function).cloned(),
        ) else {
            return error(404, "not_found", format!("function '{function}' has no storage trigger: add a [[triggers]] table with type = \"storage\" to its lampyr.toml"));
        };
        let Some(spec) = entry.triggers.iter().find(|t| t.name == trigger) else {
            let names: Vec<&str> = entry.triggers.iter().map(|t| t.name.as_str()).collect();
            return error(404, "not_found", format!("function '{function}' has no storage trigger named '{trigger}': its storage triggers are {}", names.join(", ")));
        };
        let stats = self.stats(&function, &trigger);
        let want = spec.token.as_deref().unwrap_or(&entry.function_token);
        let sent =
            authorization.is_some() || query.as_deref().is_some_and(|q| q.contains("token="));
        let ok = !want.is_empty()
            && notification::presented(authorization.as_deref(), query.as_deref())
                .iter()
                .any(|t| lampyr_scheduler::token_eq(t, want));
        if !ok {
            let what = if sent { "a wrong token" } else { "no token" };
            tracing::info!(%function, %trigger, "storage webhook request refused: {what}");
            stats.error(format!("a request with {what} was refused (401)"));
            return error(401, "unauthorized", format!("the storage trigger's token is {}: send `Authorization: Bearer TOKEN` with the trigger's `token`, or the function's trigger token (`lampyr info {function}`)", if sent { "wrong" } else { "missing" }));
        }
        let parsed = match notification::parse(&body) {
            Ok(p) => p,
            Err(e) => {
                stats.error(format!("a malformed notification was refused: {e}"));
                return error(400, "bad_notification", e.0);
            }
        };
        match parsed {
            Notification::Nothing(what) => {
                ok_body(serde_json::json!({ "accepted": 0, "ignored": what }))
            }
            Notification::Confirm {
                subscribe_url,
                topic,
            } => {
                self.confirm(spec, &function, &trigger, &stats, subscribe_url, topic)
                    .await
            }
            Notification::Records(records) => {
                self.deliver(&sched, spec, &function, &stats, records).await
            }
        }
    }

    async fn deliver(
        &self,
        sched: &Scheduler,
        spec: &StorageSpec,
        function: &str,
        stats: &Stats,
        records: Vec<Record>,
    ) -> WebhookReply {
        let q = queue(sched, spec, function, stats, records).await;
        match q.failed {
            Some(NotQueued { why: Why::Retry, message }) => error(503, "not_queued", format!("{message}; send the notification again (the events already queued are not repeated)")).retry(1),
            Some(NotQueued { why: Why::Gone, message }) => error(404, "function_not_found", message),
            Some(NotQueued { why: Why::TooLarge, message }) => error(413, "event_too_large", message),
            None => ok_body(serde_json::json!({
                "accepted": q.accepted,
                "duplicates": q.duplicates,
                "filtered": q.filtered,
                "request_ids": q.request_ids,
            })),
        }
    }

    async fn confirm(
        &self,
        spec: &StorageSpec,
        function: &str,
        trigger: &str,
        stats: &Stats,
        url: String,
        topic: String,
    ) -> WebhookReply {
        let result = match notification::url_host(&url) {
            None => Err(ConfirmError::NotAUrl),
            Some((_, host, port))
                if !notification::host_allowed(&spec.sns_confirm_hosts, &host, port) =>
            {
                Err(ConfirmError::HostRefused { host, port })
            }
            Some((scheme, host, _)) => {
                let http = (scheme == "http").then(|| self.inner.agent.clone());
                let u = url.clone();
                // Off the async workers: the GET, and reading the CA
                // certificates for https.
                tokio::task::spawn_blocking(move || {
                    let agent = match http {
                        Some(agent) => agent,
                        None => https_agent()?,
                    };
                    get(&agent, &u, host)
                })
                .await
                .unwrap_or_else(|e| Err(ConfirmError::Get(e.to_string())))
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(function, trigger, %topic, "SNS subscription confirmed");
                ok_body(serde_json::json!({ "confirmed": true, "topic": topic }))
            }
            Err(e) => {
                let message = format!("SNS subscription to {topic} not confirmed: {e}");
                tracing::warn!(function, trigger, "{message}");
                stats.error(message.clone());
                match e {
                    ConfirmError::HostRefused { .. } => error(403, "sns_host_refused", message),
                    ConfirmError::NotAUrl => error(400, "bad_notification", message),
                    ConfirmError::Roots(_) => error(500, "sns_confirm_no_roots", message),
                    ConfirmError::Untrusted { .. } => {
                        error(502, "sns_certificate_refused", message)
                    }
                    ConfirmError::Get(_) => error(502, "sns_confirm_failed", message),
                }
            }
        }
    }
}

/// The JetStream consumer trigger `t` of `function` reads, if it reads one.
fn consumer(function: &str, t: &StorageSpec) -> Option<OwnedConsumer> {
    let n = t.nats.as_ref()?;
    Some(OwnedConsumer {
        servers: n.servers.clone(),
        auth: n.auth.clone(),
        stream: n.stream.clone()?,
        name: n.durable_name(function, &t.name),
    })
}

/// A client for one https `SubscribeURL`: rustls, trusting the system's
/// CA certificates (read anew each time: a confirmation is rare, and a CA
/// installed since the start counts).
fn https_agent() -> Result<ureq::Agent, ConfirmError> {
    let roots: Vec<_> = lampyr_tls::system_roots()?
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c).to_owned())
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(lampyr_tls::provider())
        .root_certs(ureq::tls::RootCerts::from(roots))
        .build();
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(CONFIRM_TIMEOUT))
        .tls_config(tls)
        .build()
        .into())
}

/// How long the GET of a `SubscribeURL` may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The GET of a `SubscribeURL` on `host`.
fn get(agent: &ureq::Agent, url: &str, host: String) -> Result<(), ConfirmError> {
    match agent.get(url).call() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(ConfirmError::Get(format!("HTTP {}", r.status()))),
        Err(e) => Err(
            match lampyr_tls::refused_certificate(match &e {
                // ureq names no source of its I/O errors.
                ureq::Error::Io(io) => io,
                other => other,
            }) {
                Some(reason) => ConfirmError::Untrusted { host, reason },
                None => ConfirmError::Get(e.to_string()),
            },
        ),
    }
}

/// What became of a notification's records.
pub(crate) struct Queued {
    pub accepted: u64,
    pub duplicates: u64,
    pub filtered: u64,
    pub request_ids: Vec<String>,
    /// Set when a record could not be queued.
    pub failed: Option<NotQueued>,
}

/// Why records were not queued, and what the sender can do.
pub(crate) struct NotQueued {
    pub why: Why,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The queue could not take it now (full, shutting down): send again.
    Retry,
    /// The function is gone.
    Gone,
    /// An event is over the queue's limit: sending again will not help.
    TooLarge,
}

/// Filters `records` and queues each one the trigger takes as a durable
/// asynchronous event with its idempotency key, all at once (the queue
/// commits them in one group); counts them in `stats`. Whatever way the
/// records came (webhook or NATS), this is what is done with them.
pub(crate) async fn queue(
    sched: &Scheduler,
    spec: &StorageSpec,
    function: &str,
    stats: &Stats,
    records: Vec<Record>,
) -> Queued {
    let total = records.len();
    let taken: Vec<Record> = records
        .into_iter()
        .filter(|r| spec.takes_event(&r.event_name) && spec.takes_object(&r.bucket, &r.decoded_key))
        .collect();
    let filtered = (total - taken.len()) as u64;
    stats.filtered.fetch_add(filtered, Ordering::Relaxed);
    let calls = taken.iter().map(|r| {
        let key = r.idempotency_key(&spec.name);
        let event = r.event();
        async move {
            sched
                .call(Call::source_event(
                    function,
                    event,
                    TriggerKind::Storage,
                    &key,
                ))
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut q = Queued {
        accepted: 0,
        duplicates: 0,
        filtered,
        request_ids: Vec::new(),
        failed: None,
    };
    let mut first_error: Option<(Why, String)> = None;
    for a in answers {
        match a {
            Ok(Answer::Queued(r)) => {
                if r.duplicate {
                    q.duplicates += 1;
                } else {
                    q.accepted += 1;
                }
                q.request_ids.push(r.request_id);
            }
            Ok(Answer::Ran(_)) => {}
            Err(refused) => {
                if first_error.is_none() {
                    let e = refused.error();
                    let why = match e {
                        SchedulerError::NotFound(_) | SchedulerError::Deleted(_) => Why::Gone,
                        SchedulerError::EventTooLarge { .. } => Why::TooLarge,
                        _ => Why::Retry,
                    };
                    first_error = Some((why, e.to_string()));
                }
            }
        }
    }
    stats.delivered.fetch_add(q.accepted, Ordering::Relaxed);
    stats.duplicates.fetch_add(q.duplicates, Ordering::Relaxed);
    if let Some((why, e)) = first_error {
        let message = format!(
            "{} of {} event(s) could not be queued: {e}",
            taken.len() - q.request_ids.len(),
            taken.len()
        );
        tracing::warn!(function, trigger = %spec.name, "storage notification not taken: {message}");
        stats.error(message.clone());
        q.failed = Some(NotQueued { why, message });
    }
    q
}

trait Retry {
    fn retry(self, secs: u64) -> Self;
}

impl Retry for WebhookReply {
    fn retry(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> WebhookReply {
    WebhookReply {
        status,
        body: serde_json::to_vec(&lampyr_api::ErrorBody::new(code, message.into()))
            .expect("an error body serialises"),
        retry_after: None,
    }
}

fn ok_body(v: serde_json::Value) -> WebhookReply {
    WebhookReply {
        status: 200,
        body: serde_json::to_vec(&v).expect("a JSON value serialises"),
        retry_after: None,
    }
}

impl Webhook for StorageTrigger {
    fn receive(&self, req: WebhookRequest) -> BoxFuture<'static, WebhookReply> {
        let me = self.clone();
        Box::pin(async move { me.receive(req).await })
    }
}

impl Trigger for StorageTrigger {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Storage
    }

    fn start(&self, ctx: Context) -> Result<(), TriggerError> {
        let _ = self.inner.sched.set(ctx.scheduler);
        for spec in &ctx.functions {
            self.load(spec);
        }
        self.inner.ready.store(true, Ordering::Release);
        Ok(())
    }

    fn deployed(&self, spec: &Arc<FunctionSpec>) {
        self.load(spec);
    }

    fn deleted(&self, name: &str) {
        self.inner.functions.write().remove(name);
        self.subscribe(name, &[]);
        self.inner.stats.lock().retain(|(f, _), _| f != name);
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let all: Vec<Subscriber> = self
            .inner
            .subscribers
            .lock()
            .drain()
            .flat_map(|(_, s)| s)
            .collect();
        let mut tasks: Vec<_> = all.into_iter().map(Subscriber::stop).collect();
        tasks.extend(self.inner.retiring.lock().drain(..));
        Box::pin(async move {
            futures_util::future::join_all(tasks).await;
        })
    }

    fn status(&self, function: &str) -> Vec<SourceStatus> {
        let Some(entry) = self.inner.functions.read().get(function).cloned() else {
            return Vec::new();
        };
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        let subscribers = self.inner.subscribers.lock();
        let feeds = subscribers.get(function);
        entry
            .triggers
            .iter()
            .map(|t| {
                let stats = self.stats(function, &t.name);
                let last = stats.last_error.lock().clone();
                let mut detail = std::collections::BTreeMap::new();
                let mut set = |k: &str, v: String| detail.insert(k.to_string(), v);
                set("webhook", format!("/sources/storage/{function}/{}", t.name));
                set(
                    "duplicates",
                    stats.duplicates.load(Ordering::Relaxed).to_string(),
                );
                set(
                    "filtered",
                    stats.filtered.load(Ordering::Relaxed).to_string(),
                );
                set(
                    "token",
                    if t.token.is_some() {
                        "its own (lampyr.toml)"
                    } else {
                        "the function's trigger token"
                    }
                    .to_string(),
                );
                let (mut state, mut lag, mut lag_unit) = (SourceState::Connected, None, None);
                if let Some(n) = &t.nats {
                    set("nats_servers", n.servers.join(","));
                    set("nats_subject", n.subject.clone());
                    match &n.stream {
                        Some(stream) => {
                            set("nats_stream", stream.clone());
                            set("consumer", n.durable_name(function, &t.name));
                            set(
                                "delivery",
                                "at least once (JetStream, acked once queued)".into(),
                            );
                            lag_unit = Some("messages".to_string());
                        }
                        None => {
                            set(
                                "delivery",
                                "at most once (core NATS: nothing is acked)".into(),
                            );
                        }
                    }
                    // Not running yet (before start): connecting.
                    state = SourceState::Connecting;
                    if let Some(f) = feeds.and_then(|f| f.iter().find(|s| s.spec.name == t.name)) {
                        state = *f.feed.state.lock();
                        lag = *f.feed.lag.lock();
                    }
                }
                SourceStatus {
                    trigger: t.name.clone(),
                    kind: TriggerKind::Storage,
                    state: if stopping {
                        SourceState::Stopped
                    } else {
                        state
                    },
                    lag,
                    lag_unit,
                    last_error_at: last.as_ref().map(|(_, at)| lampyr_store::rfc3339(*at)),
                    last_error: last.map(|(m, _)| m),
                    delivered: stats.delivered.load(Ordering::Relaxed),
                    detail,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl StorageTrigger {
        /// Loads function `name` with one storage trigger of `keys`, as a
        /// deploy would but with no scheduler.
        fn load_for_test(&self, name: &str, keys: &str, function_token: &str) {
            let spec = lampyr_api::FunctionSpec::from_toml(&format!(
                "name = \"{name}\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n[[triggers]]\ntype = \"storage\"\n{keys}"
            ))
            .unwrap();
            self.inner.functions.write().insert(
                name.into(),
                Arc::new(Entry {
                    triggers: spec.storage_triggers().cloned().collect(),
                    function_token: function_token.into(),
                }),
            );
        }
    }

    fn request(function: &str) -> WebhookRequest {
        WebhookRequest {
            function: function.into(),
            trigger: "storage".into(),
            authorization: None,
            query: None,
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn status_reports_the_webhook_and_counts_and_it_waits_for_start() {
        let t = StorageTrigger::new();
        // Before the trigger has loaded its functions: senders retry.
        let r = t.receive(request("thumbs")).await;
        assert_eq!((r.status, r.retry_after), (503, Some(1)));
        assert!(t.status("thumbs").is_empty());

        t.load_for_test("thumbs", "", "0123456789abcdef");
        t.inner.ready.store(true, Ordering::Release);
        let stats = t.stats("thumbs", "storage");
        stats.delivered.fetch_add(3, Ordering::Relaxed);
        stats.error("a request with no token was refused (401)".into());
        let st = t.status("thumbs");
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].trigger, "storage");
        assert_eq!(st[0].kind, TriggerKind::Storage);
        assert_eq!(st[0].state, SourceState::Connected);
        assert_eq!(st[0].delivered, 3);
        assert!(st[0].last_error.as_deref().unwrap().contains("401"));
        assert!(st[0].last_error_at.is_some());
        assert_eq!(st[0].detail["webhook"], "/sources/storage/thumbs/storage");
        assert!(!format!("{st:?}").contains("0123456789abcdef"));

        // A trigger that also reads NATS says where, and how it delivers;
        // not started yet, it is connecting.
        t.load_for_test(
            "minio",
            "nats_servers = \"nats://127.0.0.1:4222\"\nnats_subject = \"minio.events\"\nnats_stream = \"MINIO\"\nnats_token = \"nats-secret\"\n",
            "",
        );
        let st = t.status("minio");
        assert_eq!(st[0].state, SourceState::Connecting);
        assert_eq!(st[0].lag_unit.as_deref(), Some("messages"));
        assert_eq!(st[0].detail["nats_subject"], "minio.events");
        assert_eq!(st[0].detail["consumer"], "lampyr-minio-storage-storage");
        assert!(st[0].detail["delivery"].starts_with("at least once"));
        assert!(!format!("{st:?}").contains("nats-secret"));

        let _ = t.shutdown().await;
        assert_eq!(t.status("thumbs")[0].state, SourceState::Stopped);
        assert_eq!(t.receive(request("thumbs")).await.status, 503);
        t.deleted("thumbs");
        assert!(t.status("thumbs").is_empty());
    }
}
