//! Pre-encodes HTTP/1.1 requests once, so the hot loop only copies bytes; never touches sockets.

use crate::limits;

/// What one kind of request looks like, before encoding.
#[derive(Clone, Debug, Default)]
pub struct RequestSpec {
    pub name: String,
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A request encoded once: everything before the (optional, per-connection) `Cookie` header, and
/// everything after it.
#[derive(Clone, Debug)]
pub struct Template {
    pub name: String,
    /// Responses to HEAD carry no body whatever their headers say (RFC 9112 §6.3).
    pub is_head: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): a request lost to a close without notice
    /// may be sent again automatically; a POST or PATCH may not (RFC 9112 §9.3.1).
    pub idempotent: bool,
    prefix: Vec<u8>,
    /// A `Cookie` given with `-H` or in the scenario: the connection's own cookies join it in
    /// one header (RFC 6265 §5.4: never two).
    cookie: Vec<u8>,
    suffix: Vec<u8>,
}

impl Template {
    pub fn new(spec: &RequestSpec, authority: &str) -> Result<Template, String> {
        check_token(&spec.method).map_err(|e| format!("method {:?}: {e}", spec.method))?;
        if !spec.path.starts_with('/') || spec.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "path {:?} must start with / and hold no spaces or controls",
                spec.path
            ));
        }
        if spec.body.len() > limits::REQUEST_BODY_BYTES_MAX {
            return Err(format!(
                "body of {} bytes is over {} bytes",
                spec.body.len(),
                limits::REQUEST_BODY_BYTES_MAX
            ));
        }
        let mut prefix = format!("{} {} HTTP/1.1\r\n", spec.method, spec.path).into_bytes();
        let mut cookie = Vec::new();
        let has = |name: &str| {
            spec.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            prefix.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
        }
        for (name, value) in &spec.headers {
            check_token(name).map_err(|e| format!("header name {name:?}: {e}"))?;
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!("header {name:?}: value holds CR, LF or NUL"));
            }
            // We frame the body ourselves; a user's framing header would contradict ours (it
            // was dropped without a word: found in review).
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                return Err(format!(
                    "header {name:?}: percore-load frames the body itself (--body, body_file)"
                ));
            }
            if name.eq_ignore_ascii_case("cookie") {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(value.as_bytes());
                continue;
            }
            prefix.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        let mut suffix = Vec::new();
        let method_has_body = matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH");
        if !spec.body.is_empty() || method_has_body {
            suffix.extend_from_slice(format!("Content-Length: {}\r\n", spec.body.len()).as_bytes());
        }
        suffix.extend_from_slice(b"\r\n");
        suffix.extend_from_slice(&spec.body);
        Ok(Template {
            name: spec.name.clone(),
            is_head: spec.method == "HEAD",
            idempotent: matches!(
                spec.method.as_str(),
                "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
            ),
            prefix,
            cookie,
            suffix,
        })
    }

    /// Bytes of the request without the connection's cookies.
    pub fn bytes(&self) -> usize {
        self.prefix.len() + self.cookie.len() + self.suffix.len()
    }

    /// Appends the request to `out`, with one `Cookie` header holding the template's own
    /// cookie and `cookie` (the connection's), when either is not empty.
    #[inline]
    pub fn encode(&self, cookie: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        if !cookie.is_empty() || !self.cookie.is_empty() {
            out.extend_from_slice(b"Cookie: ");
            out.extend_from_slice(&self.cookie);
            if !cookie.is_empty() && !self.cookie.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(cookie);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.suffix);
    }
}

/// RFC 9110 §5.6.2 token.
fn check_token(s: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if s.is_empty() || !s.bytes().all(ok) {
        Err("not an HTTP token".into())
    } else {
        Ok(())
    }
}

/// Parses `Name: value` as given to `-H`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not `Name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> RequestSpec {
        RequestSpec {
            name: "t".into(),
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn check(s: RequestSpec, cookie: &str, expected: Result<&str, ()>) {
        let got = Template::new(&s, "h:1").map(|t| {
            let mut out = Vec::new();
            t.encode(cookie.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        });
        match expected {
            Ok(e) => assert_eq!(got.as_deref(), Ok(e)),
            Err(()) => assert!(got.is_err(), "{got:?}"),
        }
    }

    #[test]
    fn encodes() {
        check(
            spec("GET", "/p", &[], ""),
            "",
            Ok("GET /p HTTP/1.1\r\nHost: h:1\r\n\r\n"),
        );
        check(
            spec("GET", "/p", &[], ""),
            "a=b",
            Ok("GET /p HTTP/1.1\r\nHost: h:1\r\nCookie: a=b\r\n\r\n"),
        );
        check(
            spec("POST", "/e", &[("X-A", "1")], "hi"),
            "",
            Ok("POST /e HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"),
        );
        check(
            spec("POST", "/e", &[("Content-Length", "9")], "hi"),
            "",
            Err(()),
        );
        check(
            spec("POST", "/e", &[("transfer-encoding", "chunked")], "hi"),
            "",
            Err(()),
        );
        check(
            spec("GET", "/", &[("Cookie", "u=1")], ""),
            "a=b",
            Ok("GET / HTTP/1.1\r\nHost: h:1\r\nCookie: u=1; a=b\r\n\r\n"),
        );
        check(
            spec("GET", "/", &[("Cookie", "u=1")], ""),
            "",
            Ok("GET / HTTP/1.1\r\nHost: h:1\r\nCookie: u=1\r\n\r\n"),
        );
        check(
            spec("POST", "/e", &[], ""),
            "",
            Ok("POST /e HTTP/1.1\r\nHost: h:1\r\nContent-Length: 0\r\n\r\n"),
        );
        check(
            spec("GET", "/", &[("Host", "x")], ""),
            "",
            Ok("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        check(spec("G T", "/", &[], ""), "", Err(()));
        check(spec("GET", "p", &[], ""), "", Err(()));
        check(spec("GET", "/a b", &[], ""), "", Err(()));
        check(spec("GET", "/", &[("X", "a\r\nb")], ""), "", Err(()));
        check(spec("GET", "/", &[("X Y", "a")], ""), "", Err(()));
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header("A: b c"), Ok(("A".into(), "b c".into())));
        assert!(parse_header("nocolon").is_err());
    }
}
