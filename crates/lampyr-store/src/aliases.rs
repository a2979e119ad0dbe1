//! Aliases: named pointers at a function's versions, kept in the `aliases`
//! table of `DATA/lampyr.db`.
//!
//! An alias points at one version, or at two with a weight on the second.
//! Every change pushes what it pointed at before onto its history, which
//! [`Store::rollback_alias`] pops. A canary in progress (the new version on
//! a share of the traffic until a decision time) is stored with its alias,
//! so it survives a restart; how the last one ended is its note.

use std::time::{Duration, SystemTime};

use lampyr_api::versions::{validate_alias, validate_weight, AliasTarget};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::{from_ms, now_ms, Result, Store, StoreError};

/// How many earlier targets an alias remembers.
const HISTORY: usize = 20;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS aliases (
    function       TEXT NOT NULL,
    alias          TEXT NOT NULL,
    version        INTEGER NOT NULL,
    weight_version INTEGER,
    weight         REAL,
    min_instances  INTEGER NOT NULL DEFAULT 0,
    history        TEXT NOT NULL DEFAULT '[]',
    canary         TEXT,
    note           TEXT,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (function, alias)
);
"#;

pub(crate) fn create(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// A canary in progress: `to` takes `weight` of the alias's traffic from
/// `from` until `decide_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub from: u64,
    pub to: u64,
    pub weight: f64,
    pub started_at_ms: i64,
    pub decide_at_ms: i64,
    /// How much higher `to`'s error rate may be than `from`'s.
    pub threshold: f64,
}

impl Canary {
    pub fn started_at(&self) -> SystemTime {
        from_ms(self.started_at_ms)
    }

    pub fn decide_at(&self) -> SystemTime {
        from_ms(self.decide_at_ms)
    }
}

/// One alias of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasRecord {
    pub function: String,
    pub alias: String,
    pub target: AliasTarget,
    pub min_instances: u32,
    /// Earlier targets, the most recent last.
    pub history: Vec<AliasTarget>,
    pub canary: Option<Canary>,
    /// How its last canary ended, and why.
    pub note: Option<String>,
    pub updated_at: SystemTime,
}

impl AliasRecord {
    /// The versions it routes to.
    pub fn versions(&self) -> impl Iterator<Item = u64> {
        std::iter::once(self.target.version).chain(self.target.weight.map(|(v, _)| v))
    }
}

const COLUMNS: &str =
    "function, alias, version, weight_version, weight, min_instances, history, canary, note, updated_at";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<AliasRecord> {
    let weight_version: Option<i64> = r.get(3)?;
    let weight: Option<f64> = r.get(4)?;
    let history: String = r.get(6)?;
    let canary: Option<String> = r.get(7)?;
    Ok(AliasRecord {
        function: r.get(0)?,
        alias: r.get(1)?,
        target: AliasTarget {
            version: r.get::<_, i64>(2)? as u64,
            weight: weight_version.zip(weight).map(|(v, w)| (v as u64, w)),
        },
        min_instances: r.get::<_, i64>(5)?.max(0) as u32,
        history: serde_json::from_str(&history).unwrap_or_default(),
        canary: canary.and_then(|c| serde_json::from_str(&c).ok()),
        note: r.get(8)?,
        updated_at: from_ms(r.get(9)?),
    })
}

fn get(conn: &Connection, function: &str, alias: &str) -> Result<Option<AliasRecord>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM aliases WHERE function = ?1 AND alias = ?2"),
            params![function, alias],
            read,
        )
        .optional()?)
}

fn write(tx: &Transaction<'_>, a: &AliasRecord) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO aliases ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            a.function,
            a.alias,
            a.target.version as i64,
            a.target.weight.map(|(v, _)| v as i64),
            a.target.weight.map(|(_, w)| w),
            i64::from(a.min_instances),
            serde_json::to_string(&a.history).expect("history serialises"),
            a.canary
                .as_ref()
                .map(|c| serde_json::to_string(c).expect("canary serialises")),
            a.note,
            now_ms(),
        ],
    )?;
    Ok(())
}

/// Checks that `target` names versions of `function` that exist, with a
/// weight in range on a second version.
fn check_target(
    tx: &Transaction<'_>,
    function: &str,
    alias: &str,
    target: &AliasTarget,
) -> Result<()> {
    let exists = |v: u64| -> Result<bool> {
        Ok(tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM versions WHERE name = ?1 AND version = ?2)",
            params![function, v as i64],
            |r| r.get(0),
        )?)
    };
    for v in std::iter::once(target.version).chain(target.weight.map(|(v, _)| v)) {
        if !exists(v)? {
            return Err(StoreError::VersionNotFound {
                function: function.to_string(),
                version: v,
            });
        }
    }
    if let Some((v, w)) = target.weight {
        let bad = |message: String| StoreError::InvalidWeight {
            function: function.to_string(),
            alias: alias.to_string(),
            message,
        };
        validate_weight(w).map_err(bad)?;
        if v == target.version {
            return Err(bad(format!(
                "the weighted version {v} is the alias's own version: name a second version"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Runs `f` on alias `alias` of `function` in one write transaction
    /// and stores what it returns.
    fn change_alias(
        &self,
        function: &str,
        alias: &str,
        f: impl FnOnce(&Transaction<'_>, Option<AliasRecord>) -> Result<AliasRecord>,
    ) -> Result<AliasRecord> {
        let mut db = self.db.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM functions WHERE name = ?1)",
            params![function],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(StoreError::NotFound(function.to_string()));
        }
        let old = get(&tx, function, alias)?;
        let new = f(&tx, old)?;
        write(&tx, &new)?;
        tx.commit()?;
        drop(db);
        self.alias(function, alias)
    }

    /// Points `alias` of `function` at `target` (creating it), and sets its
    /// reserved instances when `min_instances` is given. A canary in
    /// progress on it is cancelled.
    pub fn set_alias(
        &self,
        function: &str,
        alias: &str,
        target: AliasTarget,
        min_instances: Option<u32>,
    ) -> Result<AliasRecord> {
        validate_alias(alias).map_err(|message| StoreError::InvalidAlias {
            function: function.to_string(),
            alias: alias.to_string(),
            message,
        })?;
        self.change_alias(function, alias, |tx, old| {
            check_target(tx, function, alias, &target)?;
            let mut a = old.unwrap_or_else(|| AliasRecord {
                function: function.to_string(),
                alias: alias.to_string(),
                target,
                min_instances: 0,
                history: Vec::new(),
                canary: None,
                note: None,
                updated_at: SystemTime::now(),
            });
            if a.target != target {
                push(&mut a.history, a.target);
                a.target = target;
            }
            if a.canary.take().is_some() {
                a.note = Some("canary cancelled: the alias was set by hand".into());
            }
            if let Some(n) = min_instances {
                a.min_instances = n;
            }
            Ok(a)
        })
    }

    /// Points `alias` back at what it pointed at before its last change.
    pub fn rollback_alias(&self, function: &str, alias: &str) -> Result<AliasRecord> {
        self.change_alias(function, alias, |tx, old| {
            let mut a = old.ok_or_else(|| not_found(function, alias))?;
            let prev = a.history.pop().ok_or_else(|| StoreError::InvalidAlias {
                function: function.to_string(),
                alias: alias.to_string(),
                message: format!(
                    "it has pointed at {} only: there is nothing to roll back to",
                    a.target
                ),
            })?;
            check_target(tx, function, alias, &prev)?;
            a.target = prev;
            if a.canary.take().is_some() {
                a.note = Some("canary cancelled: rolled back by hand".into());
            }
            Ok(a)
        })
    }

    /// Starts a canary on `alias`: `to` gets `weight` of its traffic until
    /// `interval` has passed. The alias must exist.
    pub fn start_canary(
        &self,
        function: &str,
        alias: &str,
        to: u64,
        weight: f64,
        interval: Duration,
        threshold: f64,
    ) -> Result<AliasRecord> {
        self.change_alias(function, alias, |tx, old| {
            let mut a = old.ok_or_else(|| not_found(function, alias))?;
            let from = a.target.version;
            let target = AliasTarget {
                version: from,
                weight: Some((to, weight)),
            };
            check_target(tx, function, alias, &target)?;
            push(&mut a.history, a.target);
            a.target = target;
            let now = now_ms();
            a.canary = Some(Canary {
                from,
                to,
                weight,
                started_at_ms: now,
                decide_at_ms: now + interval.as_millis() as i64,
                threshold,
            });
            a.note = None;
            Ok(a)
        })
    }

    /// Ends the canary on `alias`: all of its traffic to the new version
    /// (`promote`), or back to the old one; `note` says why. `None` when
    /// the alias has no canary any more (it was set or rolled back since).
    pub fn finish_canary(
        &self,
        function: &str,
        alias: &str,
        promote: bool,
        note: String,
    ) -> Result<Option<AliasRecord>> {
        let mut ended = false;
        let a = self.change_alias(function, alias, |_, old| {
            let mut a = old.ok_or_else(|| not_found(function, alias))?;
            let Some(c) = a.canary.take() else {
                return Ok(a);
            };
            ended = true;
            if promote {
                push(
                    &mut a.history,
                    AliasTarget {
                        version: c.from,
                        weight: None,
                    },
                );
                a.target = AliasTarget {
                    version: c.to,
                    weight: None,
                };
            } else {
                a.target = AliasTarget {
                    version: c.from,
                    weight: None,
                };
                a.history.pop();
            }
            a.note = Some(note);
            Ok(a)
        })?;
        Ok(ended.then_some(a))
    }

    /// Deletes `alias` of `function`.
    pub fn delete_alias(&self, function: &str, alias: &str) -> Result<()> {
        let n = self.db.lock().execute(
            "DELETE FROM aliases WHERE function = ?1 AND alias = ?2",
            params![function, alias],
        )?;
        if n == 0 {
            return Err(not_found(function, alias));
        }
        Ok(())
    }

    /// Alias `alias` of `function`.
    pub fn alias(&self, function: &str, alias: &str) -> Result<AliasRecord> {
        get(&self.db.lock(), function, alias)?.ok_or_else(|| not_found(function, alias))
    }

    /// The aliases of `function`, by name.
    pub fn aliases(&self, function: &str) -> Result<Vec<AliasRecord>> {
        let db = self.db.lock();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM aliases WHERE function = ?1 ORDER BY alias"
        ))?;
        let rows = stmt.query_map(params![function], read)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every alias of every function.
    pub fn all_aliases(&self) -> Result<Vec<AliasRecord>> {
        let db = self.db.lock();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM aliases ORDER BY function, alias"
        ))?;
        let rows = stmt.query_map([], read)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn push(history: &mut Vec<AliasTarget>, t: AliasTarget) {
    history.push(t);
    if history.len() > HISTORY {
        history.remove(0);
    }
}

fn not_found(function: &str, alias: &str) -> StoreError {
    StoreError::AliasNotFound {
        function: function.to_string(),
        alias: alias.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pack_dir, StoreLimits};

    fn store_with(versions: u64) -> (tempfile::TempDir, Store) {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path(), StoreLimits::default()).unwrap();
        for i in 1..=versions {
            let d = crate::tests::function_dir("f", &format!("exports.handler = () => {i};"));
            store.deploy("f", &pack_dir(d.path()).unwrap()).unwrap();
        }
        (data, store)
    }

    fn one(version: u64) -> AliasTarget {
        AliasTarget {
            version,
            weight: None,
        }
    }

    #[test]
    fn aliases_are_checked_remember_and_roll_back() {
        let (_d, store) = store_with(3);
        let e = store.set_alias("f", "live", one(7), None).unwrap_err();
        assert!(e.to_string().contains("no version 7"), "{e}");
        let e = store
            .set_alias(
                "f",
                "live",
                AliasTarget {
                    version: 1,
                    weight: Some((2, 1.5)),
                },
                None,
            )
            .unwrap_err();
        assert!(
            matches!(e, StoreError::InvalidWeight { .. }) && e.to_string().contains("1.5"),
            "{e}"
        );
        let e = store.set_alias("f", "Live", one(1), None).unwrap_err();
        assert!(e.to_string().contains("\"Live\""), "{e}");
        assert!(matches!(
            store.set_alias("g", "live", one(1), None),
            Err(StoreError::NotFound(_))
        ));

        store.set_alias("f", "live", one(1), None).unwrap();
        let e = store.rollback_alias("f", "live").unwrap_err();
        assert!(e.to_string().contains("nothing to roll back"), "{e}");
        store.set_alias("f", "live", one(2), Some(2)).unwrap();
        let a = store
            .set_alias(
                "f",
                "live",
                AliasTarget {
                    version: 2,
                    weight: Some((3, 0.3)),
                },
                None,
            )
            .unwrap();
        assert_eq!(a.min_instances, 2);
        assert_eq!(a.versions().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(store.rollback_alias("f", "live").unwrap().target, one(2));
        assert_eq!(store.rollback_alias("f", "live").unwrap().target, one(1));
        store.delete_alias("f", "live").unwrap();
        assert!(matches!(
            store.alias("f", "live"),
            Err(StoreError::AliasNotFound { .. })
        ));
    }

    #[test]
    fn canaries_promote_or_roll_back_once() {
        let (_d, store) = store_with(2);
        store.set_alias("f", "live", one(1), None).unwrap();
        let a = store
            .start_canary("f", "live", 2, 0.1, Duration::from_secs(60), 0.05)
            .unwrap();
        assert_eq!(a.target.weight, Some((2, 0.1)));
        assert_eq!(a.canary.as_ref().unwrap().from, 1);
        let a = store
            .finish_canary("f", "live", false, "errors".into())
            .unwrap()
            .unwrap();
        assert_eq!((a.target, a.note.as_deref()), (one(1), Some("errors")));
        assert_eq!(
            store.finish_canary("f", "live", true, "x".into()).unwrap(),
            None
        );
        store
            .start_canary("f", "live", 2, 0.1, Duration::from_secs(60), 0.05)
            .unwrap();
        let a = store
            .finish_canary("f", "live", true, "ok".into())
            .unwrap()
            .unwrap();
        assert_eq!(a.target, one(2));
        assert_eq!(store.rollback_alias("f", "live").unwrap().target, one(1));
    }
}
