//! Certificates made in the test (a CA, and server certificates it
//! signs, with rcgen), and a small HTTPS server on loopback that records
//! the requests it gets and the handshakes it could not complete.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA of the test's own.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate to `dir/NAME` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// What an [`HttpsServer`] saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, String)>,
    refused: Vec<String>,
}

/// An HTTPS server on 127.0.0.1 that answers every request 200 and
/// records its method and target.
pub struct HttpsServer {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl HttpsServer {
    pub fn start(cert: &Issued) -> HttpsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        #[allow(deprecated)] // ring, as lampyr's own clients use
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (config, s) = (config.clone(), s.clone());
                std::thread::spawn(move || {
                    let tls = rustls::ServerConnection::new(config).unwrap();
                    let mut stream = rustls::StreamOwned::new(tls, conn);
                    let mut reader = BufReader::new(&mut stream);
                    let mut line = String::new();
                    if let Err(e) = reader.read_line(&mut line) {
                        s.lock().unwrap().refused.push(e.to_string());
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, target) = (parts.next(), parts.next());
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    if let (Some(m), Some(t)) = (method, target) {
                        s.lock().unwrap().requests.push((m.into(), t.into()));
                    }
                    let body = "<ConfirmSubscriptionResponse/>";
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                });
            }
        });
        HttpsServer { port, seen }
    }

    /// The requests it answered: method and target.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// The connections whose handshake or request failed, with why.
    pub fn refused(&self) -> Vec<String> {
        self.seen.lock().unwrap().refused.clone()
    }
}
