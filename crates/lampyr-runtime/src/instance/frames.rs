//! Running invocations: frames out (written at once when the socket takes
//! them, else by a writer task), replies in (a reader task hands each to its
//! caller).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, Notify};

use super::poll::{poll_hint, IN_FLIGHT, POLL_WINDOW};
use super::stream::{ReplyStream, StreamEnd};
use super::{Instance, InstanceError, InvokeOutcome, Pending, Reply, Shared};
use crate::protocol::{self, Frame};

impl Instance {
    /// Queues a frame for the instance. Frames queued while a write is in
    /// progress leave together in the next one.
    pub(super) async fn send(
        &self,
        frame: &[u8],
        stage: &'static str,
    ) -> Result<(), InstanceError> {
        if self.outbox.broken.load(Ordering::Acquire) {
            return Err(InstanceError::Exited {
                stage,
                reason: self.wait_exit().await.reason,
            });
        }
        self.queue(frame);
        Ok(())
    }

    /// Writes a frame at once when nothing is queued or being written (no
    /// hand-off to the writer task), else queues it behind what is.
    ///
    /// The lock is never held across the system call: frames queued by other
    /// threads while it runs leave together in the next one, written by the
    /// caller that is writing (each round writes only what was queued before
    /// it began, and the socket's buffer bounds how long that goes on). Only
    /// a full socket hands the rest to the writer task.
    fn queue(&self, frame: &[u8]) {
        if self.outbox.broken.load(Ordering::Acquire) {
            // The instance is being killed; its exit fails what is pending.
            return;
        }
        {
            let mut st = self.outbox.state.lock();
            if st.writing || !st.buf.is_empty() {
                st.buf.extend_from_slice(frame);
                return;
            }
            st.writing = true;
        }
        let mut queued: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            let data: &[u8] = if first { frame } else { &queued };
            let rest = match self.outbox.writer.try_write(data) {
                Ok(n) => &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => data,
                Err(_) => {
                    // `writing` stays set: nothing more is written.
                    self.outbox.broken.store(true, Ordering::Release);
                    self.shared.kill.notify_one();
                    return;
                }
            };
            let mut st = self.outbox.state.lock();
            if !rest.is_empty() {
                // The socket is full: the writer task finishes, in order.
                st.buf.splice(0..0, rest.iter().copied());
                drop(st);
                self.outbox.ready.notify_one();
                return;
            }
            if st.buf.is_empty() {
                st.writing = false;
                return;
            }
            first = false;
            queued.clear();
            std::mem::swap(&mut st.buf, &mut queued);
        }
    }

    /// Runs one invocation. Dropping the returned future abandons it (the
    /// caller then usually kills the instance).
    pub async fn invoke(
        &self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> InvokeOutcome {
        self.start_invoke(request_id, deadline, None, event)
            .outcome()
            .await
    }

    /// Sends one invocation, with the call's extras (JSON: client context,
    /// identity, trace id) if it has any; its outcome comes from the
    /// returned handle. Dropping the handle abandons the invocation.
    pub fn start_invoke(
        &self,
        request_id: &str,
        deadline: SystemTime,
        extras: Option<&[u8]>,
        event: &[u8],
    ) -> PendingInvoke {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Only invocations on loaded instances count for polling: one that
        // rides with a LOAD waits for the handler to load, milliseconds in
        // which the server has other work (see `poll_before_park`).
        let counted = self.shared.loaded.load(Ordering::Acquire);
        let poll = if counted {
            poll_hint(IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1)
        } else {
            self.poll.load(Ordering::Relaxed)
        };
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().insert(
            id,
            Pending {
                request_id: request_id.to_string(),
                reply: Reply::Waiting(tx),
            },
        );
        let pending = PendingInvoke {
            shared: self.shared.clone(),
            id,
            rx,
            counted,
        };
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // A broken socket kills the instance (see `queue`); its exit
        // watcher then fails this invocation.
        let invoke = protocol::encode_invoke(id, deadline_ms, request_id, extras, event);
        if self.poll.swap(poll, Ordering::Relaxed) != poll {
            // The hint changes: the POLL frame goes in the same write.
            let micros = if poll {
                POLL_WINDOW.as_micros() as u32
            } else {
                0
            };
            let mut frames = protocol::encode_poll(micros);
            frames.extend_from_slice(&invoke);
            self.queue(&frames);
        } else {
            self.queue(&invoke);
        }
        pending
    }
}

/// The instance's socket for writing, and frames waiting to be written.
pub(super) struct Outbox {
    pub(super) writer: OwnedWriteHalf,
    pub(super) state: Mutex<OutState>,
    pub(super) ready: Notify,
    pub(super) broken: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub(super) struct OutState {
    pub(super) buf: Vec<u8>,
    /// Someone is writing (a caller of `Instance::queue`, or the writer
    /// task once the socket was full): new frames queue behind its bytes and
    /// it writes them too. Stays set once the socket is broken.
    pub(super) writing: bool,
}

/// Writes queued frames to the instance, as many per system call as have
/// accumulated, until the instance exits or the socket breaks.
pub(super) async fn write_frames(shared: Arc<Shared>, outbox: Arc<Outbox>) {
    let mut exit = shared.exit.subscribe();
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            _ = outbox.ready.notified() => {}
            _ = async { exit.wait_for(|e| e.is_some()).await.map(|_| ()) } => return,
        }
        loop {
            {
                let mut st = outbox.state.lock();
                if st.buf.is_empty() {
                    st.writing = false;
                    break;
                }
                std::mem::swap(&mut st.buf, &mut out);
                st.writing = true;
            }
            if write_all(&outbox.writer, &out).await.is_err() {
                outbox.broken.store(true, Ordering::Release);
                shared.kill.notify_one();
                return;
            }
            out.clear();
        }
    }
}

async fn write_all(w: &OwnedWriteHalf, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An invocation sent to an instance, waiting for its outcome. Dropped
/// unfinished, it is abandoned: removed from the pending table.
pub struct PendingInvoke {
    shared: Arc<Shared>,
    id: u32,
    rx: oneshot::Receiver<InvokeOutcome>,
    /// Counted in [`IN_FLIGHT`] (sent to a loaded instance).
    counted: bool,
}

impl PendingInvoke {
    /// Waits for the runtime's answer, or the instance's exit. A streamed
    /// answer holds the invocation until the stream is dropped.
    pub async fn outcome(mut self) -> InvokeOutcome {
        // The exit watcher records the exit before it drains `pending`, so
        // an exit before the entry was made is seen here.
        let out = if let Some(report) = self.shared.exit_report() {
            match self.rx.try_recv() {
                Ok(out) => out,
                Err(_) => InvokeOutcome::Exited(report),
            }
        } else {
            match (&mut self.rx).await {
                Ok(outcome) => outcome,
                Err(_) => InvokeOutcome::Exited(self.shared.wait_exit().await),
            }
        };
        match out {
            InvokeOutcome::Stream(mut s) => {
                s.guard = Some(self);
                InvokeOutcome::Stream(s)
            }
            other => other,
        }
    }
}

impl Drop for PendingInvoke {
    fn drop(&mut self) {
        if self.counted {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        }
        let p = self.shared.pending.lock().remove(&self.id);
        if let Some(p) = p {
            self.shared.finished(p.request_id);
        }
    }
}

pub(super) async fn read_frames(
    shared: Arc<Shared>,
    mut reader: tokio::net::unix::OwnedReadHalf,
    control: mpsc::UnboundedSender<Frame>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'outer: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match protocol::decode(&mut buf) {
                Ok(Some(frame)) => match frame.kind {
                    protocol::RESULT
                    | protocol::ERROR
                    | protocol::STREAM_START
                    | protocol::STREAM_CHUNK
                    | protocol::STREAM_END => {
                        let Ok((id, body)) = protocol::split_reply(frame.payload) else {
                            break 'outer;
                        };
                        if let Err(e) = reply(&shared, frame.kind, id, body).await {
                            tracing::warn!(instance = %shared.id, "instance protocol error: {e}");
                            *shared.kill_reason.lock() = Some(format!("protocol error: {e}"));
                            break 'outer;
                        }
                    }
                    _ if shared.loaded.load(Ordering::Acquire) => {
                        // Nothing but replies may follow LOADED.
                        tracing::warn!(instance = %shared.id, "unexpected frame type {:#04x} from a loaded runtime", frame.kind);
                        *shared.kill_reason.lock() = Some(format!(
                            "protocol error: unexpected frame type {:#04x}",
                            frame.kind
                        ));
                        break 'outer;
                    }
                    _ => {
                        let _ = control.send(frame);
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(instance = %shared.id, "instance protocol error: {e}");
                    *shared.kill_reason.lock() = Some(format!("protocol error: {e}"));
                    break 'outer;
                }
            }
        }
    }
    // The socket closed. A runtime that is exiting closes it just before it
    // goes; give the exit a moment to land so the reason is the real one.
    let mut exit = shared.exit.subscribe();
    let exited = async { exit.wait_for(|e| e.is_some()).await.map(|_| ()) };
    if tokio::time::timeout(Duration::from_millis(200), exited)
        .await
        .is_err()
    {
        {
            let mut r = shared.kill_reason.lock();
            if r.is_none() {
                *r = Some("the runtime closed its protocol socket".into());
            }
        }
        shared.kill.notify_one();
    }
}

/// Hands one reply frame to its invocation's caller. A frame for an
/// invocation that is no longer pending (abandoned: timed out, its caller
/// gone) is dropped. A STREAM_CHUNK waits for room in its stream's
/// channel: the back-pressure that keeps a streamed body out of memory.
async fn reply(shared: &Arc<Shared>, kind: u8, id: u32, body: bytes::Bytes) -> Result<(), String> {
    match kind {
        protocol::STREAM_CHUNK => {
            let chunks = match shared.pending.lock().get(&id).map(|p| &p.reply) {
                None => return Ok(()),
                Some(Reply::Streaming(feed)) => feed.chunks.clone(),
                Some(Reply::Waiting(_)) => {
                    return Err(format!(
                        "STREAM_CHUNK before STREAM_START (invocation {id})"
                    ))
                }
            };
            if !body.is_empty() {
                // An error: the caller dropped the stream; the chunk goes.
                let _ = chunks.send(body).await;
            }
            Ok(())
        }
        protocol::STREAM_START => {
            let content_type = match std::str::from_utf8(&body) {
                Ok("") => protocol::DEFAULT_STREAM_TYPE.to_string(),
                Ok(t) => t.to_string(),
                Err(_) => return Err("STREAM_START's content type is not UTF-8".into()),
            };
            let mut pending = shared.pending.lock();
            let Some(p) = pending.get_mut(&id) else {
                return Ok(());
            };
            let (stream, feed) = ReplyStream::new(shared.clone(), content_type);
            match std::mem::replace(&mut p.reply, Reply::Streaming(feed)) {
                Reply::Waiting(tx) => {
                    let _ = tx.send(InvokeOutcome::Stream(stream));
                    Ok(())
                }
                Reply::Streaming(_) => Err(format!("a second STREAM_START (invocation {id})")),
            }
        }
        _ => {
            let Some(p) = shared.pending.lock().remove(&id) else {
                return Ok(());
            };
            shared.finished(p.request_id.clone());
            match (p.reply, kind) {
                (Reply::Waiting(tx), protocol::RESULT) => {
                    let _ = tx.send(InvokeOutcome::Ok(body));
                }
                (Reply::Waiting(tx), protocol::ERROR) => {
                    let _ = tx.send(InvokeOutcome::Error(body));
                }
                (Reply::Streaming(feed), protocol::STREAM_END) => feed.end(if body.is_empty() {
                    StreamEnd::Ok
                } else {
                    StreamEnd::Error(body)
                }),
                (Reply::Waiting(_), _) => {
                    return Err(format!("STREAM_END before STREAM_START (invocation {id})"))
                }
                (Reply::Streaming(_), _) => {
                    return Err(format!(
                        "a RESULT or ERROR for a streamed reply (invocation {id})"
                    ))
                }
            }
            Ok(())
        }
    }
}
