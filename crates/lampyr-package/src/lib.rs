//! The code package format: a gzip'd tar archive of the function directory
//! with `lampyr.toml` at its root. The CLI packs, the store unpacks; this
//! crate is both sides, and nothing else.
//!
//! * **Packing** ([`pack_dir`]) is deterministic (sorted entries, zero mtimes
//!   and owners, modes reduced to 0644/0755), so the same code always has
//!   the same SHA-256 and a redeploy of unchanged code makes no new version.
//!   What is packed follows `.lampyrignore` (gitignore syntax) in the
//!   function directory, or sensible defaults when there is none
//!   ([`DEFAULT_IGNORE`]); [`plan`] lists it without packing.
//! * **Unpacking** ([`unpack`]) trusts nothing: entries are plain relative
//!   paths; links are made after every file and resolved through the whole
//!   chain of links they pass; every decompressed byte and every entry
//!   counts against limits; `__pycache__` entries are refused.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use lampyr_api::FunctionSpec;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Over a limit of the server's: `setting` is its name in `[limits]`.
    #[error("the {what} is larger than the server's limit of {} ([limits] {setting} in the server configuration)", size(*limit))]
    TooLarge {
        what: &'static str,
        limit: u64,
        setting: &'static str,
    },
    #[error("invalid package: {0}")]
    Invalid(String),
    #[error("handler '{handler}': no file {tried} in the function directory")]
    HandlerMissing { handler: String, tried: String },
    /// A `provided` function without a usable `bootstrap`.
    #[error("runtime \"provided\": {0}")]
    BootstrapUnusable(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A size as people read it: bytes below a KiB, else KiB or MiB.
pub fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Never packed, whatever `.lampyrignore` says: version-control data, and
/// bytecode caches (lampyr compiles sources itself; a package with
/// `__pycache__` is refused).
const ALWAYS_SKIPPED: &[&str] = &[".git", ".hg", ".svn", "__pycache__"];

/// What is left out when a function directory has no `.lampyrignore`.
pub const DEFAULT_IGNORE: &[&str] = &[
    ".git",
    ".env*",
    ".venv",
    "venv",
    "__pycache__",
    "*.log",
    ".DS_Store",
    "node_modules/.cache",
];

/// The file whose gitignore-style lines say what not to pack.
pub const IGNORE_FILE: &str = ".lampyrignore";

/// One entry a package would hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// The path inside the package.
    pub path: PathBuf,
    /// Its size in bytes (0 for directories and links).
    pub size: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Link,
}

/// What packing a directory would ship: every entry, sorted, and whether
/// the rules came from `.lampyrignore` or the defaults.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entries: Vec<PlannedEntry>,
    pub from_ignore_file: bool,
}

impl Plan {
    /// The total size of the files, in bytes.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// The ignore rules of a function directory.
fn ignore_rules(dir: &Path) -> Result<(ignore::gitignore::Gitignore, bool), PackageError> {
    let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
    let file = dir.join(IGNORE_FILE);
    let from_file = file.is_file();
    if from_file {
        if let Some(e) = b.add(&file) {
            return Err(PackageError::Invalid(format!("{}: {e}", file.display())));
        }
        b.add_line(None, IGNORE_FILE)
            .map_err(|e| PackageError::Invalid(e.to_string()))?;
    } else {
        for rule in DEFAULT_IGNORE {
            b.add_line(None, rule)
                .map_err(|e| PackageError::Invalid(e.to_string()))?;
        }
    }
    let rules = b
        .build()
        .map_err(|e| PackageError::Invalid(format!("{}: {e}", file.display())))?;
    Ok((rules, from_file))
}

/// Lists what packing `dir` would ship.
pub fn plan(dir: &Path) -> Result<Plan, PackageError> {
    let (rules, from_ignore_file) = ignore_rules(dir)?;
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &rules, &mut paths)?;
    paths.sort();
    let mut entries = Vec::with_capacity(paths.len());
    for rel in paths {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        let (kind, size) = if meta.file_type().is_symlink() {
            (EntryKind::Link, 0)
        } else if meta.is_dir() {
            (EntryKind::Dir, 0)
        } else if meta.is_file() {
            (EntryKind::File, meta.len())
        } else {
            continue;
        };
        entries.push(PlannedEntry {
            path: rel,
            size,
            kind,
        });
    }
    Ok(Plan {
        entries,
        from_ignore_file,
    })
}

/// Packs a function directory into a deterministic `.tar.gz`, leaving out
/// what its `.lampyrignore` (or [`DEFAULT_IGNORE`]) names.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    pack(dir, None)
}

/// Packs a directory of code as [`pack_dir`] does, with `manifest` as its
/// `lampyr.toml` (a manifest made from another platform's template, for
/// code that has none); a directory with a `lampyr.toml` of its own is
/// refused, as the two could disagree.
pub fn pack_dir_with_manifest(dir: &Path, manifest: &str) -> Result<Vec<u8>, PackageError> {
    pack(dir, Some(manifest))
}

fn pack(dir: &Path, manifest: Option<&str>) -> Result<Vec<u8>, PackageError> {
    let mut entries: Vec<PathBuf> = plan(dir)?.entries.into_iter().map(|e| e.path).collect();
    let manifest_path = Path::new("lampyr.toml");
    if manifest.is_some() {
        if entries.iter().any(|e| e == manifest_path) {
            return Err(PackageError::Invalid(format!(
                "{} has a lampyr.toml of its own: deploy the directory with it (`lampyr deploy {}`), or remove it to deploy from the template",
                dir.display(),
                dir.display()
            )));
        }
        entries.push(manifest_path.to_path_buf());
        entries.sort();
    }
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    // Every entry's header: no times, no owners, modes reduced.
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h
    };
    for rel in entries {
        if let Some(text) = manifest.filter(|_| rel == manifest_path) {
            let mut h = header(tar::EntryType::Regular, text.len() as u64, 0o644);
            tar.append_data(&mut h, &rel, text.as_bytes())
                .map_err(io(dir))?;
            continue;
        }
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(io(&full))?;
            check_link(&rel, &target)?;
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            tar.append_link(&mut h, &rel, &target).map_err(io(&full))?;
        } else if meta.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            tar.append_data(&mut h, &rel, std::io::empty())
                .map_err(io(&full))?;
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            let mut h = header(tar::EntryType::Regular, meta.len(), mode);
            let f = std::fs::File::open(&full).map_err(io(&full))?;
            tar.append_data(&mut h, &rel, f).map_err(io(&full))?;
        }
    }
    let gz = tar.into_inner().map_err(io(dir))?;
    gz.finish().map_err(io(dir))
}

fn walk(
    root: &Path,
    rel: &Path,
    rules: &ignore::gitignore::Gitignore,
    out: &mut Vec<PathBuf>,
) -> Result<(), PackageError> {
    let dir = root.join(rel);
    for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name();
        if ALWAYS_SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let rel = rel.join(&name);
        let ft = e.file_type().map_err(io(&dir))?;
        let is_manifest = rel == Path::new("lampyr.toml");
        if !is_manifest && rules.matched(&rel, ft.is_dir()).is_ignore() {
            continue;
        }
        out.push(rel.clone());
        if ft.is_dir() {
            walk(root, &rel, rules, out)?;
        }
    }
    Ok(())
}

/// A symlink must be relative and must not leave the function directory.
fn check_link(at: &Path, target: &Path) -> Result<(), PackageError> {
    let bad = || {
        PackageError::Invalid(format!(
            "symlink {} -> {} points outside the function directory",
            at.display(),
            target.display()
        ))
    };
    if target.is_absolute() {
        return Err(bad());
    }
    let mut depth: i64 = at
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count() as i64
        - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return Err(bad()),
        }
        if depth < 0 {
            return Err(bad());
        }
    }
    Ok(())
}

/// What unpacking a package may use.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Every decompressed byte (headers, contents, padding and whatever
    /// follows the archive's end) plus [`ENTRY_COST`] per entry.
    pub max_bytes: u64,
    /// Most entries (files, directories and links).
    pub max_entries: u64,
}

/// What one entry costs besides its bytes: about a disk block and an inode.
pub const ENTRY_COST: u64 = 4096;

/// Counts every byte read through it against a budget shared with the
/// per-entry costs, and fails the read once the budget is spent: a
/// decompression bomb stops at the limit, wherever in the stream it is.
struct Budget<R> {
    inner: R,
    used: std::rc::Rc<std::cell::Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get().saturating_add(n as u64);
        self.used.set(used);
        if used > self.limit {
            return Err(std::io::Error::other(BudgetSpent));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct BudgetSpent;

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unpacked size limit reached")
    }
}

impl std::error::Error for BudgetSpent {}

/// True for the errors of a full disk (or a spent quota).
pub fn no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The errors `e` wraps, itself first: the tar reader wraps what a read
/// of its entry's contents returned in an error of its own.
fn chain(e: &std::io::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    std::iter::from_fn(move || {
        let cur = next?;
        // An io::Error's `source` is its inner error's source: look at
        // the inner error itself too.
        next = match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        };
        Some(cur)
    })
}

fn spent(e: &std::io::Error) -> bool {
    chain(e).any(|c| c.is::<BudgetSpent>())
}

/// What went wrong, without the paths on the server the tar reader puts in
/// its own messages.
fn cause(e: &std::io::Error) -> String {
    chain(e).last().map(|c| c.to_string()).unwrap_or_default()
}

/// Unpacks a package into `dst`, refusing anything that could escape it.
///
/// Regular files and directories are written first; symbolic links are
/// made only after them, so no entry is ever written through a link, and
/// then every link is resolved through the whole chain of links it passes
/// (see [`resolve`]): a link that ends up anywhere outside `dst`
/// fails the package. `__pycache__` entries are refused: bytecode is built
/// at deploy, by lampyr, from the sources.
pub fn unpack(package: &[u8], dst: &Path, limits: UnpackLimits) -> Result<(), PackageError> {
    let invalid = |m: String| PackageError::Invalid(m);
    let too_large = || PackageError::TooLarge {
        what: "unpacked code",
        limit: limits.max_bytes,
        setting: "max_unpacked",
    };
    let used = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let budget = Budget {
        inner: GzDecoder::new(package),
        used: used.clone(),
        limit: limits.max_bytes,
    };
    let mut archive = tar::Archive::new(budget);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let read_err = |e: std::io::Error| {
        if spent(&e) {
            too_large()
        } else {
            invalid(format!("corrupt archive ({e})"))
        }
    };
    let entries = archive.entries().map_err(|e| {
        if spent(&e) {
            too_large()
        } else {
            invalid(format!("not a gzip'd tar archive ({e})"))
        }
    })?;
    let mut count: u64 = 0;
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(read_err)?;
        count += 1;
        if count > limits.max_entries {
            return Err(invalid(format!(
                "the package has more than {} entries (the limit; raise [limits] max_entries in the server configuration if it needs more)",
                limits.max_entries
            )));
        }
        used.set(used.get().saturating_add(ENTRY_COST));
        if used.get() > limits.max_bytes {
            return Err(too_large());
        }
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry name ({e})")))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(invalid(format!(
                "entry {} is not a plain relative path",
                path.display()
            )));
        }
        if path.components().any(|c| c.as_os_str() == "__pycache__") {
            return Err(invalid(format!(
                "entry {} is in a __pycache__ directory: packages carry sources only, lampyr compiles them at deploy (remove __pycache__ directories, or deploy with `lampyr deploy`, which leaves them out)",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| invalid(format!("bad symlink ({e})")))?
                    .ok_or_else(|| invalid(format!("symlink {} has no target", path.display())))?
                    .into_owned();
                check_link(&path, &target)?;
                links.push((path, target));
                continue;
            }
            other => {
                return Err(invalid(format!(
                    "entry {} has unsupported type {other:?}: only files, directories and relative symlinks are allowed",
                    path.display()
                )))
            }
        }
        let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
        let ok = entry.unpack_in(dst).map_err(|e| {
            if spent(&e) {
                too_large()
            } else if no_space(&e) {
                io(dst)(e)
            } else {
                invalid(format!("cannot unpack {} ({})", path.display(), cause(&e)))
            }
        })?;
        if !ok {
            return Err(invalid(format!(
                "entry {} escapes the package",
                path.display()
            )));
        }
        if kind == tar::EntryType::Regular {
            let mode = if exec { 0o755 } else { 0o644 };
            let p = dst.join(&path);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))?;
        }
    }
    // Whatever follows the archive's end is read (so a truncated gzip
    // stream is noticed) and counted, never kept.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(read_err)?;
    // Links last: nothing above was written through one.
    for (path, target) in &links {
        let at = dst.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::os::unix::fs::symlink(target, &at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                invalid(format!(
                    "symlink {} has the same name as another entry",
                    path.display()
                ))
            } else {
                io(&at)(e)
            }
        })?;
    }
    for (path, target) in &links {
        match resolve(dst, path) {
            Resolved::Inside => {}
            Resolved::Outside => {
                return Err(invalid(format!(
                    "symlink {} -> {} points outside the function directory (through the links it passes)",
                    path.display(),
                    target.display()
                )))
            }
            Resolved::Loop => {
                return Err(invalid(format!(
                    "symlink {} -> {} is a loop (more than {MAX_HOPS} links deep)",
                    path.display(),
                    target.display()
                )))
            }
        }
    }
    Ok(())
}

/// Where a link leads, for [`resolve`].
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    Inside,
    Outside,
    Loop,
}

/// The most links one path may pass through, as the kernel allows.
const MAX_HOPS: usize = 40;

/// Where the link at `link` (relative to `root`) leads: following every
/// link on the way as the kernel would, each against the real tree.
/// Nonexistent components are taken as they are written.
pub fn resolve(root: &Path, link: &Path) -> Resolved {
    let mut at: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .map(|c| c.as_os_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let Ok(target) = std::fs::read_link(root.join(link)) else {
        return Resolved::Outside;
    };
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = target
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == "/" {
            return Resolved::Outside;
        } else if c == "." {
            continue;
        } else if c == ".." {
            if at.pop().is_none() {
                return Resolved::Outside;
            }
            continue;
        }
        at.push(c);
        let here: PathBuf = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Resolved::Loop;
                }
                let Ok(next) = std::fs::read_link(&here) else {
                    return Resolved::Outside;
                };
                at.pop();
                for c in next.components().rev() {
                    todo.push_front(c.as_os_str().to_owned());
                }
            }
            _ => {}
        }
    }
    Resolved::Inside
}

/// Reads the package's `lampyr.toml`: a regular file at its root, opened
/// without following a link, at most `limit` bytes. Nothing of a file that
/// is not a regular file inside the package is ever read (or quoted in an
/// error).
pub fn read_manifest(dir: &Path, limit: u64) -> Result<String, PackageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lampyr.toml");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackageError::Invalid(
                "the package has no lampyr.toml at its root".into(),
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(PackageError::Invalid(
                "lampyr.toml is a symbolic link: it must be a regular file".into(),
            ))
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let meta = file.metadata().map_err(io(&path))?;
    if !meta.is_file() {
        return Err(PackageError::Invalid(
            "lampyr.toml must be a regular file".into(),
        ));
    }
    if meta.len() > limit {
        return Err(PackageError::Invalid(format!(
            "lampyr.toml is {} bytes, over the limit of {limit} bytes",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| PackageError::Invalid(format!("lampyr.toml is not UTF-8 text ({e})")))?;
    Ok(text)
}

/// Checks that the handler's module file exists; for a custom runtime,
/// that the code has an executable `bootstrap` at its root.
pub fn check_handler(dir: &Path, spec: &FunctionSpec) -> Result<(), PackageError> {
    if spec.runtime.is_custom() {
        return check_bootstrap(dir);
    }
    let (module, _) = spec.handler_parts();
    let exts = spec.runtime.extensions();
    if exts
        .iter()
        .any(|ext| dir.join(format!("{module}.{ext}")).is_file())
    {
        return Ok(());
    }
    let tried = exts
        .iter()
        .map(|e| format!("{module}.{e}"))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(PackageError::HandlerMissing {
        handler: spec.handler.clone(),
        tried,
    })
}

/// A custom runtime's `bootstrap`: a regular file (or a link to one inside
/// the code) that its owner may execute.
fn check_bootstrap(dir: &Path) -> Result<(), PackageError> {
    let name = lampyr_api::runtimes::PROVIDED_BOOTSTRAP;
    let path = dir.join(name);
    let bad = |why: String| Err(PackageError::BootstrapUnusable(why));
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return bad(format!(
                "the function directory has no `{name}`: a custom runtime is an executable named `{name}` at the code's root that speaks the Lambda Runtime API (`lampyr init --runtime provided` writes an example)"
            ))
        }
        Err(e) => return bad(format!("`{name}` cannot be read ({e})")),
    };
    if !meta.is_file() {
        return bad(format!("`{name}` must be a regular file, an executable"));
    }
    if meta.permissions().mode() & 0o100 == 0 {
        return bad(format!(
            "`{name}` is not executable: run `chmod +x {name}` and deploy again"
        ));
    }
    Ok(())
}

/// Makes unpacked code read-only: it is immutable once deployed.
pub fn seal(dir: &Path) -> Result<(), PackageError> {
    set_tree_writable(dir, false)
}

/// Makes a sealed tree writable again so it can be removed.
pub fn unseal(dir: &Path) {
    let _ = set_tree_writable(dir, true);
}

fn set_tree_writable(dir: &Path, writable: bool) -> Result<(), PackageError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        if writable {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(dir))?;
        }
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            set_tree_writable(&e.path(), writable)?;
        }
        if !writable {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
                .map_err(io(dir))?;
        }
    } else {
        let mode = meta.permissions().mode();
        let new = if writable {
            mode | 0o200
        } else {
            mode & !0o222
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new)).map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
    };

    /// A hand-made archive: (name, Some(content) for a file | None for a
    /// directory), links as (name, target), then `trailing` zero bytes
    /// after the end-of-archive blocks.
    fn archive(
        files: &[(&str, Option<&[u8]>)],
        links: &[(&str, &str)],
        trailing: usize,
    ) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            match body {
                Some(body) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(body.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *body).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, name, std::io::empty()).unwrap();
                }
            }
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.finish().unwrap();
        let mut gz = b.into_inner().unwrap();
        let zeros = vec![0u8; 1 << 16];
        let mut left = trailing;
        while left > 0 {
            let n = left.min(zeros.len());
            std::io::Write::write_all(&mut gz, &zeros[..n]).unwrap();
            left -= n;
        }
        gz.finish().unwrap()
    }

    #[test]
    fn a_manifest_made_elsewhere_is_packed_as_lampyr_toml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("index.js"), "x").unwrap();
        let text = "name = \"a\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";
        let pkg = pack_dir_with_manifest(d.path(), text).unwrap();
        assert_eq!(
            pkg,
            pack_dir_with_manifest(d.path(), text).unwrap(),
            "deterministic"
        );
        let out = tempfile::tempdir().unwrap();
        unpack(&pkg, out.path(), NO_LIMITS).unwrap();
        assert_eq!(read_manifest(out.path(), 1 << 16).unwrap(), text);
        assert_eq!(std::fs::read(out.path().join("index.js")).unwrap(), b"x");
        // Packed as if the file were there.
        std::fs::write(d.path().join("lampyr.toml"), text).unwrap();
        assert_eq!(pack_dir(d.path()).unwrap(), pkg);
        let e = pack_dir_with_manifest(d.path(), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has a lampyr.toml of its own"), "{e}");
    }

    #[test]
    fn links_must_stay_inside() {
        assert!(check_link(Path::new("node_modules/.bin/x"), Path::new("../pkg/bin.js")).is_ok());
        assert!(check_link(Path::new("a"), Path::new("../etc/passwd")).is_err());
        assert!(check_link(Path::new("a"), Path::new("/etc/passwd")).is_err());
        assert!(check_link(Path::new("d/a"), Path::new("../../x")).is_err());
        // `./` is no level: found by the property test below.
        assert!(check_link(Path::new("./a"), Path::new("..")).is_err());
        assert!(check_link(Path::new("./d/./a"), Path::new("../..")).is_err());
    }

    #[test]
    fn unpack_refuses_traversal() {
        // A hand-made archive with a `../` entry.
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name = b"../evil";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        b.append(&header, &b"x"[..]).unwrap();
        let pkg = b.into_inner().unwrap().finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = unpack(&pkg, d.path(), NO_LIMITS).unwrap_err();
        assert!(e.to_string().contains("evil"), "{e}");
        assert!(!d.path().parent().unwrap().join("evil").exists());
    }

    /// Each link looks harmless on its own (`a/u1 -> u0/..` stays inside
    /// when read alone), but the chain climbs above the package: the
    /// whole chain is followed and the package refused.
    #[test]
    fn a_chain_of_links_that_climbs_out_is_refused() {
        let mut links = vec![("a/u0".to_string(), "..".to_string())];
        for i in 1..6 {
            links.push((format!("a/u{i}"), format!("u{}/..", i - 1)));
        }
        let links: Vec<(&str, &str)> = links
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        for (at, target) in &links {
            assert!(
                check_link(Path::new(at), Path::new(target)).is_ok(),
                "{at} alone looks inside"
            );
        }
        let pkg = archive(&[("a", None)], &links, 0);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("pkg");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&pkg, &root, NO_LIMITS).unwrap_err();
        assert!(
            e.to_string().contains("outside the function directory"),
            "{e}"
        );
        // Links that stay inside, through other links, are fine.
        let pkg = archive(
            &[("lib", None), ("lib/real.js", Some(b"x")), ("d", None)],
            &[("d/up", ".."), ("d/alias.js", "up/lib/real.js")],
            0,
        );
        let ok = d.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        unpack(&pkg, &ok, NO_LIMITS).unwrap();
        assert_eq!(std::fs::read(ok.join("d/alias.js")).unwrap(), b"x");
        let pkg = archive(&[], &[("a", "b"), ("b", "a")], 0);
        let l = d.path().join("loop");
        std::fs::create_dir(&l).unwrap();
        let e = unpack(&pkg, &l, NO_LIMITS).unwrap_err();
        assert!(e.to_string().contains("is a loop"), "{e}");
    }

    #[test]
    fn no_entry_is_written_through_a_link() {
        // Links are made after every file: `b/x` makes a directory `b`,
        // and the link `b` then collides with it.
        let pkg = archive(&[("b/x", Some(b"1"))], &[("b", ".")], 0);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("pkg");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&pkg, &root, NO_LIMITS).unwrap_err();
        assert!(e.to_string().contains("same name"), "{e}");
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn pycache_entries_are_refused() {
        let pkg = archive(
            &[("__pycache__/json.cpython-311.pyc", Some(b"evil"))],
            &[],
            0,
        );
        let d = tempfile::tempdir().unwrap();
        let e = unpack(&pkg, d.path(), NO_LIMITS).unwrap_err();
        assert!(e.to_string().contains("__pycache__"), "{e}");
    }

    /// Zeros after the end of the archive count against the limit and are
    /// never held in memory; under the limit they are read and dropped.
    #[test]
    fn trailing_data_counts_against_the_limit() {
        let pkg = archive(&[("index.js", Some(b"x"))], &[], 64 << 20);
        assert!(pkg.len() < 1 << 20, "a small package ({} bytes)", pkg.len());
        let d = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_bytes: 16 << 20,
            max_entries: 100,
        };
        let e = unpack(&pkg, d.path(), limits).unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
        let d = tempfile::tempdir().unwrap();
        let pkg = archive(&[("index.js", Some(b"x"))], &[], 1 << 20);
        unpack(&pkg, d.path(), limits).unwrap();
    }

    /// A file whose own contents spend the budget is over the limit too
    /// (the tar reader wraps the read's error in one of its own), and the
    /// error names the limit and its setting, never a path on the server.
    #[test]
    fn one_file_over_the_unpacked_limit_is_too_large() {
        let zeros = vec![0u8; 2 << 20];
        let pkg = archive(&[("zeros.bin", Some(&zeros[..]))], &[], 0);
        let d = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        let e = unpack(&pkg, d.path(), limits).unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("limit of 1.0 MiB") && m.contains("[limits] max_unpacked"),
            "{m}"
        );
        assert!(!m.contains(d.path().to_str().unwrap()), "{m}");
    }

    #[test]
    fn entries_are_capped_and_each_costs_something() {
        let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, Option<&[u8]>)> =
            names.iter().map(|n| (n.as_str(), Some(&b""[..]))).collect();
        let pkg = archive(&files, &[], 0);
        let d = tempfile::tempdir().unwrap();
        let e = unpack(
            &pkg,
            d.path(),
            UnpackLimits {
                max_bytes: u64::MAX,
                max_entries: 10,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than 10 entries"), "{e}");
        // Empty files are not free: 50 of them cost 50 × 4 KiB.
        let d = tempfile::tempdir().unwrap();
        let e = unpack(
            &pkg,
            d.path(),
            UnpackLimits {
                max_bytes: 100 * 1024,
                max_entries: 1000,
            },
        )
        .unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn the_manifest_is_read_only_from_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("lampyr.toml")).unwrap();
        let e = read_manifest(d.path(), 1 << 16).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && !e.contains("root:"), "{e}");
        std::fs::remove_file(d.path().join("lampyr.toml")).unwrap();
        std::fs::create_dir(d.path().join("lampyr.toml")).unwrap();
        assert!(read_manifest(d.path(), 1 << 16).is_err());
        std::fs::remove_dir(d.path().join("lampyr.toml")).unwrap();
        std::fs::write(d.path().join("lampyr.toml"), "x".repeat(100)).unwrap();
        let e = read_manifest(d.path(), 10).unwrap_err().to_string();
        assert!(e.contains("over the limit of 10 bytes"), "{e}");
        std::fs::write(d.path().join("lampyr.toml"), "name = 1").unwrap();
        assert_eq!(read_manifest(d.path(), 10).unwrap(), "name = 1");
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

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 64,
    };

    /// A path of up to four components drawn from names that make trouble.
    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("..".to_string()),
                Just(".".to_string()),
                Just("__pycache__".to_string()),
                Just("lampyr.toml".to_string()),
                "[a-z]{1,3}",
            ],
            1..4,
        )
        .prop_map(|parts| parts.join("/"))
    }

    #[derive(Debug, Clone)]
    enum Entry {
        File(String, Vec<u8>),
        Dir(String),
        Link(String, String),
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            (path(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(p, b)| Entry::File(p, b)),
            path().prop_map(Entry::Dir),
            (
                path(),
                prop_oneof![path(), Just("/etc".to_string()), Just("/".to_string())]
            )
                .prop_map(|(p, t)| Entry::Link(p, t)),
        ]
    }

    /// Builds an archive as given, without the builder's checks.
    fn build(entries: &[Entry]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, kind, body, target): (&str, _, &[u8], Option<&str>) = match e {
                Entry::File(p, body) => (p, tar::EntryType::Regular, body, None),
                Entry::Dir(p) => (p, tar::EntryType::Directory, &[], None),
                Entry::Link(p, t) => (p, tar::EntryType::Symlink, &[], Some(t)),
            };
            if name.len() > 99 || target.is_some_and(|t| t.len() > 99) {
                continue;
            }
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(t) = target {
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(200)))]

        /// Whatever an archive holds, unpacking it writes nothing outside
        /// the destination, and every link it leaves resolves inside.
        #[test]
        fn no_archive_escapes(entries in proptest::collection::vec(entry(), 1..12)) {
            let d = tempfile::tempdir().unwrap();
            let dst = d.path().join("pkg");
            std::fs::create_dir(&dst).unwrap();
            let result = unpack(&build(&entries), &dst, LIMITS);
            let outside: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
            prop_assert_eq!(outside, vec![std::ffi::OsString::from("pkg")]);
            if result.is_ok() {
                let root = dst.canonicalize().unwrap();
                let mut todo = vec![dst.clone()];
                while let Some(p) = todo.pop() {
                    for e in std::fs::read_dir(&p).unwrap().flatten() {
                        let t = e.file_type().unwrap();
                        if t.is_symlink() {
                            if let Ok(real) = e.path().canonicalize() {
                                prop_assert!(real.starts_with(&root), "{} -> {}", e.path().display(), real.display());
                            }
                        } else if t.is_dir() {
                            prop_assert!(e.file_name() != "__pycache__");
                            todo.push(e.path());
                        }
                    }
                }
            }
        }

        /// Arbitrary bytes are refused cleanly.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let d = tempfile::tempdir().unwrap();
            let _ = unpack(&data, d.path(), LIMITS);
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            std::io::Write::write_all(&mut gz, &data).unwrap();
            let _ = unpack(&gz.finish().unwrap(), d.path(), LIMITS);
        }
    }
}
