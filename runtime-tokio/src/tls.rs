//! TLS for client sessions: the node's certificate (configured, or generated on first start and
//! kept), its SHA-256 fingerprint, and how a client trusts it — by CA roots, by a pinned
//! fingerprint, or (only on explicit request, loudly) not at all.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// File names of a generated identity inside the data directory.
const CERT_FILE: &str = "node-cert.der";
const KEY_FILE: &str = "node-key.der";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the certificate files failed.
    #[error("certificate files in {dir}: {source}")]
    Files {
        /// The directory.
        dir: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Generating a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration (bad key, bad certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A fingerprint that is not `sha256:` and 32 hex bytes.
    #[error("a fingerprint is 32 hex bytes, optionally after `sha256:` and with colons: {0}")]
    BadFingerprint(String),
}

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        Fingerprint(Sha256::digest(cert.as_ref()).into())
    }

    /// Parses `sha256:AB:CD:…`, `AB:CD:…` or plain hex.
    pub fn parse(text: &str) -> Result<Fingerprint, TlsError> {
        let hex: String = text
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let bad = || TlsError::BadFingerprint(text.to_owned());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The node's certificate and key.
#[derive(Debug)]
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeIdentity {
    /// Loads the identity kept in `dir`, or generates a self-signed one for `names` and keeps it
    /// there (the key readable by the owner only), so the fingerprint stays the same across
    /// restarts.
    pub fn load_or_generate(dir: &Path, names: &[String]) -> Result<NodeIdentity, TlsError> {
        let files = |source| TlsError::Files {
            dir: dir.display().to_string(),
            source,
        };
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(files)?;
            let key = std::fs::read(&key_path).map_err(files)?;
            return Ok(NodeIdentity {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        let generated = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = generated.cert.der().to_vec();
        let key = generated.signing_key.serialize_der();
        std::fs::create_dir_all(dir).map_err(files)?;
        write_private(&key_path, &key).map_err(files)?;
        std::fs::write(&cert_path, &cert).map_err(files)?;
        Ok(NodeIdentity {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// The certificate's fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// A TLS acceptor serving this identity.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// How a client decides to trust a node's certificate.
#[derive(Debug)]
pub enum ServerTrust {
    /// Verify the chain against these roots and the name.
    Roots(RootCertStore),
    /// Accept exactly the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// Accept any certificate. Only for development; callers must warn loudly.
    InsecureSkipVerify,
}

/// A TLS connector that trusts nodes as `trust` says.
pub fn connector(trust: ServerTrust) -> Result<TlsConnector, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        ServerTrust::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        ServerTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FixedVerifier {
                pin: Some(pin),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        ServerTrust::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FixedVerifier {
                pin: None,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Trusts the one certificate whose fingerprint is pinned (or, without a pin, any certificate);
/// the handshake signatures are still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct FixedVerifier {
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FixedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if Fingerprint::of(end_entity) != pin => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_back() {
        let fp = Fingerprint([0xab; 32]);
        let text = fp.to_string();
        assert!(text.starts_with("sha256:AB:AB"));
        assert_eq!(Fingerprint::parse(&text).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&"ab".repeat(32)).unwrap(), fp);
        assert!(Fingerprint::parse("sha256:zz").is_err());
        assert!(Fingerprint::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn a_generated_identity_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("tunnox-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = NodeIdentity::load_or_generate(&dir, &["localhost".into()]).unwrap();
        let again = NodeIdentity::load_or_generate(&dir, &["localhost".into()]).unwrap();
        assert_eq!(
            first.fingerprint(),
            again.fingerprint(),
            "same certificate after a restart"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }
        first.acceptor().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
