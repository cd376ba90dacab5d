//! Parses and resolves the `http://host:port/path` target; knows nothing of flags or sockets beyond resolving.

use std::net::{SocketAddr, ToSocketAddrs};

/// Where requests go: the address to connect to and what to put in the request line and `Host`.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub url: String,
    /// `host[:port]` exactly as the URL gave it, for the `Host` header (RFC 9112 §3.2).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

/// Splits an `http://` URL. Only plain HTTP/1.1 is spoken, so `https://` is refused here.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "invalid URL {url:?}: scheme {scheme:?} is not supported, only http"
            ));
        }
        None => {
            return Err(format!(
                "invalid URL {url:?}: expected http://host[:port]/path"
            ));
        }
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = path.split('#').next().unwrap_or("/").to_string();
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("invalid URL {url:?}: bad host {authority:?}"));
    }
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("invalid URL {url:?}: bad port"))?;
    if host.is_empty() {
        return Err(format!("invalid URL {url:?}: empty host"));
    }
    Ok(Target {
        url: url.to_string(),
        authority: authority.to_string(),
        host,
        port,
        path,
    })
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), 80)),
    }
}

impl Target {
    /// First address the host resolves to.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("cannot resolve {}: no address", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Option<(&str, u16, &str)>) {
        let got = parse_url(url).ok().map(|t| (t.host, t.port, t.path));
        let expected = expected.map(|(h, p, path)| (h.to_string(), p, path.to_string()));
        assert_eq!(got, expected, "{url}");
    }

    #[test]
    fn urls() {
        check(
            "http://127.0.0.1:8080/plaintext",
            Some(("127.0.0.1", 8080, "/plaintext")),
        );
        check("http://localhost", Some(("localhost", 80, "/")));
        check("http://h:1?x=1", Some(("h", 1, "/?x=1")));
        check("http://h:1/a?b#frag", Some(("h", 1, "/a?b")));
        check("http://[::1]:9/x", Some(("::1", 9, "/x")));
        check("https://h/", None);
        check("h:80/", None);
        check("http://:80/", None);
        check("http://h:99999/", None);
        check("http://h:x/", None);
        check("http:///x", None);
        check("http://u@h/", None);
    }
}
