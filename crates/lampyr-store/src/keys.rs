//! Access keys: an id and a secret that lampyr issues for clients that sign
//! their requests the AWS way (SigV4), such as the AWS SDKs and CLI calling
//! the Lambda Invoke API. Kept in `DATA/lampyr.db`, table `access_keys`; the
//! secret is stored as issued, because checking a signature needs it (as on
//! AWS). Every key can call every function, like the management token.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub use lampyr_api::keys::{KeyInfo, NewKey};
use parking_lot::Mutex;
use rusqlite::{params, Connection};

use crate::{from_ms, now_ms, rfc3339};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("access keys: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a key's name is at most 128 printable characters: {0:?}")]
    InvalidName(String),
}

type Result<T> = std::result::Result<T, KeyError>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_keys (
    id         TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// The access keys, with their secrets in memory for signature checks.
pub struct KeyStore {
    db: Mutex<Connection>,
    secrets: Mutex<HashMap<String, String>>,
}

impl KeyStore {
    /// Opens the keys in the metadata database at `path`.
    pub fn open(path: &Path) -> Result<KeyStore> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let secrets = {
            let mut stmt = conn.prepare("SELECT id, secret FROM access_keys")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<HashMap<String, String>>>()?
        };
        Ok(KeyStore {
            db: Mutex::new(conn),
            secrets: Mutex::new(secrets),
        })
    }

    /// Issues a key named `name` (a note for people: who or what uses it).
    pub fn create(&self, name: &str) -> Result<NewKey> {
        if name.len() > 128 || name.chars().any(|c| c.is_control()) {
            return Err(KeyError::InvalidName(name.to_string()));
        }
        let id = format!(
            "LKIA{}",
            random_chars(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        );
        let secret = random_chars(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        );
        let created = now_ms();
        self.db.lock().execute(
            "INSERT INTO access_keys (id, secret, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, secret, name, created],
        )?;
        self.secrets.lock().insert(id.clone(), secret.clone());
        Ok(NewKey {
            info: KeyInfo {
                id,
                name: name.to_string(),
                created_at: rfc3339(from_ms(created)),
            },
            secret,
        })
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<KeyInfo>> {
        let db = self.db.lock();
        let mut stmt =
            db.prepare("SELECT id, name, created_at FROM access_keys ORDER BY created_at, id")?;
        let rows = stmt.query_map([], |r| {
            Ok(KeyInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: rfc3339(from_ms(r.get(2)?)),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a key; false if there was none with this id.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let n = self
            .db
            .lock()
            .execute("DELETE FROM access_keys WHERE id = ?1", params![id])?;
        self.secrets.lock().remove(id);
        Ok(n > 0)
    }

    /// The secret of key `id`, if it exists.
    pub fn secret(&self, id: &str) -> Option<String> {
        self.secrets.lock().get(id).cloned()
    }
}

fn random_chars(n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_issued_listed_found_and_revoked_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lampyr.db");
        let keys = KeyStore::open(&path).unwrap();
        let a = keys.create("ci").unwrap();
        assert!(a.info.id.starts_with("LKIA") && a.info.id.len() == 20);
        assert_eq!(a.secret.len(), 40);
        let b = keys.create("laptop").unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(keys.secret(&a.info.id).as_deref(), Some(a.secret.as_str()));
        drop(keys);
        let keys = KeyStore::open(&path).unwrap();
        let listed = keys.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|k| k.name == "laptop"));
        assert_eq!(keys.secret(&b.info.id).as_deref(), Some(b.secret.as_str()));
        assert!(keys.delete(&a.info.id).unwrap());
        assert!(!keys.delete(&a.info.id).unwrap());
        assert_eq!(keys.secret(&a.info.id), None);
        assert!(keys.create("bad\nname").is_err());
    }
}
