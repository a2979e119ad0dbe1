//! PostgreSQL over TLS, as libpq reads a DSN's `sslmode` and
//! `sslrootcert`, with rustls (`lampyr-tls`) under tokio-postgres.
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | if the server offers it | not checked (checked as by `verify-ca` when `sslrootcert` is given) |
//! | `require` | required | not checked (as `verify-ca` when `sslrootcert` is given) |
//! | `verify-ca` | required | signed by a trusted CA |
//! | `verify-full` | required | signed by a trusted CA, for the host connected to |
//!
//! The trusted CAs are those of the `sslrootcert` PEM file, or with
//! `sslrootcert=system` (which implies `verify-full`, as in libpq) or
//! none given, the system's (`SSL_CERT_FILE`/`SSL_CERT_DIR` replace
//! them). `allow` is `prefer` (tokio-postgres does not try without TLS
//! first). Client certificates (`sslcert`, `sslkey`) are not supported.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use lampyr_tls::rustls::pki_types::ServerName;
use lampyr_tls::rustls::ClientConfig;
use lampyr_tls::Verify;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;

/// What a DSN says of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub mode: SslMode,
    pub verify: Verify,
    /// `sslrootcert`: a file, or `None` for the system's CAs.
    pub rootcert: Option<String>,
}

/// The DSN's `sslmode` and `sslrootcert` taken out (tokio-postgres knows
/// neither `verify-*` nor `sslrootcert`): the configuration tokio-postgres
/// reads, and the TLS settings. Errors name the key, never a password.
pub(crate) fn parse(dsn: &str) -> Result<(tokio_postgres::Config, Settings), String> {
    let (rest, pairs) = split(dsn)?;
    let mut mode = None;
    let mut rootcert = None;
    let mut kept = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => mode = Some(v),
            "sslrootcert" => rootcert = Some(v),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(format!(
                "`{k}`: lampyr does not present client certificates; authenticate with a password"
            ))
            }
            _ => kept.push((k, v)),
        }
    }
    let system = rootcert.as_deref() == Some("system");
    let mode = mode.unwrap_or_else(|| if system { "verify-full" } else { "prefer" }.into());
    let (ssl, verify) = match mode.as_str() {
        "disable" => (SslMode::Disable, Verify::Nothing),
        "allow" | "prefer" | "require" => {
            if system {
                return Err(format!("weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"));
            }
            let ssl = if mode == "require" { SslMode::Require } else { SslMode::Prefer };
            (ssl, if rootcert.is_some() { Verify::Chain } else { Verify::Nothing })
        }
        "verify-ca" => (SslMode::Require, Verify::Chain),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(format!("`sslmode` \"{other}\" is not one of disable, allow, prefer, require, verify-ca, verify-full"))
        }
    };
    let mut cfg: tokio_postgres::Config = join(&rest, &kept)
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    cfg.ssl_mode(ssl);
    let rootcert = rootcert.filter(|r| r != "system");
    Ok((
        cfg,
        Settings {
            mode: ssl,
            verify,
            rootcert,
        },
    ))
}

/// A DSN's parameters, in order.
type Pairs = Vec<(String, String)>;

/// A DSN as the rest it is written in and its parameters: a URL's
/// `postgres://…` and query parameters, or a key/value DSN's pairs.
fn split(dsn: &str) -> Result<(Option<String>, Pairs), String> {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let (base, query) = dsn.split_once('?').unwrap_or((dsn, ""));
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Ok((decode(k)?, decode(v)?))
            })
            .collect::<Result<_, String>>()?;
        return Ok((Some(base.to_string()), pairs));
    }
    Ok((None, key_values(dsn)?))
}

/// The DSN again, from [`split`]'s parts.
fn join(base: &Option<String>, pairs: &[(String, String)]) -> String {
    match base {
        Some(b) => {
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            if query.is_empty() {
                b.clone()
            } else {
                format!("{b}?{}", query.join("&"))
            }
        }
        None => pairs
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `key = value` pairs, values bare or single-quoted, `\` escaping, as
/// libpq reads them.
fn key_values(s: &str) -> Result<Pairs, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no value (key=value expected)"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("a `%` in the DSN's query is not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the DSN's query is not UTF-8 once decoded".to_string())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rustls configuration for `settings` (reads `sslrootcert` or the
/// system's CAs when the certificate is checked).
pub(crate) fn connector(settings: &Settings) -> Result<MakeRustls, lampyr_tls::TlsError> {
    let roots = match (settings.verify, &settings.rootcert) {
        (Verify::Nothing, _) => Vec::new(),
        (_, Some(file)) => lampyr_tls::file_roots(std::path::Path::new(file))?,
        (_, None) => lampyr_tls::system_roots()?,
    };
    Ok(MakeRustls(Arc::new(lampyr_tls::client_config(
        settings.verify,
        roots,
    )?)))
}

/// tokio-postgres's TLS connector over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, io::Error> {
        // A Unix socket has no name, and is never TLS: a bad name fails
        // only if a handshake is tried.
        Ok(Connect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_string()).map_err(|_| domain.to_string()),
        })
    }
}

pub(crate) struct Connect {
    config: Arc<ClientConfig>,
    name: Result<ServerName<'static>, String>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Stream>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(|d| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("\"{d}\" is not a host name TLS can check"),
                )
            })?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, socket)
                .await
                .map(Stream)
        })
    }
}

/// A TLS connection to the database.
pub(crate) struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dsn: &str) -> Settings {
        parse(dsn).unwrap().1
    }

    #[test]
    fn sslmodes_read_as_libpq_reads_them() {
        let s = settings("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem");
        assert_eq!(
            s,
            Settings {
                mode: SslMode::Require,
                verify: Verify::Full,
                rootcert: Some("/etc/ca x.pem".into())
            }
        );
        let (cfg, s) = parse(
            "host=h user=u password='it\\'s' sslmode=verify-ca sslrootcert='/a b/ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(s.verify, Verify::Chain);
        assert_eq!(s.rootcert.as_deref(), Some("/a b/ca.pem"));
        assert_eq!(cfg.get_dbname(), Some("d"));
        assert_eq!(settings("postgres://h/d").mode, SslMode::Prefer);
        assert_eq!(settings("postgres://h/d").verify, Verify::Nothing);
        assert_eq!(
            settings("postgres://h/d?sslmode=require").verify,
            Verify::Nothing
        );
        assert_eq!(
            settings("postgres://h/d?sslmode=require&sslrootcert=/ca").verify,
            Verify::Chain
        );
        assert_eq!(
            settings("postgres://h/d?sslmode=disable").mode,
            SslMode::Disable
        );
        assert_eq!(
            settings("postgres://h/d?sslmode=allow").mode,
            SslMode::Prefer
        );
        let s = settings("host=h sslrootcert=system");
        assert_eq!(
            (s.mode, s.verify, s.rootcert),
            (SslMode::Require, Verify::Full, None)
        );
    }

    #[test]
    fn what_cannot_be_done_is_named() {
        for (dsn, want) in [
            ("postgres://h/d?sslmode=strict", "`sslmode` \"strict\""),
            ("postgres://h/d?sslcert=/c.pem", "`sslcert`"),
            (
                "host=h sslrootcert=system sslmode=require",
                "weak sslmode \"require\"",
            ),
            ("host=h password='open", "no closing quote"),
        ] {
            let e = parse(dsn).unwrap_err();
            assert!(e.contains(want), "{dsn}: {e}");
        }
    }

    #[test]
    fn the_rest_of_a_dsn_is_kept() {
        let (cfg, _) =
            parse("postgres://u:p%40ss@h:5433/d?application_name=a%20b&sslmode=verify-full")
                .unwrap();
        assert_eq!(cfg.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(cfg.get_application_name(), Some("a b"));
        assert_eq!(cfg.get_ports(), [5433]);
        let (cfg, _) = parse("host=h port=5433 user=u password='a b\\'c' dbname=d").unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(cfg.get_ssl_mode(), SslMode::Prefer);
    }
}
