//! The client side of NATS that lampyr's triggers share (`type = "nats"`,
//! and storage triggers that take notifications from NATS): connecting to
//! a trigger's servers with its credentials, passing the connection's
//! events on as the source's state, and a source's life of attempts, each
//! retried with backoff until the source is stopped.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use async_nats;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Message;
use async_nats::{ConnectOptions, ServerAddr};
use futures_util::StreamExt;
use lampyr_api::sources::SourceState;
use lampyr_api::NatsAuth;
use tokio::sync::watch;

/// The first and the longest wait before connecting again.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a source reports how it is doing (its `SourceStatus`).
pub trait Report: Send + Sync + 'static {
    /// The function and trigger, for the log.
    fn names(&self) -> (&str, &str);
    /// The source is in `state` now.
    fn state(&self, state: SourceState);
    /// The source is not consuming, because of `message`, and will try
    /// again.
    fn failed(&self, message: &str);
    /// Something went wrong that does not stop consuming.
    fn note(&self, message: &str);
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the NATS servers {servers}: {message}")]
    Connect { servers: String, message: String },
    #[error("cannot read the credentials file {path}: {message}")]
    Credentials { path: String, message: String },
}

/// Connects to `servers` with `auth`, as client `name`; the connection's
/// events (disconnected, connected again, server errors) go to `report`.
pub async fn connect(
    servers: &[String],
    auth: &NatsAuth,
    name: String,
    report: Arc<dyn Report>,
) -> Result<async_nats::Client, ConnectError> {
    let connect_err = |message: String| ConnectError::Connect {
        servers: servers.join(","),
        message,
    };
    let addrs = servers
        .iter()
        .map(|s| s.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_err(e.to_string()))?;
    let credentials = |path: &String, e: std::io::Error| ConnectError::Credentials {
        path: path.clone(),
        message: e.kind().to_string(),
    };
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |ev| {
            let report = report.clone();
            async move {
                match ev {
                    async_nats::Event::Disconnected => {
                        report.failed("disconnected from the server; reconnecting")
                    }
                    async_nats::Event::Connected => report.state(SourceState::Connected),
                    async_nats::Event::ServerError(e) => report.note(&format!("server error: {e}")),
                    _ => {}
                }
            }
        });
    opts = match auth {
        NatsAuth::None => opts,
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::CredsFile(path) => opts
            .credentials_file(path)
            .await
            .map_err(|e| credentials(path, e))?,
        NatsAuth::NkeyFile(path) => {
            let seed = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| credentials(path, e))?;
            opts.nkey(seed.trim().to_string())
        }
    };
    opts.connect(addrs)
        .await
        .map_err(|e| connect_err(e.to_string()))
}

/// How long one pull waits for a first message before it asks again.
pub const POLL: Duration = Duration::from_secs(5);

/// One batch from a pull consumer: waits up to [`POLL`] for a first
/// message, then takes what is there up to `max` (waiting up to `window`
/// for it). Every pull is read to its end, so no delivered message is left
/// behind.
pub async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    window: Duration,
) -> Result<Vec<Message>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut out = Vec::new();
    let mut first = consumer
        .batch()
        .max_messages(1)
        .expires(POLL)
        .messages()
        .await
        .map_err(|e| err(&e))?;
    while let Some(m) = first.next().await {
        out.push(m.map_err(|e| err(&e))?);
    }
    if out.is_empty() || max <= 1 {
        return Ok(out);
    }
    let rest = max - 1;
    let mut more = if window.is_zero() {
        consumer.fetch().max_messages(rest).messages().await
    } else {
        consumer
            .batch()
            .max_messages(rest)
            .expires(window.max(Duration::from_millis(10)))
            .messages()
            .await
    }
    .map_err(|e| err(&e))?;
    while let Some(m) = more.next().await {
        out.push(m.map_err(|e| err(&e))?);
    }
    Ok(out)
}

/// A durable consumer lampyr created for a trigger (its name derived, not
/// given): where it is and how to reach it, so that it can be deleted
/// with the trigger. A consumer left behind keeps its messages, and a
/// stream with limits or interest retention keeps them for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedConsumer {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub stream: String,
    pub name: String,
}

impl OwnedConsumer {
    /// Whether `other` is the same consumer on the same servers.
    pub fn same_as(&self, other: &OwnedConsumer) -> bool {
        self.servers == other.servers && self.stream == other.stream && self.name == other.name
    }
}

/// Logs what goes on while a consumer is deleted.
struct Deleting {
    function: String,
    trigger: String,
}

impl Report for Deleting {
    fn names(&self) -> (&str, &str) {
        (&self.function, &self.trigger)
    }
    fn state(&self, _: SourceState) {}
    fn failed(&self, _: &str) {}
    fn note(&self, message: &str) {
        tracing::debug!(function = %self.function, trigger = %self.trigger, "deleting a NATS consumer: {message}");
    }
}

/// Deletions under way. A source about to use one of these consumers
/// waits until it is gone ([`deleted_first`]): a trigger deployed again
/// right after it was removed must not have its new consumer deleted by
/// the old one's deletion.
static DELETING: std::sync::Mutex<Vec<(OwnedConsumer, watch::Receiver<()>)>> =
    std::sync::Mutex::new(Vec::new());

fn deleting() -> std::sync::MutexGuard<'static, Vec<(OwnedConsumer, watch::Receiver<()>)>> {
    DELETING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Once `source` (the task of a stopped trigger) has ended, deletes the
/// consumer lampyr created for it; tries again with backoff for about a
/// minute, then logs how to delete it by hand. Returns at once: what it
/// returns ends when the source has (a shutdown waits for that, not for
/// the deletion).
pub fn retire(
    source: tokio::task::JoinHandle<()>,
    consumer: Option<OwnedConsumer>,
    function: &str,
    trigger: &str,
) -> tokio::task::JoinHandle<()> {
    let (function, trigger) = (function.to_string(), trigger.to_string());
    // Registered now, before any source started after this can create it.
    let deletion = consumer.map(|c| {
        let (done, rx) = watch::channel(());
        deleting().push((c.clone(), rx));
        (c, done)
    });
    tokio::spawn(async move {
        let _ = source.await;
        if let Some((c, done)) = deletion {
            tokio::spawn(async move {
                delete_consumer(c, function, trigger).await;
                drop(done);
                deleting().retain(|(_, rx)| rx.has_changed().is_ok());
            });
        }
    })
}

/// Waits until no deletion of `consumer` is under way (see [`retire`]).
pub async fn deleted_first(consumer: &OwnedConsumer) {
    let waits: Vec<watch::Receiver<()>> = deleting()
        .iter()
        .filter(|(c, _)| c.same_as(consumer))
        .map(|(_, rx)| rx.clone())
        .collect();
    for mut rx in waits {
        while rx.changed().await.is_ok() {}
    }
}

/// Deletes `consumer` (see [`retire`]); one that is already gone is fine.
pub async fn delete_consumer(consumer: OwnedConsumer, function: String, trigger: String) {
    let OwnedConsumer {
        servers,
        auth,
        stream,
        name,
    } = &consumer;
    let report = Arc::new(Deleting {
        function: function.clone(),
        trigger: trigger.clone(),
    });
    let mut backoff = MIN_BACKOFF;
    let mut last = String::new();
    for _ in 0..10 {
        let client = connect(
            servers,
            auth,
            format!("lampyr {function}/{trigger} (deleting its consumer)"),
            report.clone(),
        )
        .await;
        match client {
            Ok(client) => {
                let gone = delete_on(&client, stream, name).await;
                client.drain().await.ok();
                match gone {
                    Ok(()) => {
                        tracing::info!(%function, %trigger, %stream, consumer = %name, "NATS consumer of a removed trigger deleted");
                        return;
                    }
                    Err(e) => last = e,
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::error!(
        %function,
        %trigger,
        "the NATS consumer \"{name}\" of a removed trigger could not be deleted from stream \"{stream}\" ({last}); the stream keeps messages for it until it is: delete it by hand, e.g. `nats consumer rm {stream} {name}`"
    );
}

/// Deletes consumer `name` of `stream`; a missing stream or consumer is
/// success.
async fn delete_on(client: &async_nats::Client, stream: &str, name: &str) -> Result<(), String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    use async_nats::jetstream::ErrorCode;
    let js = async_nats::jetstream::new(client.clone());
    let s = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(())
                }
                _ => Err(format!("stream \"{stream}\": {e}")),
            }
        }
    };
    match s.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
                Ok(())
            }
            _ => Err(e.to_string()),
        },
    }
}

/// Set by an attempt of [`keep_trying`] once it has connected: the wait
/// after its failure starts from [`MIN_BACKOFF`] again.
#[derive(Debug, Clone, Default)]
pub struct Connected(Arc<AtomicBool>);

impl Connected {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Runs a source: `attempt` (connect, consume) again and again until it
/// returns `Ok` or `stop` is set. After a failure it reports it, logs it
/// (`what`: "NATS trigger", ...), and waits, from [`MIN_BACKOFF`] doubling
/// to [`MAX_BACKOFF`] (from the start again after an attempt that had
/// connected). Reports [`SourceState::Stopped`] at the end.
pub async fn keep_trying<F, Fut, E>(
    what: &str,
    report: &dyn Report,
    mut stop: watch::Receiver<bool>,
    mut attempt: F,
) where
    F: FnMut(watch::Receiver<bool>, Connected) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = MIN_BACKOFF;
    let connected = Connected::default();
    while !*stop.borrow() {
        let Err(e) = attempt(stop.clone(), connected.clone()).await else {
            break;
        };
        if connected.take() {
            backoff = MIN_BACKOFF;
        }
        let message = e.to_string();
        let (function, trigger) = report.names();
        tracing::warn!(
            function,
            trigger,
            retry_in_ms = backoff.as_millis() as u64,
            "{what} not consuming: {message}; trying again"
        );
        report.failed(&message);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    report.state(SourceState::Stopped);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A report that keeps what it is told.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Report for Log {
        fn names(&self) -> (&str, &str) {
            ("f", "t")
        }
        fn state(&self, state: SourceState) {
            self.0.lock().unwrap().push(format!("{state:?}"));
        }
        fn failed(&self, message: &str) {
            self.0.lock().unwrap().push(format!("failed: {message}"));
        }
        fn note(&self, message: &str) {
            self.0.lock().unwrap().push(format!("note: {message}"));
        }
    }

    #[tokio::test]
    async fn attempts_repeat_with_backoff_until_one_ends_stopped() {
        let log = Log::default();
        let (_stop, stopped) = watch::channel(false);
        let mut n = 0;
        let started = std::time::Instant::now();
        keep_trying("test source", &log, stopped, |_, _| {
            n += 1;
            let k = n;
            async move {
                match k {
                    1..=3 => Err(format!("attempt {k}")),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(n, 4);
        // 250 + 500 + 1000 ms of backoff between them.
        assert!(started.elapsed() >= Duration::from_millis(1750));
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "failed: attempt 1",
                "failed: attempt 2",
                "failed: attempt 3",
                "Stopped"
            ]
        );
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_between_attempts() {
        let log = Log::default();
        let (stop, stopped) = watch::channel(false);
        let started = std::time::Instant::now();
        let mut first = true;
        keep_trying("test source", &log, stopped, |_, connected| {
            // The first attempt fails after the stop was sent.
            if first {
                let _ = stop.send(true);
            }
            first = false;
            connected.set();
            async { Err("down") }
        })
        .await;
        assert!(started.elapsed() < MIN_BACKOFF);
        assert_eq!(*log.0.lock().unwrap(), ["failed: down", "Stopped"]);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_and_so_is_a_credentials_file() {
        let log: Arc<dyn Report> = Arc::new(Log::default());
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("nats://127.0.0.1:{port}");
        let e = connect(
            std::slice::from_ref(&url),
            &NatsAuth::None,
            "t".into(),
            log.clone(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains(&url), "{e}");
        let e = connect(
            &[url],
            &NatsAuth::CredsFile("/nonexistent/app.creds".into()),
            "t".into(),
            log,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read the credentials file /nonexistent/app.creds"),
            "{e}"
        );
    }
}
