//! Test TLS: a throwaway PKI made with rcgen at test time (a CA, a leaf for localhost and 127.0.0.1, an expired leaf, a stranger's key) and a rustls client over std TCP.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{Conn, temp_dir};

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Files of a test PKI, in a fresh directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    ca_der: CertificateDer<'static>,
    /// Leaf for `localhost` and `127.0.0.1`, signed by the CA, valid now.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Same names, signed by the CA, expired yesterday.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// A key that belongs to no certificate here.
    pub stranger_key: PathBuf,
    /// Owns `dir`: removed when the Pki drops.
    _tmp: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let tmp = temp_dir("pki");
        let dir = tmp.path().to_path_buf();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "percore test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = write("ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |days_from_now: (i64, i64)| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(days_from_now.0);
            params.not_after = now + time::Duration::days(days_from_now.1);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert_pem, key_pem) = leaf((-1, 30));
        let (expired_pem, expired_key_pem) = leaf((-30, -1));
        Pki {
            cert: write("cert.pem", &cert_pem),
            key: write("key.pem", &key_pem),
            expired_cert: write("expired.pem", &expired_pem),
            expired_key: write("expired-key.pem", &expired_key_pem),
            stranger_key: write(
                "stranger-key.pem",
                &KeyPair::generate().unwrap().serialize_pem(),
            ),
            ca_der: ca_cert.der().clone(),
            ca_pem,
            dir,
            _tmp: tmp,
        }
    }

    pub fn cert_arg(&self) -> String {
        self.cert.to_str().unwrap().to_string()
    }

    pub fn key_arg(&self) -> String {
        self.key.to_str().unwrap().to_string()
    }

    /// A client that trusts only this PKI's CA, offering `http/1.1`, with the given versions.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn default_client(&self) -> Arc<ClientConfig> {
        self.client(rustls::DEFAULT_VERSIONS)
    }
}

/// Connects and completes the handshake (so its error, if any, is returned here).
pub fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// A keep-alive HTTPS connection to `localhost` at `addr`, trusting `pki`.
pub fn conn(pki: &Pki, addr: SocketAddr) -> Conn<TlsStream> {
    Conn::new(connect(addr, "localhost", pki.default_client()).expect("TLS handshake"))
}

/// `/stats` of an HTTPS server.
pub fn stats(pki: &Pki, addr: SocketAddr) -> serde_json::Value {
    serde_json::from_slice(&conn(pki, addr).get("/stats").body).expect("stats JSON")
}
