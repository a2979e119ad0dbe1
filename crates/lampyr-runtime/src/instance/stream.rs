//! A reply that is a stream (STREAM_START, STREAM_CHUNK, STREAM_END in
//! `docs/protocol.md`).
//!
//! At STREAM_START the reader task hands the waiting caller a
//! [`ReplyStream`] (through the same one-shot a RESULT would take); the
//! chunks follow through a bounded channel. The reader waits for room in
//! it before it reads the socket again, so a caller that reads slowly holds
//! the runtime back (its writes to the socket block) rather than the host
//! buffering the body. The end comes on a channel of its own: a stream that
//! ended well is read to its last chunk first, one that failed (an error
//! object, the instance's exit) ends at once.
//!
//! The reader task serves every invocation of its instance, so on an
//! instance that runs several at once a stream nobody reads holds up the
//! others' replies too, for as long as its caller neither reads nor drops
//! it (the function service's timeout bounds that).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{ExitReport, PendingInvoke, Shared};

/// How many chunks wait between the instance and the reader of its stream
/// (each at most `protocol::MAX_STREAM_CHUNK`).
const CHUNKS_IN_FLIGHT: usize = 2;

/// How a streamed reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The function ended the stream.
    Ok,
    /// The function failed mid-stream: its JSON error object.
    Error(Bytes),
    /// The instance died before the stream ended.
    Exited(ExitReport),
}

/// What [`ReplyStream::next`] gives.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// More of the body.
    Chunk(Bytes),
    /// The end: nothing more follows.
    End(StreamEnd),
}

/// The reader task's end of a stream.
pub(super) struct Feed {
    pub(super) chunks: mpsc::Sender<Bytes>,
    end: oneshot::Sender<StreamEnd>,
}

impl Feed {
    pub(super) fn end(self, how: StreamEnd) {
        let _ = self.end.send(how);
    }
}

enum State {
    /// The end has not come.
    Open(oneshot::Receiver<StreamEnd>),
    /// It ended well: the chunks still queued come first.
    Draining,
    Finished(StreamEnd),
}

/// A streamed reply, read chunk by chunk. The invocation lasts until the
/// stream ends; dropped earlier, it is abandoned (further chunks are
/// discarded as they arrive).
pub struct ReplyStream {
    content_type: String,
    chunks: mpsc::Receiver<Bytes>,
    state: State,
    shared: Arc<Shared>,
    /// The invocation, counted as in flight until this is dropped.
    pub(super) guard: Option<PendingInvoke>,
}

impl std::fmt::Debug for ReplyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl ReplyStream {
    /// A stream and the reader task's end of it.
    pub(super) fn new(shared: Arc<Shared>, content_type: String) -> (ReplyStream, Feed) {
        let (chunks_tx, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (end_tx, end) = oneshot::channel();
        let stream = ReplyStream {
            content_type,
            chunks,
            state: State::Open(end),
            shared,
            guard: None,
        };
        (
            stream,
            Feed {
                chunks: chunks_tx,
                end: end_tx,
            },
        )
    }

    /// The content type the runtime gave (`application/octet-stream` if
    /// none).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The next chunk, or the end (again, once it has come).
    pub async fn next(&mut self) -> StreamItem {
        loop {
            match &mut self.state {
                State::Finished(how) => return StreamItem::End(how.clone()),
                State::Draining => match self.chunks.recv().await {
                    Some(c) => return StreamItem::Chunk(c),
                    None => self.state = State::Finished(StreamEnd::Ok),
                },
                State::Open(end) => {
                    let how = tokio::select! {
                        biased;
                        c = self.chunks.recv() => match c {
                            Some(c) => return StreamItem::Chunk(c),
                            // The feed is gone; its end says why.
                            None => end.await.ok(),
                        },
                        how = &mut *end => how.ok(),
                    };
                    self.state = match how {
                        Some(StreamEnd::Ok) => State::Draining,
                        Some(failed) => State::Finished(failed),
                        None => State::Finished(StreamEnd::Exited(self.shared.wait_exit().await)),
                    };
                }
            }
        }
    }
}
