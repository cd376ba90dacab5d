//! TLS with rustls: reads and validates certificates and keys at start (one line per problem), builds each shard's own server config, and runs a handshake; never parses HTTP.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Where every shard's session-ticket keys start (`TicketChain`): random, made at start,
    /// erased once every shard has its own copy.
    ticket_seed: TicketSeed,
}

impl TlsMaterial {
    /// Erases the ticket seed; the runtime calls it once every shard has built its acceptors.
    /// Afterwards only the shards' ratchets hold ticket keys, each only its current and previous
    /// period's: reading a running server's memory no longer opens older tickets.
    pub fn forget_ticket_seed(&self) {
        self.ticket_seed.forget();
    }
}

/// The ticket-key chain's value at `period`, in atomics so that it can be erased from the
/// shared, otherwise immutable material (a store is a real write; an overwritten plain array in
/// an `Arc` is not possible, and the optimiser may drop a write nobody reads).
struct TicketSeed {
    words: [AtomicU64; 4],
    period: u64,
}

impl TicketSeed {
    fn new(bytes: [u8; 32], period: u64) -> TicketSeed {
        let word = |i: usize| {
            AtomicU64::new(u64::from_le_bytes(
                bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"),
            ))
        };
        TicketSeed {
            words: [word(0), word(1), word(2), word(3)],
            period,
        }
    }

    /// The seed and its period, or None once forgotten.
    fn read(&self) -> Option<([u8; 32], u64)> {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(&self.words) {
            chunk.copy_from_slice(&word.load(Ordering::SeqCst).to_le_bytes());
        }
        (bytes != [0; 32]).then_some((bytes, self.period))
    }

    fn forget(&self) {
        for word in &self.words {
            word.store(0, Ordering::SeqCst);
        }
    }
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

/// Parses `cert_pem` (PEM, leaf first, then the rest of the chain) and `key_pem` (PEM, PKCS#8,
/// PKCS#1 or SEC1), read by the caller from the files `cert` and `key` (named in errors), checks
/// that they belong together and that the leaf is valid at `now`. An expired (or not yet valid)
/// certificate is an error with `refuse_expired` (the name of the setting that asked for it),
/// else a warning line in `warnings`.
/// `names`: the settings that gave the certificate and the key, as messages name them
/// (`--tls-cert`, or `config file F: tls_cert =`).
#[allow(clippy::too_many_arguments)]
pub fn load(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    names: (&str, &str),
    refuse_expired: Option<&str>,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<Arc<TlsMaterial>, String> {
    let (cert_setting, key_setting) = names;
    let cert_name = cert.display();
    let key_name = key.display();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_setting} {cert_name}: {}", pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_setting} {cert_name}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
        ));
    }
    if is_encrypted_key(key_pem) {
        return Err(format!(
            "{key_setting} {key_name}: the private key is encrypted; percore reads it unencrypted \
             (openssl pkey -in KEY -out PLAIN_KEY)"
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{key_setting} {key_name}: no PEM private key in the file")
        }
        e => format!("{key_setting} {key_name}: {}", pem_error(&e)),
    })?;
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (not_after, problem) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            format!("{cert_setting} {cert_name}: the first certificate does not parse: {e}")
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
    let mut ticket_seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut ticket_seed)
        .map_err(|_| "no random bytes for the session-ticket key (getrandom failed)".to_string())?;
    let material = TlsMaterial {
        cert_path: cert.to_path_buf(),
        key_path: key.to_path_buf(),
        chain,
        key: private_key,
        not_after_unix: not_after,
        ticket_seed: TicketSeed::new(ticket_seed, ticket_period_now()),
    };
    // Builds a config once to check the key: rustls compares the key's public half with the leaf's.
    server_config(&material).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_setting} {key_name} does not match the certificate in {cert_name}")
        }
        e => format!("{key_setting} {key_name}: unusable with {cert_name}: {e}"),
    })?;
    if let Some(problem) = problem {
        if let Some(refusing) = refuse_expired {
            return Err(format!(
                "{cert_setting} {cert_name}: the certificate {problem} (expired certificates are \
                 refused: {refusing})"
            ));
        }
        warnings.push(format!(
            "warning: {cert_setting} {cert_name}: the certificate {problem}; clients will reject it \
             (--tls-refuse-expired, or tls_refuse_expired = true in the config file, makes this \
             fatal)"
        ));
    }
    Ok(Arc::new(material))
}

/// A PEM error as one readable line: rustls-pki-types prints a missing end marker as a list
/// of byte values (found in review).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no end line (-----END {}-----): is the file cut short?",
            String::from_utf8_lossy(end_marker).trim()
        ),
        e => e.to_string(),
    }
}

/// An encrypted key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy `Proc-Type:
/// 4,ENCRYPTED` header), which the PEM reader skips as no key at all.
fn is_encrypted_key(pem: &[u8]) -> bool {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|window| window == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// A shard's rustls server config: TLS 1.2 and 1.3 (rustls' safe defaults), ALPN `http/1.1`,
/// no client certificates, and rustls' in-memory session-ID cache (per shard: TLS 1.2 clients
/// without tickets resume on the shard that served them only). The `Acceptor` adds session
/// tickets every shard can open.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// How long one ticket key is used to seal tickets (rustls' own ticketer rotates every 6 hours);
/// a ticket opens during its period and the next one, so it lives 6 to 12 hours.
pub const TICKET_PERIOD_S: u64 = 6 * 3600;

/// A shard ratchets its ticket keys at most this many periods at once (about 68 years); a
/// clock that jumps further turns the shard's tickets off rather than spinning.
const TICKET_RATCHET_STEPS_MAX: u64 = 100_000;

fn ticket_period_now() -> u64 {
    crate::runtime::now_ms() / (TICKET_PERIOD_S * 1000)
}

/// Session-ticket keys that every shard derives alike, with nothing shared but a start seed.
///
/// A client's next connection lands on the shard the kernel's SO_REUSEPORT hash picks, so a
/// ticket must open on any shard (rustls' default ticketer is per `ServerConfig`, i.e. per
/// shard, and sharing one would share its lock). The keys form a one-way chain (HKDF-SHA256):
/// `chain(p + 1) = HKDF(chain(p), "chain")`, `key(p) = HKDF(chain(p), "key")`, starting from a
/// random seed made at start for the start period. Each shard holds the chain at the current
/// period and the previous period's key, and overwrites both as periods pass; the seed is
/// erased once every shard has its copy. So every shard seals and opens with the same keys, and
/// a look at a running server's memory opens tickets of the current and previous period only
/// (rustls' contract: lifetime by key rolling and erasure). A restart ends every ticket.
struct TicketChain {
    period: u64,
    chain: [u8; 32],
    previous_key: Option<[u8; 32]>,
}

impl TicketChain {
    fn new(seed: [u8; 32], period: u64) -> TicketChain {
        TicketChain {
            period,
            chain: seed,
            previous_key: None,
        }
    }

    fn expand(from: &[u8; 32], label: &[u8]) -> [u8; 32] {
        let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, from);
        let mut out = [0u8; 32];
        prk.expand(
            &[b"percore session ticket ", label],
            ring::hkdf::HKDF_SHA256,
        )
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// Moves the chain to `now`; false (and no change) if `now` is not later, or too far.
    fn advance_to(&mut self, now: u64) -> bool {
        if now <= self.period || now - self.period > TICKET_RATCHET_STEPS_MAX {
            return false;
        }
        while self.period < now {
            self.previous_key = Some(TicketChain::expand(&self.chain, b"key"));
            self.chain = TicketChain::expand(&self.chain, b"chain");
            self.period += 1;
        }
        true
    }

    /// The ticketer for the chain's period.
    fn tickets(&self) -> Tickets {
        Tickets {
            period: self.period,
            current: aead_key(&TicketChain::expand(&self.chain, b"key")),
            previous: self.previous_key.as_ref().map(aead_key),
            random: ring::rand::SystemRandom::new(),
        }
    }
}

fn aead_key(bytes: &[u8; 32]) -> ring::aead::LessSafeKey {
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, bytes)
            .expect("32 bytes is a ChaCha20-Poly1305 key"),
    )
}

/// One period's ticketer (immutable; a shard builds the next one when the period changes). A
/// ticket is `period (8 bytes, big-endian) | nonce (12, random) | ChaCha20-Poly1305 sealed
/// state`, the period bytes authenticated as associated data.
struct Tickets {
    period: u64,
    current: ring::aead::LessSafeKey,
    previous: Option<ring::aead::LessSafeKey>,
    random: ring::rand::SystemRandom,
}

impl std::fmt::Debug for Tickets {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("period", &self.period)
            .finish()
    }
}

const TICKET_NONCE_BYTES: usize = 12;
const TICKET_PERIOD_BYTES: usize = 8;

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_PERIOD_S as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // A shard moves to a new period at its next handshake; a ticketer of a period that has
        // passed seals nothing more (the acceptor is about to replace it).
        (self.period == ticket_period_now()).then(|| self.seal(plain))?
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket)
    }
}

impl Tickets {
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; TICKET_NONCE_BYTES];
        ring::rand::SecureRandom::fill(&self.random, &mut nonce).ok()?;
        let period = self.period.to_be_bytes();
        let mut ticket = Vec::with_capacity(
            TICKET_PERIOD_BYTES + TICKET_NONCE_BYTES + plain.len() + ring::aead::MAX_TAG_LEN,
        );
        ticket.extend_from_slice(&period);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.current
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(period),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The state sealed in `ticket`, if it was sealed in this ticketer's period or the one
    /// before. `ticket` comes from the client: any bytes give `None` or the state, never a panic.
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (period_bytes, rest) = ticket.split_first_chunk::<TICKET_PERIOD_BYTES>()?;
        let (nonce, sealed) = rest.split_first_chunk::<TICKET_NONCE_BYTES>()?;
        let period = u64::from_be_bytes(*period_bytes);
        let key = if period == self.period {
            &self.current
        } else if period.checked_add(1) == Some(self.period) {
            self.previous.as_ref()?
        } else {
            return None;
        };
        let mut opened = sealed.to_vec();
        let plain_len = key
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
    /// The config for the ticket chain's period; replaced (sharing rustls' session cache) when
    /// a handshake finds that the period has changed.
    config: RefCell<Arc<ServerConfig>>,
    /// None when the material's seed was already erased: no tickets on this acceptor.
    tickets: Option<RefCell<TicketChain>>,
}

pub type ClientHello = futures_rustls::StartHandshake<glommio::net::TcpStream>;

impl Acceptor {
    /// Build every shard's acceptors before the material's ticket seed is forgotten (the
    /// runtime does: before a shard reports ready).
    pub fn new(material: &TlsMaterial) -> Result<Acceptor, rustls::Error> {
        let config = server_config(material)?;
        let Some((seed, period)) = material.ticket_seed.read() else {
            return Ok(Acceptor {
                config: RefCell::new(config),
                tickets: None,
            });
        };
        let mut chain = TicketChain::new(seed, period);
        chain.advance_to(ticket_period_now());
        let acceptor = Acceptor {
            config: RefCell::new(config),
            tickets: Some(RefCell::new(chain)),
        };
        acceptor.install_tickets();
        Ok(acceptor)
    }

    fn install_tickets(&self) {
        let Some(chain) = &self.tickets else {
            return;
        };
        let mut config = ServerConfig::clone(&self.config.borrow());
        config.ticketer = Arc::new(chain.borrow().tickets());
        *self.config.borrow_mut() = Arc::new(config);
    }

    /// The config to finish a handshake with, its ticket keys moved to the current period.
    fn config(&self) -> Arc<ServerConfig> {
        let advanced = self
            .tickets
            .as_ref()
            .is_some_and(|chain| chain.borrow_mut().advance_to(ticket_period_now()));
        if advanced {
            self.install_tickets();
        }
        self.config.borrow().clone()
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
        hello.into_stream(self.config()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_open_in_their_period_and_the_next_only() {
        let state = b"resumption state".to_vec();
        let mut chain = TicketChain::new([7; 32], 100);
        let at_100 = chain.tickets();
        let ticket = at_100.seal(&state).unwrap();
        assert_eq!(ticket.len(), 8 + 12 + state.len() + 16);
        assert_eq!(at_100.open(&ticket), Some(state.clone()));
        // Another shard (same seed) opens it; another process (another seed) does not.
        assert_eq!(
            TicketChain::new([7; 32], 100).tickets().open(&ticket),
            Some(state.clone())
        );
        assert_eq!(TicketChain::new([8; 32], 100).tickets().open(&ticket), None);
        // Two tickets of the same state differ (random nonce).
        assert_ne!(at_100.seal(&state).unwrap(), ticket);
        assert!(chain.advance_to(101));
        let at_101 = chain.tickets();
        assert_eq!(at_101.open(&ticket), Some(state.clone()), "previous period");
        let newer = at_101.seal(&state).unwrap();
        assert_eq!(at_100.open(&newer), None, "from the future");
        // A shard that slept through a period still agrees with one that did not.
        let mut sleeper = TicketChain::new([7; 32], 100);
        assert!(sleeper.advance_to(102));
        assert!(chain.advance_to(102));
        assert_eq!(sleeper.chain, chain.chain);
        assert_eq!(sleeper.tickets().open(&newer), Some(state.clone()));
        assert_eq!(sleeper.tickets().open(&ticket), None, "two periods on");
        // The chain never goes back, nor jumps absurdly far.
        assert!(!chain.advance_to(101));
        assert!(!chain.advance_to(102 + TICKET_RATCHET_STEPS_MAX + 1));
        assert_eq!(chain.period, 102);
    }

    #[test]
    fn any_change_or_cut_of_a_ticket_is_refused() {
        let mut chain = TicketChain::new([7; 32], 5);
        chain.advance_to(6);
        let tickets = chain.tickets();
        let previous_period = TicketChain::new([7; 32], 5)
            .tickets()
            .seal(b"state")
            .unwrap();
        for ticket in [tickets.seal(b"state").unwrap(), previous_period] {
            assert!(tickets.open(&ticket).is_some());
            for index in 0..ticket.len() {
                let mut changed = ticket.clone();
                changed[index] ^= 1;
                // A changed period byte names another period (refused, or another key).
                assert_eq!(tickets.open(&changed), None, "bit flipped at {index}");
                assert_eq!(tickets.open(&ticket[..index]), None, "cut at {index}");
            }
        }
        assert_eq!(tickets.open(&[]), None);
        assert_eq!(tickets.open(&[0xff; 64]), None);
    }

    #[test]
    fn the_seed_is_gone_once_forgotten() {
        let seed = TicketSeed::new([9; 32], 42);
        assert_eq!(seed.read(), Some(([9; 32], 42)));
        seed.forget();
        assert_eq!(seed.read(), None);
        assert!(
            seed.words
                .iter()
                .all(|word| word.load(Ordering::SeqCst) == 0)
        );
    }
}
