//! Strict percent-decoding of a path segment into one canonical key (RFC 3986 §2.1), shared by the /kv and /session routes.

/// Strict percent-decoding of a path segment (RFC 3986 §2.1): `%` must start two hex digits, and
/// the bytes must be UTF-8, as keys are JSON strings in /kv/tx. `+` is itself: turning it into a
/// space is form decoding (`form_urlencoded`), not a path's.
///
/// Canonical: every key has exactly one path. A byte that may stand as itself in a segment
/// (unreserved, sub-delims, `:`, `@`) must not be escaped, and escapes use uppercase hex
/// (RFC 3986 §2.1, §6.2.2.2). Access rules match the raw path, so a second spelling of a key
/// (`/kv/%63onfig` for `/kv/config`) would get past a rule written for the first.
pub fn decode(segment: &str) -> Result<Vec<u8>, &'static str> {
    let mut decoded = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let [first, after @ ..] = rest {
        rest = after;
        if *first != b'%' {
            // A byte that may not stand as itself (non-ASCII, `"<>[\]^`{|}`) must be escaped:
            // accepted raw too, it would give its key a second spelling.
            if !is_segment_byte(*first) {
                return Err("the key has a character that must be percent-encoded");
            }
            decoded.push(*first);
            continue;
        }
        let [high, low, after @ ..] = rest else {
            return Err("the key has a '%' without two hex digits after it");
        };
        let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) else {
            return Err("the key has a '%' without two uppercase hex digits after it");
        };
        let byte = high << 4 | low;
        if is_segment_byte(byte) {
            return Err("the key escapes a character that must be written as itself");
        }
        decoded.push(byte);
        rest = after;
    }
    match std::str::from_utf8(&decoded) {
        Ok(_) => Ok(decoded),
        Err(_) => Err("the key is not UTF-8 once percent-decoded"),
    }
}

/// The one spelling `decode` accepts for what `text` means, reading any escape `%XX` (either
/// case) as its byte and any other byte as itself: for a message that names it.
pub fn canonical(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut meant = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = match bytes.get(index + 1..index + 3) {
            Some(&[high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                let value = |digit: u8| char::from(digit).to_digit(16).expect("a hex digit") as u8;
                Some(value(high) << 4 | value(low))
            }
            _ => None,
        };
        match (bytes[index], escape) {
            (b'%', Some(byte)) => {
                meant.push(byte);
                index += 3;
            }
            (byte, _) => {
                meant.push(byte);
                index += 1;
            }
        }
    }
    let mut spelled = String::with_capacity(meant.len());
    encode(&meant, &mut spelled);
    spelled
}

/// Appends the one spelling of `bytes` as a path segment (`decode`'s inverse): a byte that may
/// stand as itself does, any other is escaped in uppercase hex.
pub fn encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if is_segment_byte(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// Uppercase hex only: a lowercase escape would be a second spelling of the same key.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar` less `%`: the bytes a path segment may hold as themselves.
pub fn is_segment_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}
