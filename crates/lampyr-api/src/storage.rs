//! The storage-event trigger's manifest table, `type = "storage"`: S3-format
//! bucket notifications (AWS S3, MinIO, Ceph RGW, SNS) delivered to the
//! webhook `/sources/storage/FUNCTION/NAME`, and, with `nats_servers` and
//! `nats_subject`, also taken from a NATS subject (MinIO's NATS target),
//! or with `nats_stream` from a JetStream stream.
//!
//! ```toml
//! [[triggers]]
//! type = "storage"
//! name = "uploads"                       # default "storage"
//! bucket = "photos"                      # or a list; default: any bucket
//! events = ["ObjectCreated:*"]           # default: every event
//! prefix = "incoming/"                   # of the decoded object key
//! suffix = ".jpg"
//! token = "…"                            # default: the function's trigger token
//! sns_confirm_hosts = ["sns.eu-west-1.amazonaws.com"]
//! # Also from NATS, where the store publishes its notifications:
//! nats_servers = ["nats://127.0.0.1:4222"]
//! nats_subject = "minio.events"          # MinIO's `subject`
//! nats_stream = "MINIO"                  # consume this JetStream stream (durable, acked);
//!                                        # without it: a core NATS subscription, at most once
//! nats_durable = "thumbs-uploads"        # the consumer; default lampyr-FUNCTION-storage-NAME
//! nats_token = "…"                       # or nats_user + nats_password, nats_creds_file, nats_nkey_file
//! ```

use serde::{Deserialize, Serialize};

use crate::manifest::nats::{auth_of, check_js_name, check_subject, servers_of, AUTH_KEYS};
use crate::manifest::{table_string, table_strings, validate_name, ManifestError};
use crate::NatsAuth;

/// A `[[triggers]]` table with `type = "storage"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// Its name, unique among the function's storage triggers: the last
    /// part of its webhook's path.
    pub name: String,
    /// Buckets whose events are taken; empty: any bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// Event types taken (`ObjectCreated:*`, `ObjectRemoved:Delete`, ...,
    /// without the `s3:` prefix); empty: every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// The decoded object key starts with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The decoded object key ends with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    /// The webhook's bearer token; `None`: the function's trigger token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Hosts (`host` or `host:port`) whose SNS `SubscribeURL` the trigger
    /// opens to confirm a subscription; any other is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sns_confirm_hosts: Vec<String>,
    /// Where notifications are also taken from: a NATS subject or stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<StorageNats>,
}

/// A storage trigger's NATS side (the `nats_*` keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageNats {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// The subject the store publishes to (a filter, wildcards allowed).
    pub subject: String,
    /// A JetStream stream holding the subject: consumed with a durable
    /// pull consumer and explicit acks. `None`: a core NATS subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable consumer's name (see [`StorageNats::durable_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<String>,
    #[serde(default, skip_serializing_if = "NatsAuth::is_none")]
    pub auth: NatsAuth,
}

impl StorageNats {
    /// The durable consumer's name: `nats_durable`, or
    /// `lampyr-FUNCTION-storage-TRIGGER`.
    pub fn durable_name(&self, function: &str, trigger: &str) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| format!("lampyr-{function}-storage-{trigger}"))
    }
}

/// The settings of a storage trigger, as a manifest writes them.
pub(crate) const KEYS: &[&str] = &[
    "type",
    "name",
    "bucket",
    "events",
    "prefix",
    "suffix",
    "token",
    "sns_confirm_hosts",
    "nats_servers",
    "nats_subject",
    "nats_stream",
    "nats_durable",
    "nats_token",
    "nats_user",
    "nats_password",
    "nats_creds_file",
    "nats_nkey_file",
];

/// The shortest token a manifest may set.
pub const MIN_TOKEN_LEN: usize = 16;

impl StorageSpec {
    /// Whether `event` (as a record names it, `s3:` prefix or not) is one
    /// this trigger takes.
    pub fn takes_event(&self, event: &str) -> bool {
        let event = event.strip_prefix("s3:").unwrap_or(event);
        self.events.is_empty()
            || self.events.iter().any(|want| match want.strip_suffix('*') {
                Some(category) => event.starts_with(category),
                None => want == event,
            })
    }

    /// Whether an object of `bucket` with the (decoded) `key` is one this
    /// trigger takes.
    pub fn takes_object(&self, bucket: &str, key: &str) -> bool {
        (self.buckets.is_empty() || self.buckets.iter().any(|b| b == bucket))
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
    }

    /// Reads `[[triggers]]` table `i` (its `type` is `"storage"`).
    pub(crate) fn from_table(i: usize, t: &toml::Table) -> Result<StorageSpec, ManifestError> {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let string = |k: &str| table_string(t, &key(k), k);
        // A string or a list of strings.
        let strings = |k: &str| {
            table_strings(t, i, k, "a string or a list of strings").map(Option::unwrap_or_default)
        };
        let name = string("name")?.unwrap_or_else(|| "storage".to_string());
        validate_name(&name).map_err(|_| {
            ManifestError::invalid(
                &key("name"),
                format!("\"{name}\" is not a valid trigger name: use 1-63 characters of a-z, 0-9, '-' and '_'"),
            )
        })?;
        let buckets = strings("bucket")?;
        for b in &buckets {
            let ok = (3..=255).contains(&b.len())
                && b.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(ManifestError::invalid(
                    &key("bucket"),
                    format!("\"{b}\" is not a bucket name: use 3-255 characters of letters, digits, '.', '-' and '_'"),
                ));
            }
        }
        let mut events = Vec::new();
        for e in strings("events")? {
            let bare = e.strip_prefix("s3:").unwrap_or(&e).to_string();
            let (category, kind) = bare.split_once(':').unwrap_or((bare.as_str(), ""));
            let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
            let ok = word(category)
                && category.starts_with(|c: char| c.is_ascii_uppercase())
                && (kind.is_empty() || kind == "*" || word(kind));
            if !ok {
                return Err(ManifestError::invalid(
                    &key("events"),
                    format!("\"{e}\" is not an event type: write e.g. \"ObjectCreated:*\", \"ObjectRemoved:*\" or \"ObjectCreated:Put\""),
                ));
            }
            events.push(bare);
        }
        let prefix = string("prefix")?.unwrap_or_default();
        let suffix = string("suffix")?.unwrap_or_default();
        for (k, v) in [("prefix", &prefix), ("suffix", &suffix)] {
            if v.len() > 1024 {
                return Err(ManifestError::invalid(
                    &key(k),
                    "is longer than an object key can be (1024 bytes)",
                ));
            }
        }
        let token = string("token")?;
        if let Some(tok) = &token {
            let ok = tok.len() >= MIN_TOKEN_LEN
                && tok.len() <= 256
                && tok.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err(ManifestError::invalid(
                    &key("token"),
                    format!("must be {MIN_TOKEN_LEN} to 256 printable characters without spaces: generate one with e.g. `openssl rand -hex 24`, or leave it out to use the function's trigger token (`lampyr info`)"),
                ));
            }
        }
        let sns_confirm_hosts = strings("sns_confirm_hosts")?;
        for h in &sns_confirm_hosts {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (h.as_str(), None),
            };
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(ManifestError::invalid(
                    &key("sns_confirm_hosts"),
                    format!("\"{h}\" is not a host: write a host name or address, with a port if needed, e.g. \"sns.us-east-1.amazonaws.com\" or \"127.0.0.1:9911\""),
                ));
            }
        }
        let nats = nats_of(i, t)?;
        Ok(StorageSpec {
            name,
            buckets,
            events,
            prefix,
            suffix,
            token,
            sns_confirm_hosts,
            nats,
        })
    }
}

/// Reads the `nats_*` keys of `[[triggers]]` table `i`: none, or servers
/// and a subject with what goes with them.
fn nats_of(i: usize, t: &toml::Table) -> Result<Option<StorageNats>, ManifestError> {
    let key = |k: &str| format!("triggers[{i}].{k}");
    let string = |k: &str| table_string(t, &key(k), k);
    let given: Vec<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("nats_"))
        .collect();
    if given.is_empty() {
        return Ok(None);
    }
    if !t.contains_key("nats_servers") {
        return Err(ManifestError::invalid(
            &key("nats_servers"),
            format!("is missing: `{}` takes notifications from NATS, which needs its servers, e.g. nats_servers = [\"nats://127.0.0.1:4222\"] with nats_subject = \"minio.events\"", given[0]),
        ));
    }
    let servers = servers_of(i, t, "nats_servers")?;
    let subject = string("nats_subject")?.ok_or_else(|| {
        ManifestError::invalid(
            &key("nats_subject"),
            "is missing: name the subject the store publishes its notifications to, e.g. nats_subject = \"minio.events\" (MinIO's `subject`)",
        )
    })?;
    check_subject(&subject, true).map_err(|m| ManifestError::invalid(&key("nats_subject"), m))?;
    let stream = string("nats_stream")?;
    if let Some(s) = &stream {
        check_js_name(s).map_err(|m| ManifestError::invalid(&key("nats_stream"), m))?;
    }
    let durable = string("nats_durable")?;
    if let Some(d) = &durable {
        if stream.is_none() {
            return Err(ManifestError::invalid(
                &key("nats_durable"),
                "only applies with `nats_stream`: a core NATS subscription has no consumer to name",
            ));
        }
        check_js_name(d).map_err(|m| ManifestError::invalid(&key("nats_durable"), m))?;
    }
    debug_assert!(AUTH_KEYS
        .iter()
        .all(|k| KEYS.contains(&format!("nats_{k}").as_str())));
    let auth = auth_of(i, t, "nats_")?;
    Ok(Some(StorageNats {
        servers,
        subject,
        stream,
        durable,
        auth,
    }))
}

#[cfg(test)]
mod tests {
    use crate::{FunctionSpec, TriggerSpec};

    const MIN: &str = "name = \"thumbs\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\n";

    fn parse(extra: &str) -> Result<FunctionSpec, String> {
        FunctionSpec::from_toml(&format!("{MIN}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn storage_triggers_parse_with_defaults_and_filters() {
        let s = parse("[[triggers]]\ntype = \"storage\"\n").unwrap();
        let TriggerSpec::Storage(st) = &s.triggers[0] else {
            panic!("{s:?}")
        };
        assert_eq!(st.name, "storage");
        assert!(st.buckets.is_empty() && st.events.is_empty() && st.token.is_none());
        assert!(st.takes_event("s3:ObjectRemoved:Delete") && st.takes_object("b", "k"));
        assert_eq!(s.triggers[0].kind(), crate::TriggerKind::Storage);

        let s = parse(
            "[[triggers]]\ntype = \"storage\"\nname = \"uploads\"\nbucket = [\"photos\", \"raw.data\"]\nevents = [\"s3:ObjectCreated:*\", \"ObjectRemoved:Delete\"]\nprefix = \"in/\"\nsuffix = \".jpg\"\ntoken = \"0123456789abcdef0123\"\nsns_confirm_hosts = [\"127.0.0.1:9911\", \"sns.eu-west-1.amazonaws.com\"]\n[[triggers]]\ntype = \"storage\"\nname = \"other\"\nbucket = \"logs\"\nevents = \"ObjectCreated:Put\"\n",
        )
        .unwrap();
        let st: Vec<_> = s.storage_triggers().collect();
        assert_eq!(st.len(), 2);
        let u = st[0];
        assert_eq!(u.buckets, ["photos", "raw.data"]);
        assert_eq!(u.events, ["ObjectCreated:*", "ObjectRemoved:Delete"]);
        assert!(u.takes_event("ObjectCreated:Put") && u.takes_event("s3:ObjectCreated:Copy"));
        assert!(u.takes_event("ObjectRemoved:Delete"));
        assert!(!u.takes_event("ObjectRemoved:DeleteMarkerCreated"));
        assert!(!u.takes_event("ObjectTagging:Put"));
        assert!(u.takes_object("photos", "in/a b.jpg"));
        assert!(!u.takes_object("photos", "out/a.jpg"));
        assert!(!u.takes_object("photos", "in/a.png"));
        assert!(!u.takes_object("videos", "in/a.jpg"));
        assert_eq!(st[1].buckets, ["logs"]);
        assert_eq!(st[1].events, ["ObjectCreated:Put"]);
        // The stored form reads back.
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);
    }

    #[test]
    fn storage_keys_are_validated_by_name() {
        let t = "[[triggers]]\ntype = \"storage\"\n";
        for (extra, want) in [
            (
                "buckets = \"x\"\n",
                "`triggers[0].buckets`: is not a setting of a trigger of type \"storage\"",
            ),
            (
                "bucket = \"a b\"\n",
                "`triggers[0].bucket`: \"a b\" is not a bucket name",
            ),
            (
                "bucket = 3\n",
                "`triggers[0].bucket`: must be a string or a list",
            ),
            (
                "bucket = [\"photos\", 1]\n",
                "`triggers[0].bucket[1]`: must be a string",
            ),
            (
                "events = [\"created\"]\n",
                "`triggers[0].events`: \"created\" is not an event type",
            ),
            (
                "events = [\"ObjectCreated:Put*\"]\n",
                "`triggers[0].events`",
            ),
            ("prefix = 1\n", "`triggers[0].prefix`: must be a string"),
            (
                "token = \"short\"\n",
                "`triggers[0].token`: must be 16 to 256",
            ),
            (
                "token = \"has a space in it, long\"\n",
                "`triggers[0].token`",
            ),
            (
                "sns_confirm_hosts = [\"http://sns.example\"]\n",
                "`triggers[0].sns_confirm_hosts`: \"http://sns.example\" is not a host",
            ),
            (
                "sns_confirm_hosts = [\"h:0\"]\n",
                "`triggers[0].sns_confirm_hosts`",
            ),
            ("name = \"Up Loads\"\n", "`triggers[0].name`"),
        ] {
            let e = parse(&format!("{t}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra:?} gave {e}");
        }
        let e = parse(&format!("{t}{t}")).unwrap_err();
        assert!(
            e.contains("`triggers[1].name`") && e.contains("another storage trigger"),
            "{e}"
        );
    }

    #[test]
    fn nats_keys_read_and_their_secrets_are_redacted() {
        let s = parse("[[triggers]]\ntype = \"storage\"\nname = \"minio\"\nnats_servers = \"nats://127.0.0.1:4222\"\nnats_subject = \"minio.events\"\nnats_token = \"hunter2\"\n").unwrap();
        let st = s.storage_triggers().next().unwrap();
        let n = st.nats.as_ref().unwrap();
        assert_eq!(n.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(n.subject, "minio.events");
        assert_eq!((n.stream.as_deref(), n.durable.as_deref()), (None, None));
        assert_eq!(n.auth, crate::NatsAuth::Token("hunter2".into()));
        assert_eq!(
            n.durable_name("thumbs", "minio"),
            "lampyr-thumbs-storage-minio"
        );
        let shown = serde_json::to_string(&s.redacted()).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&j).unwrap(), s);

        let s = parse("[[triggers]]\ntype = \"storage\"\nnats_servers = [\"nats://a:4222\", \"b:4222\"]\nnats_subject = \"minio.>\"\nnats_stream = \"MINIO\"\nnats_durable = \"thumbs\"\nnats_user = \"app\"\nnats_password = \"pw\"\n").unwrap();
        let n = s.storage_triggers().next().unwrap().nats.clone().unwrap();
        assert_eq!(n.stream.as_deref(), Some("MINIO"));
        assert_eq!(n.durable_name("thumbs", "storage"), "thumbs");
        assert!(matches!(n.auth, crate::NatsAuth::UserPassword { .. }));
        // Without nats keys, no NATS side.
        let s = parse("[[triggers]]\ntype = \"storage\"\n").unwrap();
        assert!(s.storage_triggers().next().unwrap().nats.is_none());
    }

    #[test]
    fn nats_keys_are_validated_by_name() {
        let t = "[[triggers]]\ntype = \"storage\"\n";
        let both = "nats_servers = \"nats://127.0.0.1:4222\"\nnats_subject = \"minio.events\"\n";
        for (extra, want) in [
            (
                "nats_stream = \"MINIO\"\n".to_string(),
                "`triggers[0].nats_servers`: is missing: `nats_stream` takes notifications from NATS",
            ),
            (
                "nats_subject = \"minio.events\"\n".to_string(),
                "`triggers[0].nats_servers`: is missing",
            ),
            (
                "nats_servers = \"nats://127.0.0.1:4222\"\nnats_stream = \"MINIO\"\n".to_string(),
                "`triggers[0].nats_subject`: is missing",
            ),
            (
                "nats_servers = \"http://x\"\nnats_subject = \"a\"\n".to_string(),
                "`triggers[0].nats_servers[0]`: \"http://x\" is not a NATS URL",
            ),
            (
                "nats_servers = \"nats://u:pw@h:1\"\nnats_subject = \"a\"\n".to_string(),
                "`triggers[0].nats_servers[0]`: has credentials in the URL",
            ),
            (
                format!("{both}nats_durable = \"d\"\n"),
                "`triggers[0].nats_durable`: only applies with `nats_stream`",
            ),
            (
                "nats_servers = \"nats://h:1\"\nnats_subject = \"a..b\"\n".to_string(),
                "`triggers[0].nats_subject`: \"a..b\" is not a NATS subject",
            ),
            (
                format!("{both}nats_stream = \"MI.NIO\"\n"),
                "`triggers[0].nats_stream`",
            ),
            (
                format!("{both}nats_user = \"app\"\n"),
                "`triggers[0].nats_password`: is missing: `nats_user` needs a `nats_password`",
            ),
            (
                format!("{both}nats_token = \"secret-1\"\nnats_creds_file = \"/x\"\n"),
                "cannot be combined with `nats_token`",
            ),
            (
                format!("{both}nats_nkey_file = \"seed.nk\"\n"),
                "`triggers[0].nats_nkey_file`: must be an absolute path",
            ),
            (
                format!("{both}nats_subjects = \"x\"\n"),
                "`triggers[0].nats_subjects`: is not a setting of a trigger of type \"storage\"",
            ),
            (
                format!("{both}user = \"app\"\n"),
                "`triggers[0].user`: is not a setting of a trigger of type \"storage\"",
            ),
        ] {
            let e = parse(&format!("{t}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra:?} gave {e}");
            assert!(!e.contains("secret-1"), "{e}");
        }
    }
}
