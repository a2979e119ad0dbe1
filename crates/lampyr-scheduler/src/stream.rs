//! Streamed replies: an invocation whose function answers with a stream
//! (the runtime's STREAM_START) rather than one result.
//!
//! The invocation's slot, its timeout and the ends it can come to stay the
//! function service's: a pump task ([`pump`]) owns the slot and reads the
//! runtime's stream until it ends, forwarding each chunk to the caller
//! through a bounded channel (so a slow reader slows the function down
//! instead of the body piling up in memory). At the function's deadline it
//! ends the stream as a timeout, whether or not the caller is reading; a
//! crash or an OOM kill ends it as they end any invocation. Only then is
//! the slot given back.
//!
//! The caller reads the chunks through the [`Invocation`]
//! ([`Invocation::next_chunk`]); once the stream has ended, its `outcome`
//! says how, and its record (written when it is dropped) has the bytes
//! streamed and the duration until the end. A caller that stops reading
//! drops the invocation: the pump then reads the rest and discards it, and
//! the record is written at the end. Callers that cannot stream
//! ([`Scheduler::call`]) get the body collected ([`Invocation::collect`]).
//!
//! Timing: `phases.exec` (and so `Server-Timing`, which goes out with the
//! response's head) runs until the stream started; the record's
//! `duration_ms` (and what is billed) until it ended.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lampyr_runtime::{ReplyStream, StreamEnd, StreamItem};
use tokio::sync::{mpsc, oneshot};

use crate::invoke::{Ended, Lease, Outcome};
use crate::{Invocation, Scheduler};

/// Chunks on their way from the pump to the caller.
const CHUNKS_IN_FLIGHT: usize = 2;

/// How a stream ended, for the invocation.
pub(crate) struct Done {
    pub(crate) outcome: Outcome,
    /// From the start of the invocation's execution to the end of the stream.
    pub(crate) duration: Duration,
    /// The bytes the function streamed.
    pub(crate) bytes: u64,
}

/// The caller's end of a streamed reply.
pub(crate) struct Streaming {
    pub(crate) content_type: String,
    chunks: mpsc::Receiver<Bytes>,
    end: Option<oneshot::Receiver<Done>>,
}

impl Streaming {
    /// Whether the stream has ended (and its end been taken).
    pub(crate) fn ended(&self) -> bool {
        self.end.is_none()
    }

    /// The next chunk, or the end (`Err`), once.
    async fn next(&mut self) -> Result<Bytes, Option<Done>> {
        if let Some(c) = self.chunks.recv().await {
            return Ok(c);
        }
        match self.end.take() {
            Some(end) => Err(end.await.ok()),
            None => Err(None),
        }
    }

    /// Waits for the end without reading the rest (the pump discards it).
    pub(crate) async fn finish(&mut self) -> Option<Done> {
        self.chunks.close();
        while self.chunks.recv().await.is_some() {}
        self.end.take()?.await.ok()
    }
}

/// Starts the pump of a stream whose invocation's execution began at
/// `exec_started` and ends, at the latest, `timeout` after it.
pub(crate) fn pump(
    sched: Scheduler,
    lease: Lease,
    request_id: String,
    mut reply: ReplyStream,
    exec_started: Instant,
    timeout: Duration,
) -> Streaming {
    let (tx, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (end_tx, end) = oneshot::channel();
    let content_type = reply.content_type().to_string();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep_until((exec_started + timeout).into());
        tokio::pin!(deadline);
        let mut tx = Some(tx);
        let mut bytes = 0u64;
        let ended = loop {
            let item = tokio::select! {
                item = reply.next() => item,
                _ = &mut deadline => break Err(Ended::TimedOut(timeout)),
            };
            match item {
                StreamItem::Chunk(c) => {
                    bytes += c.len() as u64;
                    if let Some(out) = &tx {
                        tokio::select! {
                            sent = out.send(c) => if sent.is_err() {
                                // The caller went: the rest is discarded.
                                tx = None;
                            },
                            _ = &mut deadline => break Err(Ended::TimedOut(timeout)),
                        }
                    }
                }
                StreamItem::End(StreamEnd::Ok) => break Ok(None),
                StreamItem::End(StreamEnd::Error(e)) => break Ok(Some(e)),
                StreamItem::End(StreamEnd::Exited(report)) => break Err(Ended::Exited(report)),
            }
        };
        // The body is cut here on a failure: nothing more is forwarded.
        drop(tx);
        // Abandons the runtime's stream (a timed-out one keeps running on
        // its poisoned instance until that is killed).
        drop(reply);
        let outcome = match ended {
            Ok(None) => Outcome::Ok(Bytes::new()),
            Ok(Some(error)) => {
                sched.stream_failed_log(&lease, &request_id, &error, bytes);
                Outcome::FunctionError(error)
            }
            Err(how) => sched.ended(&lease, &request_id, how),
        };
        let _ = end_tx.send(Done {
            outcome,
            duration: exec_started.elapsed(),
            bytes,
        });
        // The slot is given back only now.
        drop(lease);
    });
    Streaming {
        content_type,
        chunks,
        end: Some(end),
    }
}

/// The error object of a streamed reply collected past `limit` bytes (as
/// Lambda words it).
fn too_large(limit: usize, bytes: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": format!(
                "Response payload size ({bytes} bytes) exceeded maximum allowed payload size ({limit} bytes)."
            ),
            "stackTrace": [],
        })
        .to_string(),
    )
}

impl Invocation {
    /// The content type of a streamed reply (read or not); `None` for a
    /// reply that is one result.
    pub fn streamed(&self) -> Option<&str> {
        self.stream.as_ref().map(|s| s.content_type.as_str())
    }

    /// Whether the reply is a stream still to be read with
    /// [`Invocation::next_chunk`]; until it has ended, `outcome` is
    /// `Outcome::Ok` with an empty body.
    pub fn streaming(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.ended())
    }

    /// The next chunk of a streamed reply; `None` once it has ended (or
    /// for a reply that is not a stream). After the end, `outcome` says
    /// how it ended: a failure after a chunk was handed out means the body
    /// was cut there.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        let stream = self.stream.as_mut()?;
        if stream.ended() {
            return None;
        }
        match stream.next().await {
            Ok(c) => Some(c),
            Err(done) => {
                self.stream_ended(done);
                None
            }
        }
    }

    /// Reads a streamed reply to its end into `outcome`: `Outcome::Ok`
    /// with the whole body, or, past `limit` bytes, a function error
    /// (`Function.ResponseSizeTooLarge`; the rest is read and discarded, as
    /// the function runs to its end). A reply that is not a stream is left
    /// as it is.
    pub async fn collect(&mut self, limit: usize) {
        let mut body: Vec<u8> = Vec::new();
        let mut over = false;
        let mut total = 0u64;
        while let Some(c) = self.next_chunk().await {
            total += c.len() as u64;
            if !over && body.len() + c.len() <= limit {
                body.extend_from_slice(&c);
            } else if !over {
                over = true;
                body = Vec::new();
            }
        }
        if self.streamed().is_some() && matches!(self.outcome, Outcome::Ok(_)) {
            self.outcome = if over {
                Outcome::FunctionError(too_large(limit, total))
            } else {
                Outcome::Ok(Bytes::from(body))
            };
        }
    }

    /// Notes how the stream ended.
    pub(crate) fn stream_ended(&mut self, done: Option<Done>) {
        let done = done.unwrap_or_else(|| Done {
            outcome: Outcome::Crashed {
                reason: "the stream's pump ended before the stream".into(),
            },
            duration: self.phases.exec,
            bytes: 0,
        });
        self.outcome = done.outcome;
        self.stream_duration = Some(done.duration);
        self.stream_bytes = done.bytes;
    }
}

impl Scheduler {
    /// Logs a function's error in the middle of a stream: the body was cut.
    fn stream_failed_log(&self, lease: &Lease, request_id: &str, error: &[u8], bytes: u64) {
        let e = lampyr_api::FunctionError::parse(error, "Error");
        self.platform_log(
            lease,
            request_id,
            "ERROR",
            format!(
                "the function failed after streaming {bytes} bytes; the response was cut: {}: {}",
                e.error_type, e.error_message
            ),
        );
    }
}
