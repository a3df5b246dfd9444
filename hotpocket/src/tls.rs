//! TLS for the user port: a self-signed certificate made at first start and the server config.
//! The client side (accepting a node's self-signed certificate) is
//! `berth_hotpocket_client::tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TLS set-up errors naming the file or step.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the self-signed certificate")]
    Generate(#[from] rcgen::Error),
    #[error("tls file {path}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls file {path} holds no usable {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("building the tls config")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `tls/cert.pem` and `tls/key.pem` from the state dir, creating them on first use.
pub fn server_config(state_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let dir = state_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&dir).map_err(|source| TlsError::File {
            path: dir.clone(),
            source,
        })?;
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "hotpocket".to_owned(),
        ])?;
        crate::fsutil::write_atomic(&cert_path, cert.cert.pem().as_bytes(), 0o644).map_err(
            |source| TlsError::File {
                path: cert_path.clone(),
                source,
            },
        )?;
        crate::fsutil::write_atomic(&key_path, cert.key_pair.serialize_pem().as_bytes(), 0o600)
            .map_err(|source| TlsError::File {
                path: key_path.clone(),
                source,
            })?;
    }
    let cert_pem = std::fs::read(&cert_path).map_err(|source| TlsError::File {
        path: cert_path.clone(),
        source,
    })?;
    let key_pem = std::fs::read(&key_path).map_err(|source| TlsError::File {
        path: key_path.clone(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: cert_path,
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Empty {
        path: key_path,
        what: "private key",
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The config a node dials its peers with: it accepts their self-signed certificates, since
/// a peer proves its node key by the challenge, not by its certificate.
pub fn peer_client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(berth_hotpocket_client::tls::client_config_accepting_self_signed()?)
}
