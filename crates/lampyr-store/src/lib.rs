//! The code store and the metadata store.
//!
//! * **Metadata** (functions, their immutable versions, aliases, trigger
//!   tokens, access keys in `keys.rs`) lives in one embedded SQLite
//!   database, `DATA/lampyr.db`.
//! * **Code packages** are gzip'd tar archives kept as content-addressed blobs,
//!   `DATA/blobs/sha256/AB/ABCDEF…`, written once and never changed.
//! * **Pre-built code**: at deploy time every package is verified and unpacked
//!   into `DATA/code/SHA256/`, so the first request of a new version does no
//!   download or unpack. [`Store::ensure_unpacked`] rebuilds that cache from
//!   the blob if it is missing.
//!
//! A deploy is validated in full here (manifest, name, handler file, archive
//! entries) before anything is recorded.
#![forbid(unsafe_code)]

pub mod aliases;
pub mod keys;
pub mod logs;
pub mod records;
pub mod versions;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lampyr_api::{FunctionSpec, ManifestError};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

pub use aliases::{AliasRecord, Canary};
pub use keys::{KeyError, KeyInfo, KeyStore, NewKey};
use lampyr_package as package;
pub use lampyr_package::{pack_dir, PackageError};
pub use logs::{LogLimits, LogQuery, LogStore};
pub use records::{RecordQuery, RecordStore, Retention};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "the package's lampyr.toml names function '{manifest}', but it was deployed as '{url}'"
    )]
    NameMismatch { url: String, manifest: String },
    #[error("function '{0}' does not exist")]
    NotFound(String),
    #[error("stored record of function '{0}' is corrupt: {1}")]
    Corrupt(String, String),
    #[error(
        "function '{function}' has no version {version}: `lampyr versions {function}` lists them"
    )]
    VersionNotFound { function: String, version: u64 },
    #[error("version {version} of function '{function}' is in use: {why}")]
    VersionInUse {
        function: String,
        version: u64,
        why: String,
    },
    #[error(
        "function '{function}' has no alias '{alias}': `lampyr alias ls {function}` lists them"
    )]
    AliasNotFound { function: String, alias: String },
    /// An alias that cannot be set, changed or removed this way.
    #[error("alias '{alias}' of function '{function}': {message}")]
    InvalidAlias {
        function: String,
        alias: String,
        message: String,
    },
    /// A weight outside 0-1, or on the alias's own version.
    #[error("alias '{alias}' of function '{function}': {message}")]
    InvalidWeight {
        function: String,
        alias: String,
        message: String,
    },
}

impl StoreError {
    /// True when the data directory's disk (or quota) is full: nothing of
    /// the operation was kept, and it works again once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Io { source, .. }
            | StoreError::Package(PackageError::Io { source, .. }) => package::no_space(source),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let what = what.into();
        move |source| StoreError::Io { what, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One immutable version of a function.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub name: String,
    pub version: u64,
    pub spec: FunctionSpec,
    pub code_sha256: String,
    pub code_size: u64,
    pub created_at: SystemTime,
    /// What the deploy said of it (`lampyr deploy --description`).
    pub description: Option<String>,
}

/// A function and its current version.
#[derive(Debug, Clone)]
pub struct FunctionRecord {
    pub name: String,
    pub current: VersionRecord,
    pub trigger_token: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A validated package whose code is ready to run, not yet a version
/// ([`Store::stage`]).
#[derive(Debug, Clone)]
pub struct Staged {
    pub name: String,
    pub spec: FunctionSpec,
    /// `lampyr.toml` as written.
    pub manifest: String,
    pub code_sha256: String,
    pub code_size: u64,
    /// The unpacked, prepared, read-only code.
    pub code_dir: PathBuf,
    /// The current version, when the package is the same as its.
    pub unchanged: Option<FunctionRecord>,
    /// Validating, unpacking and preparing took this long.
    pub build_time: Duration,
    /// Recorded with the version.
    pub description: Option<String>,
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub record: FunctionRecord,
    /// False when the package was identical to the current version.
    pub changed: bool,
    pub build_time: Duration,
}

/// Limits the store enforces on packages.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// The largest compressed package accepted.
    pub max_package_bytes: u64,
    /// The largest unpacked code size accepted: every byte of the
    /// archive once decompressed, plus 4 KiB per entry.
    pub max_unpacked_bytes: u64,
    /// The most entries (files, directories, links) a package may have.
    pub max_entries: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_package_bytes: 64 << 20,
            max_unpacked_bytes: 256 << 20,
            max_entries: 65_536,
        }
    }
}

/// Prepares a version's unpacked code for its runtime (for example,
/// compiles Python modules to bytecode) while it is still writable, before
/// it is sealed. Best effort: it cannot fail a deploy.
pub type CodePreparer = Arc<dyn Fn(&Path, &FunctionSpec) + Send + Sync>;

pub struct Store {
    root: PathBuf,
    db: Mutex<Connection>,
    limits: StoreLimits,
    prepare: Option<CodePreparer>,
    /// Code of deploys staged and not yet committed or discarded: garbage
    /// collection leaves it alone.
    staging: Mutex<std::collections::HashSet<String>>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS functions (
    name            TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL,
    trigger_token   TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    code_size   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    description TEXT,
    PRIMARY KEY (name, version)
);
"#;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Formats a time as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path, limits: StoreLimits) -> Result<Self> {
        for dir in ["blobs/sha256", "code", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).map_err(StoreError::io(format!(
                "creating {}",
                root.join(dir).display()
            )))?;
        }
        let conn = Connection::open(root.join("lampyr.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        versions::migrate(&conn)?;
        aliases::create(&conn)?;
        // Left-overs of a deploy interrupted by a crash.
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        std::fs::create_dir_all(root.join("tmp")).map_err(StoreError::io("creating tmp"))?;
        Ok(Store {
            root: root.to_path_buf(),
            db: Mutex::new(conn),
            limits,
            prepare: None,
            staging: Mutex::new(Default::default()),
        })
    }

    /// Runs `prepare` on every version's code when it is unpacked.
    pub fn with_code_preparer(mut self, prepare: CodePreparer) -> Self {
        self.prepare = Some(prepare);
        self
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(&sha[..2]).join(sha)
    }

    /// The directory holding the unpacked code of a package.
    pub fn code_dir(&self, sha: &str) -> PathBuf {
        self.root.join("code").join(sha)
    }

    /// The limits unpacking a deploy's package runs under.
    fn unpack_limits(&self) -> package::UnpackLimits {
        package::UnpackLimits {
            max_bytes: self.limits.max_unpacked_bytes,
            max_entries: self.limits.max_entries,
        }
    }

    /// Validates a package, stores it and records a new version of `name`
    /// ([`Store::stage`], then [`Store::commit`]).
    pub fn deploy(&self, name: &str, package: &[u8]) -> Result<Deployed> {
        let staged = self.stage(name, package)?;
        if let Some(record) = staged.unchanged.clone() {
            return Ok(Deployed {
                record,
                changed: false,
                build_time: staged.build_time,
            });
        }
        let version = self.next_version(name)?;
        let record = self.commit(&staged, version)?;
        Ok(Deployed {
            record,
            changed: true,
            build_time: staged.build_time,
        })
    }

    /// Validates a package and makes its code ready to run, without
    /// recording a version: the blob is stored and the code unpacked and
    /// prepared (content-addressed, so a later [`Store::commit`] or
    /// [`Store::discard`] decides whether it stays).
    ///
    /// The package must be a gzip'd tar archive with `lampyr.toml` at its
    /// root naming the same function. A refused package leaves nothing
    /// behind: its scratch tree and any partial blob are removed on every
    /// path out of here.
    pub fn stage(&self, name: &str, package: &[u8]) -> Result<Staged> {
        let started = std::time::Instant::now();
        lampyr_api::manifest::validate_name(name)?;
        if package.len() as u64 > self.limits.max_package_bytes {
            return Err(PackageError::TooLarge {
                what: "package",
                limit: self.limits.max_package_bytes,
                setting: "max_package",
            }
            .into());
        }
        let sha = hex(&Sha256::digest(package));

        // Unpack into a scratch directory first: nothing is kept unless the
        // whole package is valid.
        let scratch = Scratch::new(&self.root.join("tmp"))?;
        package::unpack(package, scratch.path(), self.unpack_limits())?;
        let manifest = package::read_manifest(scratch.path(), MAX_MANIFEST_BYTES)?;
        let spec = FunctionSpec::from_toml(&manifest)?;
        if spec.name != name {
            return Err(StoreError::NameMismatch {
                url: name.to_string(),
                manifest: spec.name,
            });
        }
        package::check_handler(scratch.path(), &spec)?;
        let code = self.code_dir(&sha);
        // Same code and manifest as now: nothing to do.
        let unchanged = self
            .get(name)
            .ok()
            .filter(|cur| cur.current.code_sha256 == sha && code.is_dir());
        if unchanged.is_none() {
            // Garbage collection leaves staged code alone until it is
            // committed or discarded.
            self.staging.lock().insert(sha.clone());
            if let Err(e) = self.store_code(&sha, package, scratch, &spec, &code) {
                self.staging.lock().remove(&sha);
                return Err(e);
            }
        }
        Ok(Staged {
            name: name.to_string(),
            spec,
            manifest,
            code_sha256: sha,
            code_size: package.len() as u64,
            code_dir: code,
            unchanged,
            build_time: started.elapsed(),
            description: None,
        })
    }

    /// Stores a package's blob, then its unpacked, prepared code: a crash
    /// in between (or before the commit writes the metadata row) leaves
    /// only unreferenced files, never a dangling row.
    fn store_code(
        &self,
        sha: &str,
        package: &[u8],
        scratch: Scratch,
        spec: &FunctionSpec,
        code: &Path,
    ) -> Result<()> {
        let blob = self.blob_path(sha);
        if !blob.exists() {
            let dir = blob.parent().expect("blob has a parent");
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating blob directory"))?;
            let tmp = Scratch::file(self.root.join("tmp").join(format!("{sha}.blob")));
            std::fs::write(tmp.path(), package).map_err(StoreError::io("writing package blob"))?;
            std::fs::rename(tmp.path(), &blob).map_err(StoreError::io("storing package blob"))?;
            tmp.keep();
        }
        if code.is_dir() {
            return Ok(());
        }
        self.install_code(scratch, Some(spec), code)
    }

    /// The number the next version of `name` gets.
    pub fn next_version(&self, name: &str) -> Result<u64> {
        let db = self.db.lock();
        let prev: Option<i64> = db
            .query_row(
                "SELECT MAX(version) FROM versions WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(prev.unwrap_or(0) as u64 + 1)
    }

    /// Records a staged package as version `version` of its function and
    /// makes it current. Fails if that version exists already.
    pub fn commit(&self, staged: &Staged, version: u64) -> Result<FunctionRecord> {
        let name = staged.name.as_str();
        let now = now_ms();
        let spec_json = serde_json::to_string(&staged.spec).expect("spec serialises");
        let mut db = self.db.lock();
        // IMMEDIATE: take the write lock now. A deferred transaction that
        // reads first cannot wait for the lock when the record writer (its
        // own connection) commits in between: SQLite fails it with "database
        // is locked" at once instead of applying the busy timeout.
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO versions (name, version, spec, manifest, code_sha256, code_size, created_at, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![name, version as i64, spec_json, staged.manifest, staged.code_sha256, staged.code_size as i64, now, staged.description],
        )?;
        let token = new_token();
        tx.execute(
            "INSERT INTO functions (name, current_version, trigger_token, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(name) DO UPDATE SET current_version = excluded.current_version, updated_at = excluded.updated_at",
            params![name, version as i64, token, now],
        )?;
        tx.commit()?;
        drop(db);
        self.staging.lock().remove(&staged.code_sha256);
        tracing::info!(function = name, version, sha256 = %staged.code_sha256, "deployed");
        self.get(name)
    }

    /// Drops a staged package that will not be committed: its code and
    /// blob go unless a recorded version uses them. Returns the code
    /// directory it removed (whose sandbox view must go too).
    pub fn discard(&self, staged: Staged) -> Result<Option<PathBuf>> {
        if staged.unchanged.is_some() {
            return Ok(None);
        }
        self.staging.lock().remove(&staged.code_sha256);
        let used: bool = self.db.lock().query_row(
            "SELECT EXISTS(SELECT 1 FROM versions WHERE code_sha256 = ?1)",
            params![staged.code_sha256],
            |r| r.get(0),
        )?;
        if used {
            return Ok(None);
        }
        package::unseal(&staged.code_dir);
        let _ = std::fs::remove_dir_all(&staged.code_dir);
        let _ = std::fs::remove_file(self.blob_path(&staged.code_sha256));
        Ok(Some(staged.code_dir))
    }

    /// The function and its current version.
    pub fn get(&self, name: &str) -> Result<FunctionRecord> {
        let db = self.db.lock();
        let row = db
            .query_row(
                "SELECT f.name, f.trigger_token, f.created_at, f.updated_at,
                        v.version, v.spec, v.code_sha256, v.code_size, v.created_at, v.description
                 FROM functions f JOIN versions v ON v.name = f.name AND v.version = f.current_version
                 WHERE f.name = ?1",
                params![name],
                read_function,
            )
            .optional()?;
        row.ok_or_else(|| StoreError::NotFound(name.to_string()))?
    }

    /// Every function with its current version, by name.
    pub fn list(&self) -> Result<Vec<FunctionRecord>> {
        let db = self.db.lock();
        let mut stmt = db.prepare(
            "SELECT f.name, f.trigger_token, f.created_at, f.updated_at,
                    v.version, v.spec, v.code_sha256, v.code_size, v.created_at, v.description
             FROM functions f JOIN versions v ON v.name = f.name AND v.version = f.current_version
             ORDER BY f.name",
        )?;
        let rows = stmt.query_map([], read_function)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Every recorded version of a function, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>> {
        let db = self.db.lock();
        let mut stmt = db.prepare(
            "SELECT name, version, spec, code_sha256, code_size, created_at, description FROM versions WHERE name = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![name], |r| version_row(r, 0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Deletes a function, all its versions, and code no version still uses.
    /// Returns the code directories it removed.
    pub fn delete(&self, name: &str) -> Result<Vec<PathBuf>> {
        let mut db = self.db.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM functions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM versions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM aliases WHERE function = ?1", params![name])?;
        tx.commit()?;
        drop(db);
        if n == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        self.collect_garbage()
    }

    /// Removes blobs and unpacked code that no version refers to (and no
    /// deploy in progress has staged); returns the code directories removed.
    pub fn collect_garbage(&self) -> Result<Vec<PathBuf>> {
        let used: std::collections::HashSet<String> = {
            let db = self.db.lock();
            let mut stmt = db.prepare("SELECT DISTINCT code_sha256 FROM versions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let staging = self.staging.lock();
        let mut removed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.root.join("code")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !used.contains(&name) && !staging.contains(&name) {
                    package::unseal(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(self.blob_path(&name));
                    removed.push(e.path());
                }
            }
        }
        Ok(removed)
    }

    /// Makes sure the unpacked code of a package exists, rebuilding it from
    /// its blob if needed, and returns its directory.
    pub fn ensure_unpacked(&self, sha: &str) -> Result<PathBuf> {
        let code = self.code_dir(sha);
        if code.is_dir() {
            return Ok(code);
        }
        let blob = std::fs::read(self.blob_path(sha))
            .map_err(StoreError::io(format!("reading package blob {sha}")))?;
        let scratch = Scratch::new(&self.root.join("tmp"))?;
        // A blob was accepted by a deploy, possibly under other limits.
        package::unpack(
            &blob,
            scratch.path(),
            package::UnpackLimits {
                max_bytes: u64::MAX,
                max_entries: u64::MAX,
            },
        )?;
        let spec = package::read_manifest(scratch.path(), MAX_MANIFEST_BYTES)
            .ok()
            .and_then(|m| FunctionSpec::from_toml(&m).ok());
        self.install_code(scratch, spec.as_ref(), &code)?;
        Ok(code)
    }

    /// Prepares unpacked code for its runtime (given its manifest), seals it
    /// read-only and moves it to `code`.
    fn install_code(
        &self,
        scratch: Scratch,
        spec: Option<&FunctionSpec>,
        code: &Path,
    ) -> Result<()> {
        if let (Some(prepare), Some(spec)) = (&self.prepare, spec) {
            prepare(scratch.path(), spec);
        }
        package::seal(scratch.path())?;
        std::fs::rename(scratch.path(), code).map_err(StoreError::io("storing unpacked code"))?;
        scratch.keep();
        Ok(())
    }
}

/// The largest `lampyr.toml` a package may have.
pub const MAX_MANIFEST_BYTES: u64 = lampyr_api::manifest::MAX_MANIFEST_BYTES as u64;

/// A directory or file under `DATA/tmp` that is removed when dropped,
/// unless [`Scratch::keep`] says it was moved into place: whichever way a
/// deploy ends, it leaves nothing behind.
struct Scratch {
    path: PathBuf,
    dir: bool,
    keep: bool,
}

impl Scratch {
    /// A new, empty scratch directory under `parent`.
    fn new(parent: &Path) -> Result<Scratch> {
        let path = parent.join(format!("deploy-{}", new_token()));
        std::fs::create_dir_all(&path).map_err(StoreError::io("creating scratch directory"))?;
        Ok(Scratch {
            path,
            dir: true,
            keep: false,
        })
    }

    /// A scratch file to be written at `path`.
    fn file(path: PathBuf) -> Scratch {
        Scratch {
            path,
            dir: false,
            keep: false,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// It was moved into place: nothing to remove.
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.dir {
            package::unseal(&self.path);
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_function(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FunctionRecord>> {
    let name: String = r.get(0)?;
    let current = version_from(
        name.clone(),
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    )
    .map(|v| VersionRecord {
        description: r.get(9).unwrap_or_default(),
        ..v
    });
    Ok(current.map(|current| FunctionRecord {
        trigger_token: r.get(1).unwrap_or_default(),
        created_at: from_ms(r.get(2).unwrap_or(0)),
        updated_at: from_ms(r.get(3).unwrap_or(0)),
        name,
        current,
    }))
}

fn version_from(
    name: String,
    version: i64,
    spec: String,
    sha: String,
    size: i64,
    created: i64,
) -> Result<VersionRecord> {
    let spec: FunctionSpec = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Corrupt(name.clone(), e.to_string()))?;
    Ok(VersionRecord {
        name,
        version: version as u64,
        spec,
        code_sha256: sha,
        code_size: size as u64,
        created_at: from_ms(created),
        description: None,
    })
}

/// A version from the columns `name, version, spec, code_sha256,
/// code_size, created_at, description` starting at `at`.
pub(crate) fn version_row(
    r: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<Result<VersionRecord>> {
    let v = version_from(
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        r.get(at + 4)?,
        r.get(at + 5)?,
    );
    let description: Option<String> = r.get(at + 6)?;
    Ok(v.map(|v| VersionRecord { description, ..v }))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A random 256-bit token, hex-encoded.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node.js function's directory: its manifest and `index.js`.
    pub(crate) fn function_dir(name: &str, body: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("lampyr.toml"),
            format!("name = \"{name}\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n"),
        )
        .unwrap();
        std::fs::write(d.path().join("index.js"), body).unwrap();
        d
    }

    #[test]
    fn deploy_versions_and_persists() {
        let data = tempfile::tempdir().unwrap();
        let src = function_dir("hello", "exports.handler = async () => 'v1';");
        let pkg = pack_dir(src.path()).unwrap();
        {
            let store = Store::open(data.path(), StoreLimits::default()).unwrap();
            let d = store.deploy("hello", &pkg).unwrap();
            assert!(d.changed);
            assert_eq!(d.record.current.version, 1);
            // Same bytes again: no new version.
            let d = store.deploy("hello", &pkg).unwrap();
            assert!(!d.changed);
            assert_eq!(d.record.current.version, 1);
            std::fs::write(
                src.path().join("index.js"),
                "exports.handler = async () => 'v2';",
            )
            .unwrap();
            let d = store
                .deploy("hello", &pack_dir(src.path()).unwrap())
                .unwrap();
            assert_eq!(d.record.current.version, 2);
        }
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        let f = store.get("hello").unwrap();
        assert_eq!(f.current.version, 2);
        assert_eq!(store.versions("hello").unwrap().len(), 2);
        let code = store.ensure_unpacked(&f.current.code_sha256).unwrap();
        assert!(std::fs::read_to_string(code.join("index.js"))
            .unwrap()
            .contains("v2"));
    }

    #[test]
    fn packing_is_deterministic() {
        let src = function_dir("hello", "exports.handler = 1;");
        let a = pack_dir(src.path()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        filetime_touch(&src.path().join("index.js"));
        let b = pack_dir(src.path()).unwrap();
        assert_eq!(a, b);
    }

    fn filetime_touch(p: &Path) {
        let body = std::fs::read(p).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn rejects_bad_packages() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        let src = function_dir("hello", "x");
        let pkg = pack_dir(src.path()).unwrap();
        let e = store.deploy("other", &pkg).unwrap_err();
        assert!(matches!(e, StoreError::NameMismatch { .. }), "{e}");
        std::fs::remove_file(src.path().join("index.js")).unwrap();
        let e = store
            .deploy("hello", &pack_dir(src.path()).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("index"), "{e}");
        let e = store.deploy("hello", b"not a tarball").unwrap_err();
        assert!(matches!(e, StoreError::Package(_)), "{e}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn delete_collects_code() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        let src = function_dir("gone", "exports.handler = 1;");
        let d = store
            .deploy("gone", &pack_dir(src.path()).unwrap())
            .unwrap();
        let sha = d.record.current.code_sha256.clone();
        assert!(store.code_dir(&sha).is_dir());
        store.delete("gone").unwrap();
        assert!(!store.code_dir(&sha).exists());
        assert!(matches!(store.get("gone"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete("gone"), Err(StoreError::NotFound(_))));
    }
}
