//! The lampyr.toml a template's function becomes, as it is put together:
//! each key remembers the template field it came from, so that the
//! manifest's own validation, run on the finished text, is reported at
//! that field (`Resources.Hello.Properties.MemorySize: 20000 is out of
//! range...`).

use std::path::PathBuf;

use lampyr_api::manifest::ManifestError;
use lampyr_api::FunctionSpec;

use crate::yaml::{refuse, Res};
use crate::ImportedFunction;

/// One `[[triggers]]` table: its keys in order, and where it came from.
type Trigger = (Vec<(&'static str, toml::Value)>, String);

#[derive(Debug, Default)]
pub(crate) struct Draft {
    /// The template's name for the function.
    pub id: String,
    /// Where it is in the template (`Resources.Hello`).
    pub at: String,
    scalars: Vec<(&'static str, toml::Value, String)>,
    env: Vec<(String, String, String)>,
    triggers: Vec<Trigger>,
    pub notes: Vec<String>,
    pub code_dir: Option<PathBuf>,
    /// The alias each deploy points at its new version.
    pub alias: Option<String>,
}

impl Draft {
    pub fn new(id: &str, at: &str) -> Draft {
        Draft {
            id: id.to_string(),
            at: at.to_string(),
            ..Draft::default()
        }
    }

    /// Sets manifest key `key` (a later value, e.g. a function's own over
    /// a global one, replaces an earlier).
    pub fn set(&mut self, key: &'static str, value: impl Into<toml::Value>, origin: &str) {
        self.scalars.retain(|(k, _, _)| *k != key);
        self.scalars.push((key, value.into(), origin.to_string()));
    }

    pub fn has(&self, key: &str) -> bool {
        self.scalars.iter().any(|(k, _, _)| *k == key)
    }

    pub fn env(&mut self, name: String, value: String, origin: &str) {
        self.env.retain(|(k, _, _)| *k != name);
        self.env.push((name, value, origin.to_string()));
    }

    /// The function's URL, from the first event that asks for one (a
    /// function has one URL, which serves every path and method).
    pub fn http(&mut self, alias: Option<String>, origin: &str) {
        if self.has_http() {
            self.note(format!(
                "{origin}: served by the same URL as the function's other HTTP events (lampyr gives a function one URL, /fn/NAME/..., which takes every path and method)"
            ));
            return;
        }
        let mut keys = vec![("type", "http".into())];
        if let Some(a) = alias {
            keys.push(("alias", a.into()));
        }
        self.triggers.push((keys, origin.to_string()));
    }

    fn has_http(&self) -> bool {
        self.triggers
            .iter()
            .any(|(k, _)| k.first().is_some_and(|(_, v)| v.as_str() == Some("http")))
    }

    pub fn timer(&mut self, keys: Vec<(&'static str, toml::Value)>, origin: &str) {
        let mut all = vec![("type", "timer".into())];
        all.extend(keys);
        self.triggers.push((all, origin.to_string()));
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The manifest's text, in the order people write it.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let mut scalars: Vec<_> = self.scalars.iter().collect();
        scalars.sort_by_key(|(k, _, _)| ORDER.iter().position(|o| o == k));
        for (k, v, _) in scalars {
            t.push_str(&format!("{k} = {v}\n"));
        }
        let only_http =
            self.triggers.len() == 1 && self.has_http() && self.triggers[0].0.len() == 1;
        if self.triggers.is_empty() {
            t.push_str("triggers = []  # no events: `lampyr invoke` only\n");
        }
        if !self.env.is_empty() {
            t.push_str("\n[env]\n");
            for (k, v, _) in &self.env {
                t.push_str(&format!("{} = {}\n", key(k), toml::Value::from(v.as_str())));
            }
        }
        if !only_http {
            for (keys, _) in &self.triggers {
                t.push_str("\n[[triggers]]\n");
                for (k, v) in keys {
                    t.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        t
    }

    /// The template field a manifest key came from.
    fn origin(&self, key: &str) -> String {
        if let Some((_, _, o)) = self.scalars.iter().find(|(k, _, _)| *k == key) {
            return o.clone();
        }
        if let Some(name) = key.strip_prefix("env.") {
            if let Some((_, _, o)) = self.env.iter().find(|(k, _, _)| k == name) {
                return o.clone();
            }
        }
        if let Some(i) = key
            .strip_prefix("triggers[")
            .and_then(|r| r.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
        {
            if let Some((_, o)) = self.triggers.get(i) {
                return o.clone();
            }
        }
        self.at.clone()
    }

    /// The manifest, validated as a deploy validates it; a refusal is
    /// reported at the template field the key came from.
    pub fn finish(self) -> Res<ImportedFunction> {
        let text = self.text();
        let spec = match FunctionSpec::from_toml(&text) {
            Ok(s) => s,
            Err(ManifestError::Invalid { key, message }) => {
                return refuse(
                    &self.origin(&key),
                    format!("{message} (lampyr.toml's `{key}`)"),
                )
            }
            Err(ManifestError::Parse(m)) => return refuse(&self.at, m),
        };
        let Some(code_dir) = self.code_dir else {
            return refuse(&self.at, "has no code directory");
        };
        Ok(ImportedFunction {
            id: self.id,
            at: self.at,
            name: spec.name.clone(),
            code_dir,
            manifest: text,
            spec,
            alias: self.alias,
            notes: self.notes,
        })
    }
}

/// The order of a manifest's keys, as the README writes them.
const ORDER: &[&str] = &[
    "name",
    "runtime",
    "handler",
    "handler_type",
    "initializer",
    "initialization_timeout",
    "memory_mb",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "auth",
    "network",
    "retries",
    "max_event_age",
];

/// A TOML key: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml::Value::from(k).to_string()
    }
}

/// A template's name for something (`HelloWorldFunction`, `timerTrigger`)
/// as lampyr names it: lower case, words joined by '-'
/// (`hello-world-function`, `timer-trigger`); `what` names it in errors.
pub(crate) fn lampyr_name(id: &str, origin: &str, what: &str) -> Res<String> {
    let chars: Vec<char> = id.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    if lampyr_api::manifest::validate_name(&out).is_err() {
        return refuse(
            origin,
            format!("\"{id}\" cannot be a lampyr {what} name (\"{out}\"): use 1-63 characters of letters, digits, '-' and '_', starting with a letter or digit"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_lower_case_words() {
        for (id, want) in [
            ("HelloWorldFunction", "hello-world-function"),
            ("timerTrigger", "timer-trigger"),
            ("APIHandler", "api-handler"),
            ("start-nodejs-s1mr", "start-nodejs-s1mr"),
            ("hello_world", "hello_world"),
            ("Fn2Go", "fn2-go"),
        ] {
            assert_eq!(lampyr_name(id, "x", "function").unwrap(), want);
        }
        let e = lampyr_name("my.fn", "Resources.X", "function").unwrap_err();
        assert_eq!(e.path, "Resources.X");
        assert!(e.message.contains("\"my.fn\""), "{}", e.message);
    }

    #[test]
    fn manifest_errors_point_at_the_template_field() {
        let mut d = Draft::new("F", "Resources.F");
        d.set("name", "f", "Resources.F");
        d.set("runtime", "nodejs20.x", "Resources.F.Properties.Runtime");
        d.set("handler", "index.handler", "Resources.F.Properties.Handler");
        d.set("memory_mb", 100_000, "Resources.F.Properties.MemorySize");
        d.code_dir = Some(PathBuf::from("."));
        let e = d.finish().unwrap_err();
        assert_eq!(e.path, "Resources.F.Properties.MemorySize");
        assert!(
            e.message.contains("out of range") && e.message.contains("`memory_mb`"),
            "{}",
            e.message
        );
    }
}
