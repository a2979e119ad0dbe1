//! Verifying AWS Signature Version 4 (`Authorization: AWS4-HMAC-SHA256
//! Credential=…, SignedHeaders=…, Signature=…`), so AWS SDKs and the AWS CLI
//! can call lampyr with an access key lampyr issued.
//!
//! The canonical request is rebuilt from the request as received, the way
//! the SDKs build it before they send it: the path URI-encoded once more
//! (every service but S3 does), the query parameters decoded, re-encoded
//! and sorted, the signed headers lower-cased with their values trimmed,
//! and the payload's SHA-256.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far a request's `x-amz-date` may be from the server's clock.
pub(crate) const MAX_SKEW_SECS: i64 = 15 * 60;

/// A parsed `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'a> {
    pub(crate) access_key: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) signed_headers: Vec<&'a str>,
    pub(crate) signature: &'a str,
}

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SigError {
    #[error("the Authorization header is not an AWS Signature Version 4 header ({0})")]
    Malformed(&'static str),
    #[error("the request has no x-amz-date header: sign it with an AWS SDK or the AWS CLI")]
    NoDate,
    #[error(
        "x-amz-date {0} is more than 15 minutes from the server's time: check the client's clock"
    )]
    Skewed(String),
    #[error("the signed header {0} is not in the request")]
    MissingHeader(String),
    #[error("x-amz-content-sha256 does not match the body")]
    PayloadHash,
    #[error("the signature does not match: check the secret access key that goes with this access key id")]
    Mismatch,
}

/// Parses `AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
pub(crate) fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or(SigError::Malformed("it must start with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or(SigError::Malformed("no Credential"))?;
    let mut scope = credential.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(SigError::Malformed(
            "Credential must be ID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    let signed_headers: Vec<&str> = signed
        .ok_or(SigError::Malformed("no SignedHeaders"))?
        .split(';')
        .collect();
    let signature = signature.ok_or(SigError::Malformed("no Signature"))?;
    if access_key.is_empty() || date.len() != 8 || signature.len() != 64 {
        return Err(SigError::Malformed(
            "a part of it is empty or the wrong length",
        ));
    }
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// The request as the signature covers it.
pub(crate) struct Signed<'a> {
    pub(crate) method: &'a str,
    /// The path as received (still percent-encoded).
    pub(crate) path: &'a str,
    /// The query string as received, without `?`.
    pub(crate) query: &'a str,
    pub(crate) headers: &'a axum::http::HeaderMap,
    pub(crate) body: &'a [u8],
}

/// Checks `auth`'s signature over `req` with `secret`, and that the request
/// was signed within [`MAX_SKEW_SECS`] of `now` (seconds since the epoch).
pub(crate) fn verify(
    auth: &Authorization<'_>,
    req: &Signed<'_>,
    secret: &str,
    now: i64,
) -> Result<(), SigError> {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigError::NoDate)?;
    let at = parse_amz_date(amz_date).ok_or_else(|| SigError::Skewed(amz_date.to_string()))?;
    if (at - now).abs() > MAX_SKEW_SECS || !amz_date.starts_with(auth.date) {
        return Err(SigError::Skewed(amz_date.to_string()));
    }
    let body_hash = hex(&Sha256::digest(req.body));
    let payload_hash = match req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_string(),
        Some(h) if h.eq_ignore_ascii_case(&body_hash) => h.to_string(),
        Some(_) => return Err(SigError::PayloadHash),
        None => body_hash,
    };
    let canonical = canonical_request(auth, req, &payload_hash)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, auth.date, auth.region, auth.service);
    let want = hex(&hmac(&key, to_sign.as_bytes()));
    if lampyr_scheduler::token_eq(&want, &auth.signature.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

/// The canonical request of SigV4.
fn canonical_request(
    auth: &Authorization<'_>,
    req: &Signed<'_>,
    payload_hash: &str,
) -> Result<String, SigError> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&uri_encode(&normalize_path(req.path), false));
    out.push('\n');
    let mut params: Vec<(String, String)> = form_urlencoded_pairs(req.query);
    params.sort();
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, true), uri_encode(v, true)))
        .collect();
    out.push_str(&query.join("&"));
    out.push('\n');
    for name in &auth.signed_headers {
        let values: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(SigError::MissingHeader(name.to_string()));
        }
        let joined: Vec<String> = values.iter().map(|v| collapse_spaces(v)).collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&joined.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&auth.signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// `key=value` pairs of a query string, percent-decoded (`+` stays `+`:
/// SigV4 clients encode a space as `%20`).
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `.` and `..` segments, as the SDKs do before they sign.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = out.join("/");
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    if path.ends_with('/') && !p.ends_with('/') {
        p.push('/');
    }
    p
}

/// URI-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~`),
/// and `/` unless `slash`.
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !slash);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    Some(t.and_utc().timestamp())
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    // A request signed by botocore 1.44 (`SigV4Auth(Credentials(ID,
    // SECRET), "lambda", "us-east-1")` over the request below).
    const ID: &str = "LKIAEXAMPLE0000000001";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn signed_by_botocore() -> (HeaderMap, &'static str, &'static str, &'static [u8], String) {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("x-amz-date", HeaderValue::from_static("20261206T025921Z"));
        h.insert(
            "x-amz-invocation-type",
            HeaderValue::from_static("RequestResponse"),
        );
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={ID}/20261206/us-east-1/lambda/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-invocation-type, Signature={}",
            BOTOCORE_SIGNATURE
        );
        (
            h,
            "/2015-03-31/functions/hello/invocations",
            "Qualifier=%24LATEST",
            br#"{"name": "lampyr"}"#,
            auth,
        )
    }

    const BOTOCORE_SIGNATURE: &str =
        "c96517d767d900092e6b7690c58ae6a63f6b1b20cb40fc5baf651fcf15e1c2a5";

    fn now() -> i64 {
        parse_amz_date("20261206T025921Z").unwrap()
    }

    #[test]
    fn verifies_what_botocore_signed() {
        let (h, path, query, body, auth) = signed_by_botocore();
        let a = parse_authorization(&auth).unwrap();
        assert_eq!(a.access_key, ID);
        assert_eq!(a.service, "lambda");
        let req = Signed {
            method: "POST",
            path,
            query,
            headers: &h,
            body,
        };
        assert_eq!(verify(&a, &req, SECRET, now()), Ok(()));
        // Another secret, another body, another time: refused.
        assert_eq!(
            verify(&a, &req, "not-the-secret", now()),
            Err(SigError::Mismatch)
        );
        let other = Signed { body: b"{}", ..req };
        assert_eq!(verify(&a, &other, SECRET, now()), Err(SigError::Mismatch));
        assert!(matches!(
            verify(&a, &req, SECRET, now() + 16 * 60),
            Err(SigError::Skewed(_))
        ));
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        assert!(parse_authorization("Bearer abc").is_err());
        assert!(parse_authorization(
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00"
        )
        .is_err());
    }

    #[test]
    fn encoding_follows_sigv4() {
        assert_eq!(uri_encode("a b/$~", true), "a%20b%2F%24~");
        assert_eq!(uri_encode("/x:y/", false), "/x%3Ay/");
        assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(percent_decode("%24LATEST"), "$LATEST");
    }
}
