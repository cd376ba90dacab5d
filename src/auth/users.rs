//! The users file (TOML `[[user]]` tables) and the configured API tokens: parsing, validation
//! and lookup; pure: no IO (the caller reads the file), never hashes or checks passwords.

use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::password::{token_hash, validate_phc, validate_token_hash};

/// Most users one users file may hold.
pub const USERS_MAX: usize = 100_000;
/// Most API tokens the config may hold.
pub const TOKENS_MAX: usize = 10_000;
/// Longest user or token name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// One account from the users file.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    /// See `credential_stamp`; computed once, when the file is read.
    stamp: String,
}

/// All accounts from the users file, by exact (case-sensitive) name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: FxHashMap<String, User>,
    /// The user whose hash stands in for an unknown name's (`stand_in`).
    stand_in: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<toml::Spanned<UserEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
}

impl User {
    /// Changes whenever the user's password does (a new hash, even of the same password, has a
    /// new salt): login sessions remember it and end when it changes, like Django's session
    /// auth hash. A digest of the PHC string, which is salted, so it tells nothing about the
    /// password.
    pub fn credential_stamp(&self) -> &str {
        &self.stamp
    }
}

impl Users {
    /// Parses and validates the users file text.
    pub fn parse(text: &str) -> Result<Users, String> {
        parse_bounded(text, USERS_MAX)
    }

    /// The user named exactly `name` (case-sensitive).
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// A user whose hash stands in for an unknown name's, so both cost the same time: one
    /// hashed with the parameters most users' hashes have (the same one every time for the
    /// same file). Any one user would do only if every hash had the same cost; with mixed
    /// ones, an unknown name took the time of whichever user the map gave first (found in
    /// review: 0.59 s against 0.03 s for every real user, which told the names apart).
    pub fn stand_in(&self) -> Option<&User> {
        self.by_name.get(self.stand_in.as_ref()?)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn parse_bounded(text: &str, users_max: usize) -> Result<Users, String> {
    let file: UsersFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    if file.user.len() > users_max {
        return Err(format!(
            "{} users; at most {users_max} allowed",
            file.user.len()
        ));
    }
    let mut users = Users::default();
    let mut first_lines: FxHashMap<String, usize> = FxHashMap::default();
    // Limiter key -> (name, line): names that differ only in case would share one brute-force
    // counter, and one's login would wipe the other's failures.
    let mut first_by_key: FxHashMap<String, (String, usize)> = FxHashMap::default();
    for spanned in file.user {
        let line = line_of(text, spanned.span().start);
        let entry = spanned.into_inner();
        let fail = |why: String| format!("line {line}: user {:?}: {why}", entry.name);
        check_user(&entry).map_err(fail)?;
        if let Some(first) = first_lines.insert(entry.name.clone(), line) {
            return Err(fail(format!("duplicate name (first at line {first})")));
        }
        let key = super::limiter::user_key(&entry.name);
        if let Some((other, first)) = first_by_key.insert(key, (entry.name.clone(), line)) {
            return Err(fail(format!(
                "same name as user {other:?} (line {first}) but for case; names must differ \
                 in more than case (they share a login failure counter)"
            )));
        }
        let user = User {
            stamp: stamp_of(&entry.password_hash),
            name: entry.name,
            password_hash: entry.password_hash,
            roles: entry.roles,
        };
        users.by_name.insert(user.name.clone(), user);
    }
    users.stand_in = stand_in(&users.by_name);
    Ok(users)
}

/// The name of a user whose hash has the most common parameters (the PHC string up to its
/// salt: algorithm, version, costs); among those, the least name, so the choice is the same
/// for the same file.
fn stand_in(users: &FxHashMap<String, User>) -> Option<String> {
    let parameters = |user: &User| {
        let phc = &user.password_hash;
        // `$alg$v=..$params$salt$hash`: everything before the last two fields.
        let mut cuts = phc.rmatch_indices('$').map(|(index, _)| index);
        let end = cuts.nth(1).unwrap_or(phc.len());
        phc[..end].to_string()
    };
    let mut counts: FxHashMap<String, (usize, &str)> = FxHashMap::default();
    for user in users.values() {
        let entry = counts.entry(parameters(user)).or_insert((0, &user.name));
        entry.0 += 1;
        entry.1 = entry.1.min(&user.name);
    }
    counts
        .into_values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, name)| name.to_string())
}

/// 24 hex digits (96 bits) of SHA-256 of the PHC string.
fn stamp_of(password_hash: &str) -> String {
    let mut stamp = String::with_capacity(24);
    super::password::push_sha256_hex(&mut stamp, password_hash.as_bytes(), 24);
    stamp
}

fn check_user(entry: &UserEntry) -> Result<(), String> {
    check_name(&entry.name)?;
    validate_phc(&entry.password_hash).map_err(|e| format!("password_hash: {e}"))?;
    check_roles(&entry.roles)
}

fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = one_line(error.message());
    match error.span() {
        Some(span) => format!("line {}: {message}", line_of(text, span.start)),
        None => message,
    }
}

/// 1-based line number of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn one_line(message: &str) -> String {
    message.trim().lines().collect::<Vec<_>>().join("; ")
}

/// A user or token name: non-empty, at most [`NAME_BYTES_MAX`] bytes, no ':' (it would break
/// Basic credentials) and no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".to_string());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "name is {} bytes; at most {NAME_BYTES_MAX} allowed",
            name.len()
        ));
    }
    if name.contains(':') {
        return Err("name contains ':'".to_string());
    }
    if name.chars().any(char::is_control) {
        return Err("name contains a control character".to_string());
    }
    Ok(())
}

/// A role name: non-empty, no whitespace, no commas.
pub fn check_role(role: &str) -> Result<(), String> {
    if role.is_empty() {
        return Err("role name is empty".to_string());
    }
    if role.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(format!("role name {role:?} contains whitespace or ','"));
    }
    Ok(())
}

fn check_roles(roles: &[String]) -> Result<(), String> {
    roles.iter().try_for_each(|role| check_role(role))
}

/// One API token from the server config's `[[token]]` tables; `hash` is [`token_hash`] of the
/// secret, never the secret itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub hash: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The configured API tokens, by digest.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: FxHashMap<String, Token>,
}

impl Tokens {
    /// Validates `list`: names as for users and unique, hashes well-formed and unique, roles
    /// well-formed, at most [`TOKENS_MAX`] tokens.
    pub fn new(list: Vec<Token>) -> Result<Tokens, String> {
        if list.len() > TOKENS_MAX {
            return Err(format!(
                "{} tokens configured; at most {TOKENS_MAX} allowed",
                list.len()
            ));
        }
        let mut tokens = Tokens::default();
        let mut first_index_by_name: FxHashMap<String, usize> = FxHashMap::default();
        for (index, token) in list.into_iter().enumerate() {
            let number = index + 1;
            let fail = |why: String| format!("token {number} ({:?}): {why}", token.name);
            check_token(&token).map_err(fail)?;
            if let Some(first) = first_index_by_name.insert(token.name.clone(), number) {
                return Err(fail(format!("duplicate name (first is token {first})")));
            }
            if tokens.by_hash.contains_key(&token.hash) {
                return Err(fail("duplicate hash".to_string()));
            }
            tokens.by_hash.insert(token.hash.clone(), token);
        }
        Ok(tokens)
    }

    /// The token whose digest matches the presented secret. Looking up by digest means the
    /// map's timing reveals nothing useful about any stored secret.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        self.by_hash.get(&token_hash(presented))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn check_token(token: &Token) -> Result<(), String> {
    check_name(&token.name)?;
    validate_token_hash(&token.hash)?;
    check_roles(&token.roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                       cHJldGVuZCB0aGlzIGlzIGEgMzItYnl0ZSBoYXNoISE";

    fn quote(text: &str) -> String {
        toml::Value::String(text.to_string()).to_string()
    }

    fn user_toml(name: &str, roles: &str) -> String {
        let name = quote(name);
        format!("[[user]]\nname = {name}\npassword_hash = {PHC:?}\nroles = {roles}\n")
    }

    /// `expected`: Ok(user count) or Err(substring of the error).
    fn check(text: &str, expected: Result<usize, &str>) {
        let got = Users::parse(text);
        match (got, expected) {
            (Ok(users), Ok(count)) => assert_eq!(users.len(), count, "{text}"),
            (Err(err), Err(part)) => {
                assert!(err.contains(part), "{text}\n got: {err}\n want: {part}");
                assert!(!err.contains('\n'), "multi-line error: {err:?}");
            }
            (got, expected) => panic!("{text}\n got: {got:?}\n want: {expected:?}"),
        }
    }

    /// An unknown name is checked against a hash with the most common parameters, whichever
    /// order the file or the map has them in.
    #[test]
    fn the_stand_in_has_the_most_common_hash_parameters() {
        let costly = PHC.replace("m=19456,t=2", "m=65536,t=8");
        let user = |name: &str, hash: &str| {
            format!("[[user]]\nname = {:?}\npassword_hash = {hash:?}\n", name)
        };
        assert!(Users::parse("").unwrap().stand_in().is_none());
        for names in [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]] {
            // The first name's hash is the costly one, the other two share the usual one.
            let text = user(names[0], &costly) + &user(names[1], PHC) + &user(names[2], PHC);
            let users = Users::parse(&text).unwrap();
            let stand_in = users.stand_in().unwrap();
            assert_eq!(stand_in.password_hash, PHC, "{names:?}");
            let expected = names[1].min(names[2]);
            assert_eq!(stand_in.name, expected, "{names:?}");
        }
    }

    #[test]
    fn parse_valid_files() {
        check("", Ok(0));
        check("# nobody yet\n", Ok(0));
        check(&user_toml("alice", "[\"admin\", \"staff\"]"), Ok(1));
        check(&user_toml("alice", "[]"), Ok(1));
        let no_roles = format!("[[user]]\nname = \"bob\"\npassword_hash = {PHC:?}\n");
        check(&no_roles, Ok(1));
        let two = user_toml("alice", "[]") + &user_toml("alice2", "[]");
        check(&two, Ok(2));
        let inline = format!("user = [{{ name = \"a\", password_hash = {PHC:?} }}]\n");
        check(&inline, Ok(1));
    }

    #[test]
    fn parse_gets_fields() {
        let text = user_toml("alice", "[\"admin\", \"staff\"]") + &no_roles_user("bob");
        let users = Users::parse(&text).expect("valid");
        let alice = users.get("alice").expect("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.password_hash, PHC);
        assert_eq!(alice.roles, ["admin", "staff"]);
        assert!(users.get("bob").expect("bob").roles.is_empty());
        assert!(users.get("Alice").is_none());
        assert!(users.get("alice ").is_none());
        assert!(users.get("").is_none());
        assert!(!users.is_empty());
        assert!(Users::default().is_empty());
    }

    fn no_roles_user(name: &str) -> String {
        let name = quote(name);
        format!("[[user]]\nname = {name}\npassword_hash = {PHC:?}\n")
    }

    #[test]
    fn parse_rejects_bad_toml_with_line() {
        check("[[user]\n", Err("line 1: invalid table header"));
        check("\n\n[[user]]\nname = 1\n", Err("line 4: invalid type"));
        check(
            "\n[[user]]\nname = \"a\"\n",
            Err("line 2: missing field `password_hash`"),
        );
        check("junk = 1\n", Err("line 1: unknown field `junk`"));
        let extra = no_roles_user("a") + "admin = true\n";
        check(&extra, Err("line 4: unknown field `admin`"));
        check(
            "[[user]]\nname = \"a\"\npassword_hash = \"x\"\nroles = \"admin\"\n",
            Err("line 4"),
        );
    }

    #[test]
    fn parse_rejects_bad_names() {
        check(
            &user_toml("", "[]"),
            Err("line 1: user \"\": name is empty"),
        );
        check(&user_toml("a:b", "[]"), Err("name contains ':'"));
        check(&user_toml("a\u{7}b", "[]"), Err("control character"));
        check(&user_toml("a\nb", "[]"), Err("control character"));
        check(&user_toml("a\u{85}b", "[]"), Err("control character"));
        check(&user_toml(&"n".repeat(NAME_BYTES_MAX), "[]"), Ok(1));
        check(
            &user_toml(&"n".repeat(NAME_BYTES_MAX + 1), "[]"),
            Err("257 bytes"),
        );
        check(&user_toml(&"n".repeat(NAME_BYTES_MAX - 1), "[]"), Ok(1));
        check(&user_toml("with space", "[]"), Ok(1));
        check(&user_toml("émile", "[]"), Ok(1));
    }

    #[test]
    fn parse_rejects_duplicates_naming_both_lines() {
        let text = user_toml("alice", "[]") + "\n" + &user_toml("alice", "[]");
        check(
            &text,
            Err("line 6: user \"alice\": duplicate name (first at line 1)"),
        );
    }

    /// Names equal but for case would share a brute-force counter (`limiter::user_key`).
    #[test]
    fn parse_rejects_names_equal_but_for_case() {
        let pair = |a: &str, b: &str| user_toml(a, "[]") + "\n" + &user_toml(b, "[]");
        check(
            &pair("alice", "Alice"),
            Err("line 6: user \"Alice\": same name as user \"alice\" (line 1) but for case"),
        );
        check(
            &pair("BOB", "bob"),
            Err("user \"bob\": same name as user \"BOB\""),
        );
        check(&pair("Émile", "émile"), Err("but for case"));
        let long = "n".repeat(NAME_BYTES_MAX);
        check(&pair(&long, &long.to_uppercase()), Err("but for case"));
        check(&pair("alice", "alice_"), Ok(2));
        check(&pair("alice", "a1ice"), Ok(2));
    }

    #[test]
    fn parse_rejects_bad_hashes() {
        let text = "[[user]]\nname = \"a\"\npassword_hash = \"secret\"\n";
        check(
            text,
            Err("line 1: user \"a\": password_hash: invalid PHC string"),
        );
        let argon2i = no_roles_user("a").replace("argon2id", "argon2i");
        check(&argon2i, Err("only argon2id"));
        let sha = format!(
            "[[user]]\nname = \"a\"\npassword_hash = {:?}\n",
            token_hash("x")
        );
        check(&sha, Err("password_hash"));
    }

    #[test]
    fn parse_rejects_bad_roles() {
        check(&user_toml("a", "[\"\"]"), Err("role name is empty"));
        check(&user_toml("a", "[\"ad min\"]"), Err("whitespace"));
        check(&user_toml("a", "[\"admin\\t\"]"), Err("whitespace"));
        check(&user_toml("a", "[\"a,b\"]"), Err("','"));
        check(&user_toml("a", "[\"ok\", \"\"]"), Err("role name is empty"));
        check(&user_toml("a", "[\"role-1\", \"x.y\"]"), Ok(1));
    }

    #[test]
    fn users_max_bound() {
        let text = |count: usize| {
            (0..count)
                .map(|i| no_roles_user(&format!("u{i}")))
                .collect::<String>()
        };
        let check_max = |count: usize, users_max: usize, ok: bool| {
            let got = parse_bounded(&text(count), users_max);
            assert_eq!(got.is_ok(), ok, "{count} of {users_max}: {got:?}");
        };
        check_max(0, 0, true);
        check_max(1, 0, false);
        check_max(2, 3, true);
        check_max(3, 3, true);
        check_max(4, 3, false);
        let err = parse_bounded(&text(4), 3).expect_err("too many");
        assert_eq!(err, "4 users; at most 3 allowed");
    }

    #[test]
    fn users_max_is_the_public_bound() {
        // The real bound, once past it (builds a ~10 MB file; kept to a single case).
        let text: String = (0..=USERS_MAX)
            .map(|i| no_roles_user(&format!("u{i}")))
            .collect();
        let err = Users::parse(&text).expect_err("one past USERS_MAX");
        assert!(err.contains("at most 100000 allowed"), "{err}");
    }

    fn token(name: &str, hash: &str, roles: &[&str]) -> Token {
        Token {
            name: name.to_string(),
            hash: hash.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn check_tokens(list: Vec<Token>, expected: Result<usize, &str>) {
        match (Tokens::new(list), expected) {
            (Ok(tokens), Ok(count)) => assert_eq!(tokens.len(), count),
            (Err(err), Err(part)) => {
                assert!(err.contains(part), "got: {err}\nwant: {part}");
                assert!(!err.contains('\n'));
            }
            (got, expected) => panic!("got: {got:?}\nwant: {expected:?}"),
        }
    }

    #[test]
    fn tokens_new_table() {
        let h1 = token_hash("pc_one");
        let h2 = token_hash("pc_two");
        check_tokens(vec![], Ok(0));
        check_tokens(vec![token("ci", &h1, &["deploy"])], Ok(1));
        check_tokens(vec![token("ci", &h1, &[]), token("bot", &h2, &[])], Ok(2));
        check_tokens(
            vec![token("", &h1, &[])],
            Err("token 1 (\"\"): name is empty"),
        );
        check_tokens(vec![token("a:b", &h1, &[])], Err("name contains ':'"));
        check_tokens(
            vec![token("ci", &h1, &[]), token("ci", &h2, &[])],
            Err("token 2 (\"ci\"): duplicate name (first is token 1)"),
        );
        check_tokens(
            vec![token("ci", &h1, &[]), token("bot", &h1, &[])],
            Err("token 2 (\"bot\"): duplicate hash"),
        );
        check_tokens(
            vec![token("ci", "pc_one", &[])],
            Err("must start with \"sha256:\""),
        );
        check_tokens(
            vec![token(
                "ci",
                &h1.to_uppercase().replace("SHA256", "sha256"),
                &[],
            )],
            Err("lowercase hex"),
        );
        check_tokens(vec![token("ci", &h1, &["a b"])], Err("whitespace"));
        check_tokens(vec![token("ci", &h1, &[""])], Err("role name is empty"));
    }

    #[test]
    fn tokens_max_bound() {
        let list = |count: usize| {
            (0..count)
                .map(|i| token(&format!("t{i}"), &token_hash(&i.to_string()), &[]))
                .collect::<Vec<_>>()
        };
        check_tokens(list(TOKENS_MAX), Ok(TOKENS_MAX));
        check_tokens(list(TOKENS_MAX + 1), Err("10001 tokens configured"));
    }

    #[test]
    fn tokens_find() {
        let tokens = Tokens::new(vec![
            token("ci", &token_hash("pc_one"), &["deploy"]),
            token("bot", &token_hash("pc_two"), &[]),
        ])
        .expect("valid");
        let check = |presented: &str, expected: Option<&str>| {
            let got = tokens.find(presented).map(|t| t.name.as_str());
            assert_eq!(got, expected, "{presented:?}");
        };
        check("pc_one", Some("ci"));
        check("pc_two", Some("bot"));
        check("pc_on", None);
        check("pc_one ", None);
        check("PC_ONE", None);
        check("", None);
        check(&token_hash("pc_one"), None);
        assert_eq!(
            tokens.find("pc_one").map(|t| t.roles.clone()),
            Some(vec!["deploy".into()])
        );
    }

    #[test]
    fn tokens_deserialize_from_config_tables() {
        #[derive(Deserialize)]
        struct Config {
            token: Vec<Token>,
        }
        let hash = token_hash("pc_x");
        let text = format!("[[token]]\nname = \"ci\"\nhash = {hash:?}\n");
        let config: Config = toml::from_str(&text).expect("valid");
        assert!(config.token[0].roles.is_empty());
        let extra = format!("{text}secret = \"pc_x\"\n");
        let err = toml::from_str::<Config>(&extra)
            .err()
            .map(|e| e.message().to_string());
        assert!(err.is_some_and(|e| e.contains("unknown field `secret`")));
    }

    #[test]
    fn check_role_table() {
        let check = |role: &str, ok: bool| assert_eq!(check_role(role).is_ok(), ok, "{role:?}");
        check("admin", true);
        check("a-b_c.d", true);
        check("", false);
        check(" ", false);
        check("a b", false);
        check("a\u{a0}b", false);
        check("a,b", false);
        check(",", false);
    }
}
