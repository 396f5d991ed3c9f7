//! TLS for client sessions: the node's certificate (configured, or generated on first start and
//! kept), its SHA-256 fingerprint, and how a client trusts it — by CA roots, by a pinned
//! fingerprint, or (only on explicit request, loudly) not at all.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// File names of a generated identity inside the data directory.
const CERT_FILE: &str = "node-cert.der";
const KEY_FILE: &str = "node-key.der";
/// Largest PEM file (certificate chain, key or CA bundle) read; real ones are a few KiB.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

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
    /// A PEM file could not be read (missing, unreadable).
    #[error("cannot read {}: {source}", .path.display())]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A PEM file larger than any certificate or key file.
    #[error(
        "{} is larger than {max_bytes} bytes: not a PEM certificate or key file",
        .path.display()
    )]
    PemTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max_bytes: u64,
    },
    /// A PEM file whose sections do not parse (no END line, bad base64).
    #[error("{} is not valid PEM: {source}", .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: pem::Error,
    },
    /// A PEM file without a `CERTIFICATE` section.
    #[error("no certificate (-----BEGIN CERTIFICATE-----) in {}", .path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file without a private key section.
    #[error(
        "no private key (-----BEGIN PRIVATE KEY----- or RSA/EC PRIVATE KEY) in {}",
        .path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a CA file that cannot be a trust anchor.
    #[error("a certificate in {} cannot be used as a CA: {source}", .path.display())]
    BadCaCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The key does not belong to the certificate (or either cannot be used).
    #[error(
        "the key in {} cannot serve the certificate in {}: {source}",
        .key_path.display(),
        .cert_path.display()
    )]
    KeyMismatch {
        /// The certificate chain file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// What rustls found.
        source: rustls::Error,
    },
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

/// The node's certificate chain (its own certificate first) and key.
#[derive(Debug)]
pub struct NodeIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Of `chain[0]`, the node's own certificate.
    fingerprint: Fingerprint,
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
            return Ok(NodeIdentity::single(cert, key));
        }
        let generated = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = generated.cert.der().to_vec();
        let key = generated.signing_key.serialize_der();
        std::fs::create_dir_all(dir).map_err(files)?;
        write_private(&key_path, &key).map_err(files)?;
        std::fs::write(&cert_path, &cert).map_err(files)?;
        Ok(NodeIdentity::single(cert, key))
    }

    /// A one-certificate identity from DER certificate and PKCS#8 key bytes.
    fn single(cert: Vec<u8>, key: Vec<u8>) -> NodeIdentity {
        let cert = CertificateDer::from(cert);
        NodeIdentity {
            fingerprint: Fingerprint::of(&cert),
            chain: vec![cert],
            key: PrivatePkcs8KeyDer::from(key).into(),
        }
    }

    /// Loads a configured identity: the PEM certificate chain in `cert_path` (the node's own
    /// certificate first) and the PEM private key in `key_path`, checked to belong together.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<NodeIdentity, TlsError> {
        let chain = read_pem_certificates(cert_path)?;
        let key_pem = read_pem_file(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
            pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: key_path.to_owned(),
            },
            source => TlsError::BadPem {
                path: key_path.to_owned(),
                source,
            },
        })?;
        // Fails now, naming both files, rather than at the first handshake.
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|source| {
            TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
                source,
            }
        })?;
        // `read_pem_certificates` returns at least one certificate.
        let fingerprint =
            chain
                .first()
                .map(Fingerprint::of)
                .ok_or_else(|| TlsError::NoCertificates {
                    path: cert_path.to_owned(),
                })?;
        Ok(NodeIdentity {
            chain,
            key,
            fingerprint,
        })
    }

    /// The fingerprint of the node's own certificate, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// A TLS acceptor serving this identity.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Reads a PEM file of one or more CA certificates into roots for [`ServerTrust::Roots`].
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_pem_certificates(path)? {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(roots)
}

/// Every certificate in a PEM file; at least one.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A PEM file's bytes, refusing files over [`PEM_FILE_BYTES_MAX`].
fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let unreadable = |source| TlsError::ReadPem {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::PemTooLarge {
            path: path.to_owned(),
            max_bytes: PEM_FILE_BYTES_MAX,
        });
    }
    Ok(bytes)
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

    /// A fresh, empty directory for one test.
    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tunnox-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `text` to `dir/name` and returns the path.
    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A self-signed certificate for `name`, and its key, both PEM.
    fn self_signed(name: &str) -> (String, String) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (generated.cert.pem(), generated.signing_key.serialize_pem())
    }

    #[test]
    fn a_pem_certificate_and_its_key_make_an_identity() {
        let dir = temp_dir("pem-good");
        let (cert_pem, key_pem) = self_signed("node.test");
        let cert = write(&dir, "cert.pem", &cert_pem);
        let key = write(&dir, "key.pem", &key_pem);
        let identity = NodeIdentity::from_pem_files(&cert, &key).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        assert_eq!(identity.fingerprint(), Fingerprint::of(&der));
        identity.acceptor().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_identity_files_are_errors_naming_the_file() {
        let dir = temp_dir("pem-bad");
        let (cert_pem, key_pem) = self_signed("node.test");
        let (_, other_key_pem) = self_signed("other.test");
        let cert = write(&dir, "cert.pem", &cert_pem);
        let key = write(&dir, "key.pem", &key_pem);
        let other_key = write(&dir, "other-key.pem", &other_key_pem);
        let missing = dir.join("missing.pem");
        let not_pem = write(&dir, "not.pem", "just some text\n");
        let truncated = write(&dir, "truncated.pem", &cert_pem[..cert_pem.len() / 2]);

        let err = NodeIdentity::from_pem_files(&missing, &key).unwrap_err();
        assert!(matches!(err, TlsError::ReadPem { ref path, .. } if *path == missing));
        let err = NodeIdentity::from_pem_files(&cert, &missing).unwrap_err();
        assert!(matches!(err, TlsError::ReadPem { ref path, .. } if *path == missing));
        let err = NodeIdentity::from_pem_files(&not_pem, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { ref path } if *path == not_pem));
        let err = NodeIdentity::from_pem_files(&truncated, &key).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { ref path, .. } if *path == truncated));
        // A certificate where the key should be.
        let err = NodeIdentity::from_pem_files(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { ref path } if *path == cert));
        let err = NodeIdentity::from_pem_files(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("other-key.pem") && text.contains("cert.pem"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ca_file_loads_every_certificate_in_it() {
        let dir = temp_dir("ca-good");
        let (first, _) = self_signed("a.test");
        let (second, _) = self_signed("b.test");
        let bundle = write(&dir, "ca.pem", &format!("{first}\n{second}"));
        assert_eq!(load_ca_file(&bundle).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_ca_files_are_errors_naming_the_file() {
        let dir = temp_dir("ca-bad");
        let missing = dir.join("missing.pem");
        let err = load_ca_file(&missing).unwrap_err();
        assert!(matches!(err, TlsError::ReadPem { .. }));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let (_, key_pem) = self_signed("a.test");
        let only_key = write(&dir, "key.pem", &key_pem);
        let err = load_ca_file(&only_key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }));
        assert!(err.to_string().contains("key.pem"), "{err}");

        let unterminated = write(
            &dir,
            "unterminated.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
        );
        let err = load_ca_file(&unterminated).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");

        // Well-formed PEM around bytes that are not a certificate.
        let not_x509 = write(
            &dir,
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let err = load_ca_file(&not_x509).unwrap_err();
        assert!(matches!(err, TlsError::BadCaCertificate { .. }), "{err}");

        let huge = dir.join("huge.pem");
        std::fs::write(&huge, vec![b'A'; PEM_FILE_BYTES_MAX as usize + 1]).unwrap();
        let err = load_ca_file(&huge).unwrap_err();
        assert!(matches!(err, TlsError::PemTooLarge { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

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
