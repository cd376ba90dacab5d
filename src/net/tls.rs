//! TLS with rustls: reads and validates certificates and keys at start (one line per problem), builds each shard's own server config, and runs a handshake; never parses HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The only application protocol we speak over TLS.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A validated certificate chain and its private key, read once at start. Immutable; every
/// shard builds its own `ServerConfig` from it (rustls' session cache is per config, so shards
/// share no mutable TLS state).
pub struct TlsMaterial {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Seconds since the epoch after which the leaf certificate is no longer valid.
    pub not_after_unix: i64,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print key bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `cert` (PEM, leaf first, then the rest of the chain) and `key` (PEM, PKCS#8, PKCS#1 or
/// SEC1), checks that they belong together and that the leaf is valid at `now`. An expired (or
/// not yet valid) certificate is an error with `refuse_expired`, else a warning line in `warnings`.
pub fn load(
    cert: &Path,
    key: &Path,
    refuse_expired: bool,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<Arc<TlsMaterial>, String> {
    let cert_name = cert.display();
    let key_name = key.display();
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {cert_name}: cannot read: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {cert_name}: {}", pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {cert_name}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("--tls-key {key_name}: no PEM private key in the file")
        }
        e => format!("--tls-key {key_name}: cannot read: {}", pem_error(&e)),
    })?;
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (not_after, problem) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            format!("--tls-cert {cert_name}: the first certificate does not parse: {e}")
        })?;
        let validity = leaf.validity();
        let problem = if now_unix > validity.not_after.timestamp() {
            Some(format!("expired at {}", validity.not_after))
        } else if now_unix < validity.not_before.timestamp() {
            Some(format!("is not valid before {}", validity.not_before))
        } else {
            None
        };
        (validity.not_after.timestamp(), problem)
    };
    let material = TlsMaterial {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        chain,
        key: private_key,
        not_after_unix: not_after,
    };
    // Builds a config once to check the key: rustls compares the key's public half with the leaf's.
    server_config(&material).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("--tls-key {key_name} does not match the certificate in {cert_name}")
        }
        e => format!("--tls-key {key_name}: unusable with {cert_name}: {e}"),
    })?;
    if let Some(problem) = problem {
        if refuse_expired {
            return Err(format!(
                "--tls-cert {cert_name}: the certificate {problem} (--tls-refuse-expired is set)"
            ));
        }
        warnings.push(format!(
            "warning: --tls-cert {cert_name}: the certificate {problem}; clients will reject it \
             (--tls-refuse-expired makes this fatal)"
        ));
    }
    Ok(Arc::new(material))
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        e => e.to_string(),
    }
}

/// A shard's rustls server config: TLS 1.2 and 1.3 (rustls' safe defaults), ALPN `http/1.1`,
/// no client certificates, rustls' default in-memory session cache (per shard).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A shard's TLS acceptor, in two steps so that the expensive one can be bounded apart: reading
/// the ClientHello (cheap, waits on the client) and the rest of the handshake (key exchange and
/// signature: the CPU work).
pub struct Acceptor {
    config: Arc<ServerConfig>,
}

pub type ClientHello = futures_rustls::StartHandshake<glommio::net::TcpStream>;

impl Acceptor {
    pub fn new(material: &TlsMaterial) -> Result<Acceptor, rustls::Error> {
        Ok(Acceptor {
            config: server_config(material)?,
        })
    }

    /// Reads the client's ClientHello. A client that sends nothing waits here, holding no
    /// handshake turn.
    pub async fn client_hello(
        &self,
        stream: glommio::net::TcpStream,
    ) -> std::io::Result<ClientHello> {
        futures_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await
    }

    /// Completes the handshake started by `hello`.
    pub async fn finish(
        &self,
        hello: ClientHello,
    ) -> std::io::Result<futures_rustls::server::TlsStream<glommio::net::TcpStream>> {
        hello.into_stream(self.config.clone()).await
    }
}
