//! Authorization rules: which identities may use which path prefixes and methods; pure: no IO,
//! never authenticates (the caller passes the identity it already established).

use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::users::check_role;

/// Most access rules one config may hold.
pub const ACCESS_RULES_MAX: usize = 10_000;

const PUBLIC: &str = "public";
const AUTHENTICATED: &str = "authenticated";
const ROLE_PREFIX: &str = "role:";

/// One `[[access]]` rule as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub prefix: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub allow: Vec<String>,
}

/// Who a rule lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Public,
    Authenticated,
    /// Any identity holding at least one of these roles.
    Roles(Vec<String>),
}

/// The outcome for one request: proceed, 401, or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Unauthenticated,
    Forbidden,
}

/// Parses a rule's `allow` words: "public" or "authenticated" alone, or role names.
pub fn parse_allow(words: &[String]) -> Result<Allow, String> {
    let Some(first) = words.first() else {
        return Err("allow list is empty".to_string());
    };
    if let Some(word) = words.iter().find(|w| is_keyword(w)) {
        if words.len() > 1 {
            return Err(format!("{word:?} must stand alone in an allow list"));
        }
        return Ok(keyword_allow(first));
    }
    words.iter().try_for_each(|role| check_role(role))?;
    Ok(Allow::Roles(words.to_vec()))
}

/// Parses the default for unmatched paths: "public", "authenticated" or "role:a,b".
pub fn parse_default(text: &str) -> Result<Allow, String> {
    if is_keyword(text) {
        return Ok(keyword_allow(text));
    }
    let Some(list) = text.strip_prefix(ROLE_PREFIX) else {
        return Err(
            "default access must be \"public\", \"authenticated\" or \"role:NAME[,NAME...]\""
                .to_string(),
        );
    };
    let roles: Vec<String> = list.split(',').map(str::to_string).collect();
    for role in &roles {
        check_role(role)?;
        if is_keyword(role) {
            return Err(format!("{role:?} is not a role name"));
        }
    }
    Ok(Allow::Roles(roles))
}

fn is_keyword(word: &str) -> bool {
    word == PUBLIC || word == AUTHENTICATED
}

fn keyword_allow(word: &str) -> Allow {
    if word == PUBLIC {
        Allow::Public
    } else {
        Allow::Authenticated
    }
}

/// The rules for one canonical prefix.
#[derive(Debug, Default)]
struct Group {
    /// (uppercase method, allow, 1-based rule number); a handful per prefix at most.
    by_method: Vec<(String, Allow, usize)>,
    /// The rule with no `methods`, if any: (allow, rule number).
    any_method: Option<(Allow, usize)>,
}

impl Group {
    /// A rule listing `method` beats one listing GET (for HEAD), which beats a methodless rule.
    fn allow_for(&self, method: &str) -> Option<&Allow> {
        self.listed(method)
            .or_else(|| {
                method
                    .eq_ignore_ascii_case("HEAD")
                    .then(|| self.listed("GET"))
                    .flatten()
            })
            .or(self.any_method.as_ref().map(|(allow, _)| allow))
    }

    fn listed(&self, method: &str) -> Option<&Allow> {
        self.by_method
            .iter()
            .find(|(listed, _, _)| listed.eq_ignore_ascii_case(method))
            .map(|(_, allow, _)| allow)
    }
}

/// Validated rules, grouped by canonical prefix (trailing '/' removed, except for "/").
///
/// Lookup cost: one hash lookup per '/' in the request path within the longest prefix's length
/// (longest candidate first) plus a scan of that prefix's few method entries; independent of
/// the number of rules, and linear in the path.
#[derive(Debug)]
pub struct AccessRules {
    groups: FxHashMap<String, Group>,
    /// Bytes of the longest canonical prefix: a longer candidate matches no rule, and hashing
    /// each cut of a long path (`/a/a/a/...`, 8 KiB) cost 1.1 ms a request, 18 times an
    /// ordinary one, before routing (found in review).
    longest: usize,
    default: Allow,
}

impl AccessRules {
    /// Validates `rules`: prefixes start with '/' and name a path; methods are HTTP tokens
    /// (stored uppercase); allow words parse; no two rules for the same prefix cover the same
    /// method (or both cover all methods); at most [`ACCESS_RULES_MAX`] rules.
    /// No rules and a public default: every request is allowed without looking.
    pub fn is_open(&self) -> bool {
        self.groups.is_empty() && self.default == Allow::Public
    }

    pub fn new(rules: Vec<AccessRule>, default: Allow) -> Result<AccessRules, String> {
        if rules.len() > ACCESS_RULES_MAX {
            return Err(format!(
                "{} rules; at most {ACCESS_RULES_MAX} allowed",
                rules.len()
            ));
        }
        let mut groups: FxHashMap<String, Group> = FxHashMap::default();
        for (index, rule) in rules.iter().enumerate() {
            let number = index + 1;
            add_rule(&mut groups, rule, number)
                .map_err(|e| format!("rule {number} (prefix {:?}): {e}", rule.prefix))?;
        }
        let longest = groups.keys().map(String::len).max().unwrap_or(0);
        Ok(AccessRules {
            groups,
            longest,
            default,
        })
    }

    /// Decides whether `identity` (name, roles) may use `method` on `path`. `path` must be the
    /// same normalized path (no query) the router matches on; prefixes compare byte-exactly.
    /// Methods compare ASCII-case-insensitively.
    pub fn decide(
        &self,
        method: &str,
        path: &str,
        identity: Option<(&str, &[String])>,
    ) -> Decision {
        let allow = self.lookup(method, path).unwrap_or(&self.default);
        evaluate(allow, identity)
    }

    fn lookup(&self, method: &str, path: &str) -> Option<&Allow> {
        candidates(path)
            .filter(|prefix| prefix.len() <= self.longest)
            .filter_map(|prefix| self.groups.get(prefix))
            .find_map(|group| group.allow_for(method))
    }
}

/// Canonical prefixes that match `path`, longest first: the path itself, the path cut before
/// each later '/' or encoded slash (`%2F`), then "/". A canonical prefix `c` matches when
/// `path == c` or `path` goes on from `c` with a slash, plain or encoded: a `/kv/{key}` path
/// writes a key's '/' as `%2F`, so without the second a rule on `/kv/users` covered the key
/// `users` alone, and no rule could cover the keys `users/...` (found in review: they were
/// written anonymously past it).
fn candidates(path: &str) -> impl Iterator<Item = &str> {
    let bytes = path.as_bytes();
    let cuts = (1..bytes.len())
        .rev()
        .filter(move |&i| bytes[i] == b'/' || is_encoded_slash(&bytes[i..]))
        .map(move |i| &path[..i]);
    std::iter::once(path)
        .chain(cuts)
        .chain(std::iter::once("/"))
}

fn is_encoded_slash(rest: &[u8]) -> bool {
    matches!(rest, [b'%', b'2', b'F' | b'f', ..])
}

fn evaluate(allow: &Allow, identity: Option<(&str, &[String])>) -> Decision {
    match (allow, identity) {
        (Allow::Public, _) => Decision::Allow,
        (_, None) => Decision::Unauthenticated,
        (Allow::Authenticated, Some(_)) => Decision::Allow,
        (Allow::Roles(required), Some((_, held))) => {
            if held.iter().any(|role| required.contains(role)) {
                Decision::Allow
            } else {
                Decision::Forbidden
            }
        }
    }
}

fn add_rule(
    groups: &mut FxHashMap<String, Group>,
    rule: &AccessRule,
    number: usize,
) -> Result<(), String> {
    let canonical = canonical_prefix(&rule.prefix)?;
    let methods = normalize_methods(&rule.methods)?;
    let allow = parse_allow(&rule.allow)?;
    let group = groups.entry(canonical).or_default();
    if methods.is_empty() {
        if let Some((_, first)) = &group.any_method {
            return Err(format!("duplicates rule {first} (same prefix, no methods)"));
        }
        group.any_method = Some((allow, number));
        return Ok(());
    }
    for method in methods {
        if let Some((_, _, first)) = group.by_method.iter().find(|(m, _, _)| *m == method) {
            return Err(format!(
                "method {method} for this prefix is already set by rule {first}"
            ));
        }
        group.by_method.push((method, allow.clone(), number));
    }
    Ok(())
}

/// Checks `prefix` and drops one trailing '/' or `%2F` ("/api/" and "/api" match the same
/// paths, as do "/kv/users%2F" and "/kv/users").
fn canonical_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err("prefix must start with '/'".to_string());
    }
    if prefix.contains("//") {
        return Err("prefix has an empty segment ('//')".to_string());
    }
    let is_bad = |c: char| c == '?' || c == '#' || c.is_whitespace() || c.is_control();
    if prefix.chars().any(is_bad) {
        return Err("prefix contains '?', '#', whitespace or a control character".to_string());
    }
    // Paths compare byte-exactly, and `/kv/{key}` paths must write escapes in uppercase: a
    // rule with `%2f` loaded and matched nothing (found in review).
    let lowercase_escape = prefix.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && w[1..].iter().all(u8::is_ascii_hexdigit)
            && w[1..].iter().any(u8::is_ascii_lowercase)
    });
    if lowercase_escape {
        return Err("prefix has a lowercase percent-escape; write it in uppercase hex (%2F), as paths are (RFC 3986 §6.2.2.1)".to_string());
    }
    check_key_spelling(prefix)?;
    let encoded_slash =
        prefix.len() > 4 && is_encoded_slash(&prefix.as_bytes()[prefix.len() - 3..]);
    let canonical = match prefix.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ if encoded_slash => &prefix[..prefix.len() - 3],
        _ => prefix,
    };
    Ok(canonical.to_string())
}

/// The transactions endpoint, `POST /kv/tx`, is also the path of the key `tx` (`GET /kv/tx`),
/// and a rule's prefix covers the keys `tx/...` too (`/kv/tx%2F...`).
const TX_PATH: &str = "/kv/tx";

/// What loads but may not mean what it says: a rule for the transactions endpoint that is not
/// for POST alone also decides who reads and writes the keys `tx` and `tx/...` (found in
/// review: `/kv/tx` for any authenticated user, meant for transactions, let them read
/// `/kv/tx%2Fpayroll` past an admin-only `/kv`).
pub fn warnings(rules: &[AccessRule]) -> Vec<String> {
    rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| {
            let prefix = canonical_prefix(&rule.prefix).unwrap_or_default();
            prefix == TX_PATH
                && !(rule.methods.len() == 1 && rule.methods[0].eq_ignore_ascii_case("POST"))
        })
        .map(|(index, rule)| {
            format!(
                "rule {} (prefix {:?}) also covers the keys \"tx\" and \"tx/...\" (GET /kv/tx \
                 reads the key \"tx\"); give it methods = [\"POST\"] to cover transactions alone",
                index + 1,
                rule.prefix
            )
        })
        .collect()
}

/// Paths whose rest is a key in its one spelling (`segment::decode`): the /kv routes' keys.
/// A rule spelling a key another way (`/kv/café`, `/kv/%61dmin`, `/kv/a/b`) loaded and
/// matched no request, so the keys it meant stayed open (found in review).
const KEY_PATHS: [&str; 1] = ["/kv/"];

/// Refuses a prefix under a `KEY_PATHS` path whose key part is not in the one spelling a path
/// can have, naming that spelling.
fn check_key_spelling(prefix: &str) -> Result<(), String> {
    let Some((base, key)) = KEY_PATHS
        .iter()
        .find_map(|base| Some((*base, prefix.strip_prefix(base)?)))
    else {
        return Ok(());
    };
    // The key part as a rule may write it: its '/' as `%2F`, and a trailing one (dropped
    // later) allowed.
    let key = key
        .strip_suffix('/')
        .or_else(|| key.strip_suffix("%2F"))
        .unwrap_or(key);
    let canonical = crate::http::segment::canonical(key);
    if canonical != key {
        return Err(format!(
            "a key has one spelling in a path: write {base}{canonical} (a '/' in a key as \
             %2F, bytes a path segment cannot hold as %XX in uppercase, no other escapes)"
        ));
    }
    crate::http::segment::decode(key)
        .map(|_| ())
        .map_err(str::to_string)
}

/// Uppercases each method; each must be an HTTP token (RFC 9110 §5.6.2) listed once.
fn normalize_methods(methods: &[String]) -> Result<Vec<String>, String> {
    let mut normalized: Vec<String> = Vec::with_capacity(methods.len());
    for method in methods {
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(format!("method {method:?} is not an HTTP token"));
        }
        let upper = method.to_ascii_uppercase();
        if normalized.contains(&upper) {
            return Err(format!("method {upper} listed twice"));
        }
        normalized.push(upper);
    }
    Ok(normalized)
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    fn rule(prefix: &str, methods: &[&str], allow: &[&str]) -> AccessRule {
        AccessRule {
            prefix: prefix.to_string(),
            methods: words(methods),
            allow: words(allow),
        }
    }

    fn roles(list: &[&str]) -> Allow {
        Allow::Roles(words(list))
    }

    #[test]
    fn parse_allow_table() {
        let check = |list: &[&str], expected: Result<Allow, &str>| {
            let got = parse_allow(&words(list));
            match (&got, &expected) {
                (Err(err), Err(part)) => assert!(err.contains(part), "{list:?}: {err}"),
                _ => assert_eq!(got, expected.map_err(str::to_string), "{list:?}"),
            }
        };
        check(&["public"], Ok(Allow::Public));
        check(&["authenticated"], Ok(Allow::Authenticated));
        check(&["admin"], Ok(roles(&["admin"])));
        check(&["admin", "staff"], Ok(roles(&["admin", "staff"])));
        check(&["Public"], Ok(roles(&["Public"])));
        check(&[], Err("allow list is empty"));
        check(&["public", "admin"], Err("\"public\" must stand alone"));
        check(
            &["admin", "authenticated"],
            Err("\"authenticated\" must stand alone"),
        );
        check(&["public", "authenticated"], Err("must stand alone"));
        check(&["public", "public"], Err("must stand alone"));
        check(&["ad min"], Err("whitespace"));
        check(&["a,b"], Err("','"));
        check(&[""], Err("role name is empty"));
    }

    #[test]
    fn parse_default_table() {
        let check = |text: &str, expected: Result<Allow, &str>| {
            let got = parse_default(text);
            match (&got, &expected) {
                (Err(err), Err(part)) => {
                    assert!(err.contains(part), "{text:?}: {err}");
                    assert!(!err.contains('\n'));
                }
                _ => assert_eq!(got, expected.map_err(str::to_string), "{text:?}"),
            }
        };
        check("public", Ok(Allow::Public));
        check("authenticated", Ok(Allow::Authenticated));
        check("role:admin", Ok(roles(&["admin"])));
        check("role:a,b", Ok(roles(&["a", "b"])));
        check("role:", Err("role name is empty"));
        check("role:a,", Err("role name is empty"));
        check("role:a, b", Err("whitespace"));
        check("role:public", Err("\"public\" is not a role name"));
        check("Public", Err("must be \"public\""));
        check("admin", Err("must be \"public\""));
        check("roles:a", Err("must be \"public\""));
        check("", Err("must be \"public\""));
        check(" public", Err("must be \"public\""));
    }

    fn check_new(rules: Vec<AccessRule>, expected_err: Option<&str>) {
        let got = AccessRules::new(rules, Allow::Public);
        match (got, expected_err) {
            (Ok(_), None) => {}
            (Err(err), Some(part)) => {
                assert!(err.contains(part), "got: {err}\nwant: {part}");
                assert!(!err.contains('\n'));
            }
            (got, want) => panic!("got: {got:?}\nwant error: {want:?}"),
        }
    }

    #[test]
    fn new_table() {
        check_new(vec![], None);
        check_new(vec![rule("/", &[], &["public"])], None);
        check_new(vec![rule("/admin", &["get", "Post"], &["admin"])], None);
        check_new(vec![rule("/kv/users%2Fprivate", &[], &["admin"])], None);
        check_new(
            vec![rule("/kv/users%2fprivate", &[], &["admin"])],
            Some("lowercase percent-escape"),
        );
        check_new(vec![rule("/kv/caf%C3%A9", &[], &["admin"])], None);
        check_new(
            vec![rule("/kv/caf%c3%a9", &[], &["admin"])],
            Some("uppercase hex"),
        );
        // A /kv key in any spelling but its one path: refused, naming that spelling.
        for (prefix, spelling) in [
            ("/kv/café", "/kv/caf%C3%A9"),
            ("/kv/a[1]", "/kv/a%5B1%5D"),
            ("/kv/%61dmin", "/kv/admin"),
            ("/kv/a/b", "/kv/a%2Fb"),
            ("/kv/a%2Fb/c/", "/kv/a%2Fb%2Fc"),
            ("/kv/%7E", "/kv/~"),
        ] {
            check_new(
                vec![rule(prefix, &[], &["admin"])],
                Some(&format!("write {spelling} (")),
            );
        }
        check_new(vec![rule("/kv/%FF", &[], &["x"])], Some("not UTF-8"));
        for prefix in [
            "/kv/",
            "/kv/a%2Fb/",
            "/kv/a%2Fb%2F",
            "/kv/tx",
            "/kvx/café",
            "/app/a[1]",
        ] {
            check_new(vec![rule(prefix, &[], &["admin"])], None);
        }
        check_new(
            vec![
                rule("/a", &["GET"], &["x"]),
                rule("/a", &["POST"], &["y"]),
                rule("/a", &[], &["z"]),
            ],
            None,
        );
        check_new(
            vec![rule("/a", &[], &["x"]), rule("/a/b", &[], &["y"])],
            None,
        );
        check_new(
            vec![rule("/a", &["HEAD"], &["x"]), rule("/a", &["GET"], &["y"])],
            None,
        );
        check_new(vec![rule("/a", &["M-SEARCH", "X_Y"], &["x"])], None);
        check_new(
            vec![rule("admin", &[], &["x"])],
            Some("rule 1 (prefix \"admin\"): prefix must start with '/'"),
        );
        check_new(vec![rule("", &[], &["x"])], Some("must start with '/'"));
        check_new(vec![rule("/a//b", &[], &["x"])], Some("empty segment"));
        check_new(vec![rule("/a?b", &[], &["x"])], Some("'?'"));
        check_new(vec![rule("/a#b", &[], &["x"])], Some("'?', '#'"));
        check_new(vec![rule("/a b", &[], &["x"])], Some("whitespace"));
        check_new(vec![rule("/a\u{0}", &[], &["x"])], Some("control"));
        check_new(
            vec![rule("/a", &["GET POST"], &["x"])],
            Some("method \"GET POST\" is not an HTTP token"),
        );
        check_new(
            vec![rule("/a", &[""], &["x"])],
            Some("is not an HTTP token"),
        );
        check_new(
            vec![rule("/a", &["GET", "get"], &["x"])],
            Some("method GET listed twice"),
        );
        check_new(vec![rule("/a", &[], &[])], Some("allow list is empty"));
        check_new(
            vec![rule("/a", &[], &["public", "x"])],
            Some("must stand alone"),
        );
        check_new(
            vec![
                rule("/a", &[], &["x"]),
                rule("/b", &[], &["x"]),
                rule("/a", &[], &["y"]),
            ],
            Some("rule 3 (prefix \"/a\"): duplicates rule 1"),
        );
        check_new(
            vec![rule("/api", &[], &["x"]), rule("/api/", &[], &["y"])],
            Some("rule 2 (prefix \"/api/\"): duplicates rule 1"),
        );
        check_new(
            vec![
                rule("/a", &["GET", "POST"], &["x"]),
                rule("/a", &["post", "GET"], &["y"]),
            ],
            Some("rule 2 (prefix \"/a\"): method POST for this prefix is already set by rule 1"),
        );
        check_new(
            vec![
                rule("/a", &["GET", "POST"], &["x"]),
                rule("/a", &["PUT", "POST"], &["y"]),
            ],
            Some("method POST for this prefix is already set by rule 1"),
        );
    }

    #[test]
    fn new_rule_count_bound() {
        let list = |count: usize| {
            (0..count)
                .map(|i| rule(&format!("/r{i}"), &[], &["x"]))
                .collect()
        };
        check_new(list(ACCESS_RULES_MAX - 1), None);
        check_new(list(ACCESS_RULES_MAX), None);
        check_new(
            list(ACCESS_RULES_MAX + 1),
            Some("10001 rules; at most 10000 allowed"),
        );
    }

    #[test]
    fn deserializes_from_config() {
        #[derive(Deserialize)]
        struct Config {
            access: Vec<AccessRule>,
        }
        let text = "[[access]]\nprefix = \"/admin\"\nallow = [\"admin\"]\n";
        let config: Config = toml::from_str(text).expect("valid");
        assert!(config.access[0].methods.is_empty());
        let extra = format!("{text}deny = [\"x\"]\n");
        assert!(toml::from_str::<Config>(&extra).is_err());
    }

    const ADMIN: &[&str] = &["admin"];

    /// Decides with identity `None` (anonymous) or `Some(roles)`.
    fn check(
        rules: &AccessRules,
        method: &str,
        path: &str,
        who: Option<&[&str]>,
        expected: Decision,
    ) {
        let held = who.map(words);
        let identity = held.as_deref().map(|roles| ("someone", roles));
        assert_eq!(
            rules.decide(method, path, identity),
            expected,
            "{method} {path} as {who:?}"
        );
    }

    fn build(rules: Vec<AccessRule>, default: Allow) -> AccessRules {
        AccessRules::new(rules, default).expect("valid rules")
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        use Decision::Unauthenticated;
        let rules = build(vec![rule("/admin", &[], ADMIN)], Allow::Public);
        check(&rules, "GET", "/admin", None, Unauthenticated);
        check(&rules, "GET", "/admin/", None, Unauthenticated);
        check(&rules, "GET", "/admin/x", None, Unauthenticated);
        check(&rules, "GET", "/admin/x/y/", None, Unauthenticated);
        check(&rules, "GET", "/admin//x", None, Unauthenticated);
        check(&rules, "GET", "/administrator", None, Decision::Allow);
        check(&rules, "GET", "/admi", None, Decision::Allow);
        check(&rules, "GET", "/Admin", None, Decision::Allow);
        check(&rules, "GET", "/x/admin", None, Decision::Allow);
        check(&rules, "GET", "/", None, Decision::Allow);
        check(&rules, "GET", "", None, Decision::Allow);
        check(&rules, "GET", "*", None, Decision::Allow);
    }

    /// Only cuts as long as the longest rule's prefix are looked up, and a long path still
    /// meets the rule that covers it.
    #[test]
    fn a_long_path_is_judged_by_its_short_prefix() {
        let rules = build(
            vec![rule("/a", &[], ADMIN), rule("/a/b", &[], &["public"])],
            Allow::Public,
        );
        assert_eq!(rules.longest, 4);
        let long = "/a".repeat(4096);
        check(&rules, "GET", &long, None, Decision::Unauthenticated);
        let long_b = format!("/a/b{}", "/x".repeat(4096));
        check(&rules, "GET", &long_b, None, Decision::Allow);
        check(&rules, "GET", &"/c".repeat(4096), None, Decision::Allow);
    }

    /// A rule for the transactions endpoint not limited to POST covers the keys `tx...` too.
    #[test]
    fn a_tx_rule_for_more_than_post_is_warned_of() {
        let warned = |rules: Vec<AccessRule>| warnings(&rules).len();
        assert_eq!(warned(vec![rule("/kv/tx", &[], ADMIN)]), 1);
        assert_eq!(warned(vec![rule("/kv/tx/", &["GET", "POST"], ADMIN)]), 1);
        assert_eq!(warned(vec![rule("/kv/tx", &["post"], ADMIN)]), 0);
        assert_eq!(warned(vec![rule("/kv/txt", &[], ADMIN)]), 0);
        assert_eq!(warned(vec![rule("/kv", &[], ADMIN)]), 0);
        let text = &warnings(&[rule("/a", &[], ADMIN), rule("/kv/tx", &[], ADMIN)])[0];
        assert!(
            text.starts_with("rule 2 (prefix \"/kv/tx\") also covers"),
            "{text}"
        );
    }

    /// A key's '/' is `%2F` in its `/kv/{key}` path: a slash all the same.
    #[test]
    fn an_encoded_slash_is_a_segment_boundary() {
        use Decision::Unauthenticated;
        for prefix in ["/kv/users", "/kv/users/", "/kv/users%2F"] {
            let rules = build(vec![rule(prefix, &[], ADMIN)], Allow::Public);
            for path in [
                "/kv/users",
                "/kv/users%2Falice",
                "/kv/users%2fa%2Fb",
                "/kv/users/x",
            ] {
                check(&rules, "PUT", path, None, Unauthenticated);
            }
            for path in ["/kv/usersx", "/kv/users%2", "/kv/users%20x", "/kv/user%2Fs"] {
                check(&rules, "PUT", path, None, Decision::Allow);
            }
        }
        // The most specific still wins, encoded or not.
        let rules = build(
            vec![
                rule("/kv", &[], ADMIN),
                rule("/kv/public%2Fdocs", &[], &["public"]),
            ],
            Allow::Public,
        );
        check(
            &rules,
            "GET",
            "/kv/public%2Fdocs%2Fa",
            None,
            Decision::Allow,
        );
        check(&rules, "GET", "/kv/public%2Fother", None, Unauthenticated);
    }

    #[test]
    fn trailing_slash_prefix_also_matches_bare_path() {
        use Decision::Unauthenticated;
        let rules = build(vec![rule("/api/", &[], ADMIN)], Allow::Public);
        check(&rules, "GET", "/api", None, Unauthenticated);
        check(&rules, "GET", "/api/", None, Unauthenticated);
        check(&rules, "GET", "/api/v1/x", None, Unauthenticated);
        check(&rules, "GET", "/apis", None, Decision::Allow);
        check(&rules, "GET", "/ap", None, Decision::Allow);
    }

    #[test]
    fn root_matches_everything() {
        use Decision::Unauthenticated;
        let rules = build(vec![rule("/", &[], &["authenticated"])], Allow::Public);
        for path in ["/", "/x", "/x/y/", "", "*", "x"] {
            check(&rules, "GET", path, None, Unauthenticated);
            check(&rules, "GET", path, Some(&[]), Decision::Allow);
        }
    }

    #[test]
    fn longest_prefix_wins() {
        use Decision::{Forbidden, Unauthenticated};
        let rules = build(
            vec![
                rule("/", &[], &["authenticated"]),
                rule("/docs", &[], &["public"]),
                rule("/docs/internal", &[], &["staff"]),
                rule("/docs/internal/open", &[], &["public"]),
            ],
            Allow::Roles(words(ADMIN)),
        );
        check(&rules, "GET", "/x", None, Unauthenticated);
        check(&rules, "GET", "/docs/a", None, Decision::Allow);
        check(&rules, "GET", "/docs/internal", None, Unauthenticated);
        check(
            &rules,
            "GET",
            "/docs/internal/a",
            Some(&["staff"]),
            Decision::Allow,
        );
        check(&rules, "GET", "/docs/internal/a", Some(ADMIN), Forbidden);
        check(
            &rules,
            "GET",
            "/docs/internal/open/a",
            None,
            Decision::Allow,
        );
        check(
            &rules,
            "GET",
            "/docs/internal/opener",
            None,
            Unauthenticated,
        );
        check(&rules, "GET", "/docs/internals", None, Decision::Allow);
    }

    #[test]
    fn method_rules() {
        use Decision::{Forbidden, Unauthenticated};
        let rules = build(
            vec![
                rule("/posts", &["POST", "DELETE"], &["editor"]),
                rule("/posts", &[], &["public"]),
                rule("/files", &["PUT"], ADMIN),
                rule("/", &[], &["authenticated"]),
            ],
            Allow::Public,
        );
        // Listed method beats the methodless rule at the same prefix.
        check(&rules, "POST", "/posts/1", None, Unauthenticated);
        check(
            &rules,
            "DELETE",
            "/posts/1",
            Some(&["editor"]),
            Decision::Allow,
        );
        check(&rules, "DELETE", "/posts/1", Some(&["reader"]), Forbidden);
        check(&rules, "GET", "/posts/1", None, Decision::Allow);
        check(&rules, "PUT", "/posts/1", None, Decision::Allow);
        // Request methods compare case-insensitively.
        check(&rules, "post", "/posts/1", None, Unauthenticated);
        // A rule not listing the method does not match: falls through to "/".
        check(&rules, "PUT", "/files/a", Some(&["staff"]), Forbidden);
        check(&rules, "GET", "/files/a", None, Unauthenticated);
        check(&rules, "GET", "/files/a", Some(&["staff"]), Decision::Allow);
    }

    #[test]
    fn head_is_checked_as_get() {
        use Decision::Unauthenticated;
        let rules = build(
            vec![
                rule("/a", &["GET"], &["public"]),
                rule("/b", &["GET"], &["public"]),
                rule("/b", &["HEAD"], ADMIN),
                rule("/c", &["GET", "HEAD"], ADMIN),
                rule("/c", &[], &["public"]),
                rule("/d", &["POST"], &["public"]),
            ],
            Allow::Authenticated,
        );
        check(&rules, "HEAD", "/a", None, Decision::Allow);
        check(&rules, "head", "/a", None, Decision::Allow);
        check(&rules, "GET", "/b", None, Decision::Allow);
        check(&rules, "HEAD", "/b", None, Unauthenticated);
        check(&rules, "HEAD", "/c", None, Unauthenticated);
        check(&rules, "OPTIONS", "/c", None, Decision::Allow);
        check(&rules, "HEAD", "/d", None, Unauthenticated);
        // GET is never checked as HEAD.
        let head_only = build(
            vec![rule("/h", &["HEAD"], &["public"])],
            Allow::Authenticated,
        );
        check(&head_only, "GET", "/h", None, Unauthenticated);
        check(&head_only, "HEAD", "/h", None, Decision::Allow);
    }

    #[test]
    fn default_applies_when_nothing_matches() {
        use Decision::{Forbidden, Unauthenticated};
        let only = |default: Allow| build(vec![rule("/open", &[], &["public"])], default);
        check(&only(Allow::Public), "GET", "/x", None, Decision::Allow);
        check(
            &only(Allow::Authenticated),
            "GET",
            "/x",
            None,
            Unauthenticated,
        );
        check(
            &only(Allow::Authenticated),
            "GET",
            "/x",
            Some(&[]),
            Decision::Allow,
        );
        check(&only(roles(ADMIN)), "GET", "/x", None, Unauthenticated);
        check(
            &only(roles(ADMIN)),
            "GET",
            "/x",
            Some(&["staff"]),
            Forbidden,
        );
        check(
            &only(roles(ADMIN)),
            "GET",
            "/x",
            Some(&["staff", "admin"]),
            Decision::Allow,
        );
        check(&only(roles(ADMIN)), "GET", "/open/x", None, Decision::Allow);
        let method_only = build(
            vec![rule("/p", &["POST"], &["public"])],
            Allow::Authenticated,
        );
        check(&method_only, "GET", "/p", None, Unauthenticated);
    }

    #[test]
    fn evaluate_table() {
        use Decision::{Forbidden, Unauthenticated};
        let check_eval = |allow: Allow, who: Option<&[&str]>, expected: Decision| {
            let held = who.map(words);
            let identity = held.as_deref().map(|roles| ("n", roles));
            assert_eq!(evaluate(&allow, identity), expected, "{allow:?} {who:?}");
        };
        check_eval(Allow::Public, None, Decision::Allow);
        check_eval(Allow::Public, Some(&[]), Decision::Allow);
        check_eval(Allow::Authenticated, None, Unauthenticated);
        check_eval(Allow::Authenticated, Some(&[]), Decision::Allow);
        check_eval(roles(&["a", "b"]), None, Unauthenticated);
        check_eval(roles(&["a", "b"]), Some(&[]), Forbidden);
        check_eval(roles(&["a", "b"]), Some(&["c"]), Forbidden);
        check_eval(roles(&["a", "b"]), Some(&["A"]), Forbidden);
        check_eval(roles(&["a", "b"]), Some(&["c", "b"]), Decision::Allow);
    }

    #[test]
    fn candidates_table() {
        let check_candidates = |path: &str, expected: &[&str]| {
            assert_eq!(candidates(path).collect::<Vec<_>>(), expected, "{path:?}");
        };
        check_candidates("/a/b/c", &["/a/b/c", "/a/b", "/a", "/"]);
        check_candidates("/a/", &["/a/", "/a", "/"]);
        check_candidates("/", &["/", "/"]);
        check_candidates("", &["", "/"]);
    }
}
