//! The event journal: where the hot writes of the queue land first.
//!
//! Accepts, leases and outcomes are appended here, a group of them with one
//! `write` (and one `fdatasync` with `fsync = true`), before anything is
//! answered: a 202 means the event is in the journal. The settler
//! (`settle.rs`) later applies the journal to the SQLite database in large
//! transactions, at idle priority, and records in the same transaction how
//! far it got, so every record is applied exactly once, also across a crash.
//!
//! The journal is a directory of segments, `GEN.journal`, written in order;
//! a position is `(segment, offset)`. The writer starts a new segment when
//! the current one passes [`SEGMENT_BYTES`]; the settler deletes segments it
//! has applied in full. A record is `len: u32 | crc32: u32 | body`, little
//! endian; reading stops at the first record that is cut short or does not
//! match its checksum (a write a power loss cut off).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The size past which the writer starts a new segment.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// The largest record body read back (a payload is at most the server's
/// event size limit, a destination record twice that, plus headers).
const MAX_RECORD: usize = 64 << 20;

/// A place in the journal: a segment and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub(crate) seg: u64,
    pub(crate) off: u64,
}

impl Pos {
    /// Packed into one word (24 bits of segment, 40 of offset), for an
    /// atomic that readers compare without a lock.
    pub(crate) fn pack(self) -> u64 {
        (self.seg << 40) | (self.off & ((1 << 40) - 1))
    }

    pub(crate) fn unpack(v: u64) -> Pos {
        Pos {
            seg: v >> 40,
            off: v & ((1 << 40) - 1),
        }
    }
}

/// A new event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AcceptRec {
    pub(crate) id: i64,
    pub(crate) request_id: String,
    pub(crate) function: String,
    pub(crate) trigger: String,
    pub(crate) payload: bytes::Bytes,
    pub(crate) created_ms: i64,
    pub(crate) timer: Option<String>,
    pub(crate) tick_ms: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
}

/// How an attempt ended, as the database stores it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Succeeded,
    /// Runs again at `run_at_ms`; `error` is the attempt's error as JSON.
    Retry {
        run_at_ms: i64,
        error: String,
    },
    Throttled {
        run_at_ms: i64,
    },
    Dead {
        reason: String,
        error: Option<String>,
    },
    Dropped,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rec {
    Accept(AcceptRec),
    Lease {
        id: i64,
        token: i64,
        until_ms: i64,
    },
    /// An outcome, applied only under the lease `token`; `destination` is
    /// queued with it.
    Finish {
        id: i64,
        token: i64,
        at_ms: i64,
        outcome: Outcome,
        destination: Option<AcceptRec>,
    },
}

impl Rec {
    /// Appends the record, framed, to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        let mut b = Enc(out);
        match self {
            Rec::Accept(a) => {
                b.u8(1);
                b.accept(a);
            }
            Rec::Lease {
                id,
                token,
                until_ms,
            } => {
                b.u8(2);
                b.i64(*id);
                b.i64(*token);
                b.i64(*until_ms);
            }
            Rec::Finish {
                id,
                token,
                at_ms,
                outcome,
                destination,
            } => {
                b.u8(3);
                b.i64(*id);
                b.i64(*token);
                b.i64(*at_ms);
                match outcome {
                    Outcome::Succeeded => b.u8(0),
                    Outcome::Retry { run_at_ms, error } => {
                        b.u8(1);
                        b.i64(*run_at_ms);
                        b.str(error);
                    }
                    Outcome::Throttled { run_at_ms } => {
                        b.u8(2);
                        b.i64(*run_at_ms);
                    }
                    Outcome::Dead { reason, error } => {
                        b.u8(3);
                        b.str(reason);
                        b.opt_str(error.as_deref());
                    }
                    Outcome::Dropped => b.u8(4),
                }
                match destination {
                    Some(d) => {
                        b.u8(1);
                        b.accept(d);
                    }
                    None => b.u8(0),
                }
            }
        }
        let body_len = out.len() - start - 8;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Option<Rec> {
        let mut d = Dec(body);
        let rec = match d.u8()? {
            1 => Rec::Accept(d.accept()?),
            2 => Rec::Lease {
                id: d.i64()?,
                token: d.i64()?,
                until_ms: d.i64()?,
            },
            3 => {
                let id = d.i64()?;
                let token = d.i64()?;
                let at_ms = d.i64()?;
                let outcome = match d.u8()? {
                    0 => Outcome::Succeeded,
                    1 => Outcome::Retry {
                        run_at_ms: d.i64()?,
                        error: d.str()?,
                    },
                    2 => Outcome::Throttled {
                        run_at_ms: d.i64()?,
                    },
                    3 => Outcome::Dead {
                        reason: d.str()?,
                        error: d.opt_str()?,
                    },
                    4 => Outcome::Dropped,
                    _ => return None,
                };
                let destination = match d.u8()? {
                    0 => None,
                    1 => Some(d.accept()?),
                    _ => return None,
                };
                Rec::Finish {
                    id,
                    token,
                    at_ms,
                    outcome,
                    destination,
                }
            }
            _ => return None,
        };
        d.0.is_empty().then_some(rec)
    }
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn accept(&mut self, a: &AcceptRec) {
        self.i64(a.id);
        self.str(&a.request_id);
        self.str(&a.function);
        self.str(&a.trigger);
        self.bytes(&a.payload);
        self.i64(a.created_ms);
        self.opt_str(a.timer.as_deref());
        match a.tick_ms {
            Some(t) => {
                self.u8(1);
                self.i64(t);
            }
            None => self.u8(0),
        }
        self.opt_str(a.idempotency_key.as_deref());
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        Some(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
    fn accept(&mut self) -> Option<AcceptRec> {
        Some(AcceptRec {
            id: self.i64()?,
            request_id: self.str()?,
            function: self.str()?,
            trigger: self.str()?,
            payload: bytes::Bytes::from(self.bytes()?),
            created_ms: self.i64()?,
            timer: self.opt_str()?,
            tick_ms: match self.u8()? {
                0 => None,
                1 => Some(self.i64()?),
                _ => return None,
            },
            idempotency_key: self.opt_str()?,
        })
    }
}

fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.journal"))
}

/// The segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(seg) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(seg);
    }
    out.sort_unstable();
    Ok(out)
}

/// Deletes the segments before `seg`: everything in them is applied.
pub(crate) fn delete_before(dir: &Path, seg: u64) -> io::Result<()> {
    for s in segments(dir)? {
        if s < seg {
            std::fs::remove_file(segment_path(dir, s))?;
        }
    }
    Ok(())
}

/// The writer's end of the journal.
pub(crate) struct Appender {
    dir: PathBuf,
    file: File,
    end: Pos,
    sync: bool,
}

impl Appender {
    /// Starts segment `seg` (a new, empty file).
    pub(crate) fn create(dir: &Path, seg: u64, sync: bool) -> io::Result<Appender> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(dir, seg))?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(Appender {
            dir: dir.to_path_buf(),
            file,
            end: Pos { seg, off: 0 },
            sync,
        })
    }

    /// Where the next record goes.
    pub(crate) fn end(&self) -> Pos {
        self.end
    }

    /// Writes `buf` (whole records) at the end; returns the new end. On an
    /// error nothing of `buf` stays in the journal.
    pub(crate) fn append(&mut self, buf: &[u8]) -> io::Result<Pos> {
        if self.end.off >= SEGMENT_BYTES {
            if self.sync {
                // What was appended to this segment is synced before the
                // next one starts: a sync of the next covers only itself.
                self.file.sync_data()?;
            }
            *self = Appender::create(&self.dir, self.end.seg + 1, self.sync)?;
        }
        if let Err(e) = self.file.write_all(buf) {
            // A record cut short would end the journal there: cut it off,
            // and write the next records where these started.
            let _ = self.file.set_len(self.end.off);
            let _ = self.file.seek(SeekFrom::Start(self.end.off));
            return Err(e);
        }
        self.end.off += buf.len() as u64;
        Ok(self.end)
    }

    /// The current segment's file, to sync (`fsync = true`).
    pub(crate) fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// The settler's end: reads records in order from a position.
pub(crate) struct Reader {
    dir: PathBuf,
    at: Pos,
    /// Buffered: the settler reads every record, most of them small.
    file: Option<BufReader<File>>,
    buf: Vec<u8>,
}

/// How much the reader reads from a segment at once.
const READ_BUFFER: usize = 256 << 10;

impl Reader {
    pub(crate) fn new(dir: &Path, at: Pos) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            at,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Reads from `at` again (what was read after it was not applied).
    pub(crate) fn rewind(&mut self, at: Pos) {
        self.at = at;
        self.file = None;
    }

    /// Where the next record is read from.
    pub(crate) fn at(&self) -> Pos {
        self.at
    }

    /// The next record before `until`, with the position after it; `None`
    /// when there is none (yet), or the rest is not a whole record.
    pub(crate) fn next(&mut self, until: Pos) -> io::Result<Option<(Rec, Pos)>> {
        loop {
            if self.at >= until {
                return Ok(None);
            }
            if self.file.is_none() {
                match File::open(segment_path(&self.dir, self.at.seg)) {
                    Ok(f) => {
                        let mut f = BufReader::with_capacity(READ_BUFFER, f);
                        f.seek(SeekFrom::Start(self.at.off))?;
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.at.seg < until.seg => {
                        self.at = Pos {
                            seg: self.at.seg + 1,
                            off: 0,
                        };
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let file = self.file.as_mut().expect("opened above");
            let mut head = [0u8; 8];
            match read_full(file, &mut head)? {
                8 => {}
                0 if self.at.seg < until.seg => {
                    // The end of a finished segment: on to the next.
                    self.file = None;
                    self.at = Pos {
                        seg: self.at.seg + 1,
                        off: 0,
                    };
                    continue;
                }
                _ => {
                    // A record cut short: the journal ends here (for now:
                    // read from the record's start again next time).
                    file.seek(SeekFrom::Start(self.at.off))?;
                    return Ok(None);
                }
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            if len > MAX_RECORD {
                file.seek(SeekFrom::Start(self.at.off))?;
                return Ok(None);
            }
            self.buf.resize(len, 0);
            let n = read_full(file, &mut self.buf)?;
            let rec = (n == len && crc32fast::hash(&self.buf) == crc)
                .then(|| Rec::decode(&self.buf))
                .flatten();
            let Some(rec) = rec else {
                file.seek(SeekFrom::Start(self.at.off))?;
                return Ok(None);
            };
            self.at.off += (8 + len) as u64;
            return Ok(Some((rec, self.at)));
        }
    }
}

/// Reads until `buf` is full or the file ends; returns how much it read.
fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(id: i64) -> AcceptRec {
        AcceptRec {
            id,
            request_id: format!("req-{id}"),
            function: "f".into(),
            trigger: "async".into(),
            payload: vec![id as u8; id as usize % 7].into(),
            created_ms: 1_700_000_000_000 + id,
            timer: (id % 2 == 0).then(|| "t".into()),
            tick_ms: (id % 2 == 0).then_some(id),
            idempotency_key: (id % 3 == 0).then(|| format!("k{id}")),
        }
    }

    fn all() -> Vec<Rec> {
        vec![
            Rec::Accept(accept(1)),
            Rec::Lease {
                id: 1,
                token: 7,
                until_ms: 99,
            },
            Rec::Finish {
                id: 1,
                token: 7,
                at_ms: 100,
                outcome: Outcome::Retry {
                    run_at_ms: 200,
                    error: "{\"e\":1}".into(),
                },
                destination: None,
            },
            Rec::Finish {
                id: 1,
                token: 8,
                at_ms: 300,
                outcome: Outcome::Dead {
                    reason: "retries_exhausted".into(),
                    error: None,
                },
                destination: Some(accept(6)),
            },
            Rec::Finish {
                id: 2,
                token: 9,
                at_ms: 1,
                outcome: Outcome::Throttled { run_at_ms: 5 },
                destination: None,
            },
            Rec::Finish {
                id: 3,
                token: 9,
                at_ms: 1,
                outcome: Outcome::Succeeded,
                destination: None,
            },
            Rec::Finish {
                id: 4,
                token: 9,
                at_ms: 1,
                outcome: Outcome::Dropped,
                destination: None,
            },
        ]
    }

    fn read_all(dir: &Path, from: Pos, until: Pos) -> Vec<Rec> {
        let mut r = Reader::new(dir, from);
        let mut out = Vec::new();
        while let Some((rec, _)) = r.next(until).unwrap() {
            out.push(rec);
        }
        out
    }

    #[test]
    fn records_read_back_as_written_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::create(dir.path(), 3, false).unwrap();
        let mut end = a.end();
        for rec in all() {
            let mut buf = Vec::new();
            rec.encode(&mut buf);
            end = a.append(&buf).unwrap();
        }
        // Force a new segment for the next group.
        a.end.off = SEGMENT_BYTES;
        let mut buf = Vec::new();
        Rec::Accept(accept(9)).encode(&mut buf);
        let last = a.append(&buf).unwrap();
        assert_eq!(last.seg, 4);
        let mut want = all();
        want.push(Rec::Accept(accept(9)));
        assert_eq!(read_all(dir.path(), Pos { seg: 3, off: 0 }, last), want);
        // From a position in the middle, and up to one.
        assert_eq!(
            read_all(dir.path(), Pos { seg: 3, off: 0 }, end),
            all(),
            "nothing past `until`"
        );
        assert_eq!(segments(dir.path()).unwrap(), vec![3, 4]);
        delete_before(dir.path(), 4).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![4]);
    }

    #[test]
    fn a_record_cut_short_or_damaged_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::create(dir.path(), 1, false).unwrap();
        let mut buf = Vec::new();
        Rec::Accept(accept(1)).encode(&mut buf);
        let first = a.append(&buf).unwrap();
        let mut second = Vec::new();
        Rec::Accept(accept(2)).encode(&mut second);
        let path = segment_path(dir.path(), 1);
        let whole = Pos {
            seg: 1,
            off: u64::MAX >> 24,
        };
        for cut in [1, 7, 8, second.len() - 1] {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&second[..cut]).unwrap();
            assert_eq!(
                read_all(dir.path(), Pos { seg: 1, off: 0 }, whole),
                vec![Rec::Accept(accept(1))],
                "cut at {cut}"
            );
            f.set_len(first.off).unwrap();
        }
        let mut damaged = second.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&damaged).unwrap();
        assert_eq!(
            read_all(dir.path(), Pos { seg: 1, off: 0 }, whole),
            vec![Rec::Accept(accept(1))]
        );
    }

    #[test]
    fn a_record_being_written_is_read_whole_once_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::create(dir.path(), 1, false).unwrap();
        let mut buf = Vec::new();
        Rec::Accept(accept(1)).encode(&mut buf);
        a.append(&buf).unwrap();
        let mut second = Vec::new();
        Rec::Accept(accept(2)).encode(&mut second);
        let whole = Pos {
            seg: 1,
            off: u64::MAX >> 24,
        };
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        // One reader follows the file as it grows, a piece at a time (its
        // buffer must not keep a record's first part as the whole of it).
        let mut r = Reader::new(dir.path(), Pos { seg: 1, off: 0 });
        assert_eq!(r.next(whole).unwrap().unwrap().0, Rec::Accept(accept(1)));
        for (from, to) in [(0, 3), (3, 9), (9, second.len() - 1)] {
            f.write_all(&second[from..to]).unwrap();
            assert!(r.next(whole).unwrap().is_none(), "cut at {to}");
        }
        f.write_all(&second[second.len() - 1..]).unwrap();
        assert_eq!(r.next(whole).unwrap().unwrap().0, Rec::Accept(accept(2)));
        assert!(r.next(whole).unwrap().is_none());
    }

    #[test]
    fn positions_pack_in_order() {
        let a = Pos { seg: 2, off: 10 };
        let b = Pos { seg: 3, off: 0 };
        assert!(a.pack() < b.pack());
        assert_eq!(Pos::unpack(a.pack()), a);
    }
}
