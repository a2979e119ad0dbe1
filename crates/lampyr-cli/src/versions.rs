//! `lampyr versions`, `lampyr alias` and `lampyr rollback`: a function's
//! versions and the aliases that point at them.

use std::io::Write;

use lampyr_api::versions::{AliasInfo, AliasList, AliasSet, VersionList};

use crate::client::Client;
use crate::commands::{out, print_json, CommandError};

/// A value as one component of a URL (a query parameter, a path segment).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `lampyr versions NAME`.
pub fn list(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let list: VersionList = client.get_json(&format!("/api/v1/functions/{name}/versions"))?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(
        o,
        "{:>7}  {:<24}  {:<12}  {:<16}  {:>9}  DESCRIPTION",
        "VERSION", "DEPLOYED", "CODE", "ALIASES", "INSTANCES"
    );
    for v in &list.versions {
        let mut aliases = v.aliases.clone();
        if v.latest {
            aliases.insert(0, lampyr_api::versions::LATEST.to_string());
        }
        let _ = writeln!(
            o,
            "{:>7}  {:<24}  {:<12}  {:<16}  {:>9}  {}",
            v.version,
            v.created_at,
            &v.code_sha256[..v.code_sha256.len().min(12)],
            aliases.join(","),
            v.instances.total(),
            v.description
                .as_deref()
                .map(crate::commands::printable)
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `lampyr versions rm NAME N`.
pub fn remove(client: &Client, name: &str, version: u64, json: bool) -> Result<(), CommandError> {
    let reply = client.call(
        "DELETE",
        &format!("/api/v1/functions/{name}/versions/{version}"),
        None,
    )?;
    if json {
        print_json(&reply.json::<serde_json::Value>()?);
    } else {
        let _ = writeln!(out(), "deleted version {version} of {name}");
    }
    Ok(())
}

/// What `lampyr alias set` was asked to do.
#[derive(Debug, Clone)]
pub struct AliasArgs {
    pub name: String,
    pub alias: String,
    pub version: u64,
    /// `V=W`: the second version and its share of the traffic.
    pub weight: Option<String>,
    pub min_instances: Option<u32>,
}

/// `lampyr alias set NAME ALIAS VERSION [--weight V=W] [--min-instances N]`.
pub fn set(client: &Client, args: &AliasArgs, json: bool) -> Result<(), CommandError> {
    let weight = args
        .weight
        .as_deref()
        .map(lampyr_api::versions::parse_weight)
        .transpose()
        .map_err(|m| CommandError::Input(format!("--weight: {m}")))?;
    let body = AliasSet {
        version: args.version,
        weight,
        min_instances: args.min_instances,
    };
    let reply = client.call(
        "PUT",
        &format!(
            "/api/v1/functions/{}/aliases/{}",
            args.name,
            encode_component(&args.alias)
        ),
        Some(&serde_json::to_vec(&body).expect("serialises")),
    )?;
    let a: AliasInfo = reply.json()?;
    if json {
        print_json(&a);
    } else {
        let _ = writeln!(out(), "{}@{} → {}", args.name, a.alias, a.target);
    }
    Ok(())
}

/// `lampyr alias ls NAME`.
pub fn list_aliases(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let list: AliasList = client.get_json(&format!("/api/v1/functions/{name}/aliases"))?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(
        o,
        "{:<16}  {:<36}  {:>4}  {:<24}  NOTE",
        "ALIAS", "TARGET", "MIN", "UPDATED"
    );
    for a in &list.aliases {
        let note = match (&a.canary, &a.note) {
            (Some(c), _) => format!(
                "canary: version {} on {:.0}% until {} (then promoted unless its error rate is more than {:.1} points above version {}'s)",
                c.to,
                c.weight * 100.0,
                c.decide_at,
                c.threshold * 100.0,
                c.from
            ),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<16}  {:<36}  {:>4}  {:<24}  {note}",
            a.alias,
            a.target.to_string(),
            a.min_instances,
            a.updated_at
        );
    }
    Ok(())
}

/// `lampyr alias rm NAME ALIAS`.
pub fn remove_alias(
    client: &Client,
    name: &str,
    alias: &str,
    json: bool,
) -> Result<(), CommandError> {
    let reply = client.call(
        "DELETE",
        &format!(
            "/api/v1/functions/{name}/aliases/{}",
            encode_component(alias)
        ),
        None,
    )?;
    if json {
        print_json(&reply.json::<serde_json::Value>()?);
    } else {
        let _ = writeln!(out(), "deleted alias {alias} of {name}");
    }
    Ok(())
}

/// `lampyr rollback NAME [ALIAS]`.
pub fn rollback(
    client: &Client,
    name: &str,
    alias: Option<&str>,
    json: bool,
) -> Result<(), CommandError> {
    let path = match alias {
        Some(a) => format!(
            "/api/v1/functions/{name}/aliases/{}/rollback",
            encode_component(a)
        ),
        None => format!("/api/v1/functions/{name}/rollback"),
    };
    let a: AliasInfo = client.call("POST", &path, None)?.json()?;
    if json {
        print_json(&a);
    } else {
        let _ = writeln!(out(), "{name}@{} rolled back → {}", a.alias, a.target);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(super::encode_component("a b/ü&"), "a%20b%2F%C3%BC%26");
        assert_eq!(super::encode_component("v1.2-x_y~"), "v1.2-x_y~");
    }
}
