//! Versions and aliases: how a caller names which version of a function
//! runs (`NAME`, `NAME@N`, `NAME@ALIAS`, `NAME@$LATEST`), the rules for
//! alias names and weights, and the API bodies of
//! `/api/v1/functions/NAME/versions` and `/aliases`.

use serde::{Deserialize, Serialize};

/// The qualifier that always names a function's newest version.
pub const LATEST: &str = "$LATEST";

/// Which version of a function a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qualifier<'a> {
    /// No qualifier: the function's default route (its HTTP trigger's
    /// alias, else the newest version).
    Default,
    /// `$LATEST`: the newest version.
    Latest,
    /// A version by number.
    Version(u64),
    /// An alias by name.
    Alias(&'a str),
}

/// Splits `NAME[@QUALIFIER]` into the function's name and its qualifier.
/// A qualifier that is neither `$LATEST`, a number nor a valid alias name
/// is refused with a message naming it.
pub fn split_target(target: &str) -> Result<(&str, Qualifier<'_>), String> {
    let Some((name, q)) = target.split_once('@') else {
        return Ok((target, Qualifier::Default));
    };
    Ok((name, parse_qualifier(q)?))
}

/// Reads a qualifier on its own (`$LATEST`, `N` or an alias name).
pub fn parse_qualifier(q: &str) -> Result<Qualifier<'_>, String> {
    if q == LATEST {
        return Ok(Qualifier::Latest);
    }
    if !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit()) {
        return match q.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Qualifier::Version(n)),
            _ => Err(format!(
                "\"{q}\" is not a version: versions are numbered from 1"
            )),
        };
    }
    validate_alias(q)?;
    Ok(Qualifier::Alias(q))
}

/// An alias name: 1-63 characters of a-z, 0-9, '-' and '_', starting with a
/// letter (so it is never read as a version number).
pub fn validate_alias(alias: &str) -> Result<(), String> {
    if crate::manifest::is_identifier(alias, |b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "\"{alias}\" is not a valid alias name: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter"
        ))
    }
}

/// A weight on an alias's second version: more than 0, less than 1.
pub fn validate_weight(weight: f64) -> Result<(), String> {
    if weight.is_finite() && weight > 0.0 && weight < 1.0 {
        Ok(())
    } else {
        Err(format!(
            "weight {weight} is outside 0-1: the second version takes that share of the traffic, more than 0 and less than 1 (point the alias at one version for all of it)"
        ))
    }
}

/// Reads `--weight V=W` (the second version and its share).
pub fn parse_weight(s: &str) -> Result<(u64, f64), String> {
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\" is not VERSION=WEIGHT, e.g. 2=0.05"))?;
    let v: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("\"{v}\" in --weight {s} is not a version number"))?;
    let w: f64 = w
        .trim()
        .parse()
        .map_err(|_| format!("\"{w}\" in --weight {s} is not a number between 0 and 1"))?;
    validate_weight(w)?;
    Ok((v, w))
}

/// Reads a canary, `PERCENT%/INTERVAL` (e.g. `10%/5m`): the share of the
/// traffic the new version gets, and how long before it is promoted.
pub fn parse_canary(s: &str) -> Result<(f64, std::time::Duration), String> {
    let (pct, interval) = s
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\" is not PERCENT%/INTERVAL, e.g. 10%/5m"))?;
    let pct: f64 = pct
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("\"{pct}\" in canary {s} is not a percentage"))?;
    let weight = pct / 100.0;
    validate_weight(weight)
        .map_err(|_| format!("{pct}% in canary {s} is not between 0% and 100% (both excluded)"))?;
    let interval =
        crate::manifest::parse_duration(interval.trim()).map_err(|m| format!("canary {s}: {m}"))?;
    if interval.is_zero() {
        return Err(format!("canary {s}: the interval must be more than 0"));
    }
    Ok((weight, interval))
}

/// Picks between an alias's two versions: the second with probability
/// `weight`. `roll` is a number in [0, 1): a hash of the caller's routing
/// key (the same caller, the same version), or a random one.
pub fn pick(primary: u64, second: Option<(u64, f64)>, roll: f64) -> u64 {
    match second {
        Some((v, w)) if roll < w => v,
        _ => primary,
    }
}

/// A routing key mapped onto [0, 1), the same on every server and run
/// (FNV-1a: no random seed).
pub fn roll_of(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the high bits down: FNV's low bits vary little for short keys.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One version of a function (`GET /api/v1/functions/NAME/versions`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    pub version: u64,
    /// When it was deployed, RFC 3339.
    pub created_at: String,
    pub code_sha256: String,
    pub code_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// It is the newest version (`$LATEST`).
    pub latest: bool,
    /// The aliases that route to it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its live instances.
    #[serde(default)]
    pub instances: crate::InstanceCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionList {
    pub function: String,
    /// Oldest first.
    pub versions: Vec<VersionInfo>,
}

/// What an alias points at: one version, or two with a share of the
/// traffic on the second.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AliasTarget {
    pub version: u64,
    /// The second version and its weight (0-1, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<(u64, f64)>,
}

impl std::fmt::Display for AliasTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.weight {
            None => write!(f, "version {}", self.version),
            Some((v, w)) => write!(
                f,
                "version {} ({:.0}%) and {v} ({:.0}%)",
                self.version,
                (1.0 - w) * 100.0,
                w * 100.0
            ),
        }
    }
}

/// A canary in progress on an alias.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryInfo {
    /// The version that served the alias before.
    pub from: u64,
    /// The new version, on `weight` of the traffic.
    pub to: u64,
    pub weight: f64,
    pub started_at: String,
    /// When it is promoted (or rolled back), RFC 3339.
    pub decide_at: String,
    /// How much higher the new version's error rate may be.
    pub threshold: f64,
}

/// An alias (`GET /api/v1/functions/NAME/aliases`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasInfo {
    pub alias: String,
    #[serde(flatten)]
    pub target: AliasTarget,
    /// Instances kept ready for the alias's versions.
    #[serde(default)]
    pub min_instances: u32,
    pub updated_at: String,
    /// What `lampyr rollback` would point it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<AliasTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
    /// How its last canary ended, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasList {
    pub function: String,
    pub aliases: Vec<AliasInfo>,
}

/// The body of `PUT /api/v1/functions/NAME/aliases/ALIAS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AliasSet {
    pub version: u64,
    /// The second version and its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<(u64, f64)>,
    /// Instances kept ready; unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_name_and_qualifier() {
        assert_eq!(split_target("f").unwrap(), ("f", Qualifier::Default));
        assert_eq!(split_target("f@3").unwrap(), ("f", Qualifier::Version(3)));
        assert_eq!(split_target("f@$LATEST").unwrap(), ("f", Qualifier::Latest));
        assert_eq!(
            split_target("f@live").unwrap(),
            ("f", Qualifier::Alias("live"))
        );
        assert!(split_target("f@0").unwrap_err().contains("\"0\""));
        assert!(split_target("f@Live").unwrap_err().contains("\"Live\""));
        assert!(validate_alias("9lives").is_err());
    }

    #[test]
    fn weights_and_canaries_are_checked() {
        assert_eq!(parse_weight("2=0.05").unwrap(), (2, 0.05));
        assert!(parse_weight("2=1.5").unwrap_err().contains("1.5"));
        assert!(parse_weight("x=0.5").unwrap_err().contains("\"x\""));
        let (w, d) = parse_canary("10%/5m").unwrap();
        assert!((w - 0.1).abs() < 1e-9);
        assert_eq!(d, std::time::Duration::from_secs(300));
        assert!(parse_canary("100%/5m").is_err());
        assert!(parse_canary("10%").is_err());
    }

    #[test]
    fn routing_keys_spread_evenly_and_stay_put() {
        let n = 10_000;
        let second = (0..n)
            .filter(|i| pick(1, Some((2, 0.3)), roll_of(&format!("caller-{i}"))) == 2)
            .count();
        let share = second as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.02, "{share}");
        assert_eq!(roll_of("k"), roll_of("k"));
    }
}
