//! The instance protocol's frames (`docs/protocol.md`): a big-endian `u32`
//! length, a type byte, then the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HELLO: u8 = 0x01;
pub const LOAD: u8 = 0x02;
pub const LOADED: u8 = 0x03;
pub const LOAD_ERROR: u8 = 0x04;
/// Sent by the sandbox's init process: the jail could not be built (payload: why).
pub const SANDBOX_ERROR: u8 = lampyr_sandbox::FRAME_SANDBOX_ERROR;
/// Sent by the sandbox's init process just before it starts the runtime.
pub const SANDBOX_READY: u8 = lampyr_sandbox::FRAME_SANDBOX_READY;
pub const INVOKE: u8 = 0x10;
pub const RESULT: u8 = 0x11;
pub const ERROR: u8 = 0x12;
/// Host → runtime: how long to keep polling for the next frame after an
/// INVOKE before sleeping (payload: `u32` microseconds, 0 for not at all).
pub const POLL: u8 = 0x13;
/// Runtime → host: the invocation's reply is a stream (payload: `u32` id,
/// then the content type as UTF-8; empty for `application/octet-stream`).
/// It replaces RESULT/ERROR for that invocation.
pub const STREAM_START: u8 = 0x14;
/// Runtime → host: `u32` id, then a piece of the streamed body (at most
/// [`MAX_STREAM_CHUNK`] bytes; never empty).
pub const STREAM_CHUNK: u8 = 0x15;
/// Runtime → host: `u32` id, then nothing (the stream ended well) or a JSON
/// error object (the function failed mid-stream).
pub const STREAM_END: u8 = 0x16;

/// The largest body a STREAM_CHUNK frame carries.
pub const MAX_STREAM_CHUNK: usize = 1 << 20;

/// The content type of a stream that names none.
pub const DEFAULT_STREAM_TYPE: &str = "application/octet-stream";

/// Set in INVOKE's request-id length byte when the invocation carries
/// extras (a client context, an identity, a trace id): a `u32` length and
/// that much JSON follow the request id. Request ids are at most 127 bytes.
pub const INVOKE_EXTRAS: u8 = 0x80;

/// Frames larger than this are a protocol violation.
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the protocol limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("truncated {0} frame")]
    Truncated(&'static str),
}

/// A decoded frame: its type byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Bytes,
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        // Room for what is still to come, a MiB at most: memory follows
        // what the instance sends, not what it announces.
        buf.reserve((4 + len - buf.len()).min(1 << 20));
        return Ok(None);
    }
    buf.advance(4);
    let kind = buf.get_u8();
    let payload = buf.split_to(len - 1).freeze();
    Ok(Some(Frame { kind, payload }))
}

/// Encodes a frame with a plain payload.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.put_u32((payload.len() + 1) as u32);
    out.put_u8(kind);
    out.extend_from_slice(payload);
    out
}

/// Encodes an INVOKE frame; `extras` (JSON: `client_context`, `identity`,
/// `trace_id`) only when the call has any, so a plain call costs no byte
/// more.
pub fn encode_invoke(
    id: u32,
    deadline_ms: u64,
    request_id: &str,
    extras: Option<&[u8]>,
    event: &[u8],
) -> Vec<u8> {
    let rid = &request_id.as_bytes()[..request_id.len().min(127)];
    let extra_len = extras.map_or(0, |e| 4 + e.len());
    let body = 4 + 8 + 1 + rid.len() + extra_len + event.len();
    let mut out = Vec::with_capacity(5 + body);
    out.put_u32((body + 1) as u32);
    out.put_u8(INVOKE);
    out.put_u32(id);
    out.put_u64(deadline_ms);
    match extras {
        Some(e) => {
            out.put_u8(rid.len() as u8 | INVOKE_EXTRAS);
            out.extend_from_slice(rid);
            out.put_u32(e.len() as u32);
            out.extend_from_slice(e);
        }
        None => {
            out.put_u8(rid.len() as u8);
            out.extend_from_slice(rid);
        }
    }
    out.extend_from_slice(event);
    out
}

/// An INVOKE frame's payload, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoke {
    pub id: u32,
    pub deadline_ms: u64,
    pub request_id: String,
    /// The extras' JSON, when the call has any.
    pub extras: Option<Bytes>,
    pub event: Bytes,
}

/// Decodes an INVOKE frame's payload.
pub fn decode_invoke(mut p: Bytes) -> Result<Invoke, FrameError> {
    let short = || FrameError::Truncated("invoke");
    if p.len() < 13 {
        return Err(short());
    }
    let id = p.get_u32();
    let deadline_ms = p.get_u64();
    let flags = p.get_u8();
    let rid_len = usize::from(flags & !INVOKE_EXTRAS);
    if p.len() < rid_len {
        return Err(short());
    }
    let request_id = String::from_utf8_lossy(&p.split_to(rid_len)).into_owned();
    let extras = if flags & INVOKE_EXTRAS != 0 {
        if p.len() < 4 {
            return Err(short());
        }
        let n = p.get_u32() as usize;
        if p.len() < n {
            return Err(short());
        }
        Some(p.split_to(n))
    } else {
        None
    };
    Ok(Invoke {
        id,
        deadline_ms,
        request_id,
        extras,
        event: p,
    })
}

/// Encodes a frame whose payload is an invocation id and `body`
/// (RESULT, ERROR, STREAM_START, STREAM_CHUNK, STREAM_END).
pub fn encode_reply(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.put_u32((body.len() + 5) as u32);
    out.put_u8(kind);
    out.put_u32(id);
    out.extend_from_slice(body);
    out
}

/// Encodes a POLL frame.
pub fn encode_poll(micros: u32) -> Vec<u8> {
    encode(POLL, &micros.to_be_bytes())
}

/// Splits the payload of a frame that names an invocation (RESULT, ERROR,
/// STREAM_START, STREAM_CHUNK, STREAM_END) into its id and body.
pub fn split_reply(mut payload: Bytes) -> Result<(u32, Bytes), FrameError> {
    if payload.len() < 4 {
        return Err(FrameError::Truncated("reply"));
    }
    let id = payload.get_u32();
    Ok((id, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_frame_layout() {
        let f = encode_invoke(7, 1_700_000_000_000, "rid", None, b"{}");
        let mut buf = BytesMut::from(&f[..]);
        let frame = decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(frame.kind, INVOKE);
        let mut p = frame.payload.clone();
        assert_eq!(p.get_u32(), 7);
        assert_eq!(p.get_u64(), 1_700_000_000_000);
        assert_eq!(p.get_u8(), 3);
        assert_eq!(&p[..], b"rid{}");
        let inv = decode_invoke(frame.payload).unwrap();
        assert_eq!(
            (inv.id, inv.request_id.as_str(), inv.extras, &inv.event[..]),
            (7, "rid", None, &b"{}"[..])
        );
    }

    #[test]
    fn invoke_extras_ride_behind_the_request_id_only_when_there_are_any() {
        let plain = encode_invoke(1, 2, "rid", None, b"{}");
        let extras = br#"{"trace_id":"Root=1-a-b"}"#;
        let f = encode_invoke(1, 2, "rid", Some(extras), b"{}");
        assert_eq!(f.len(), plain.len() + 4 + extras.len());
        let mut buf = BytesMut::from(&f[..]);
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.payload[12], 3 | INVOKE_EXTRAS);
        let inv = decode_invoke(frame.payload).unwrap();
        assert_eq!(inv.request_id, "rid");
        assert_eq!(inv.extras.as_deref(), Some(&extras[..]));
        assert_eq!(&inv.event[..], b"{}");
        let cut = Bytes::copy_from_slice(&f[5..5 + 13 + 3 + 2]);
        assert_eq!(decode_invoke(cut), Err(FrameError::Truncated("invoke")));
    }

    #[test]
    fn reply_frames_carry_their_invocation_id() {
        let f = encode_reply(STREAM_CHUNK, 9, b"abc");
        let mut buf = BytesMut::from(&f[..]);
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.kind, STREAM_CHUNK);
        assert_eq!(
            split_reply(frame.payload).unwrap(),
            (9, Bytes::from_static(b"abc"))
        );
    }

    #[test]
    fn poll_frame_layout() {
        let mut buf = BytesMut::from(&encode_poll(100)[..]);
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.kind, POLL);
        assert_eq!(&f.payload[..], &100u32.to_be_bytes());
        assert!(buf.is_empty());
    }

    #[test]
    fn stream_frame_layout() {
        let mut wire = encode_reply(STREAM_START, 9, b"text/plain");
        wire.extend(encode_reply(STREAM_CHUNK, 9, b"hello"));
        wire.extend(encode_reply(STREAM_END, 9, b""));
        // Byte for byte: length (type + id + body), type, id, body.
        assert_eq!(
            &wire[..19],
            &[
                0, 0, 0, 15, 0x14, 0, 0, 0, 9, b't', b'e', b'x', b't', b'/', b'p', b'l', b'a',
                b'i', b'n'
            ]
        );
        assert_eq!(&wire[19..29], &[0, 0, 0, 10, 0x15, 0, 0, 0, 9, b'h']);
        assert_eq!(&wire[wire.len() - 9..], &[0, 0, 0, 5, 0x16, 0, 0, 0, 9]);
        let mut buf = BytesMut::from(&wire[..]);
        let kinds: Vec<(u8, u32, Bytes)> = std::iter::from_fn(|| decode(&mut buf).unwrap())
            .map(|f| {
                let (id, body) = split_reply(f.payload).unwrap();
                (f.kind, id, body)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (STREAM_START, 9, Bytes::from_static(b"text/plain")),
                (STREAM_CHUNK, 9, Bytes::from_static(b"hello")),
                (STREAM_END, 9, Bytes::new()),
            ]
        );
        // A failed stream's end carries the error object.
        let err = br#"{"errorType":"Error","errorMessage":"x","stackTrace":[]}"#;
        let mut buf = BytesMut::from(&encode_reply(STREAM_END, 1, err)[..]);
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            split_reply(f.payload).unwrap(),
            (1, Bytes::from_static(err))
        );
        // The largest chunk fits a frame.
        const { assert!(MAX_STREAM_CHUNK + 9 <= MAX_FRAME) };
    }

    #[test]
    fn decode_waits_for_whole_frames() {
        let mut all = encode(RESULT, &[0, 0, 0, 1, b'1']);
        all.extend(encode(HELLO, b"{}"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&all[..3]);
        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&all[3..7]);
        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&all[7..]);
        let a = decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            split_reply(a.payload).unwrap(),
            (1, Bytes::from_static(b"1"))
        );
        let b = decode(&mut buf).unwrap().unwrap();
        assert_eq!((b.kind, &b.payload[..]), (HELLO, &b"{}"[..]));
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::Empty));
        let mut buf = BytesMut::from(&[0xffu8, 0, 0, 0][..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge(_))));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// `PROPTEST_CASES` when set (for a longer hunt), else `n`.
    fn cases(n: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(n)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(300)))]

        /// Any byte stream, cut anywhere: decoding never panics, and never
        /// hands out more than it was given.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
            let cut = cut.min(data.len());
            let mut buf = BytesMut::from(&data[..cut]);
            while let Ok(Some(f)) = decode(&mut buf) {
                prop_assert!(f.payload.len() < cut);
            }
            buf.extend_from_slice(&data[cut..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
            if let Ok(Some(f)) = decode(&mut BytesMut::from(&data[..])) {
                let _ = split_reply(f.payload);
            }
        }

        /// Frames come back as they were sent, however the stream is cut.
        #[test]
        fn frames_round_trip(frames in proptest::collection::vec((1u8..0x20, proptest::collection::vec(any::<u8>(), 0..512)), 1..8), cut in 0usize..8192) {
            let mut wire = Vec::new();
            for (k, p) in &frames {
                wire.extend_from_slice(&encode(*k, p));
            }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
            prop_assert_eq!(got.len(), frames.len());
            for (f, (k, p)) in got.iter().zip(&frames) {
                prop_assert_eq!(f.kind, *k);
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
        }
    }
}
