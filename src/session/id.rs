//! Session ids: 128 random bits from a CSPRNG plus the node and owner shard, as URL-safe text; decoding never trusts the text.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// The random part: what a store is keyed by.
pub type SessionKey = [u8; 16];

/// node (2 bytes) + shard (2 bytes) + key (16 bytes), big-endian.
const ID_BYTES: usize = 20;
/// Length of the text form: base64url of 20 bytes without padding.
pub const ID_TEXT_BYTES: usize = 27;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub node: u16,
    pub shard: u16,
    pub key: SessionKey,
}

impl SessionId {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; ID_BYTES];
        bytes[0..2].copy_from_slice(&self.node.to_be_bytes());
        bytes[2..4].copy_from_slice(&self.shard.to_be_bytes());
        bytes[4..].copy_from_slice(&self.key);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses the text form. Any other length, alphabet or padding is None: an unknown id.
    pub fn decode(text: &[u8]) -> Option<SessionId> {
        if text.len() != ID_TEXT_BYTES {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES + 1];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).ok()?;
        if n != ID_BYTES {
            return None;
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&bytes[4..ID_BYTES]);
        Some(SessionId {
            node: u16::from_be_bytes([bytes[0], bytes[1]]),
            shard: u16::from_be_bytes([bytes[2], bytes[3]]),
            key,
        })
    }

    /// The owner shard, if this id was minted by `node` for a shard that exists.
    pub fn owner(&self, node: u16, shard_count: usize) -> Option<usize> {
        (self.node == node && usize::from(self.shard) < shard_count)
            .then_some(usize::from(self.shard))
    }
}

/// Mints ids for one shard; seeded from the OS, never shared.
pub struct IdGenerator {
    rng: StdRng,
    node: u16,
    shard: u16,
}

impl IdGenerator {
    pub fn new(node: u16, shard: u16) -> IdGenerator {
        IdGenerator {
            rng: StdRng::from_os_rng(),
            node,
            shard,
        }
    }

    pub fn mint(&mut self) -> SessionId {
        self.mint_for(self.shard)
    }

    /// An id owned by `shard` of this node (a rotation's new id, minted by the shard that asks
    /// for it, so that it can ask again).
    pub fn mint_for(&mut self, shard: u16) -> SessionId {
        let mut key = [0u8; 16];
        self.rng.fill_bytes(&mut key);
        SessionId {
            node: self.node,
            shard,
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_owner() {
        let mut ids = IdGenerator::new(7, 3);
        let id = ids.mint();
        let text = id.encode();
        assert_eq!(text.len(), ID_TEXT_BYTES);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(SessionId::decode(text.as_bytes()), Some(id));
        assert_eq!(id.owner(7, 4), Some(3));
        assert_eq!(id.owner(7, 3), None, "shard out of range");
        assert_eq!(id.owner(8, 4), None, "another node's id");
        assert_ne!(ids.mint(), id);
    }

    #[test]
    fn garbled_text_is_unknown() {
        let text = IdGenerator::new(0, 0).mint().encode();
        let check = |t: &[u8]| {
            assert_eq!(
                SessionId::decode(t),
                None,
                "{:?}",
                String::from_utf8_lossy(t)
            )
        };
        check(b"");
        check(&text.as_bytes()[..26]);
        check(format!("{text}A").as_bytes());
        check(format!("{}=", &text[..26]).as_bytes());
        check(format!("{}+", &text[..26]).as_bytes());
        check(format!("{}\u{e9}", &text[..25]).as_bytes());
        check(&[0xff; 27]);
    }
}
