//! A `[[triggers]]` table with `type = "nats"`: a NATS JetStream stream
//! whose messages call the function (see `lampyr-source-nats`).
//!
//! ```toml
//! [[triggers]]
//! type = "nats"
//! servers = ["nats://127.0.0.1:4222"]
//! stream = "ORDERS"
//! subject = "orders.created"      # filter; default: the whole stream
//! batch_size = 10                 # 1-100 messages per invocation
//! max_batching_window = "200ms"   # wait this long to fill a batch
//! concurrency = 2                 # batches in flight
//! max_retries = 3                 # then the dead-letter subject
//! retry_backoff = ["1s", "10s"]   # nak delay per retry, the last repeats
//! dead_letter_subject = "orders.dlq"
//! token = "..."                   # or user + password, creds_file, nkey_file
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    duration_in, int_in, parse_duration, table_string, table_strings, validate_name, ManifestError,
};

/// A validated NATS trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    /// Its name, unique among the function's NATS triggers.
    pub name: String,
    /// Server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    pub stream: String,
    /// The consumer's filter subject (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The durable consumer's name (see [`NatsSpec::durable_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    pub batch_size: u32,
    pub max_batching_window_ms: u64,
    /// Batches in flight at once.
    pub concurrency: u32,
    /// Failed deliveries retried before the message is dead-lettered.
    pub max_retries: u32,
    /// The delay before each retry; the last one repeats.
    pub retry_backoff_ms: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_subject: Option<String>,
    #[serde(default, skip_serializing_if = "NatsAuth::is_none")]
    pub auth: NatsAuth,
    /// The alias its batches call; none: the newest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// How the trigger authenticates to the servers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A `.creds` file (JWT and nkey seed), on the server's host.
    CredsFile(String),
    /// A file holding an nkey seed (`SU...`), on the server's host.
    NkeyFile(String),
}

impl NatsAuth {
    pub(crate) fn is_none(&self) -> bool {
        *self == NatsAuth::None
    }

    /// The same with secret values replaced, for showing.
    pub fn redacted(&self) -> NatsAuth {
        match self {
            NatsAuth::Token(_) => NatsAuth::Token(REDACTED.into()),
            NatsAuth::UserPassword { user, .. } => NatsAuth::UserPassword {
                user: user.clone(),
                password: REDACTED.into(),
            },
            other => other.clone(),
        }
    }
}

/// What a secret is shown as.
pub const REDACTED: &str = "(secret)";

pub const MAX_BATCH_SIZE: u32 = 100;
pub const MAX_SOURCE_CONCURRENCY: u32 = 100;
pub const MAX_SOURCE_RETRIES: u32 = 100;
pub const MAX_BATCHING_WINDOW: Duration = Duration::from_secs(300);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 3600);
pub const DEFAULT_SOURCE_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
];

impl NatsSpec {
    /// The keys of a NATS trigger's table.
    pub const KEYS: &'static [&'static str] = &[
        "type",
        "name",
        "servers",
        "stream",
        "subject",
        "durable",
        "batch_size",
        "max_batching_window",
        "concurrency",
        "max_retries",
        "retry_backoff",
        "dead_letter_subject",
        "token",
        "user",
        "password",
        "creds_file",
        "nkey_file",
        "alias",
    ];

    /// The durable consumer's name: `durable`, or `lampyr-FUNCTION-NAME`.
    pub fn durable_name(&self, function: &str) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| format!("lampyr-{function}-{}", self.name))
    }

    pub fn max_batching_window(&self) -> Duration {
        Duration::from_millis(self.max_batching_window_ms)
    }

    /// The delay before retrying a message delivered `delivered` times.
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let i = (delivered.max(1) - 1) as usize;
        let ms = self
            .retry_backoff_ms
            .get(i)
            .or(self.retry_backoff_ms.last())
            .copied()
            .unwrap_or(0);
        Duration::from_millis(ms)
    }

    pub(super) fn from_table(i: usize, t: &toml::Table) -> Result<NatsSpec, ManifestError> {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let string = |k: &str| table_string(t, &key(k), k);
        let int = |k: &str| -> Result<Option<i64>, ManifestError> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) => Ok(Some(*n)),
                Some(v) => Err(ManifestError::invalid(
                    &key(k),
                    format!("must be a whole number, not {}", v.type_str()),
                )),
            }
        };
        let name = string("name")?.unwrap_or_else(|| "nats".to_string());
        validate_name(&name).map_err(|_| {
            ManifestError::invalid(
                &key("name"),
                format!("\"{name}\" is not a valid trigger name: use 1-63 characters of a-z, 0-9, '-' and '_'"),
            )
        })?;
        let servers = servers_of(i, t, "servers")?;
        let stream = string("stream")?.ok_or_else(|| {
            ManifestError::invalid(
                &key("stream"),
                "is missing: name the JetStream stream to consume, e.g. stream = \"ORDERS\"",
            )
        })?;
        check_js_name(&stream).map_err(|m| ManifestError::invalid(&key("stream"), m))?;
        let subject = string("subject")?;
        if let Some(s) = &subject {
            check_subject(s, true).map_err(|m| ManifestError::invalid(&key("subject"), m))?;
        }
        let durable = string("durable")?;
        if let Some(d) = &durable {
            check_js_name(d).map_err(|m| ManifestError::invalid(&key("durable"), m))?;
        }
        let batch_size = int_in(
            &key("batch_size"),
            int("batch_size")?,
            1,
            1,
            MAX_BATCH_SIZE as i64,
        )? as u32;
        let window = duration_in(
            &key("max_batching_window"),
            string("max_batching_window")?.as_deref(),
            Duration::ZERO,
            Duration::ZERO,
            MAX_BATCHING_WINDOW,
        )?;
        let concurrency = int_in(
            &key("concurrency"),
            int("concurrency")?,
            1,
            1,
            MAX_SOURCE_CONCURRENCY as i64,
        )? as u32;
        let max_retries = int_in(
            &key("max_retries"),
            int("max_retries")?,
            DEFAULT_SOURCE_RETRIES as i64,
            0,
            MAX_SOURCE_RETRIES as i64,
        )? as u32;
        let backoff_texts: Option<Vec<String>> = match t.get("retry_backoff") {
            None => None,
            Some(toml::Value::String(s)) => Some(vec![s.clone()]),
            Some(toml::Value::Array(a)) if !a.is_empty() && a.len() <= 20 => Some(
                a.iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        v => Err(ManifestError::invalid(
                            &key("retry_backoff"),
                            format!(
                                "must list durations such as \"10s\", not a {}",
                                v.type_str()
                            ),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(ManifestError::invalid(
                &key("retry_backoff"),
                "must be a duration or a list of 1 to 20 durations, e.g. [\"1s\", \"10s\", \"1m\"]",
            )),
        };
        let retry_backoff_ms = match backoff_texts {
            None => DEFAULT_RETRY_BACKOFF
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            Some(texts) => texts
                .iter()
                .map(|s| {
                    let d = parse_duration(s)
                        .map_err(|m| ManifestError::invalid(&key("retry_backoff"), m))?;
                    if d > MAX_RETRY_DELAY {
                        return Err(ManifestError::invalid(
                            &key("retry_backoff"),
                            format!("\"{s}\" is longer than the longest delay, 12h"),
                        ));
                    }
                    Ok(d.as_millis() as u64)
                })
                .collect::<Result<_, _>>()?,
        };
        let dead_letter_subject = string("dead_letter_subject")?;
        if let Some(s) = &dead_letter_subject {
            check_subject(s, false)
                .map_err(|m| ManifestError::invalid(&key("dead_letter_subject"), m))?;
            if subject.as_deref().is_some_and(|f| subject_matches(f, s)) {
                return Err(ManifestError::invalid(
                    &key("dead_letter_subject"),
                    format!("\"{s}\" is matched by the trigger's own subject filter: dead letters would come back to the function; use a subject outside it"),
                ));
            }
        }
        let auth = auth_of(i, t, "")?;
        Ok(NatsSpec {
            name,
            servers,
            stream,
            subject,
            durable,
            batch_size,
            max_batching_window_ms: window.as_millis() as u64,
            concurrency,
            max_retries,
            retry_backoff_ms,
            dead_letter_subject,
            auth,
            alias: super::trigger_alias(i, t)?,
        })
    }
}

/// Reads key `k`: one server URL or a list of 1 to 16, each checked.
pub(crate) fn servers_of(i: usize, t: &toml::Table, k: &str) -> Result<Vec<String>, ManifestError> {
    let key = |k: &str| format!("triggers[{i}].{k}");
    let servers = table_strings(t, i, k, "a URL or a list of URLs")?.ok_or_else(|| {
        ManifestError::invalid(
            &key(k),
            format!("is missing: name the NATS servers, e.g. {k} = [\"nats://127.0.0.1:4222\"]"),
        )
    })?;
    if servers.is_empty() || servers.len() > 16 {
        return Err(ManifestError::invalid(
            &key(k),
            "must list 1 to 16 server URLs",
        ));
    }
    for (j, s) in servers.iter().enumerate() {
        check_server(s).map_err(|m| ManifestError::invalid(&key(&format!("{k}[{j}]")), m))?;
    }
    Ok(servers)
}

/// The credential keys, without the prefix a trigger type gives them.
pub(crate) const AUTH_KEYS: [&str; 5] = ["token", "user", "password", "creds_file", "nkey_file"];

/// Reads the credential keys, each named `PREFIX` + one of [`AUTH_KEYS`].
/// Secret values never appear in an error.
pub(crate) fn auth_of(i: usize, t: &toml::Table, prefix: &str) -> Result<NatsAuth, ManifestError> {
    let name = |k: &str| format!("{prefix}{k}");
    let key = |k: &str| format!("triggers[{i}].{prefix}{k}");
    let mut given = Vec::new();
    for k in AUTH_KEYS {
        match t.get(&name(k)) {
            None => {}
            Some(toml::Value::String(s)) if !s.is_empty() => given.push((k, s.clone())),
            Some(toml::Value::String(_)) => {
                return Err(ManifestError::invalid(&key(k), "is empty"))
            }
            Some(v) => {
                return Err(ManifestError::invalid(
                    &key(k),
                    format!("must be a string, not {}", v.type_str()),
                ))
            }
        }
    }
    let get = |k: &str| given.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
    let auth = match names.as_slice() {
        [] => NatsAuth::None,
        ["token"] => NatsAuth::Token(get("token").unwrap_or_default()),
        ["user", "password"] => NatsAuth::UserPassword {
            user: get("user").unwrap_or_default(),
            password: get("password").unwrap_or_default(),
        },
        ["user"] => {
            return Err(ManifestError::invalid(
                &key("password"),
                format!("is missing: `{}` needs a `{}`", name("user"), name("password")),
            ))
        }
        ["password"] => {
            return Err(ManifestError::invalid(
                &key("user"),
                format!("is missing: `{}` needs a `{}`", name("password"), name("user")),
            ))
        }
        [k @ ("creds_file" | "nkey_file")] => {
            let path = get(k).unwrap_or_default();
            if !path.starts_with('/') || path.contains('\0') {
                return Err(ManifestError::invalid(
                    &key(k),
                    "must be an absolute path to a file on the server's host",
                ));
            }
            if *k == "creds_file" {
                NatsAuth::CredsFile(path)
            } else {
                NatsAuth::NkeyFile(path)
            }
        }
        more => {
            return Err(ManifestError::invalid(
                &key(more[1]),
                format!(
                    "cannot be combined with `{}`: give one of {p}token, {p}user + {p}password, {p}creds_file or {p}nkey_file",
                    name(more[0]),
                    p = prefix
                ),
            ))
        }
    };
    Ok(auth)
}

/// `nats://HOST:PORT`, `tls://HOST:PORT` or `HOST:PORT`, without
/// credentials (they have keys of their own, and a URL is shown).
fn check_server(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("nats://")
        .or_else(|| s.strip_prefix("tls://"))
        .unwrap_or(s);
    if rest.contains('@') {
        return Err("has credentials in the URL: give them as `token`, or `user` and `password`, so they are kept out of what lampyr shows".into());
    }
    if rest.contains("://") {
        return Err(format!(
            "\"{s}\" is not a NATS URL: write nats://HOST:PORT or tls://HOST:PORT"
        ));
    }
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if !ok {
        return Err(format!(
            "\"{s}\" is not a NATS URL: write nats://HOST:PORT or tls://HOST:PORT"
        ));
    }
    Ok(())
}

/// A stream or consumer name: no whitespace, `.`, `*`, `>`, `/` or `\`.
pub(crate) fn check_js_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!(
            "\"{s}\" is not a JetStream name: no spaces, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(())
}

/// A subject: tokens separated by `.`; with `wildcards`, a token may be
/// `*` and the last may be `>`.
pub(crate) fn check_subject(s: &str, wildcards: bool) -> Result<(), String> {
    let bad = |why: &str| format!("\"{s}\" is not a NATS subject: {why}");
    if s.is_empty() || s.len() > 1024 {
        return Err(bad("it must be 1 to 1024 characters"));
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (j, tok) in tokens.iter().enumerate() {
        if tok.is_empty() {
            return Err(bad("a token between dots is empty"));
        }
        if tok.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it has whitespace"));
        }
        let wild = *tok == "*" || (*tok == ">" && j == tokens.len() - 1);
        if wild && !wildcards {
            return Err(bad("wildcards cannot be published to"));
        }
        if !wild && (tok.contains('*') || tok.contains('>')) {
            return Err(bad("'*' and '>' are whole tokens ('>' only the last one)"));
        }
    }
    Ok(())
}

/// Whether the filter `filter` matches the literal subject `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FunctionSpec, TriggerSpec};

    const MIN: &str = "name = \"hello\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";

    fn parse(extra: &str) -> Result<FunctionSpec, String> {
        FunctionSpec::from_toml(&format!(
            "{MIN}[[triggers]]\ntype = \"nats\"\nservers = \"nats://127.0.0.1:4222\"\nstream = \"ORDERS\"\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }

    fn nats(s: &FunctionSpec) -> &NatsSpec {
        match &s.triggers[0] {
            TriggerSpec::Nats(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nats_trigger_may_name_the_alias_it_calls() {
        let s = parse("alias = \"live\"\n").unwrap();
        assert_eq!(nats(&s).alias.as_deref(), Some("live"));
        assert_eq!(
            s.trigger_aliases(),
            [("triggers[0].alias".to_string(), "live")]
        );
        assert_eq!(nats(&parse("").unwrap()).alias, None);
        assert!(parse("alias = \"9\"\n")
            .unwrap_err()
            .contains("triggers[0].alias"));
    }

    #[test]
    fn defaults_fill_in() {
        let s = parse("").unwrap();
        let n = nats(&s);
        assert_eq!(n.name, "nats");
        assert_eq!(n.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!((n.batch_size, n.concurrency, n.max_retries), (1, 1, 2));
        assert_eq!(n.retry_backoff_ms, [1000, 10_000, 60_000]);
        assert_eq!(n.durable_name("hello"), "lampyr-hello-nats");
        assert_eq!(n.auth, NatsAuth::None);
        assert_eq!(n.retry_delay(1), Duration::from_secs(1));
        assert_eq!(n.retry_delay(9), Duration::from_secs(60));
        assert_eq!(s.triggers[0].kind(), crate::TriggerKind::Nats);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
    }

    #[test]
    fn every_key_reads() {
        let s = parse(
            "name = \"orders\"\nsubject = \"orders.*\"\ndurable = \"ord\"\nbatch_size = 10\nmax_batching_window = \"200ms\"\nconcurrency = 4\nmax_retries = 5\nretry_backoff = [\"500ms\", \"2s\"]\ndead_letter_subject = \"dlq.orders\"\nuser = \"app\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        let n = nats(&s);
        assert_eq!(n.subject.as_deref(), Some("orders.*"));
        assert_eq!(n.durable_name("hello"), "ord");
        assert_eq!((n.batch_size, n.max_batching_window_ms), (10, 200));
        assert_eq!((n.concurrency, n.max_retries), (4, 5));
        assert_eq!(n.retry_backoff_ms, [500, 2000]);
        assert_eq!(n.retry_delay(2), Duration::from_secs(2));
        assert_eq!(n.dead_letter_subject.as_deref(), Some("dlq.orders"));
        assert_eq!(
            n.auth.redacted(),
            NatsAuth::UserPassword {
                user: "app".into(),
                password: REDACTED.into()
            }
        );
        let shown = serde_json::to_string(&s.redacted()).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
        let s = parse("token = \"s3cret\"\n").unwrap();
        assert!(!serde_json::to_string(&s.redacted())
            .unwrap()
            .contains("s3cret"));
        let s = parse("creds_file = \"/etc/nats/app.creds\"\n").unwrap();
        assert_eq!(
            nats(&s).auth,
            NatsAuth::CredsFile("/etc/nats/app.creds".into())
        );
    }

    #[test]
    fn wrong_values_name_the_trigger_and_key() {
        for (extra, want) in [
            (
                "batch_size = 0\n",
                "`triggers[0].batch_size`: 0 is out of range",
            ),
            ("batch_size = 101\n", "`triggers[0].batch_size`"),
            (
                "batch_size = \"ten\"\n",
                "`triggers[0].batch_size`: must be a whole number",
            ),
            ("concurrency = 0\n", "`triggers[0].concurrency`"),
            ("max_retries = -1\n", "`triggers[0].max_retries`"),
            (
                "max_batching_window = \"10m\"\n",
                "`triggers[0].max_batching_window`",
            ),
            (
                "max_batching_window = \"soon\"\n",
                "`triggers[0].max_batching_window`",
            ),
            ("retry_backoff = []\n", "`triggers[0].retry_backoff`"),
            (
                "retry_backoff = [\"1s\", 3]\n",
                "`triggers[0].retry_backoff`",
            ),
            ("retry_backoff = \"2d\"\n", "`triggers[0].retry_backoff`"),
            ("subject = \"orders..x\"\n", "`triggers[0].subject`"),
            ("subject = \"orders.>.x\"\n", "`triggers[0].subject`"),
            (
                "dead_letter_subject = \"dlq.*\"\n",
                "`triggers[0].dead_letter_subject`",
            ),
            (
                "subject = \"orders.>\"\ndead_letter_subject = \"orders.dead\"\n",
                "would come back",
            ),
            ("durable = \"a.b\"\n", "`triggers[0].durable`"),
            ("name = \"Orders\"\n", "`triggers[0].name`"),
            (
                "ack_wait = \"5s\"\n",
                "`triggers[0].ack_wait`: is not a setting of a trigger of type \"nats\"",
            ),
            ("user = \"app\"\n", "`triggers[0].password`: is missing"),
            ("token = \"t\"\ncreds_file = \"/x\"\n", "cannot be combined"),
            (
                "nkey_file = \"seed.nk\"\n",
                "`triggers[0].nkey_file`: must be an absolute path",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(want), "{extra:?} gave {e}");
        }
        let e = FunctionSpec::from_toml(&format!(
            "{MIN}[[triggers]]\ntype = \"nats\"\nstream = \"S\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`triggers[0].servers`: is missing"), "{e}");
        let e = FunctionSpec::from_toml(&format!(
            "{MIN}[[triggers]]\ntype = \"nats\"\nservers = [\"nats://h:1\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`triggers[0].stream`: is missing"), "{e}");
        let e = FunctionSpec::from_toml(&format!("{MIN}[[triggers]]\ntype = \"nats\"\nservers = [\"nats://h:1\", \"http://x\"]\nstream = \"S\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`triggers[0].servers[1]`"), "{e}");
        // Credentials are never echoed, in a URL or a key.
        let e = FunctionSpec::from_toml(&format!("{MIN}[[triggers]]\ntype = \"nats\"\nservers = \"nats://app:hunter2@h:4222\"\nstream = \"S\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        let e = parse("token = \"hunter2\"\nuser = \"u\"\npassword = \"hunter3\"\n").unwrap_err();
        assert!(!e.contains("hunter"), "{e}");
        // Two NATS triggers need names of their own.
        let e = parse("[[triggers]]\ntype = \"nats\"\nservers = \"h:1\"\nstream = \"T\"\n")
            .unwrap_err();
        assert!(e.contains("`triggers[1].name`"), "{e}");
    }

    #[test]
    fn filters_match_subjects() {
        assert!(subject_matches("a.*", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.b", "a"));
    }
}
