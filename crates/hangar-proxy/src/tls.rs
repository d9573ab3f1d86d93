//! TLS for the HTTPS listener: either an operator's certificate and key, or a local
//! certificate authority created on first start (kept in the data dir, key mode
//! 0600) that issues a certificate for each host name on first use (by SNI),
//! cached in memory. Clients trust `ca.pem` to reach `https://<app>.<base domain>`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Makes aws-lc-rs the process's rustls provider, for TLS clients (reqwest, the
/// registry client) that ask rustls for its default instead of naming one: with
/// more than one provider compiled in, rustls picks none and those clients fail
/// with "No provider set". Call once where the process starts; later calls are
/// no-ops.
pub fn install_crypto_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making a certificate")]
    Rcgen(#[from] rcgen::Error),
    #[error("setting up TLS")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Pem(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TlsError {
    let context = context.into();
    move |source| TlsError::Io { context, source }
}

/// A request id: 128 random bits from the thread's generator, as 32 hex digits (no
/// system call, one allocation: it is made for every request).
pub(crate) fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The local certificate authority.
pub struct LocalCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_path: PathBuf,
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "hangar local CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl LocalCa {
    /// Loads `dir/ca.pem` and `dir/ca-key.pem`, creating both on first use.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                let key = KeyPair::from_pem(&pem)?;
                // The same subject and key: leaf certificates it signs chain to the
                // ca.pem written on first start.
                let cert = ca_params()?.self_signed(&key)?;
                Ok(LocalCa {
                    cert,
                    key,
                    cert_path,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                std::fs::write(&cert_path, cert.pem())
                    .map_err(io(format!("writing {}", cert_path.display())))?;
                Ok(LocalCa {
                    cert,
                    key,
                    cert_path,
                })
            }
            Err(e) => Err(io(format!("reading {}", key_path.display()))(e)),
        }
    }

    fn issue(&self, host: &str) -> Result<CertifiedKey, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let signer = aws_lc_rs::sign::any_supported_type(&der)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert.der().clone()],
            signer,
        ))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

/// Picks a certificate by SNI, issuing one per host inside the base domain.
#[derive(Debug)]
struct Issuer {
    ca: Arc<LocalCaHandle>,
    base_domain: String,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

struct LocalCaHandle(LocalCa);

impl std::fmt::Debug for LocalCaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCa")
    }
}

const MAX_CACHED: usize = 10_000;

impl ResolvesServerCert for Issuer {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let base = self.base_domain.as_str();
        let host = hello
            .server_name()
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| base.to_string());
        if host != base && !host.ends_with(&format!(".{base}")) {
            return None;
        }
        let mut cache = self.cache.lock().expect("certificate cache poisoned");
        if let Some(c) = cache.get(&host) {
            return Some(c.clone());
        }
        match self.ca.0.issue(&host) {
            Ok(c) => {
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                let c = Arc::new(c);
                cache.insert(host, c.clone());
                Some(c)
            }
            Err(err) => {
                tracing::warn!(%err, "could not issue a certificate");
                None
            }
        }
    }
}

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS with certificates issued on the fly by the local CA in `dir`.
pub fn local_ca_config(
    dir: &Path,
    base_domain: &str,
) -> Result<(Arc<rustls::ServerConfig>, PathBuf), TlsError> {
    let ca = LocalCa::open(dir)?;
    let path = ca.cert_path.clone();
    let issuer = Issuer {
        ca: Arc::new(LocalCaHandle(ca)),
        base_domain: base_domain.trim_matches('.').to_ascii_lowercase(),
        cache: Mutex::new(HashMap::new()),
    };
    Ok((server_config(Arc::new(issuer))?, path))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// TLS with the operator's certificate chain and key (PEM files).
pub fn operator_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem(format!("reading {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("reading {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem(format!("reading {}: {e}", key.display())))?;
    let signer = aws_lc_rs::sign::any_supported_type(&key)?;
    server_config(Arc::new(Fixed(Arc::new(CertifiedKey::new(chain, signer)))))
}
