//! Password hashing (argon2id PHC strings) and API-token digests (SHA-256); pure: no file or
//! network IO, never stores or logs a password. Reads OS randomness only for salts and new tokens.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Prefix of every API-token digest: `sha256:` + 64 lowercase hex digits.
pub const TOKEN_HASH_PREFIX: &str = "sha256:";
/// Hex digits in a SHA-256 digest.
pub const TOKEN_HASH_HEX_LEN: usize = 64;
/// Prefix of every token minted by [`new_token`].
pub const TOKEN_PREFIX: &str = "pc_";
/// Random bytes in a token minted by [`new_token`].
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// Hashes `password` with argon2id at the default parameters (v19, m=19456 KiB, t=2, p=1) and a
/// fresh random salt; returns the PHC string.
///
/// # Panics
/// Only if argon2 rejects the input, which with default parameters happens solely for passwords
/// over 4 GiB; callers bound login bodies far below that (see `LOGIN_BODY_BYTES_MAX`).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(phc) => phc.to_string(),
        Err(e) => panic!("argon2 failed on a {}-byte password: {e}", password.len()),
    }
}

/// Checks that `text` is an argon2id PHC string this module can verify.
pub fn validate_phc(text: &str) -> Result<(), String> {
    parse_phc(text).map(|_| ())
}

/// True when `password` matches the PHC string `phc`, using the parameters encoded in it.
/// False when `phc` is malformed or not argon2id.
pub fn verify(phc: &str, password: &str) -> bool {
    match parse_phc(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same work as [`verify`] against a default-parameter hash, so that a login for an
/// unknown user costs as much time as one with a wrong password. The dummy hash is made once.
pub fn verify_dummy(password: &str) {
    static DUMMY_PHC: OnceLock<String> = OnceLock::new();
    let phc = DUMMY_PHC.get_or_init(|| hash("percore dummy password"));
    std::hint::black_box(verify(phc, password));
}

/// Digest stored for an API token: `sha256:` + lowercase hex of SHA-256(`token`).
pub fn token_hash(token: &str) -> String {
    let mut text = String::with_capacity(TOKEN_HASH_PREFIX.len() + TOKEN_HASH_HEX_LEN);
    text.push_str(TOKEN_HASH_PREFIX);
    push_sha256_hex(&mut text, token.as_bytes(), TOKEN_HASH_HEX_LEN);
    text
}

/// Appends the first `hex_len` lowercase hex digits (at most 64) of SHA-256(`data`) to `text`:
/// the one digest-to-text routine of the auth code (token hashes, credential stamps, limiter
/// keys of long names).
pub fn push_sha256_hex(text: &mut String, data: &[u8], hex_len: usize) {
    let digest = Sha256::digest(data);
    for byte in &digest[..hex_len.div_ceil(2)] {
        text.push(hex_digit(byte >> 4));
        text.push(hex_digit(byte & 0x0f));
    }
    text.truncate(text.len() - hex_len % 2);
}

/// Checks that `text` has the shape [`token_hash`] produces.
pub fn validate_token_hash(text: &str) -> Result<(), String> {
    let Some(hex) = text.strip_prefix(TOKEN_HASH_PREFIX) else {
        return Err(format!("token hash must start with {TOKEN_HASH_PREFIX:?}"));
    };
    let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != TOKEN_HASH_HEX_LEN || !hex.bytes().all(is_lower_hex) {
        return Err(format!(
            "token hash must be {TOKEN_HASH_PREFIX:?} followed by {TOKEN_HASH_HEX_LEN} lowercase hex digits"
        ));
    }
    Ok(())
}

/// A new API token: `pc_` + 32 random bytes in URL-safe base64 without padding (46 chars).
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

fn parse_phc(text: &str) -> Result<PasswordHash<'_>, String> {
    let parsed = PasswordHash::new(text).map_err(|e| format!("invalid PHC string: {e}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!(
            "password hash algorithm is {:?}; only argon2id is accepted",
            parsed.algorithm.as_str()
        ));
    }
    check_phc_parts(&parsed)?;
    Ok(parsed)
}

/// Bounds on the cost of one stored hash (the default is m=19456, t=2, p=1).
pub const PHC_MEMORY_KIB_MAX: u32 = 256 * 1024;
pub const PHC_TIME_MAX: u32 = 16;
pub const PHC_LANES_MAX: u32 = 8;

fn check_phc_parts(parsed: &PasswordHash<'_>) -> Result<(), String> {
    if let Some(version) = parsed.version {
        Version::try_from(version).map_err(|e| format!("bad argon2 version {version}: {e}"))?;
    }
    let params = Params::try_from(parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    // Every login of the user pays these: a typo like m=19456000 would cost 19 GB per login.
    if params.m_cost() > PHC_MEMORY_KIB_MAX
        || params.t_cost() > PHC_TIME_MAX
        || params.p_cost() > PHC_LANES_MAX
    {
        return Err(format!(
            "argon2 parameters m={},t={},p={} over the bounds m<={PHC_MEMORY_KIB_MAX},t<={PHC_TIME_MAX},p<={PHC_LANES_MAX}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    let Some(salt) = parsed.salt else {
        return Err("password hash has no salt".to_string());
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| format!("bad password hash salt: {e}"))?;
    if salt_bytes.len() < argon2::MIN_SALT_LEN {
        return Err(format!(
            "password hash salt is {} bytes; at least {} required",
            salt_bytes.len(),
            argon2::MIN_SALT_LEN
        ));
    }
    if parsed.hash.is_none() {
        return Err("password hash has no hash output".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // One real default-parameter hash of "hunter2", made once for all tests.
    fn known_phc() -> &'static str {
        static PHC: OnceLock<String> = OnceLock::new();
        PHC.get_or_init(|| hash("hunter2"))
    }

    #[test]
    fn hash_is_argon2id_default_params_and_salted() {
        let phc = known_phc();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(validate_phc(phc), Ok(()));
        assert_ne!(hash("hunter2"), *phc, "salt must be random");
    }

    #[test]
    fn verify_table() {
        let phc = known_phc();
        let check = |hash: &str, password: &str, expected: bool| {
            assert_eq!(verify(hash, password), expected, "{hash:?} {password:?}");
        };
        check(phc, "hunter2", true);
        check(phc, "hunter3", false);
        check(phc, "Hunter2", false);
        check(phc, "hunter2 ", false);
        check(phc, "", false);
        check("", "hunter2", false);
        check("not a hash", "hunter2", false);
        check(&phc.replace("argon2id", "argon2i"), "hunter2", false);
        check(&phc[..phc.len() - 4], "hunter2", false);
    }

    #[test]
    fn verify_uses_params_encoded_in_hash() {
        let params = Params::new(Params::MIN_M_COST * 4, 1, 1, None).expect("valid params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(b"saltsaltsalt").expect("salt");
        let phc = argon.hash_password(b"pw", &salt).expect("hash").to_string();
        assert!(phc.contains("m=32,t=1,p=1"), "{phc}");
        assert!(verify(&phc, "pw"));
        assert!(!verify(&phc, "px"));
    }

    #[test]
    fn empty_password_round_trips() {
        let phc = hash("");
        assert!(verify(&phc, ""));
        assert!(!verify(&phc, " "));
    }

    #[test]
    fn verify_dummy_returns() {
        verify_dummy("anything");
        verify_dummy("");
    }

    #[test]
    fn costs_past_the_bounds_are_refused() {
        let with = |params: &str| {
            format!(
                "$argon2id$v=19${params}$c29tZXNhbHRzb21lc2FsdA$cHJldGVuZCB0aGlzIGlzIGEgMzItYnl0ZSBoYXNoISE"
            )
        };
        assert_eq!(validate_phc(&with("m=262144,t=16,p=8")), Ok(()));
        for params in ["m=262145,t=2,p=1", "m=19456,t=17,p=1", "m=19456,t=2,p=9"] {
            let e = validate_phc(&with(params)).unwrap_err();
            assert!(e.contains("over the bounds"), "{params}: {e}");
        }
    }

    #[test]
    fn validate_phc_table() {
        let good = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                    cHJldGVuZCB0aGlzIGlzIGEgMzItYnl0ZSBoYXNoISE";
        let check = |text: &str, expected_err: Option<&str>| {
            let got = validate_phc(text);
            match expected_err {
                None => assert_eq!(got, Ok(()), "{text:?}"),
                Some(part) => {
                    let err = got.expect_err(text);
                    assert!(err.contains(part), "{text:?}: {err}");
                    assert!(!err.contains('\n'), "{err}");
                }
            }
        };
        check(good, None);
        check(&good.replace("v=19", "v=16"), None);
        check(&good.replace("$v=19", ""), None);
        check("", Some("invalid PHC string"));
        check("plaintext", Some("invalid PHC string"));
        check(&good.replace("argon2id", "argon2i"), Some("only argon2id"));
        check(&good.replace("argon2id", "argon2d"), Some("only argon2id"));
        check(&good.replace("argon2id", "scrypt"), Some("only argon2id"));
        check(&good.replace("v=19", "v=18"), Some("bad argon2 version"));
        check(&good.replace("t=2", "t=0"), Some("bad argon2 parameters"));
        check(&good.replace("p=1", "p=0"), Some("bad argon2 parameters"));
        check(
            &good.replace("m=19456", "m=7"),
            Some("bad argon2 parameters"),
        );
        check(
            &good.replace(",p=1", ",p=1,x=3"),
            Some("bad argon2 parameters"),
        );
        check("$argon2id$v=19$m=19456,t=2,p=1", Some("no salt"));
        check(
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA",
            Some("no hash output"),
        );
        // Salt of exactly MIN_SALT_LEN bytes is fine; one byte fewer is not.
        let salt8 = SaltString::encode_b64(b"12345678").expect("salt");
        let salt7 = SaltString::encode_b64(b"1234567").expect("salt");
        check(
            &good.replace("c29tZXNhbHRzb21lc2FsdA", salt8.as_str()),
            None,
        );
        check(
            &good.replace("c29tZXNhbHRzb21lc2FsdA", salt7.as_str()),
            Some("at least 8"),
        );
    }

    #[test]
    fn token_hash_known_vectors() {
        let check = |token: &str, expected_hex: &str| {
            assert_eq!(token_hash(token), format!("sha256:{expected_hex}"));
        };
        check(
            "",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        check(
            "abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
    }

    #[test]
    fn validate_token_hash_table() {
        let hex64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let check = |text: &str, ok: bool| {
            let got = validate_token_hash(text);
            assert_eq!(got.is_ok(), ok, "{text:?}: {got:?}");
            if let Err(err) = got {
                assert!(!err.contains('\n'));
            }
        };
        check(&format!("sha256:{hex64}"), true);
        check(&token_hash("pc_whatever"), true);
        check(hex64, false);
        check(&format!("SHA256:{hex64}"), false);
        check(&format!("sha256:{}", hex64.to_uppercase()), false);
        check(&format!("sha256:{}", &hex64[..63]), false);
        check(&format!("sha256:{hex64}0"), false);
        check(&format!("sha256:{}g", &hex64[..63]), false);
        check(&format!("sha256: {}", &hex64[..63]), false);
        check("sha256:", false);
        check("", false);
    }

    #[test]
    fn new_token_shape() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        let body = a.strip_prefix(TOKEN_PREFIX).expect("prefix");
        let decoded = URL_SAFE_NO_PAD.decode(body).expect("url-safe base64");
        assert_eq!(decoded.len(), TOKEN_RANDOM_BYTES);
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(validate_token_hash(&token_hash(&a)), Ok(()));
    }
}
