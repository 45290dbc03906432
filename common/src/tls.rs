//! TLS settings shared by agent and collector: PEM loading and the rustls
//! configurations (TLS 1.3 only, ring provider, client certificates required).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::revocation::{RevocationList, RevokingVerifier};

/// ALPN protocol id of Ferry's ZMQ-over-TLS channel.
pub const ALPN: &[u8] = b"ferry-zmtp/1";

/// Why TLS material could not be loaded or assembled.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} holds no usable PEM {kind}: {reason}")]
    Pem {
        what: String,
        kind: &'static str,
        reason: String,
    },
    #[error("CA certificate from {what} is not usable: {reason}")]
    Ca { what: String, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The certificates and key one side presents, and the CA it trusts.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Certificates of the private CA that signs every Ferry certificate.
    pub ca: Vec<CertificateDer<'static>>,
    /// This side's certificate (and any intermediates).
    pub chain: Vec<CertificateDer<'static>>,
    /// This side's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the material came from, for error messages.
    pub origin: String,
}

impl TlsMaterial {
    /// Loads CA, certificate and key from PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut material = Self::from_pem(
            &read(ca)?,
            &read(cert)?,
            &read(key)?,
            &format!("{} / {}", cert.display(), key.display()),
        )?;
        material.origin = cert.display().to_string();
        Ok(material)
    }

    /// Parses CA, certificate and key from PEM text; `origin` names them in errors.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8], origin: &str) -> Result<Self, TlsError> {
        let certs = |pem: &[u8], what: &str| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Pem {
                    what: what.to_owned(),
                    kind: "certificate",
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::Pem {
                    what: what.to_owned(),
                    kind: "certificate",
                    reason: "no CERTIFICATE block".into(),
                });
            }
            Ok(certs)
        };
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            what: format!("key of {origin}"),
            kind: "private key",
            reason: e.to_string(),
        })?;
        Ok(Self {
            ca: certs(ca, &format!("CA of {origin}"))?,
            chain: certs(cert, origin)?,
            key,
            origin: origin.to_owned(),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots.add(cert.clone()).map_err(|e| TlsError::Ca {
                what: self.origin.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(roots)
    }
}

/// The crypto provider every Ferry TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: TLS 1.3 only, a client certificate signed by the CA required.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_revoking(material, RevocationList::default())
}

/// [`server_config`] that also refuses, during the handshake and with a
/// `certificate_revoked` alert, every certificate `revoked` holds at that
/// moment (the list can change while the configuration is in use).
pub fn server_config_revoking(
    material: &TlsMaterial,
    revoked: RevocationList,
) -> Result<Arc<ServerConfig>, TlsError> {
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(material.roots()?), provider())
            .build()?;
    let verifier = Arc::new(RevokingVerifier::new(webpki, revoked));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: a resumed session skips the client
    // certificate's verification, and so a revocation put in force since
    // the session began. A reconnect costs one full handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side: TLS 1.3 only, the collector verified against the CA, this
/// station's certificate presented.
pub fn client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(material.roots()?)
        .with_client_auth_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}
