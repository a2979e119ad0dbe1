//! A function's versions, one by one: reading a version by number,
//! deleting one, and keeping only the last few that no alias uses.
//!
//! Every deploy records an immutable, numbered version (`Store::commit`);
//! the newest is the function's current one (`$LATEST`). A version keeps
//! its code (blob and unpacked directory) until it is deleted, by hand
//! ([`Store::delete_version`]) or by retention ([`Store::prune_versions`]).
//! The newest version and versions an alias routes to are never deleted.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{Result, Store, StoreError, VersionRecord};

/// Brings a `versions` table of an earlier schema up to date: it had no
/// `description` column.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let has: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('versions') WHERE name = 'description')",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE versions ADD COLUMN description TEXT;")?;
        tracing::info!("versions table: added descriptions");
    }
    Ok(())
}

/// The aliases that route to `version` of `function`, by name.
pub(crate) fn aliases_using(
    conn: &Connection,
    function: &str,
    version: u64,
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT alias FROM aliases WHERE function = ?1 AND (version = ?2 OR weight_version = ?2) ORDER BY alias",
    )?;
    let rows = stmt.query_map(params![function, version as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Version `version` of `name`.
    pub fn version(&self, name: &str, version: u64) -> Result<VersionRecord> {
        let db = self.db.lock();
        let row = db
            .query_row(
                "SELECT name, version, spec, code_sha256, code_size, created_at, description
                 FROM versions WHERE name = ?1 AND version = ?2",
                params![name, version as i64],
                |r| crate::version_row(r, 0),
            )
            .optional()?;
        match row {
            Some(v) => v,
            None => {
                let exists: bool = db.query_row(
                    "SELECT EXISTS (SELECT 1 FROM functions WHERE name = ?1)",
                    params![name],
                    |r| r.get(0),
                )?;
                Err(if exists {
                    StoreError::VersionNotFound {
                        function: name.to_string(),
                        version,
                    }
                } else {
                    StoreError::NotFound(name.to_string())
                })
            }
        }
    }

    /// Deletes version `version` of `name` and code no version still uses;
    /// returns the code directories removed. Refused for the newest
    /// version and for a version an alias routes to (the error names it).
    pub fn delete_version(&self, name: &str, version: u64) -> Result<Vec<PathBuf>> {
        self.version(name, version)?;
        {
            let mut db = self.db.lock();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let latest: i64 = tx.query_row(
                "SELECT current_version FROM functions WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            if latest as u64 == version {
                return Err(StoreError::VersionInUse {
                    function: name.to_string(),
                    version,
                    why: format!(
                        "it is the newest version ($LATEST); deploy a new one first, or delete the function with `lampyr rm {name}`"
                    ),
                });
            }
            let aliases = aliases_using(&tx, name, version)?;
            if !aliases.is_empty() {
                return Err(StoreError::VersionInUse {
                    function: name.to_string(),
                    version,
                    why: format!(
                        "alias {} routes to it; point {} elsewhere first (`lampyr alias set {name} ALIAS VERSION`)",
                        quoted(&aliases),
                        if aliases.len() == 1 { "it" } else { "them" }
                    ),
                });
            }
            tx.execute(
                "DELETE FROM versions WHERE name = ?1 AND version = ?2",
                params![name, version as i64],
            )?;
            tx.commit()?;
        }
        tracing::info!(function = name, version, "version deleted");
        self.collect_garbage()
    }

    /// Deletes all but the newest `keep` versions of `name` that are
    /// neither the newest version nor routed to by an alias; returns the
    /// versions deleted and the code directories removed.
    pub fn prune_versions(&self, name: &str, keep: usize) -> Result<(Vec<u64>, Vec<PathBuf>)> {
        let doomed: Vec<u64> = {
            let mut db = self.db.lock();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let doomed: Vec<u64> = {
                let mut stmt = tx.prepare(
                    "SELECT v.version FROM versions v JOIN functions f ON f.name = v.name
                     WHERE v.name = ?1 AND v.version <> f.current_version
                       AND NOT EXISTS (SELECT 1 FROM aliases a WHERE a.function = v.name
                                       AND (a.version = v.version OR a.weight_version = v.version))
                     ORDER BY v.version DESC",
                )?;
                let rows = stmt.query_map(params![name], |r| r.get::<_, i64>(0))?;
                rows.skip(keep)
                    .map(|r| r.map(|v| v as u64))
                    .collect::<rusqlite::Result<_>>()?
            };
            for v in &doomed {
                tx.execute(
                    "DELETE FROM versions WHERE name = ?1 AND version = ?2",
                    params![name, *v as i64],
                )?;
            }
            tx.commit()?;
            doomed
        };
        if doomed.is_empty() {
            return Ok((doomed, Vec::new()));
        }
        tracing::info!(function = name, versions = ?doomed, "old versions pruned");
        let removed = self.collect_garbage()?;
        Ok((doomed, removed))
    }
}

/// `'a'`, `'a', 'b'`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pack_dir, StoreLimits};
    use lampyr_api::versions::AliasTarget;

    fn deploy(store: &Store, name: &str, body: &str, description: Option<&str>) -> u64 {
        let d = crate::tests::function_dir(name, body);
        let mut staged = store.stage(name, &pack_dir(d.path()).unwrap()).unwrap();
        staged.description = description.map(str::to_string);
        let v = store.next_version(name).unwrap();
        store.commit(&staged, v).unwrap().current.version
    }

    #[test]
    fn versions_keep_their_code_until_deleted_and_aliased_ones_stay() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        for i in 1..=5 {
            deploy(
                &store,
                "f",
                &format!("exports.handler = () => {i};"),
                Some(&format!("v{i}")),
            );
        }
        let all = store.versions("f").unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].description.as_deref(), Some("v2"));
        let v2 = store.version("f", 2).unwrap();
        assert!(store.code_dir(&v2.code_sha256).is_dir());
        assert!(matches!(
            store.version("f", 9),
            Err(StoreError::VersionNotFound { version: 9, .. })
        ));
        store
            .set_alias(
                "f",
                "live",
                AliasTarget {
                    version: 2,
                    weight: None,
                },
                None,
            )
            .unwrap();
        // The alias and the newest version are refused, by name.
        let e = store.delete_version("f", 2).unwrap_err();
        assert!(e.to_string().contains("'live'"), "{e}");
        let e = store.delete_version("f", 5).unwrap_err();
        assert!(e.to_string().contains("$LATEST"), "{e}");
        // Keep one unaliased version besides the newest: 4 stays, 1 and 3 go.
        let (gone, _) = store.prune_versions("f", 1).unwrap();
        assert_eq!(gone, vec![3, 1]);
        let left: Vec<u64> = store
            .versions("f")
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(left, vec![2, 4, 5]);
        store.delete_version("f", 4).unwrap();
        assert!(store.code_dir(&v2.code_sha256).is_dir());
        assert_eq!(store.versions("f").unwrap().len(), 2);
    }

    /// A database written before versions had descriptions and functions
    /// had aliases opens, reads, and takes both.
    #[test]
    fn a_database_of_the_previous_schema_opens() {
        let data = tempfile::tempdir().unwrap();
        {
            // Specs as the previous schema stored them: the HTTP trigger
            // was `{"type":"http"}`, with no keys.
            let spec = |toml: &str| {
                let json =
                    serde_json::to_string(&lampyr_api::FunctionSpec::from_toml(toml).unwrap())
                        .unwrap();
                assert!(!json.contains("alias"), "{json}");
                json
            };
            let plain = "name = \"old\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";
            let with_timer = format!(
                "{plain}[[triggers]]\ntype = \"http\"\n[[triggers]]\ntype = \"timer\"\ncron = \"@every 1h\"\n"
            );
            let v1 = spec(&with_timer);
            assert!(v1.contains(r#"{"type":"http"}"#), "{v1}");
            let c = Connection::open(data.path().join("lampyr.db")).unwrap();
            c.execute_batch(
                r#"CREATE TABLE functions (
                    name TEXT PRIMARY KEY, current_version INTEGER NOT NULL,
                    trigger_token TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
                 CREATE TABLE versions (
                    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
                    manifest TEXT NOT NULL, code_sha256 TEXT NOT NULL, code_size INTEGER NOT NULL,
                    created_at INTEGER NOT NULL, PRIMARY KEY (name, version));
                 INSERT INTO functions VALUES ('old', 2, 'tok', 1700000000000, 1700000001000);"#,
            )
            .unwrap();
            for (v, spec, sha) in [(1, v1, "aa"), (2, spec(plain), "bb")] {
                c.execute(
                    "INSERT INTO versions VALUES ('old', ?1, ?2, 'name = \"old\"', ?3, 10, 1700000000000)",
                    rusqlite::params![v, spec, sha],
                )
                .unwrap();
            }
        }
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        let f = store.get("old").unwrap();
        assert_eq!(f.current.version, 2);
        assert_eq!(f.current.description, None);
        assert!(f.current.spec.has_http_trigger());
        let v1 = store.version("old", 1).unwrap();
        assert_eq!((v1.code_sha256.as_str(), v1.description), ("aa", None));
        assert!(v1.spec.http_alias().is_none());
        store
            .set_alias(
                "old",
                "live",
                AliasTarget {
                    version: 1,
                    weight: Some((2, 0.5)),
                },
                Some(1),
            )
            .unwrap();
        drop(store);
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        let a = store.alias("old", "live").unwrap();
        assert_eq!(a.target.weight, Some((2, 0.5)));
        assert_eq!(a.min_instances, 1);
    }
}
