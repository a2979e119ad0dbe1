//! Reading a notification: the three body shapes, the records in them,
//! what a trigger's filters see of a record, and its idempotency key.

use serde_json::{Map, Value};

/// Why a body is not a notification; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// What a webhook request carries.
#[derive(Debug)]
pub enum Notification {
    /// Event records (a raw S3 body, MinIO's, or an SNS `Notification`'s
    /// message).
    Records(Vec<Record>),
    /// An SNS `SubscriptionConfirmation`.
    Confirm {
        subscribe_url: String,
        topic: String,
    },
    /// Nothing to run (S3's `s3:TestEvent`, an SNS
    /// `UnsubscribeConfirmation`): answered 200.
    Nothing(&'static str),
}

/// One S3 event record, with what the filters and the key need.
#[derive(Debug)]
pub struct Record {
    /// The record as sent, `eventName` without MinIO's `s3:` prefix.
    pub value: Value,
    pub event_name: String,
    pub bucket: String,
    /// The object key as sent (URL-encoded, form style).
    pub key: String,
    /// The key decoded, as prefix and suffix filters compare it.
    pub decoded_key: String,
}

impl Record {
    /// The idempotency key of this record for trigger `trigger`: bucket,
    /// key, version (or eTag), sequencer (or, where a sender has none, the
    /// event time) and event name. A redelivery of the same notification
    /// has the same key.
    pub fn idempotency_key(&self, trigger: &str) -> String {
        let object = &self.value["s3"]["object"];
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let version = text(&object["versionId"])
            .or_else(|| text(&object["eTag"]))
            .unwrap_or_else(|| "-".into());
        let order = text(&object["sequencer"])
            .or_else(|| text(&self.value["eventTime"]))
            .unwrap_or_else(|| "-".into());
        format!(
            "storage:{trigger}:{}/{}/{version}/{order}/{}",
            self.bucket, self.key, self.event_name
        )
    }

    /// The event the function gets: Lambda's S3 shape, one record.
    pub fn event(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "Records": [&self.value] }))
            .expect("a JSON value serialises")
    }
}

/// Reads a webhook body.
pub fn parse(body: &[u8]) -> Result<Notification, Malformed> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Malformed(format!("the body is not JSON ({e}): send an S3 event notification ({{\"Records\": [...]}}), MinIO's webhook body or an SNS message")))?;
    let Value::Object(o) = v else {
        return Err(Malformed(
            "the body is not a JSON object: send an S3 event notification ({\"Records\": [...]}), MinIO's webhook body or an SNS message".into(),
        ));
    };
    if let (Some(Value::String(t)), true) = (o.get("Type"), o.contains_key("TopicArn")) {
        return sns(t, &o);
    }
    from_object(o, "")
}

/// An SNS envelope of type `kind`.
fn sns(kind: &str, o: &Map<String, Value>) -> Result<Notification, Malformed> {
    let field = |k: &str| -> Result<String, Malformed> {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Malformed(format!("the SNS {kind} has no string `{k}`")))
    };
    match kind {
        "Notification" => {
            let message = field("Message")?;
            let inner: Value = serde_json::from_str(&message).map_err(|e| {
                Malformed(format!("the SNS notification's `Message` is not JSON ({e}): the topic should carry S3 event notifications"))
            })?;
            match inner {
                // An SNS message in an SNS message is not a notification.
                Value::Object(m) if !m.contains_key("TopicArn") => from_object(m, "Message."),
                _ => Err(Malformed(
                    "the SNS notification's `Message` is not an S3 event notification".into(),
                )),
            }
        }
        "SubscriptionConfirmation" => Ok(Notification::Confirm {
            subscribe_url: field("SubscribeURL")?,
            topic: field("TopicArn")?,
        }),
        "UnsubscribeConfirmation" => Ok(Notification::Nothing("an SNS unsubscribe confirmation")),
        other => Err(Malformed(format!(
            "`Type` \"{other}\" is not an SNS message type (Notification, SubscriptionConfirmation, UnsubscribeConfirmation)"
        ))),
    }
}

/// A raw S3 body or MinIO's `{"EventName","Key","Records"}`.
fn from_object(mut o: Map<String, Value>, at: &str) -> Result<Notification, Malformed> {
    if o.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::Nothing("S3's test event"));
    }
    let Some(records) = o.remove("Records") else {
        return Err(Malformed(format!(
            "`{at}Records` is missing: an S3 event notification is {{\"Records\": [...]}}"
        )));
    };
    let Value::Array(records) = records else {
        return Err(Malformed(format!("`{at}Records` is not a list")));
    };
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| record(r, &format!("{at}Records[{i}]")))
        .collect::<Result<_, _>>()
        .map(Notification::Records)
}

fn record(mut v: Value, at: &str) -> Result<Record, Malformed> {
    let text = |v: &Value, path: &[&str]| -> Result<String, Malformed> {
        let mut cur = v;
        for p in path {
            cur = &cur[*p];
        }
        cur.as_str().map(str::to_string).ok_or_else(|| {
            Malformed(format!(
                "`{at}.{}` is missing or not a string",
                path.join(".")
            ))
        })
    };
    if !v.is_object() {
        return Err(Malformed(format!("`{at}` is not an object")));
    }
    let event_name = text(&v, &["eventName"])?;
    let bucket = text(&v, &["s3", "bucket", "name"])?;
    let key = text(&v, &["s3", "object", "key"])?;
    let event_name = match event_name.strip_prefix("s3:") {
        Some(bare) => {
            v["eventName"] = Value::String(bare.to_string());
            bare.to_string()
        }
        None => event_name,
    };
    let decoded_key = decode_key(&key);
    Ok(Record {
        value: v,
        event_name,
        bucket,
        key,
        decoded_key,
    })
}

/// An S3 key as events send it (form-encoded: `+` is a space), decoded.
pub fn decode_key(key: &str) -> String {
    form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The tokens a request presents in its `Authorization` header: the header
/// as is, its second word (a bearer token, as MinIO sends a one-word
/// `auth_token`; MinIO sends a two-word one, `SCHEME TOKEN`, unchanged),
/// and the password of Basic credentials (SNS
/// sends those from an endpoint URL's `user:password@`); and the query's
/// `token` (for senders that set no header, such as Ceph RGW's HTTP
/// endpoint).
pub fn presented(authorization: Option<&str>, query: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .collect();
    let Some(h) = authorization.map(str::trim) else {
        return out;
    };
    out.push(h.to_string());
    if let Some((scheme, rest)) = h.split_once(' ') {
        let rest = rest.trim();
        if !scheme.eq_ignore_ascii_case("basic") {
            out.push(rest.to_string());
        } else {
            use base64::Engine;
            if let Some(pass) = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
            {
                out.push(pass);
            }
        }
    }
    out
}

/// The scheme, host and port of an `http(s)://` URL.
pub fn url_host(url: &str) -> Option<(&str, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, default),
    };
    (!host.is_empty()).then(|| (scheme, host.to_ascii_lowercase(), port))
}

/// Whether `host:port` is on the allow-list (`host` or `host:port` items).
pub fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|a| match a.rsplit_once(':') {
        Some((h, p)) => h.eq_ignore_ascii_case(host) && p.parse() == Ok(port),
        None => a.eq_ignore_ascii_case(host),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventTime":"2026-01-01T00:00:00.000Z","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"},"object":{"key":"red+flower%2F%C3%A4+1.jpg","size":3,"eTag":"abc","sequencer":"0055AED6DCD90281E5"}}}]}"#;

    #[test]
    fn the_three_shapes_read() {
        let Notification::Records(r) = parse(RAW.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r[0].decoded_key, "red flower/ä 1.jpg");
        assert_eq!(r[0].key, "red+flower%2F%C3%A4+1.jpg");
        assert_eq!(
            r[0].idempotency_key("t"),
            "storage:t:photos/red+flower%2F%C3%A4+1.jpg/abc/0055AED6DCD90281E5/ObjectCreated:Put"
        );
        let ev: Value = serde_json::from_slice(&r[0].event()).unwrap();
        assert_eq!(ev["Records"][0]["s3"]["object"]["size"], 3);

        let minio = r#"{"EventName":"s3:ObjectRemoved:Delete","Key":"photos/a b","Records":[{"eventName":"s3:ObjectRemoved:Delete","s3":{"bucket":{"name":"photos"},"object":{"key":"a+b","sequencer":"17"}}}]}"#;
        let Notification::Records(r) = parse(minio.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r[0].event_name, "ObjectRemoved:Delete");
        assert_eq!(r[0].value["eventName"], "ObjectRemoved:Delete");

        let sns = serde_json::json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "MessageId": "m", "Message": RAW});
        let Notification::Records(r) = parse(sns.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r[0].bucket, "photos");
        let conf = serde_json::json!({"Type": "SubscriptionConfirmation", "TopicArn": "arn:t", "SubscribeURL": "http://127.0.0.1:9/x?Token=1"});
        assert!(matches!(
            parse(conf.to_string().as_bytes()).unwrap(),
            Notification::Confirm { .. }
        ));
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"}"#;
        assert!(matches!(
            parse(test.as_bytes()).unwrap(),
            Notification::Nothing(_)
        ));
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        for (body, want) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            ("{}", "`Records` is missing"),
            (r#"{"Records":{}}"#, "`Records` is not a list"),
            (
                r#"{"Records":[{"eventName":"x"}]}"#,
                "`Records[0].s3.bucket.name`",
            ),
            (r#"{"Records":[{"s3":{}}]}"#, "`Records[0].eventName`"),
            (
                r#"{"Type":"Notification","TopicArn":"t","Message":"{}"}"#,
                "`Message.Records` is missing",
            ),
            (
                r#"{"Type":"Weird","TopicArn":"t"}"#,
                "not an SNS message type",
            ),
        ] {
            let e = parse(body.as_bytes()).unwrap_err().0;
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn tokens_and_hosts() {
        assert!(presented(Some("Bearer abc"), None).contains(&"abc".to_string()));
        assert!(presented(Some("Token abc"), None).contains(&"abc".to_string()));
        // "lampyr:s3cret"
        assert!(presented(Some("Basic bGFtcHlyOnMzY3JldA=="), None).contains(&"s3cret".to_string()));
        assert_eq!(presented(None, Some("a=1&token=t%2Bk")), ["t+k"]);
        assert!(presented(None, None).is_empty());
        assert_eq!(
            url_host("http://u:p@Sns.Example:8080/?Action=x"),
            Some(("http", "sns.example".into(), 8080))
        );
        assert_eq!(
            url_host("https://sns.example/x"),
            Some(("https", "sns.example".into(), 443))
        );
        assert_eq!(url_host("ftp://x/"), None);
        let allowed = vec!["127.0.0.1:9911".to_string(), "sns.example".to_string()];
        assert!(host_allowed(&allowed, "127.0.0.1", 9911));
        assert!(!host_allowed(&allowed, "127.0.0.1", 80));
        assert!(host_allowed(&allowed, "sns.example", 443));
        assert!(!host_allowed(&allowed, "evil.example", 443));
    }
}
