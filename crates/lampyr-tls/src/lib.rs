//! The TLS client side lampyr's event sources share (an SNS
//! `SubscribeURL` over https, PostgreSQL with `sslmode`): rustls with the
//! `ring` provider (no OpenSSL), the CA certificates to trust (the
//! system's store, which `SSL_CERT_FILE` and `SSL_CERT_DIR` replace as
//! they do for OpenSSL, or one PEM file), and what a failed handshake
//! means, in words that say what to fix.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

pub use rustls;
pub use rustls_pki_types::CertificateDer;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{ServerName, UnixTime};

/// Why no CA certificates could be had.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no CA certificates to trust were found ({0}): install the system's (Debian: ca-certificates), or point SSL_CERT_FILE at a PEM file of them")]
    NoSystemRoots(String),
    #[error("cannot read the CA certificate file {path}: {message}")]
    RootFile { path: String, message: String },
    #[error("none of the CA certificates could be used ({0}): check that they are PEM X.509 CA certificates")]
    NoRoots(String),
}

/// The crypto provider every TLS client of lampyr uses: *ring*, which the
/// NATS client already builds on. rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange; its replacement, aws-lc-rs, is a large C
/// build, and what lampyr reaches this way (SNS, a database) is checked by
/// certificates, not kept secret for decades.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates of the system's trust store; `SSL_CERT_FILE` or
/// `SSL_CERT_DIR` in lampyr's environment replace it.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "the store is empty".to_string(),
        };
        return Err(TlsError::NoSystemRoots(why));
    }
    Ok(found.certs)
}

/// The CA certificates of the PEM file `path` (at least one).
pub fn file_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::RootFile {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("it holds no PEM certificate".to_string()));
    }
    Ok(certs)
}

/// A root store of `certs`; those rustls cannot parse are left out.
pub fn root_store(certs: Vec<CertificateDer<'static>>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(certs);
    store
}

/// How much of a server's certificate a client checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the connection is encrypted, the server not authenticated
    /// (libpq's `sslmode=require`). The handshake's signatures are still
    /// checked.
    Nothing,
    /// That a trusted CA signed it, whatever name it is for (`verify-ca`).
    Chain,
    /// That a trusted CA signed it for the host connected to
    /// (`verify-full`, and https).
    Full,
}

/// A client configuration that checks servers as `verify` says, against
/// `roots` (unused for [`Verify::Nothing`]).
pub fn client_config(
    verify: Verify,
    roots: Vec<CertificateDer<'static>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let webpki = match verify {
        Verify::Nothing => None,
        Verify::Chain | Verify::Full => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::NoRoots(e.to_string()))?,
        ),
    };
    let verifier = Checks {
        webpki,
        names: verify == Verify::Full,
        provider: provider.clone(),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A server's certificate checked as far as [`Verify`] says; the
/// handshake's signatures always.
#[derive(Debug)]
struct Checks {
    /// The chain's check; `None`: the certificate is taken as it is.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host.
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Checks {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        // WebPKI checks the chain before the name: a name error means the
        // chain was good.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// If `err` (or an error it was caused by) is rustls refusing the
/// server's certificate, why, in words (e.g. "it is signed by an unknown
/// CA").
pub fn refused_certificate(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            return Some(certificate_reason(c));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = refused_certificate(inner) {
                    return Some(r);
                }
            }
        }
        cur = e.source();
    }
    None
}

fn certificate_reason(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::UnknownIssuer => "it is signed by a CA lampyr does not trust".to_string(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not issued for the host name lampyr connected to".to_string()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".to_string(),
        C::Revoked => "it is revoked".to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_found_inside_an_io_error() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            refused_certificate(&e).as_deref(),
            Some("it is signed by a CA lampyr does not trust")
        );
        let other = std::io::Error::other("connection reset");
        assert_eq!(refused_certificate(&other), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = std::env::temp_dir().join(format!("lampyr-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = file_roots(&f).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = file_roots(&dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read the CA certificate file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
