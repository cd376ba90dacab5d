//! CSRF defence for cookie-authenticated requests: safe methods, Origin/Referer against Host, or
//! a custom header; pure: no IO, never reads cookies or decides authentication.

/// Methods the CSRF check lets through: GET, HEAD, OPTIONS (the list; TRACE is not
/// served by anything here, so it gets the check like any unsafe method). Case-sensitive.
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// True when the request may proceed: a safe method, the CSRF header present, an Origin that is
/// same-origin, or (with no Origin at all) a Referer that is same-origin.
pub fn check(
    method: &str,
    origin: Option<&[u8]>,
    referer: Option<&[u8]>,
    host: Option<&[u8]>,
    tls: bool,
    has_csrf_header: bool,
) -> bool {
    if is_safe_method(method) || has_csrf_header {
        return true;
    }
    let (Some(host), Some(source)) = (host, origin.or(referer)) else {
        return false;
    };
    same_origin(source, host, tls)
}

/// True when the scheme://host[:port] of an Origin value (or the origin part of a Referer URL)
/// names the request's own origin: scheme `https` iff `tls`, host equal to `host`'s ignoring
/// ASCII case, ports equal after filling in the default (80 for http, 443 for https). "null",
/// userinfo, and anything unparseable give false.
pub fn same_origin(origin_or_referer: &[u8], host: &[u8], tls: bool) -> bool {
    let default_port = if tls { 443 } else { 80 };
    let (Some(origin), Some(request)) = (
        parse_origin(trim_ows(origin_or_referer), tls),
        parse_authority(trim_ows(host), default_port),
    ) else {
        return false;
    };
    origin.host.eq_ignore_ascii_case(request.host) && origin.port == request.port
}

struct Authority<'a> {
    host: &'a [u8],
    port: u16,
}

fn parse_origin(value: &[u8], tls: bool) -> Option<Authority<'_>> {
    let separator = value.windows(3).position(|w| w == b"://")?;
    let scheme = &value[..separator];
    let (expected_scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    if !scheme.eq_ignore_ascii_case(expected_scheme.as_bytes()) {
        return None;
    }
    let rest = &value[separator + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    parse_authority(&rest[..end], default_port)
}

/// `host[:port]` or `[ipv6][:port]`; no userinfo, no empty port.
fn parse_authority(text: &[u8], default_port: u16) -> Option<Authority<'_>> {
    let (host, port_text) = split_host_port(text)?;
    let port = match port_text {
        None => default_port,
        Some(digits) => parse_port(digits)?,
    };
    Some(Authority { host, port })
}

fn split_host_port(text: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if text.first() == Some(&b'[') {
        let close = text.iter().position(|&b| b == b']')?;
        let (host, after) = text.split_at(close + 1);
        let is_ipv6_char = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
        if host.len() < 3 || !host[1..close].iter().all(is_ipv6_char) {
            return None;
        }
        return match after.split_first() {
            None => Some((host, None)),
            Some((b':', port)) => Some((host, Some(port))),
            Some(_) => None,
        };
    }
    let (host, port) = match text.iter().rposition(|&b| b == b':') {
        Some(colon) => (&text[..colon], Some(&text[colon + 1..])),
        None => (text, None),
    };
    let is_host_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    (!host.is_empty() && host.iter().all(is_host_char)).then_some((host, port))
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_methods() {
        let check_method =
            |method: &str, safe: bool| assert_eq!(is_safe_method(method), safe, "{method}");
        for method in ["GET", "HEAD", "OPTIONS"] {
            check_method(method, true);
        }
        for method in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "get", "Get", "", "GETS",
        ] {
            check_method(method, false);
        }
    }

    fn check_same(value: &str, host: &str, tls: bool, expected: bool) {
        assert_eq!(
            same_origin(value.as_bytes(), host.as_bytes(), tls),
            expected,
            "{value:?} vs Host {host:?} tls={tls}"
        );
    }

    #[test]
    fn same_origin_matches() {
        check_same("https://example.com", "example.com", true, true);
        check_same("http://example.com", "example.com", false, true);
        check_same("HTTPS://Example.COM", "example.com", true, true);
        check_same("https://example.com", "EXAMPLE.com", true, true);
        check_same("https://example.com:443", "example.com", true, true);
        check_same("https://example.com", "example.com:443", true, true);
        check_same("http://example.com:80", "example.com", false, true);
        check_same("http://example.com", "example.com:80", false, true);
        check_same("http://localhost:8080", "localhost:8080", false, true);
        check_same("http://127.0.0.1:8080", "127.0.0.1:8080", false, true);
        check_same("http://[::1]:8080", "[::1]:8080", false, true);
        check_same("https://[::1]", "[::1]:443", true, true);
        check_same("http://[::1]", "[::1]", false, true);
        check_same(" https://example.com ", " example.com ", true, true);
        check_same("https://example.com:0443", "example.com", true, true);
    }

    #[test]
    fn same_origin_mismatches() {
        check_same("https://example.com", "example.org", true, false);
        check_same("https://example.com", "example.com.evil.org", true, false);
        check_same("https://example.com.evil.org", "example.com", true, false);
        check_same("https://sub.example.com", "example.com", true, false);
        check_same("https://example.com:8443", "example.com", true, false);
        check_same("https://example.com", "example.com:8443", true, false);
        check_same("http://example.com:443", "example.com", true, false);
        check_same("http://example.com", "example.com", true, false);
        check_same("https://example.com", "example.com", false, false);
        check_same("ftp://example.com", "example.com", false, false);
        check_same("https://example.com:80", "example.com:80", false, false);
        check_same("http://[::1]:8080", "[::2]:8080", false, false);
    }

    #[test]
    fn same_origin_rejects_unparseable() {
        check_same("null", "example.com", true, false);
        check_same("", "example.com", true, false);
        check_same("example.com", "example.com", true, false);
        check_same("//example.com", "example.com", true, false);
        check_same("https://", "example.com", true, false);
        check_same("https:///x", "example.com", true, false);
        check_same("https://example.com:", "example.com", true, false);
        check_same("https://example.com", "example.com:", true, false);
        check_same("https://example.com:x", "example.com", true, false);
        check_same(
            "https://example.com:65536",
            "example.com:65536",
            true,
            false,
        );
        check_same("https://example.com:65535", "example.com:65535", true, true);
        check_same(
            "https://example.com:123456",
            "example.com:123456",
            true,
            false,
        );
        check_same("https://user@example.com", "example.com", true, false);
        check_same("https://evil.org@example.com", "example.com", true, false);
        check_same("https://example.com", "", true, false);
        check_same("https://example.com", "user@example.com", true, false);
        check_same("https://exa mple.com", "exa mple.com", true, false);
        check_same(
            "https://example.com https://evil.org",
            "example.com",
            true,
            false,
        );
        check_same("https://[::1", "[::1]", true, false);
        check_same("https://[]", "[]", true, false);
        check_same("https://[::1]x", "[::1]", true, false);
        check_same("https://::1", "::1", true, false);
        check_same("https://[example.com]", "[example.com]", true, false);
        check_same("https://ex\u{e4}mple.com", "ex\u{e4}mple.com", true, false);
    }

    #[test]
    fn same_origin_takes_origin_part_of_referer() {
        check_same("https://example.com/", "example.com", true, true);
        check_same("https://example.com/a/b?c=d#e", "example.com", true, true);
        check_same("https://example.com?x", "example.com", true, true);
        check_same("https://example.com#x", "example.com", true, true);
        check_same(
            "https://example.com:8443/login",
            "example.com:8443",
            true,
            true,
        );
        check_same(
            "https://evil.org/https://example.com",
            "example.com",
            true,
            false,
        );
        check_same(
            "https://evil.org/?https://example.com",
            "example.com",
            true,
            false,
        );
    }

    #[test]
    fn check_table() {
        let host: Option<&[u8]> = Some(b"example.com");
        let same: Option<&[u8]> = Some(b"https://example.com");
        let other: Option<&[u8]> = Some(b"https://evil.org");
        let null: Option<&[u8]> = Some(b"null");
        let referer_same: Option<&[u8]> = Some(b"https://example.com/form");
        let referer_other: Option<&[u8]> = Some(b"https://evil.org/page");
        let check_request = |method, origin, referer, host, csrf_header, expected: bool| {
            let got = check(method, origin, referer, host, true, csrf_header);
            assert_eq!(
                got, expected,
                "{method} {origin:?} {referer:?} {host:?} {csrf_header}"
            );
        };
        // Safe methods always pass.
        check_request("GET", other, referer_other, host, false, true);
        check_request("HEAD", None, None, None, false, true);
        check_request("OPTIONS", other, None, host, false, true);
        check_request("TRACE", other, None, host, false, false);
        // The CSRF header alone suffices.
        check_request("POST", other, referer_other, host, true, true);
        check_request("POST", None, None, None, true, true);
        // Origin decides when present, even against a same-origin Referer.
        check_request("POST", same, None, host, false, true);
        check_request("POST", other, None, host, false, false);
        check_request("POST", other, referer_same, host, false, false);
        check_request("POST", null, referer_same, host, false, false);
        check_request("DELETE", same, referer_other, host, false, true);
        // Referer only when Origin is absent.
        check_request("POST", None, referer_same, host, false, true);
        check_request("POST", None, referer_other, host, false, false);
        // Nothing to go on, or no Host to compare with.
        check_request("POST", None, None, host, false, false);
        check_request("POST", same, None, None, false, false);
        check_request("post", same, None, host, false, true);
        check_request("get", None, None, host, false, false);
        // The scheme must match the connection.
        assert!(!check("POST", same, None, host, false, false));
    }
}
