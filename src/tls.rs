//! TLS material for both sides of the proxy: the client listener (`[tls]`) and the connections
//! to Redis for `rediss://` URLs (`[upstream.tls]`).
//!
//! Everything is loaded and checked once, at start: a missing file, a PEM file without the
//! expected section, a key that does not belong to its certificate or a CA file that is not a
//! certificate all fail with a [`TlsError`] that names the field. The rustls configurations are
//! built with the `ring` provider explicitly, so nothing depends on which crypto backend other
//! crates enable.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS configuration problem: `field` is relative to its section (`cert_file`, `ca_file`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The field within the section.
    pub field: &'static str,
    /// What is wrong, one line.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

/// The crypto provider used everywhere (ring; aws-lc needs cmake and nasm to build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(field, format!("cannot read {}: {e}", path.display())))
}

fn pem_problem(path: &Path, e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    let what = match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line".to_string(),
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_string(),
        E::Base64Decode(m) => format!("bad base64 in a PEM section ({m})"),
        E::Io(e) => e.to_string(),
        E::NoItemsFound => "no PEM section of the expected kind".to_string(),
        E::SectionTooLarge => "a PEM section is too large".to_string(),
        _ => e.to_string(),
    };
    format!("{}: {what}", path.display())
}

/// Reads every `CERTIFICATE` section of a PEM file; an empty result is an error.
pub fn load_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(field, path)?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        certs.push(c.map_err(|e| err(field, pem_problem(path, &e)))?);
    }
    if certs.is_empty() {
        return Err(err(
            field,
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file.
pub fn load_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => err(
            field,
            format!(
                "{}: no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found",
                path.display()
            ),
        ),
        e => err(field, pem_problem(path, &e)),
    })
}

/// Builds a root store from a PEM file of CA certificates; every certificate must parse.
pub fn load_roots(field: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in load_certs(field, path)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            err(
                field,
                format!(
                    "{}: certificate #{} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                ),
            )
        })?;
    }
    Ok(roots)
}

/// Explains a rustls error from pairing a certificate chain with a private key.
fn cert_key_problem(cert_path: &Path, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "private key does not match the certificate in {}",
            cert_path.display()
        ),
        other => format!(
            "cannot use this key with the certificate in {}: {other}",
            cert_path.display()
        ),
    }
}

/// The client listener's TLS: an acceptor, cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    /// The acceptor built from `[tls]`.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Whether clients must present a certificate signed by `client_ca_file`.
    pub mtls: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `[tls]`: the listener's certificate chain and key, and optionally the CA that
    /// client certificates must chain to (mTLS).
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let certs = load_certs("cert_file", cert_file)?;
        let key = load_key("key_file", key_file)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("cert_file", format!("no usable TLS versions: {e}")))?;
        let builder = match client_ca_file {
            Some(p) => {
                let roots = load_roots("client_ca_file", p)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| err("client_ca_file", format!("{}: {e}", p.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| err("key_file", cert_key_problem(cert_file, &e)))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            mtls: client_ca_file.is_some(),
        })
    }
}

/// What `[upstream.tls]` says, with paths still unread.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions<'a> {
    /// CA certificates for Redis's certificate; `None` means the bundled webpki (Mozilla) roots.
    pub ca_file: Option<&'a Path>,
    /// Client certificate for Redis's `tls-auth-clients yes`.
    pub cert_file: Option<&'a Path>,
    /// Its key.
    pub key_file: Option<&'a Path>,
    /// Name to send as SNI and to verify the certificate against; `None`: the URL's host.
    pub server_name: Option<&'a str>,
    /// Accept any certificate (still encrypts, but no authentication of Redis).
    pub insecure_skip_verify: bool,
}

/// The upstream TLS connector for `rediss://`, cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
    /// The name sent as SNI and verified in Redis's certificate.
    pub server_name: ServerName<'static>,
    /// `insecure_skip_verify` was set.
    pub insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Builds the connector for a `rediss://` URL whose host is `url_host`. Errors name a field
    /// of `[upstream.tls]`, except a host that cannot be a TLS name, which names `server_name`
    /// (set it to override the URL's host).
    pub fn load(url_host: &str, o: &ClientOptions<'_>) -> Result<ClientTls, TlsError> {
        let name = o.server_name.unwrap_or(url_host);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            err(
                "server_name",
                format!("\"{name}\" is not a valid DNS name or IP address for TLS"),
            )
        })?;
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("ca_file", format!("no usable TLS versions: {e}")))?;
        let builder = if o.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match o.ca_file {
                Some(p) => load_roots("ca_file", p)?,
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots)
        };
        let config = match (o.cert_file, o.key_file) {
            (Some(c), Some(k)) => {
                let certs = load_certs("cert_file", c)?;
                let key = load_key("key_file", k)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| err("key_file", cert_key_problem(c, &e)))?
            }
            (Some(_), None) => return Err(err("key_file", "is required when cert_file is set")),
            (None, Some(_)) => return Err(err("cert_file", "is required when key_file is set")),
            (None, None) => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            insecure: o.insecure_skip_verify,
        })
    }

    /// Logs, once per process, that Redis's certificate is not being verified.
    pub fn warn_if_insecure(&self) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if self.insecure && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "upstream.tls.insecure_skip_verify = true: Redis's TLS certificate is NOT verified; \
                 anyone on the network path can impersonate Redis and read every command. \
                 Use it only for testing; set upstream.tls.ca_file instead"
            );
        }
    }
}

/// A verifier that accepts any server certificate but still checks the handshake signatures
/// (so the session keys are bound to the certificate that was presented).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Material {
        dir: tempfile::TempDir,
    }

    impl Material {
        fn new() -> Material {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let w = |n: &str, s: String| std::fs::write(dir.path().join(n), s).unwrap();
            w("ca.crt", ca_cert.pem());
            w("leaf.crt", leaf.pem());
            w("leaf.key", key.serialize_pem());
            w("other.key", other.serialize_pem());
            w("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n".into());
            w("empty.pem", String::new());
            Material { dir }
        }

        fn p(&self, n: &str) -> std::path::PathBuf {
            self.dir.path().join(n)
        }
    }

    #[test]
    fn server_loads_good_material_and_names_bad_fields() {
        let m = Material::new();
        let ok = ServerTls::load(&m.p("leaf.crt"), &m.p("leaf.key"), Some(&m.p("ca.crt"))).unwrap();
        assert!(ok.mtls);
        assert!(!format!("{ok:?}").contains("PRIVATE"));

        let e = ServerTls::load(&m.p("missing.crt"), &m.p("leaf.key"), None).unwrap_err();
        assert_eq!(e.field, "cert_file");
        assert!(e.message.contains("cannot read"), "{e:?}");

        let e = ServerTls::load(&m.p("garbage.pem"), &m.p("leaf.key"), None).unwrap_err();
        assert_eq!(e.field, "cert_file");

        let e = ServerTls::load(&m.p("empty.pem"), &m.p("leaf.key"), None).unwrap_err();
        assert_eq!(e.field, "cert_file");
        assert!(e.message.contains("no PEM certificate"), "{e:?}");

        let e = ServerTls::load(&m.p("leaf.crt"), &m.p("leaf.crt"), None).unwrap_err();
        assert_eq!(e.field, "key_file");
        assert!(e.message.contains("no PEM private key"), "{e:?}");

        let e = ServerTls::load(&m.p("leaf.crt"), &m.p("other.key"), None).unwrap_err();
        assert_eq!(e.field, "key_file");
        assert!(e.message.contains("does not match"), "{e:?}");

        let e = ServerTls::load(&m.p("leaf.crt"), &m.p("leaf.key"), Some(&m.p("leaf.key")))
            .unwrap_err();
        assert_eq!(e.field, "client_ca_file");
    }

    #[test]
    fn client_options_are_checked() {
        let m = Material::new();
        let ca = m.p("ca.crt");
        let c = ClientTls::load(
            "localhost",
            &ClientOptions {
                ca_file: Some(&ca),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.server_name, ServerName::try_from("localhost").unwrap());
        let c = ClientTls::load("10.0.0.1", &ClientOptions::default()).unwrap();
        assert!(matches!(c.server_name, ServerName::IpAddress(_)));
        let c = ClientTls::load(
            "10.0.0.1",
            &ClientOptions {
                server_name: Some("redis.internal"),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.server_name,
            ServerName::try_from("redis.internal").unwrap()
        );

        let e = ClientTls::load(
            "localhost",
            &ClientOptions {
                server_name: Some("not a name"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "server_name");

        let cert = m.p("leaf.crt");
        let key = m.p("other.key");
        let e = ClientTls::load(
            "localhost",
            &ClientOptions {
                cert_file: Some(&cert),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "key_file");
        let e = ClientTls::load(
            "localhost",
            &ClientOptions {
                cert_file: Some(&cert),
                key_file: Some(&key),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "key_file");
        assert!(e.message.contains("does not match"), "{e:?}");

        let bad = m.p("garbage.pem");
        let e = ClientTls::load(
            "localhost",
            &ClientOptions {
                ca_file: Some(&bad),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "ca_file");
    }
}
