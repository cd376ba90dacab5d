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
    /// Where every shard's session-ticket keys come from (`Tickets`): random, made at start.
    ticket_secret: [u8; 32],
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
    let mut ticket_secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut ticket_secret)
        .map_err(|_| "no random bytes for the session-ticket key (getrandom failed)".to_string())?;
    let material = TlsMaterial {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        chain,
        key: private_key,
        not_after_unix: not_after,
        ticket_secret,
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
/// no client certificates, session tickets every shard can open (`Tickets`), and rustls'
/// in-memory session-ID cache (per shard: TLS 1.2 clients without tickets resume on the shard
/// that served them only).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.ticketer = Arc::new(Tickets::new(&material.ticket_secret));
    Ok(Arc::new(config))
}

/// How long one ticket key is used to seal tickets (rustls' own ticketer rotates every 6 hours);
/// a ticket opens during its period and the next one, so it lives 6 to 12 hours.
pub const TICKET_PERIOD_S: u64 = 6 * 3600;

/// Stateless session tickets (RFC 5077, RFC 8446 §4.6.1) that any shard can open. A client's
/// next connection lands on a shard chosen by the kernel's SO_REUSEPORT hash, so rustls'
/// default (a ticketer per `ServerConfig`, i.e. per shard) resumed only one connection in N.
/// Sharing one rustls ticketer would share its lock across shards; instead every shard derives
/// the same key for each period from the start-time secret (HKDF-SHA256), with no state to
/// share. A ticket is `period (8 bytes, big-endian) | nonce (12, random) | ChaCha20-Poly1305
/// sealed state`, the period bytes authenticated as associated data.
///
/// Trade-off (the same as nginx's default shared ticket key): the secret lives as long as the
/// process, so someone who reads a running server's memory can open the tickets it issued since
/// start; a restart makes every earlier ticket useless.
#[derive(Debug)]
struct Tickets {
    secret: ring::hkdf::Prk,
    random: ring::rand::SystemRandom,
}

const TICKET_NONCE_BYTES: usize = 12;
const TICKET_PERIOD_BYTES: usize = 8;

impl Tickets {
    fn new(secret: &[u8; 32]) -> Tickets {
        Tickets {
            secret: ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret),
            random: ring::rand::SystemRandom::new(),
        }
    }

    fn key(&self, period: u64) -> ring::aead::LessSafeKey {
        let period_bytes = period.to_be_bytes();
        let info = [&b"percore session ticket key"[..], &period_bytes[..]];
        let okm = self
            .secret
            .expand(&info, &ring::aead::CHACHA20_POLY1305)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm))
    }

    fn period_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / TICKET_PERIOD_S)
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_PERIOD_S as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, Tickets::period_now())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket, Tickets::period_now())
    }
}

impl Tickets {
    fn seal(&self, plain: &[u8], period: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; TICKET_NONCE_BYTES];
        ring::rand::SecureRandom::fill(&self.random, &mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(
            TICKET_PERIOD_BYTES + TICKET_NONCE_BYTES + plain.len() + ring::aead::MAX_TAG_LEN,
        );
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.key(period)
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(period.to_be_bytes()),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The state sealed in `ticket`, if this process sealed it in period `now` or the one before.
    /// `ticket` comes from the client: any bytes give `None` or the state, never a panic.
    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (period_bytes, rest) = ticket.split_first_chunk::<TICKET_PERIOD_BYTES>()?;
        let (nonce, sealed) = rest.split_first_chunk::<TICKET_NONCE_BYTES>()?;
        let period = u64::from_be_bytes(*period_bytes);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let mut opened = sealed.to_vec();
        let plain_len = self
            .key(period)
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(*period_bytes),
                &mut opened,
            )
            .ok()?
            .len();
        opened.truncate(plain_len);
        Some(opened)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_in_their_period_and_the_next_only() {
        let tickets = Tickets::new(&[7; 32]);
        let state = b"resumption state".to_vec();
        let ticket = tickets.seal(&state, 100).unwrap();
        assert_eq!(ticket.len(), 8 + 12 + state.len() + 16);
        assert_eq!(tickets.open(&ticket, 100), Some(state.clone()));
        assert_eq!(tickets.open(&ticket, 101), Some(state.clone()));
        assert_eq!(tickets.open(&ticket, 102), None, "two periods on");
        assert_eq!(tickets.open(&ticket, 99), None, "from the future");
        // Another shard of the same process (same secret) opens it; another process does not.
        assert_eq!(
            Tickets::new(&[7; 32]).open(&ticket, 100),
            Some(state.clone())
        );
        assert_eq!(Tickets::new(&[8; 32]).open(&ticket, 100), None);
        // Two tickets of the same state differ (random nonce).
        assert_ne!(tickets.seal(&state, 100).unwrap(), ticket);
    }

    #[test]
    fn any_change_or_cut_of_a_ticket_is_refused() {
        let tickets = Tickets::new(&[7; 32]);
        let ticket = tickets.seal(b"state", 5).unwrap();
        for index in 0..ticket.len() {
            let mut changed = ticket.clone();
            changed[index] ^= 1;
            // A changed period byte names another period (refused, or another key).
            assert_eq!(tickets.open(&changed, 5), None, "bit flipped at {index}");
            assert_eq!(tickets.open(&ticket[..index], 5), None, "cut at {index}");
        }
        assert_eq!(tickets.open(&[], 5), None);
        assert_eq!(tickets.open(&[0xff; 64], u64::MAX), None);
    }
}
