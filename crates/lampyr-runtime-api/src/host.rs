//! The host's side of the shim: frames from lampyr (LOAD, INVOKE, POLL)
//! and to it (HELLO, LOADED, LOAD_ERROR, RESULT, ERROR, the stream frames),
//! and the invocations in between: queued until the bootstrap asks for
//! `next`, then running until it posts a response or an error.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use lampyr_runtime::protocol::{self, Invoke};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};

/// How many answered request ids are remembered, to tell a second answer
/// (403) from an unknown id (400).
const ANSWERED: usize = 64;

/// The LOAD message (see `docs/protocol.md`).
#[derive(Debug, Clone, Deserialize)]
pub struct Load {
    pub handler: String,
    pub task_root: String,
    #[serde(default)]
    pub runtime_dir: Option<String>,
    pub function_name: String,
    #[serde(default)]
    pub function_version: Option<String>,
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

fn default_memory() -> u32 {
    128
}

/// What a call brings besides its event (the INVOKE frame's extras).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Extras {
    #[serde(default)]
    pub client_context: Option<serde_json::Value>,
    #[serde(default)]
    pub identity: Option<serde_json::Value>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// One invocation waiting for, or handed to, the bootstrap.
#[derive(Debug)]
pub struct Invocation {
    pub id: u32,
    pub deadline_ms: u64,
    pub request_id: String,
    pub extras: Extras,
    pub event: Bytes,
    received: Instant,
}

impl Invocation {
    pub fn from_frame(inv: Invoke) -> Invocation {
        let extras = inv
            .extras
            .and_then(|e| serde_json::from_slice(&e).ok())
            .unwrap_or_default();
        Invocation {
            id: inv.id,
            deadline_ms: inv.deadline_ms,
            request_id: inv.request_id,
            extras,
            event: inv.event,
            received: Instant::now(),
        }
    }
}

/// Where the instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Generic: waiting for LOAD.
    Waiting,
    /// The bootstrap runs its init; LOADED is sent at its first `next`.
    Initialising,
    /// LOADED was sent.
    Ready,
    /// LOAD_ERROR was sent; the instance is about to end.
    Failed,
}

/// Why an answer for a request id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No invocation with that id was handed out.
    Unknown,
    /// It was answered already.
    Answered,
}

struct Inner {
    phase: Phase,
    queue: VecDeque<Invocation>,
    /// Request id → frame id, handed to the bootstrap and not answered.
    running: HashMap<String, u32>,
    answered: VecDeque<String>,
    function_arn: String,
}

/// What goes to the writer task: a frame, or a request to say once
/// everything before it is written.
pub enum Out {
    Frame(Vec<u8>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The shim's state, shared by the frame reader and the HTTP handlers.
pub struct State {
    out: mpsc::UnboundedSender<Out>,
    inner: Mutex<Inner>,
    ready: Notify,
}

/// Starts the task that writes frames to lampyr, in order, as they come.
pub fn spawn_writer(mut writer: OwnedWriteHalf) -> mpsc::UnboundedSender<Out> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            // Whatever queued meanwhile leaves in the same write.
            while let Some(out) = next.take().or_else(|| rx.try_recv().ok()) {
                match out {
                    Out::Frame(f) => buf.extend_from_slice(&f),
                    Out::Flush(done) => flushes.push(done),
                }
            }
            if !buf.is_empty() && writer.write_all(&buf).await.is_err() {
                // lampyr is gone; the reader sees the socket close.
                return;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    });
    tx
}

impl State {
    pub fn new(out: mpsc::UnboundedSender<Out>) -> State {
        State {
            out,
            inner: Mutex::new(Inner {
                phase: Phase::Waiting,
                queue: VecDeque::new(),
                running: HashMap::new(),
                answered: VecDeque::with_capacity(ANSWERED),
                function_arn: String::new(),
            }),
            ready: Notify::new(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.out.send(Out::Frame(frame));
    }

    /// Waits until every frame sent so far is written.
    pub async fn flushed(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.out.send(Out::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn hello(&self) {
        let hello = serde_json::json!({
            "runtime": "provided",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
        });
        self.send(protocol::encode(
            protocol::HELLO,
            hello.to_string().as_bytes(),
        ));
    }

    pub fn phase(&self) -> Phase {
        self.inner().phase
    }

    /// The function is loading: its bootstrap starts.
    pub fn loading(&self, load: &Load) {
        let mut inner = self.inner();
        inner.phase = Phase::Initialising;
        inner.function_arn = function_arn(&load.function_name);
    }

    pub fn function_arn(&self) -> String {
        self.inner().function_arn.clone()
    }

    /// Sends LOAD_ERROR (once, and only before LOADED). Returns whether it
    /// was sent.
    pub fn load_failed(&self, error: &serde_json::Value) -> bool {
        let mut inner = self.inner();
        if !matches!(inner.phase, Phase::Initialising | Phase::Waiting) {
            return false;
        }
        inner.phase = Phase::Failed;
        self.send(protocol::encode(
            protocol::LOAD_ERROR,
            error.to_string().as_bytes(),
        ));
        true
    }

    /// An INVOKE from lampyr.
    pub fn push(&self, inv: Invocation) {
        self.inner().queue.push_back(inv);
        self.ready.notify_one();
    }

    /// The bootstrap asks for its next invocation: the first ask ends its
    /// init (LOADED). Waits until there is one.
    pub async fn next(&self) -> Invocation {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.inner();
                if inner.phase == Phase::Initialising {
                    inner.phase = Phase::Ready;
                    self.send(protocol::encode(protocol::LOADED, b"{}"));
                    // lampyr starts an invocation's timeout at LOADED: one
                    // held while the bootstrap started gets the time back.
                    let now = Instant::now();
                    for q in &mut inner.queue {
                        q.deadline_ms += now.duration_since(q.received).as_millis() as u64;
                    }
                }
                if let Some(inv) = inner.queue.pop_front() {
                    inner.running.insert(inv.request_id.clone(), inv.id);
                    // Another waiter may take the next one.
                    if !inner.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return inv;
                }
            }
            notified.await;
        }
    }

    /// Whether an answer for `request_id` would be taken now.
    pub fn check(&self, request_id: &str) -> Result<u32, Refused> {
        let inner = self.inner();
        match inner.running.get(request_id) {
            Some(id) => Ok(*id),
            None if inner.answered.iter().any(|r| r == request_id) => Err(Refused::Answered),
            None => Err(Refused::Unknown),
        }
    }

    /// Takes the invocation `request_id` to answer it: only one answer wins.
    pub fn answer(&self, request_id: &str) -> Result<u32, Refused> {
        let mut inner = self.inner();
        match inner.running.remove(request_id) {
            Some(id) => {
                if inner.answered.len() == ANSWERED {
                    inner.answered.pop_front();
                }
                inner.answered.push_back(request_id.to_string());
                Ok(id)
            }
            None if inner.answered.iter().any(|r| r == request_id) => Err(Refused::Answered),
            None => Err(Refused::Unknown),
        }
    }
}

/// The ARN a function is invoked as, the one the built-in runtimes give
/// `context.invokedFunctionArn`.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:local:000000000000:function:{name}")
}

/// Reads frames from lampyr until it closes the socket. Returns the exit
/// status.
pub async fn read_frames(mut reader: OwnedReadHalf, state: Arc<State>, api: SocketAddr) -> i32 {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            let frame = match protocol::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("lampyr-runtime-api: a bad frame from lampyr: {e}");
                    return 1;
                }
            };
            match frame.kind {
                protocol::LOAD => match serde_json::from_slice::<Load>(&frame.payload) {
                    Ok(load) => {
                        state.loading(&load);
                        crate::bootstrap::start(load, api, state.clone());
                    }
                    Err(e) => {
                        state.load_failed(&crate::api::error_object(
                            "Runtime.InitError",
                            &format!("lampyr sent a LOAD this shim cannot read: {e}"),
                        ));
                    }
                },
                protocol::INVOKE => match protocol::decode_invoke(frame.payload) {
                    Ok(inv) => state.push(Invocation::from_frame(inv)),
                    Err(e) => {
                        eprintln!("lampyr-runtime-api: a bad INVOKE from lampyr: {e}");
                        return 1;
                    }
                },
                // The shim sleeps on its socket; polling buys it nothing.
                _ => {}
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lampyr_runtime::protocol::{decode, Frame};

    /// A state whose function is loading (LOAD received).
    fn state() -> (Arc<State>, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let st = Arc::new(State::new(tx));
        let load = r#"{"handler":"f.h","task_root":"/var/task","function_name":"fn"}"#;
        st.loading(&serde_json::from_str(load).unwrap());
        (st, rx)
    }

    pub(crate) fn frames(rx: &mut mpsc::UnboundedReceiver<Out>) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Ok(out) = rx.try_recv() {
            if let Out::Frame(f) = out {
                buf.extend_from_slice(&f);
            }
        }
        let mut out = Vec::new();
        while let Some(f) = decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn invocation(id: u32, rid: &str) -> Invocation {
        Invocation {
            id,
            deadline_ms: 1_000,
            request_id: rid.into(),
            extras: Extras::default(),
            event: Bytes::from_static(b"{}"),
            received: Instant::now(),
        }
    }

    #[tokio::test]
    async fn the_first_next_sends_loaded_and_hands_out_held_invocations_in_order() {
        let (st, mut rx) = state();
        st.push(invocation(1, "a"));
        st.push(invocation(2, "b"));
        let a = st.next().await;
        let got = frames(&mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, protocol::LOADED);
        assert_eq!((a.id, a.request_id.as_str()), (1, "a"));
        // Held while the bootstrap started: its deadline moved on by that.
        assert!(a.deadline_ms >= 1_000);
        assert_eq!(st.next().await.id, 2);
        assert!(frames(&mut rx).is_empty(), "LOADED is sent once");
        assert_eq!(
            st.function_arn(),
            "arn:aws:lambda:local:000000000000:function:fn"
        );
    }

    #[tokio::test]
    async fn a_waiting_next_gets_the_invocation_pushed_later() {
        let (st, _rx) = state();
        let waiter = tokio::spawn({
            let st = st.clone();
            async move { st.next().await.request_id }
        });
        tokio::task::yield_now().await;
        st.push(invocation(5, "later"));
        assert_eq!(waiter.await.unwrap(), "later");
    }

    #[tokio::test]
    async fn one_answer_per_invocation_and_unknown_ids_are_told_apart() {
        let (st, _rx) = state();
        st.push(invocation(3, "r"));
        assert_eq!(st.check("r"), Err(Refused::Unknown), "not handed out yet");
        st.next().await;
        assert_eq!(st.check("r"), Ok(3));
        assert_eq!(st.answer("r"), Ok(3));
        assert_eq!(st.answer("r"), Err(Refused::Answered));
        assert_eq!(st.check("r"), Err(Refused::Answered));
        assert_eq!(st.answer("nope"), Err(Refused::Unknown));
    }

    #[test]
    fn load_error_is_sent_once_and_never_after_loaded() {
        let (st, mut rx) = state();
        let err = serde_json::json!({"errorType": "X", "errorMessage": "m", "stackTrace": []});
        assert!(st.load_failed(&err));
        assert!(!st.load_failed(&err));
        let got = frames(&mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, protocol::LOAD_ERROR);
        assert_eq!(st.phase(), Phase::Failed);
    }

    #[test]
    fn extras_come_from_the_invoke_frame() {
        let extras = br#"{"client_context":{"custom":{"k":"v"}},"trace_id":"Root=1-a-b"}"#;
        let f = protocol::encode_invoke(4, 9, "rid", Some(extras), b"[1]");
        let mut buf = BytesMut::from(&f[..]);
        let frame = decode(&mut buf).unwrap().unwrap();
        let inv = Invocation::from_frame(protocol::decode_invoke(frame.payload).unwrap());
        assert_eq!(inv.extras.trace_id.as_deref(), Some("Root=1-a-b"));
        assert_eq!(
            inv.extras.client_context,
            Some(serde_json::json!({"custom": {"k": "v"}}))
        );
        assert_eq!(inv.extras.identity, None);
        assert_eq!(&inv.event[..], b"[1]");
    }
}
