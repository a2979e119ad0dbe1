//! Function logs on disk: one JSON-lines file per function, rotated by size
//! so each function's log storage stays bounded.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use lampyr_api::LogRecord;

/// Bounds on one function's log storage.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Size at which the current file is rotated.
    pub file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            file_bytes: 8 << 20,
            keep: 2,
        }
    }
}

struct OpenLog {
    out: BufWriter<File>,
    size: u64,
}

/// Appends and reads function logs. Appends come from one writer task.
pub struct LogStore {
    dir: PathBuf,
    limits: LogLimits,
    open: HashMap<String, OpenLog>,
}

/// What to read back.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub request_id: Option<String>,
    /// Only records at or after this RFC 3339 time (string comparison works
    /// because every stored timestamp has the same UTC format).
    pub since: Option<String>,
    /// At most this many of the newest matching records.
    pub tail: usize,
    /// Only records of this version.
    pub version: Option<u64>,
}

impl LogStore {
    pub fn new(dir: &Path, limits: LogLimits) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            limits,
            open: HashMap::new(),
        })
    }

    fn path(dir: &Path, function: &str, n: usize) -> PathBuf {
        if n == 0 {
            dir.join(format!("{function}.log"))
        } else {
            dir.join(format!("{function}.log.{n}"))
        }
    }

    /// Appends one record (buffered; call [`LogStore::flush`]).
    pub fn append(&mut self, rec: &LogRecord) -> std::io::Result<()> {
        let line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        if !self.open.contains_key(&rec.function) {
            let path = Self::path(&self.dir, &rec.function, 0);
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = f.metadata()?.len();
            self.open.insert(
                rec.function.clone(),
                OpenLog {
                    out: BufWriter::new(f),
                    size,
                },
            );
        }
        let log = self.open.get_mut(&rec.function).expect("just opened");
        log.out.write_all(&line)?;
        log.out.write_all(b"\n")?;
        log.size += line.len() as u64 + 1;
        if log.size >= self.limits.file_bytes {
            log.out.flush()?;
            self.open.remove(&rec.function);
            self.rotate(&rec.function)?;
        }
        Ok(())
    }

    fn rotate(&self, function: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_file(Self::path(&self.dir, function, self.limits.keep));
        for n in (0..self.limits.keep).rev() {
            let from = Self::path(&self.dir, function, n);
            if from.exists() {
                std::fs::rename(&from, Self::path(&self.dir, function, n + 1))?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        for log in self.open.values_mut() {
            log.out.flush()?;
        }
        Ok(())
    }

    /// Forgets a function's logs (when it is deleted).
    pub fn remove(&mut self, function: &str) {
        self.open.remove(function);
        for n in 0..=self.limits.keep {
            let _ = std::fs::remove_file(Self::path(&self.dir, function, n));
        }
    }

    /// Reads a function's records, oldest first.
    pub fn read(
        dir: &Path,
        keep: usize,
        function: &str,
        q: &LogQuery,
    ) -> std::io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        for n in (0..=keep).rev() {
            let Ok(f) = File::open(Self::path(dir, function, n)) else {
                continue;
            };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let Ok(rec) = serde_json::from_str::<LogRecord>(&line) else {
                    continue;
                };
                if q.request_id
                    .as_deref()
                    .is_some_and(|r| rec.request_id.as_deref() != Some(r))
                {
                    continue;
                }
                if q.since.as_deref().is_some_and(|s| rec.ts.as_str() < s) {
                    continue;
                }
                if q.version.is_some_and(|v| rec.version != v) {
                    continue;
                }
                out.push(rec);
            }
        }
        if q.tail > 0 && out.len() > q.tail {
            out.drain(..out.len() - q.tail);
        }
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> LogLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, rid: &str) -> LogRecord {
        LogRecord {
            ts: format!("2026-01-01T00:00:{:02}.000Z", i % 60),
            function: "f".into(),
            version: 1,
            request_id: Some(rid.into()),
            instance: "i".into(),
            stream: "stdout".into(),
            level: None,
            message: format!("line {i}"),
        }
    }

    #[test]
    fn rotates_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            file_bytes: 2000,
            keep: 1,
        };
        let mut s = LogStore::new(d.path(), limits).unwrap();
        for i in 0..200 {
            s.append(&rec(i, if i % 2 == 0 { "a" } else { "b" }))
                .unwrap();
        }
        s.flush().unwrap();
        let total: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 2 * 2000 + 200, "{total}");
        let all = LogStore::read(d.path(), 1, "f", &LogQuery::default()).unwrap();
        assert_eq!(all.last().unwrap().message, "line 199");
        let only_a = LogStore::read(
            d.path(),
            1,
            "f",
            &LogQuery {
                request_id: Some("a".into()),
                tail: 3,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            only_a
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>(),
            ["line 194", "line 196", "line 198"]
        );
    }
}
