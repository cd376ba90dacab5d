//! Security on top of the session store: who the client is (login sessions, Basic, Bearer tokens) and what it may do (`[[access]]` rules, CSRF). The pure pieces (users, passwords, credentials, rules, counters) do no IO; `service`, `middleware` and `routes` wire them into a shard.

pub mod access;
pub mod cli;
pub mod credentials;
pub mod csrf;
pub mod limiter;
pub mod middleware;
pub mod password;
pub mod routes;
pub mod service;
pub mod users;

/// Whatever a client sends, the parsers answer and never panic.
#[cfg(test)]
mod client_input {
    use proptest::prelude::*;

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "(Basic|Bearer|basic|BEARER) [A-Za-z0-9+/=:._~-]{0,80}".prop_map(String::into_bytes),
            "[a-z]{1,6}://[a-z0-9.:\\[\\]@-]{0,40}(/[a-z]{0,8})?".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn authorization_headers(value in header_bytes()) {
            let _ = super::credentials::from_authorization(&value);
        }

        #[test]
        fn login_bodies(body in proptest::collection::vec(any::<u8>(), 0..400), json in any::<bool>()) {
            let content_type: &[u8] = if json { b"application/json" } else { b"application/x-www-form-urlencoded" };
            let _ = super::credentials::parse_login(Some(content_type), &body);
            let _ = super::credentials::parse_login(None, &body);
        }

        #[test]
        fn origins_and_hosts(origin in header_bytes(), host in header_bytes(), tls in any::<bool>()) {
            let _ = super::csrf::same_origin(&origin, &host, tls);
            let _ = super::csrf::check("POST", Some(&origin), Some(&host), Some(&host), tls, false);
        }

        #[test]
        fn access_decisions(path in "(/[a-zA-Z0-9%.]{0,6}){0,6}/?", method in "[A-Za-z]{0,8}") {
            let rules = vec![super::access::AccessRule {
                prefix: "/a".into(),
                methods: vec!["POST".into()],
                allow: vec!["admin".into()],
            }];
            let rules = super::access::AccessRules::new(rules, super::access::Allow::Public).unwrap();
            let roles = vec!["admin".to_string()];
            let _ = rules.decide(&method, &path, Some(("u", &roles)));
            let _ = rules.decide(&method, &path, None);
        }
    }
}
