//! The client's address and scheme behind trusted proxies: `X-Forwarded-For`, walked from the right (nginx's `real_ip_recursive on`, Gunicorn's `--forwarded-allow-ips`), and `X-Forwarded-Proto`.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::RequestHead;

/// Proxies whose `X-Forwarded-For` is believed: addresses and networks. Empty: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses one entry: an address (`10.0.0.7`, `::1`), a network (`10.0.0.0/8`), or `*` for
    /// every address (for a server only its proxies can reach).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.trim();
            if entry == "*" {
                nets.push("0.0.0.0/0".parse().expect("a network"));
                nets.push("::/0".parse().expect("a network"));
            } else if let Ok(net) = entry.parse::<IpNet>() {
                nets.push(canonical_net(net.trunc()));
            } else if let Some(ip) = parse_ip(entry) {
                nets.push(IpNet::from(ip));
            } else {
                return Err(format!(
                    "{entry:?}: not an IP address, a network (10.0.0.0/8) or *"
                ));
            }
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address, and whether it used TLS, for a request from `peer`: `peer`
    /// itself and no, unless `peer` is a trusted proxy (IPv4-mapped addresses as IPv4). From a
    /// trusted proxy, `client` and `https` below say.
    pub fn forwarded(&self, peer: IpAddr, head: &RequestHead) -> (IpAddr, bool) {
        let peer = peer.to_canonical();
        if self.is_empty() || !self.trusts(peer) {
            return (peer, false);
        }
        (self.walk(peer, head), forwarded_https(head))
    }

    /// Whether the client reached the proxy over TLS: from a trusted proxy, an
    /// `X-Forwarded-Proto` whose first element is `https` (the scheme the client used, as the
    /// first proxy wrote it). Any other peer's header counts for nothing.
    pub fn https(&self, peer: IpAddr, head: &RequestHead) -> bool {
        self.forwarded(peer, head).1
    }

    /// The client's address for a request from `peer`: `peer` itself unless it is a trusted
    /// proxy; then the `X-Forwarded-For` entries are read from the right (each proxy appends
    /// the address it got the request from), and the first one that is not a trusted proxy is
    /// the client. Every `X-Forwarded-For` field counts, in order, as one list (RFC 9110 §5.3).
    /// An entry that is not an address ends the walk at the last trusted one, so a client
    /// cannot hide behind garbage: at worst the answer is a proxy's own address.
    pub fn client(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        self.forwarded(peer, head).0
    }

    /// `client`'s walk, from a trusted `peer`.
    fn walk(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        let fields: smallvec::SmallVec<[&[u8]; 2]> = head
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|(_, value)| value)
            .collect();
        let mut client = peer;
        for value in fields.iter().rev() {
            for entry in value.rsplit(|&b| b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_entry(entry) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// `X-Forwarded-Proto`'s first element is `https`.
fn forwarded_https(head: &RequestHead) -> bool {
    head.header("x-forwarded-proto")
        .and_then(|value| value.split(|&b| b == b',').next())
        .is_some_and(|scheme| scheme.trim_ascii().eq_ignore_ascii_case(b"https"))
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, or either with a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`), as proxies write them; IPv4-mapped IPv6 as IPv4.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    parse_ip(text).or_else(|| Some(text.parse::<SocketAddr>().ok()?.ip().to_canonical()))
}

/// An address, bracketed or not (no port); IPv4-mapped IPv6 as IPv4.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    Some(bare.parse::<IpAddr>().ok()?.to_canonical())
}

/// A network within `::ffff:0:0/96` (IPv4-mapped) as the IPv4 network it covers: peers and
/// entries are compared as IPv4 (found in review: `::ffff:10.0.0.0/104` loaded and matched
/// nothing).
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("0..=32"),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HeadLimits, parse_head};

    fn head(fields: &str) -> RequestHead {
        let raw = format!("GET / HTTP/1.1\r\nHost: t\r\n{fields}\r\n");
        let mut buf = bytes::BytesMut::from(raw.as_bytes());
        let limits = HeadLimits {
            head_bytes_max: 16 * 1024,
            header_count_max: 100,
            uri_bytes_max: 8 * 1024,
        };
        parse_head(&mut buf, &limits).unwrap().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        TrustedProxies::parse(&entries).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let proxies = trusted(&["10.0.0.0/8", "192.0.2.7"]);
        let from_proxy = ip("10.1.2.3");
        for (fields, want) in [
            // No header, or nothing in it: the proxy itself.
            ("", "10.1.2.3"),
            ("X-Forwarded-For: \r\n", "10.1.2.3"),
            ("X-Forwarded-For: 203.0.113.9\r\n", "203.0.113.9"),
            // The client can write anything left of what the proxies appended.
            ("X-Forwarded-For: 1.1.1.1, 203.0.113.9\r\n", "203.0.113.9"),
            // Trusted hops are skipped, untrusted ones end the walk.
            (
                "X-Forwarded-For: 203.0.113.9, 192.0.2.7, 10.9.9.9\r\n",
                "203.0.113.9",
            ),
            // Every field counts, in order, as one list.
            (
                "X-Forwarded-For: 203.0.113.9\r\nx-forwarded-for: 10.0.0.1\r\n",
                "203.0.113.9",
            ),
            // Every hop trusted: the leftmost.
            ("X-Forwarded-For: 10.0.0.5, 10.0.0.6\r\n", "10.0.0.5"),
            // Garbage ends the walk at the last trusted address.
            ("X-Forwarded-For: 203.0.113.9, unknown\r\n", "10.1.2.3"),
            (
                "X-Forwarded-For: 203.0.113.9, garbage, 10.0.0.6\r\n",
                "10.0.0.6",
            ),
            // Empty elements are no entries (RFC 9110 §5.6.1); ports and brackets are dropped.
            ("X-Forwarded-For: 203.0.113.9,,\r\n", "203.0.113.9"),
            ("X-Forwarded-For: 203.0.113.9:4711\r\n", "203.0.113.9"),
            ("X-Forwarded-For: [2001:db8::1]:443\r\n", "2001:db8::1"),
            ("X-Forwarded-For: [2001:db8::1]\r\n", "2001:db8::1"),
            ("X-Forwarded-For: 2001:db8::1\r\n", "2001:db8::1"),
            // IPv4-mapped IPv6 is IPv4.
            ("X-Forwarded-For: ::ffff:203.0.113.9\r\n", "203.0.113.9"),
            ("X-Forwarded-For: ::ffff:10.0.0.1, 10.0.0.2\r\n", "10.0.0.1"),
        ] {
            assert_eq!(
                proxies.client(from_proxy, &head(fields)),
                ip(want),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn a_trusted_proxy_says_whether_the_client_used_https() {
        let proxies = trusted(&["10.0.0.0/8"]);
        for (fields, want) in [
            ("", false),
            ("X-Forwarded-Proto: https\r\n", true),
            ("X-Forwarded-Proto: HTTPS\r\n", true),
            ("X-Forwarded-Proto: http\r\n", false),
            ("X-Forwarded-Proto: https, http\r\n", true),
            ("X-Forwarded-Proto: http, https\r\n", false),
            ("X-Forwarded-Proto: httpsx\r\n", false),
        ] {
            assert_eq!(
                proxies.https(ip("10.0.0.1"), &head(fields)),
                want,
                "{fields:?}"
            );
        }
        let fields = head("X-Forwarded-Proto: https\r\n");
        assert!(
            !proxies.https(ip("192.0.2.1"), &fields),
            "an untrusted peer"
        );
        assert!(
            !TrustedProxies::default().https(ip("10.0.0.1"), &fields),
            "nobody trusted"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let fields = "X-Forwarded-For: 203.0.113.9\r\n";
        assert_eq!(
            proxies.client(ip("192.0.2.1"), &head(fields)),
            ip("192.0.2.1")
        );
        // Nobody trusted: the peer, IPv4-mapped or not.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("::ffff:10.0.0.1"), &head(fields)),
            ip("10.0.0.1")
        );
        // A mapped peer is trusted as its IPv4 address.
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &head(fields)),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn entries_parse_as_addresses_networks_or_everything() {
        let all = trusted(&["*"]);
        assert!(all.trusts(ip("203.0.113.9")) && all.trusts(ip("2001:db8::1")));
        let some = trusted(&[" 10.1.2.3/8 ", "::1", "::ffff:192.0.2.1", "[2001:db8::7]"]);
        assert!(
            some.trusts(ip("10.200.0.1")),
            "a network, its host bits dropped"
        );
        assert!(some.trusts(ip("::1")) && !some.trusts(ip("::2")));
        assert!(some.trusts(ip("192.0.2.1")), "a mapped entry is IPv4");
        assert!(some.trusts(ip("2001:db8::7")), "brackets");
        let mapped = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.trusts(ip("10.1.2.3")) && !mapped.trusts(ip("11.0.0.1")));
        assert_eq!(mapped, trusted(&["10.0.0.0/8"]), "a mapped network is IPv4");
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0.1:80", "**"] {
            let error = TrustedProxies::parse(&[bad.to_string()]).unwrap_err();
            assert!(error.contains("not an IP address"), "{bad:?}: {error}");
        }
    }
}
