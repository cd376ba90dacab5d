//! Authentication and authorization end to end: users file + login sessions, Basic, Bearer, `[[access]]` rules, CSRF, brute-force limits across shards, SIGHUP reload, and login timing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{BIN, Conn, Server, cookie_of, one_per_shard, run_failing, temp_dir};
use tempfile::TempDir;

/// `percore hash-password` of `password`.
fn hash(password: &str) -> String {
    common::tool("hash-password", password)
}

fn users_toml(users: &[(&str, &str, &[&str])]) -> String {
    users
        .iter()
        .map(|(name, password, roles)| {
            format!(
                "[[user]]\nname = {name:?}\npassword_hash = {:?}\nroles = {roles:?}\n\n",
                hash(password)
            )
        })
        .collect()
}

const TOKEN: &str = "pc_test-token-for-the-ci-robot";

/// A config with access rules, one API token, and a users file with alice (admin) and bob (staff),
/// in a temp dir that lives as long as the returned guard.
fn setup(extra_config: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = temp_dir("auth");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        users_toml(&[
            ("alice", "alice-pw", &["admin"]),
            ("bob", "bob-pw", &["staff"]),
        ]),
    )
    .unwrap();
    let token_hash = common::tool("hash-token", TOKEN);
    let config = dir.path().join("percore.toml");
    std::fs::write(
        &config,
        format!(
            r#"{extra_config}
[[access]]
prefix = "/stats"
allow = ["admin"]

[[access]]
prefix = "/kv"
allow = ["authenticated"]

[[access]]
prefix = "/kv/config"
methods = ["PUT", "DELETE"]
allow = ["admin"]

[[token]]
name = "ci-robot"
hash = "{token_hash}"
roles = ["staff"]
"#
        ),
    )
    .unwrap();
    (dir, users, config)
}

fn start(users: &Path, config: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--bind", "127.0.0.1:0", "--expose-shard"];
    if !extra.contains(&"--shards") {
        args.extend_from_slice(&["--shards", "2"]);
    }
    args.extend_from_slice(&[
        "--users",
        users.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    Server::start_exact(&args)
}

fn login_body(user: &str, password: &str) -> String {
    format!(r#"{{"username":"{user}","password":"{password}"}}"#)
}

/// The bytes of POST /auth/login (JSON) with an optional cookie.
fn login_request(user: &str, password: &str, cookie: Option<&str>) -> String {
    let body = login_body(user, password);
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{cookie}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// POST /auth/login (JSON) with an optional cookie; the response.
fn login(conn: &mut Conn, user: &str, password: &str, cookie: Option<&str>) -> common::Response {
    conn.send(login_request(user, password, cookie).as_bytes());
    conn.response(false).unwrap()
}

fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> common::Response {
    conn.send(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    conn.response(method == "HEAD").unwrap()
}

/// The status of `GET /auth/me` with the session `cookie`.
fn me_status(conn: &mut Conn, cookie: &str) -> u16 {
    let cookie = format!("Cookie: {cookie}\r\n");
    request(conn, "GET", "/auth/me", &cookie, "").status
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {encoded}\r\n")
}

#[test]
fn hash_password_prints_an_argon2id_phc_string() {
    let hashed = hash("correct horse");
    assert!(
        hashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hashed}"
    );
    let output = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "empty stdin");
}

#[test]
fn login_me_logout_and_the_session_dies_on_every_shard() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let [mut a, mut b] = one_per_shard(&server);
    let r = login(&mut a, "alice", "alice-pw", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": "alice", "roles": ["admin"]})
    );
    let cookie = format!("Cookie: {}\r\n", cookie_of(&r));
    for conn in [&mut a, &mut b] {
        let me = request(conn, "GET", "/auth/me", &cookie, "");
        assert_eq!(me.status, 200);
        let me: serde_json::Value = serde_json::from_slice(&me.body).unwrap();
        assert_eq!(me["user"], "alice");
        assert_eq!(me["via"], "session");
    }
    // Logout from the other shard, with a same-origin Origin (CSRF).
    let out = request(
        &mut b,
        "POST",
        "/auth/logout",
        &format!("{cookie}Origin: http://t\r\n"),
        "",
    );
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    for conn in [&mut a, &mut b] {
        assert_eq!(request(conn, "GET", "/auth/me", &cookie, "").status, 401);
    }
}

#[test]
fn login_takes_a_form_too_and_rejects_bad_bodies() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let r = request(
        &mut conn,
        "POST",
        "/auth/login",
        form,
        "username=bob&password=bob-pw",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let json = "Content-Type: application/json\r\n";
    assert_eq!(
        request(&mut conn, "POST", "/auth/login", json, "{nope").status,
        400
    );
    let xml = "Content-Type: text/xml\r\n";
    assert_eq!(
        request(&mut conn, "POST", "/auth/login", xml, "<a/>").status,
        400
    );
    let big = format!(r#"{{"username":"bob","password":"{}"}}"#, "x".repeat(9000));
    let r = request(&mut conn, "POST", "/auth/login", json, &big);
    assert_eq!(r.status, 413);
}

#[test]
fn login_rotates_the_session_id_against_fixation() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let [mut a, mut b] = one_per_shard(&server);
    let created = request(&mut a, "POST", "/session", "", "");
    let before = cookie_of(&created);
    let put = request(
        &mut a,
        "PUT",
        "/session/data/cart",
        &format!("Cookie: {before}\r\n"),
        "[1,2]",
    );
    assert_eq!(put.status, 204);
    let r = login(&mut b, "alice", "alice-pw", Some(&before));
    assert_eq!(r.status, 200);
    let after = cookie_of(&r);
    assert_ne!(before, after);
    for conn in [&mut a, &mut b] {
        let old = request(
            conn,
            "GET",
            "/auth/me",
            &format!("Cookie: {before}\r\n"),
            "",
        );
        assert_eq!(old.status, 401, "the pre-login id is dead everywhere");
        let new = request(conn, "GET", "/auth/me", &format!("Cookie: {after}\r\n"), "");
        assert_eq!(new.status, 200);
        // The session's data came along.
        let cart = request(
            conn,
            "GET",
            "/session/data/cart",
            &format!("Cookie: {after}\r\n"),
            "",
        );
        assert_eq!(cart.text(), "[1,2]");
    }
    // Nobody can write the server's own session values.
    let forge = request(
        &mut a,
        "PUT",
        "/session/data/percore.user",
        &format!("Cookie: {before}\r\n"),
        "\"alice\"",
    );
    assert_eq!(forge.status, 403);
}

/// Review finding: bob logging in with alice's session cookie kept her session's data (a
/// login rotates the session, data and all). A login of another user than the session's
/// starts an empty one; the same user's keeps it, as an anonymous session's does.
#[test]
fn a_login_as_another_user_does_not_keep_the_sessions_data() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let [mut a, mut b] = one_per_shard(&server);
    let cookie = |value: &str| format!("Cookie: {value}\r\n");
    // Same-origin, as a browser's login form with a session cookie must be (CSRF).
    let login = |conn: &mut Conn, user: &str, password: &str, session: Option<&str>| {
        let raw = login_request(user, password, session);
        conn.send(
            raw.replacen("Host: t\r\n", "Host: t\r\nOrigin: http://t\r\n", 1)
                .as_bytes(),
        );
        conn.response(false).unwrap()
    };
    let alice = cookie_of(&login(&mut a, "alice", "alice-pw", None));
    let put = request(
        &mut a,
        "PUT",
        "/session/data/note",
        &format!("{}Origin: http://t\r\n", cookie(&alice)),
        "\"hers\"",
    );
    assert_eq!(put.status, 204);
    let again = login(&mut b, "alice", "alice-pw", Some(&alice));
    assert_eq!(again.status, 200);
    let alice = cookie_of(&again);
    let note = request(&mut b, "GET", "/session/data/note", &cookie(&alice), "");
    assert_eq!(
        note.text(),
        "\"hers\"",
        "the same user's login keeps the data"
    );
    let r = login(&mut b, "bob", "bob-pw", Some(&alice));
    assert_eq!(r.status, 200);
    let bob = cookie_of(&r);
    assert_ne!(bob, alice);
    for conn in [&mut a, &mut b] {
        let me = request(conn, "GET", "/auth/me", &cookie(&bob), "");
        assert_eq!(me.status, 200);
        assert!(me.text().contains("\"user\":\"bob\""), "{}", me.text());
        let note = request(conn, "GET", "/session/data/note", &cookie(&bob), "");
        assert_eq!(note.status, 404, "{}", note.text());
        let dead = request(conn, "GET", "/auth/me", &cookie(&alice), "");
        assert_eq!(dead.status, 401, "alice's id died with the login");
    }
}

/// `--max-sessions-per-user`: a login past it ends that user's least recently used session on
/// the shard, not the one logging in and no other user's (found in review: one account that
/// logged in `--max-sessions` times pushed every other user's session out).
#[test]
fn a_login_past_the_per_user_bound_ends_that_users_oldest_session() {
    let (_dir, users, config) = setup("");
    let server = start(
        &users,
        &config,
        &["--shards", "1", "--max-sessions-per-user", "2"],
    );
    let mut conn = Conn::new(server.connect());
    let bob = cookie_of(&login(&mut conn, "bob", "bob-pw", None));
    let alice: Vec<String> = (0..3)
        .map(|_| cookie_of(&login(&mut conn, "alice", "alice-pw", None)))
        .collect();
    assert_eq!(
        me_status(&mut conn, &alice[0]),
        401,
        "alice's least recently used ended"
    );
    assert_eq!(me_status(&mut conn, &alice[1]), 200);
    assert_eq!(me_status(&mut conn, &alice[2]), 200);
    assert_eq!(
        me_status(&mut conn, &bob),
        200,
        "bob's session is not alice's to end"
    );
    let stats = request(&mut conn, "GET", "/stats", &basic("alice", "alice-pw"), "");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["total"]["session_evictions"], 1, "{stats}");
}

/// Review finding: a restart with a lower `--max-sessions-per-user` loaded the snapshot in its
/// own order, and kept a user's stalest session half the time while it logged an active one
/// out. Sessions load least recently used first, so the ones used last stay.
#[test]
fn a_restart_under_a_lower_per_user_bound_keeps_the_sessions_used_last() {
    let (dir, users, config) = setup("");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let args = |bound: &'static str| {
        [
            "--shards",
            "1",
            "--data-dir",
            data,
            "--max-sessions-per-user",
            bound,
        ]
    };
    let mut server = start(&users, &config, &args("3"));
    let mut conn = Conn::new(server.connect());
    let sessions: Vec<String> = (0..3)
        .map(|_| cookie_of(&login(&mut conn, "alice", "alice-pw", None)))
        .collect();
    // Used in the order 1, 2: session 0 is the least recently used.
    for cookie in &sessions[1..] {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(me_status(&mut conn, cookie), 200);
    }
    drop(conn);
    server.signal(libc::SIGTERM);
    let stopped = common::wait_exit(&mut server.child, Duration::from_secs(20));
    assert_eq!(stopped.and_then(|s| s.code()), Some(0));
    let server = start(&users, &config, &args("2"));
    let mut conn = Conn::new(server.connect());
    let statuses: Vec<u16> = sessions.iter().map(|c| me_status(&mut conn, c)).collect();
    assert_eq!(statuses, [401, 200, 200]);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_answer() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let wrong = login(&mut conn, "alice", "nope", None);
    let unknown = login(&mut conn, "mallory", "nope", None);
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(
        wrong.header("www-authenticate"),
        unknown.header("www-authenticate")
    );
    // Every 401 carries a challenge (RFC 9110 §15.5.2), and a failed login's is one no browser
    // prompts for: not Basic.
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Cookie realm=\"percore\", form-action=\"/auth/login\", cookie-name=\"percore_sid\"")
    );
}

#[test]
fn unknown_user_and_wrong_password_take_the_same_time() {
    let (_dir, users, config) = setup("");
    let server = start(
        &users,
        &config,
        &["--login-max-failures", "1000", "--shards", "1"],
    );
    let mut conn = Conn::new(server.connect());
    let mut time = |user: &str| {
        let started = Instant::now();
        assert_eq!(login(&mut conn, user, "nope", None).status, 401);
        started.elapsed()
    };
    // Pairs measured back to back (the order alternating) and compared pair by pair, so drift
    // in machine load hits both sides of a pair alike. The bound is the issue's: within 20% on
    // the median. A busy machine gets three tries; a real difference (an unknown user that
    // skipped the hash would answer ~20x faster) fails all three.
    let mut medians = Vec::new();
    for _try in 0..3 {
        let mut ratios: Vec<f64> = (0..31)
            .map(|i| {
                let (wrong, unknown) = if i % 2 == 0 {
                    let wrong = time("alice");
                    (wrong, time("mallory"))
                } else {
                    let unknown = time("mallory");
                    (time("alice"), unknown)
                };
                wrong.as_secs_f64() / unknown.as_secs_f64()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        if (1.0 / 1.2..1.2).contains(&median) {
            return;
        }
        medians.push(median);
    }
    panic!(
        "wrong password / unknown user login time, median of the paired ratios per try: {medians:?}"
    );
}

#[test]
fn rules_give_401_without_identity_and_403_without_the_role() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    // No rule: public.
    assert_eq!(request(&mut conn, "GET", "/plaintext", "", "").status, 200);
    // /stats needs admin.
    let r = request(&mut conn, "GET", "/stats", "", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"percore\", charset=\"UTF-8\"")
    );
    assert_eq!(
        request(&mut conn, "GET", "/stats", &basic("bob", "bob-pw"), "").status,
        403
    );
    assert_eq!(
        request(&mut conn, "GET", "/stats", &basic("alice", "alice-pw"), "").status,
        200
    );
    // Most specific prefix: /kv needs any identity, PUT /kv/config... needs admin.
    assert_eq!(request(&mut conn, "GET", "/kv/a", "", "").status, 401);
    let bob = basic("bob", "bob-pw");
    assert_eq!(
        request(&mut conn, "PUT", "/kv/a", &bob, "1").status / 100,
        2
    );
    assert_eq!(
        request(&mut conn, "GET", "/kv/config", &bob, "").status,
        404
    );
    assert_eq!(
        request(&mut conn, "PUT", "/kv/config", &bob, "1").status,
        403
    );
    let alice = basic("alice", "alice-pw");
    assert_eq!(
        request(&mut conn, "PUT", "/kv/config", &alice, "1").status / 100,
        2
    );
    // Segment boundaries: /kvx is not under /kv.
    assert_eq!(request(&mut conn, "GET", "/kvx", "", "").status, 404);
    // Wrong Basic password: 401 even on a public route.
    let r = request(&mut conn, "GET", "/plaintext", &basic("bob", "nope"), "");
    assert_eq!(r.status, 401);
    // The counters saw it all (Basic is verified once per shard, then cached).
    let stats = request(&mut conn, "GET", "/stats", &alice, "");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let total = &stats["total"];
    assert!(
        total["access_unauthenticated"].as_u64().unwrap() >= 2,
        "{total}"
    );
    assert!(total["access_forbidden"].as_u64().unwrap() >= 2, "{total}");
    assert!(total["basic_cache_hits"].as_u64().unwrap() >= 2, "{total}");
    assert_eq!(total["password_checks_failed"], 1, "{total}");
}

/// Rules on `/kv/<key>` prefixes that /kv/tx got past: a transaction's keys are judged as the
/// single-key requests its ops stand for (found by a black-box review: bob read and wrote
/// `/kv/secret` through /kv/tx). /kv/tx itself is open to all, so that the keys' rules give
/// the 401s too.
const KEY_RULES: &str = r#"
[[access]]
prefix = "/kv/tx"
methods = ["POST"]
allow = ["public"]

[[access]]
prefix = "/kv/secret"
allow = ["admin"]

[[access]]
prefix = "/kv/team%20a"
allow = ["admin"]

[[access]]
prefix = "/kv/inbox"
methods = ["GET"]
allow = ["admin"]
"#;

/// One request on a connection of its own (a refusal may close it).
fn send(server: &Server, method: &str, path: &str, headers: &str, body: &str) -> common::Response {
    request(
        &mut Conn::new(server.connect()),
        method,
        path,
        headers,
        body,
    )
}

/// POST /kv/tx of `ops`; an allowed one is retried past a conflict.
fn tx(server: &Server, headers: &str, ops: serde_json::Value) -> common::Response {
    let body = serde_json::json!({ "ops": ops }).to_string();
    common::retry_conflicts(
        || send(server, "POST", "/kv/tx", headers, &body),
        |r| r.status,
    )
}

/// Review finding: a client the rules let PUT a key but not GET it probed whether it existed
/// (`If-None-Match: *` answered 412, writing nothing), or at which version (`If-Match`). A
/// conditional PUT or DELETE reads the key, as a tx `check` does, and needs GET too.
#[test]
fn a_conditional_write_needs_the_right_to_read_the_key() {
    let (_dir, users, config) = setup(KEY_RULES);
    let server = start(&users, &config, &[]);
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");
    assert_eq!(
        send(&server, "PUT", "/kv/inbox", &alice, "mail").status,
        201
    );
    for (method, condition) in [
        ("PUT", "If-None-Match: *\r\n"),
        ("PUT", "If-Match: \"1\"\r\n"),
        ("DELETE", "If-Match: *\r\n"),
    ] {
        let r = send(
            &server,
            method,
            "/kv/inbox",
            &format!("{bob}{condition}"),
            "x",
        );
        assert_eq!(r.status, 403, "{method} {condition:?}: {}", r.text());
        let r = send(
            &server,
            method,
            "/kv/inbox",
            &format!("{alice}{condition}"),
            "x",
        );
        assert_ne!(r.status, 403, "{method} {condition:?}: {}", r.text());
    }
    // Unconditional, bob may write as before (alice's conditional DELETE removed the key).
    assert_eq!(send(&server, "PUT", "/kv/inbox", &bob, "new").status, 201);
}

#[test]
fn kv_tx_keys_obey_the_access_rules_of_their_paths() {
    use serde_json::json;
    let (_dir, users, config) = setup(KEY_RULES);
    let server = start(&users, &config, &[]);
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");
    for (key, value) in [("secret", "s0"), ("open", "o0"), ("config", "7")] {
        let path = format!("/kv/{key}");
        assert_eq!(send(&server, "PUT", &path, &alice, value).status / 100, 2);
    }
    let secret_ops = [
        json!({"op": "get", "key": "secret"}),
        json!({"op": "put", "key": "secret", "value": "pwned"}),
        json!({"op": "delete", "key": "secret"}),
        json!({"op": "add", "key": "secret", "delta": 1}),
        json!({"op": "check", "key": "secret", "absent": true}),
    ];
    // Whole transactions refused: one op on the protected key, or one among allowed ones.
    for op in &secret_ops {
        let alone = json!([op]);
        let mixed = json!([{"op": "put", "key": "open", "value": "o1"}, op]);
        // Without an identity, `open` (under /kv) is refused too, and named when it comes first.
        for (ops, first_for_nobody) in [(alone, "secret"), (mixed, "open")] {
            let r = tx(&server, &bob, ops.clone());
            assert_eq!(r.status, 403, "bob {ops}: {}", r.text());
            assert_eq!(r.text(), "forbidden: key \"secret\"\n", "{ops}");
            let r = tx(&server, "", ops.clone());
            assert_eq!(r.status, 401, "nobody {ops}: {}", r.text());
            let want = format!("authentication required: key \"{first_for_nobody}\"\n");
            assert_eq!(r.text(), want, "{ops}");
            assert!(r.header("www-authenticate").is_some(), "{ops}");
        }
    }
    // Nothing ran: not the protected key's ops, not the allowed key's before them.
    assert_eq!(send(&server, "GET", "/kv/secret", &alice, "").text(), "s0");
    assert_eq!(send(&server, "GET", "/kv/open", &bob, "").text(), "o0");
    // The admin passes, op by op.
    let r = tx(&server, &alice, json!([secret_ops[0], secret_ops[1]]));
    assert_eq!(r.status, 200, "{}", r.text());
    let results: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(results["results"][0]["value"], "s0", "{results}");
    let r = tx(&server, &alice, json!([secret_ops[2]]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&server, "GET", "/kv/secret", &alice, "").status, 404);
    // Methods: get and check are GET, put PUT, delete DELETE, add GET and PUT. /kv/config
    // lets any identity GET but only admins PUT or DELETE; /kv/inbox lets only admins GET.
    let by_method = [
        ("get", json!({"op": "get", "key": "config"}), 200),
        (
            "check",
            json!({"op": "check", "key": "config", "absent": true}),
            412,
        ),
        (
            "put",
            json!({"op": "put", "key": "config", "value": "8"}),
            403,
        ),
        ("delete", json!({"op": "delete", "key": "config"}), 403),
        (
            "add",
            json!({"op": "add", "key": "config", "delta": 1}),
            403,
        ),
        ("get", json!({"op": "get", "key": "inbox"}), 403),
        (
            "check",
            json!({"op": "check", "key": "inbox", "absent": true}),
            403,
        ),
        ("add", json!({"op": "add", "key": "inbox", "delta": 1}), 403),
        (
            "put",
            json!({"op": "put", "key": "inbox", "value": "1"}),
            200,
        ),
        ("delete", json!({"op": "delete", "key": "inbox"}), 200),
    ];
    for (name, op, status) in by_method {
        let r = tx(&server, &bob, json!([op]));
        assert_eq!(r.status, status, "bob {name} {op}: {}", r.text());
    }
    // A key that needs escaping is judged at its one path, as GET /kv/... is, and a key's '/'
    // (`%2F` in its path) is a slash to the rules: `secret/x` is `/kv/secret%2Fx`, under
    // /kv/secret (found in review: no rule could cover the keys `users/...`); `secret x` is
    // `/kv/secret%20x`, not under it; `team a` is `/kv/team%20a`, under its rule.
    let escaped = [
        ("secret/x", "/kv/secret%2Fx", true),
        ("secret x", "/kv/secret%20x", false),
        ("team a", "/kv/team%20a", true),
        ("team a/b", "/kv/team%20a%2Fb", true),
        ("team ab", "/kv/team%20ab", false),
    ];
    for (key, path, refused) in escaped {
        let get = send(&server, "GET", path, &bob, "");
        assert_eq!(get.status == 403, refused, "GET {path}: {}", get.status);
        let r = tx(&server, &bob, json!([{"op": "get", "key": key}]));
        let want = if refused { 403 } else { 200 };
        assert_eq!(r.status, want, "tx get {key:?}: {}", r.text());
    }
}

/// Pipelined requests are served at once (--pipeline-parallel): eight with the same new Basic
/// credentials hash the password once, the others wait for that check and use its result.
#[test]
fn concurrent_requests_with_the_same_basic_credentials_hash_once() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &["--shards", "1"]);
    let mut conn = Conn::new(server.connect());
    let bob = basic("bob", "bob-pw");
    let one = format!("GET /plaintext HTTP/1.1\r\nHost: t\r\n{bob}\r\n");
    conn.send(one.repeat(8).as_bytes());
    for i in 0..8 {
        assert_eq!(conn.response(false).unwrap().status, 200, "response {i}");
    }
    let stats = request(&mut conn, "GET", "/stats", &basic("alice", "alice-pw"), "");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let total = &stats["total"];
    assert_eq!(total["requests_parallel"], 8, "{total}");
    assert_eq!(
        total["password_checks_ok"], 2,
        "bob once, alice once: {total}"
    );
    assert_eq!(total["basic_cache_hits"], 7, "{total}");
}

#[test]
fn bearer_tokens_carry_their_roles() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let me = request(&mut conn, "GET", "/auth/me", &bearer, "");
    assert_eq!(me.status, 200);
    let me: serde_json::Value = serde_json::from_slice(&me.body).unwrap();
    assert_eq!(
        me,
        serde_json::json!({"user": "ci-robot", "roles": ["staff"], "via": "bearer"})
    );
    assert_eq!(
        request(&mut conn, "PUT", "/kv/b", &bearer, "2").status / 100,
        2
    );
    assert_eq!(request(&mut conn, "GET", "/stats", &bearer, "").status, 403);
    let wrong = "Authorization: Bearer pc_nope\r\n";
    assert_eq!(request(&mut conn, "GET", "/auth/me", wrong, "").status, 401);
}

#[test]
fn csrf_guards_cookie_sessions_but_not_basic_or_bearer() {
    let (_dir, users, config) = setup("csrf_header = \"X-Requested-With\"");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let cookie = format!(
        "Cookie: {}\r\n",
        cookie_of(&login(&mut conn, "bob", "bob-pw", None))
    );
    let put = |conn: &mut Conn, extra: &str| {
        // 201 for the first write of the key, 204 after: 2 means written.
        let status = request(conn, "PUT", "/kv/c", &format!("{cookie}{extra}"), "3").status;
        if status / 100 == 2 { 2 } else { status }
    };
    assert_eq!(put(&mut conn, ""), 403, "no Origin, no Referer");
    assert_eq!(put(&mut conn, "Origin: http://evil.example\r\n"), 403);
    assert_eq!(
        put(&mut conn, "Origin: https://t\r\n"),
        403,
        "scheme differs"
    );
    assert_eq!(put(&mut conn, "Origin: http://t\r\n"), 2);
    assert_eq!(put(&mut conn, "Referer: http://t/page\r\n"), 2);
    assert_eq!(put(&mut conn, "Referer: http://evil.example/t\r\n"), 403);
    assert_eq!(put(&mut conn, "X-Requested-With: XMLHttpRequest\r\n"), 2);
    // An absolute-form target names the request's host, and Host is ignored (RFC 9112 §3.2.2;
    // found in review: the Origin was compared with Host).
    let same = format!("{cookie}Origin: http://t\r\n");
    for (target, status) in [("http://evil.example/kv/c", 403), ("http://t/kv/c", 200)] {
        assert_eq!(request(&mut conn, "PUT", target, &same, "6").status, status);
    }
    // Basic from a browser (which remembers and attaches it) saying it comes from elsewhere.
    let bob = basic("bob", "bob-pw");
    let cross = format!("{bob}Origin: http://evil.example\r\n");
    assert_eq!(request(&mut conn, "PUT", "/kv/c", &cross, "5").status, 403);
    // A browser that leaves Origin out still names the page it came from (found in review:
    // only Origin was read for Basic and login).
    let cross = format!("{bob}Referer: http://evil.example/page\r\n");
    assert_eq!(request(&mut conn, "PUT", "/kv/c", &cross, "5").status, 403);
    // A relative or empty Referer names no origin: a script's, exempt as before.
    for referer in [
        "Referer: /relative\r\n",
        "Referer:\r\n",
        "Referer: /login?next=http://evil.example/\r\n",
    ] {
        let own = format!("{bob}{referer}");
        let status = request(&mut conn, "PUT", "/kv/c", &own, "5").status;
        assert_eq!(status / 100, 2, "{referer}");
    }
    // Login CSRF: a cross-site form must not log the victim into the attacker's account.
    for source in [
        "Origin: http://evil.example",
        "Referer: http://evil.example/page",
    ] {
        let form = format!("Content-Type: application/x-www-form-urlencoded\r\n{source}\r\n");
        let r = request(
            &mut conn,
            "POST",
            "/auth/login",
            &form,
            "username=bob&password=bob-pw",
        );
        assert_eq!(r.status, 403, "{source}");
    }
    // From our own page, by either header, the login goes on.
    let own = "Content-Type: application/x-www-form-urlencoded\r\nReferer: http://t/login\r\n";
    let r = request(
        &mut conn,
        "POST",
        "/auth/login",
        own,
        "username=bob&password=bob-pw",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Safe methods pass; Basic is exempt.
    assert_eq!(request(&mut conn, "GET", "/kv/c", &cookie, "").status, 200);
    assert_eq!(
        request(&mut conn, "PUT", "/kv/c", &basic("bob", "bob-pw"), "4").status / 100,
        2
    );
}

/// Logins sent at once from one address count while they run, so parallel guesses are bounded:
/// of ten wrong ones at most `--login-max-failures` are checked, and then the name is blocked.
/// Right ones past the bound while others run are not blocked for the window (found in review:
/// five of ten parallel logins with the right password got 429 and Retry-After 300): they are
/// told to retry in a second (503), and then log in.
#[test]
fn parallel_logins_count_while_they_run_and_right_ones_are_not_blocked() {
    let (dir, users, _) = setup("");
    // No access rules: /stats is open, and asking it checks no password.
    let config = dir.path().join("open.toml");
    std::fs::write(&config, "").unwrap();
    let server = start(&users, &config, &["--shards", "1"]);
    let body_of = |password: &str| login_request("alice", password, None);
    let at_once = |raw: &str| -> Vec<common::Response> {
        let mut conns: Vec<Conn> = (0..10).map(|_| Conn::new(server.connect())).collect();
        for conn in &mut conns {
            conn.send(raw.as_bytes());
        }
        conns
            .iter_mut()
            .map(|c| c.response(false).unwrap())
            .collect()
    };
    let right = at_once(&body_of("alice-pw"));
    for r in &right {
        match r.status {
            200 => {}
            503 => assert_eq!(r.header("retry-after"), Some("1")),
            other => panic!("a right login at once with others: {other} {}", r.text()),
        }
    }
    let retried = right.iter().filter(|r| r.status == 503).count();
    for _ in 0..retried {
        let mut conn = Conn::new(server.connect());
        assert_eq!(login(&mut conn, "alice", "alice-pw", None).status, 200);
    }
    let total = |name: &str| server.stats()["total"][name].as_u64().unwrap();
    assert_eq!(total("password_checks_ok"), 10);
    // Every 503 was for attempts in flight (one shard: no owner can be late), and /stats says so.
    assert_eq!(total("password_checks_busy"), retried as u64);
    assert_eq!(total("password_checks_busy_in_flight"), retried as u64);

    let wrong = at_once(&body_of("wrong"));
    assert!(wrong.iter().all(|r| [401, 429, 503].contains(&r.status)));
    assert!(
        total("password_checks_failed") <= 5,
        "parallel guesses are bounded"
    );
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        login(&mut conn, "alice", "alice-pw", None).status,
        429,
        "five failures block the name"
    );
}

#[test]
fn brute_force_is_limited_whichever_shard_the_client_lands_on() {
    let (_dir, users, config) = setup("");
    let server = start(
        &users,
        &config,
        &["--login-max-failures", "3", "--login-window", "60"],
    );
    let [mut a, mut b] = one_per_shard(&server);
    assert_eq!(login(&mut a, "alice", "x1", None).status, 401);
    assert_eq!(login(&mut b, "alice", "x2", None).status, 401);
    assert_eq!(login(&mut a, "alice", "x3", None).status, 401);
    for conn in [&mut a, &mut b] {
        let r = login(conn, "alice", "alice-pw", None);
        assert_eq!(r.status, 429, "blocked even with the right password");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        // Basic for the same user is blocked too.
        let r = request(conn, "GET", "/stats", &basic("alice", "wrong"), "");
        assert_eq!(r.status, 429);
    }
}

#[test]
fn brute_force_by_address_spans_user_names() {
    let (_dir, users, config) = setup("");
    let server = start(
        &users,
        &config,
        // Long enough that three slow hashes on a busy machine stay inside one window (3 s
        // was not, once, beside a release build).
        &["--login-max-failures", "3", "--login-window", "6"],
    );
    let [mut a, mut b] = one_per_shard(&server);
    assert_eq!(login(&mut a, "u1", "x", None).status, 401);
    assert_eq!(login(&mut b, "u2", "x", None).status, 401);
    assert_eq!(login(&mut a, "u3", "x", None).status, 401);
    assert_eq!(
        login(&mut b, "bob", "bob-pw", None).status,
        429,
        "this address is blocked"
    );
    // The window passes.
    std::thread::sleep(Duration::from_millis(6100));
    assert_eq!(login(&mut b, "bob", "bob-pw", None).status, 200);
}

#[test]
fn default_access_authenticated_closes_everything_but_login() {
    let (_dir, users, config) = setup("default_access = \"authenticated\"");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    assert_eq!(request(&mut conn, "GET", "/plaintext", "", "").status, 401);
    let r = login(&mut conn, "bob", "bob-pw", None);
    assert_eq!(r.status, 200);
    let cookie = format!("Cookie: {}\r\n", cookie_of(&r));
    assert_eq!(
        request(&mut conn, "GET", "/plaintext", &cookie, "").status,
        200
    );
}

#[test]
fn sighup_reloads_users_and_a_bad_file_keeps_the_old_ones() {
    let (_dir, users, config) = setup("");
    let mut server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let alice = basic("alice", "alice-pw");
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &alice, "").status,
        200
    );
    let r = login(&mut conn, "alice", "alice-pw", None);
    let alice_session = format!("Cookie: {}\r\n", cookie_of(&r));
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &alice_session, "").status,
        200
    );
    std::fs::write(&users, users_toml(&[("carol", "carol-pw", &["admin"])])).unwrap();
    server.signal(libc::SIGHUP);
    let carol = basic("carol", "carol-pw");
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(&mut conn, "GET", "/auth/me", &carol, "").status != 200 {
        assert!(Instant::now() < deadline, "carol never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    // alice is gone (her cached Basic credentials too, and her login session) on every shard.
    for mut c in one_per_shard(&server) {
        assert_eq!(request(&mut c, "GET", "/auth/me", &alice, "").status, 401);
        assert_eq!(
            request(&mut c, "GET", "/auth/me", &alice_session, "").status,
            401
        );
    }
    std::fs::write(
        &users,
        "[[user]]\nname = \"dave\"\npassword_hash = \"plain\"\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &carol, "").status,
        200
    );
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "SIGHUP does not stop it"
    );
}

/// A FIFO put in the users file's place is refused on SIGHUP (the old users stay) and blocks
/// nothing: SIGTERM still drains and the process exits 0. Found in review: the reload opened it
/// and blocked the signal thread for good, so SIGTERM was never handled and `/health` stayed 200.
#[test]
fn a_fifo_in_place_of_the_users_file_blocks_no_signal() {
    let (dir, users, config) = setup("");
    let log = dir.path().join("stderr.log");
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--users",
        users.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let server = Server::start_command(common::BIN, &args, |command| {
        command.stderr(std::fs::File::create(&log).unwrap());
    });
    let mut conn = Conn::new(server.connect());
    let alice = basic("alice", "alice-pw");
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &alice, "").status,
        200
    );
    std::fs::remove_file(&users).unwrap();
    let fifo = std::ffi::CString::new(users.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &alice, "").status,
        200
    );
    drop(conn);
    server.stop();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("not a regular file (it is read again on SIGHUP); keeping the users"),
        "{stderr}"
    );
}

/// A password change (users file + SIGHUP) ends the login sessions made with the old password on
/// every shard, like Django's session auth hash; other users' sessions live on.
#[test]
fn a_password_change_ends_the_sessions_logged_in_with_the_old_one() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &[]);
    let mut conn = Conn::new(server.connect());
    let session_of = |conn: &mut Conn, user: &str, password: &str| {
        let r = login(conn, user, password, None);
        assert_eq!(r.status, 200, "{user}");
        format!("Cookie: {}\r\n", cookie_of(&r))
    };
    let bob_old = session_of(&mut conn, "bob", "bob-pw");
    let alice = session_of(&mut conn, "alice", "alice-pw");
    // alice's entry stays as it was (a re-hash of the same password would have a new salt, and
    // end her sessions too); bob's password changes.
    let text = std::fs::read_to_string(&users).unwrap();
    let alice_entry = text
        .split("[[user]]")
        .find(|entry| entry.contains("\"alice\""))
        .unwrap();
    let changed = format!(
        "[[user]]{alice_entry}{}",
        users_toml(&[("bob", "bob-new-pw", &["staff"])])
    );
    std::fs::write(&users, changed).unwrap();
    server.signal(libc::SIGHUP);
    let bob_new = basic("bob", "bob-new-pw");
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut c in one_per_shard(&server) {
        while request(&mut c, "GET", "/auth/me", &bob_new, "").status != 200 {
            assert!(Instant::now() < deadline, "the new password never worked");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(request(&mut c, "GET", "/auth/me", &bob_old, "").status, 401);
        assert_eq!(request(&mut c, "GET", "/auth/me", &alice, "").status, 200);
    }
    let bob = session_of(&mut conn, "bob", "bob-new-pw");
    assert_eq!(request(&mut conn, "GET", "/auth/me", &bob, "").status, 200);
}

#[test]
fn bad_auth_config_stops_the_start_with_one_line() {
    let tmp = temp_dir("auth-bad");
    let dir = tmp.path();
    let bad_users = dir.join("users.toml");
    std::fs::write(
        &bad_users,
        "[[user]]\nname = \"x\"\npassword_hash = \"nope\"\n",
    )
    .unwrap();
    let bad_rules = dir.join("rules.toml");
    std::fs::write(
        &bad_rules,
        "[[access]]\nprefix = \"nope\"\nallow = [\"admin\"]\n",
    )
    .unwrap();
    let bad_token = dir.join("token.toml");
    std::fs::write(&bad_token, "[[token]]\nname = \"t\"\nhash = \"md5:00\"\n").unwrap();
    let missing = dir.join("missing.toml");
    for (args, needle) in [
        (vec!["--users", bad_users.to_str().unwrap()], "users file"),
        (vec!["--users", missing.to_str().unwrap()], "users file"),
        (vec!["--config", bad_rules.to_str().unwrap()], "[[access]]"),
        (vec!["--config", bad_token.to_str().unwrap()], "[[token]]"),
        (vec!["--default-access", "everyone"], "--default-access"),
        (vec!["--login-max-failures", "0"], "--login-max-failures"),
        (vec!["--csrf-header", "bad header"], "--csrf-header"),
        (vec!["--hash-priority", "urgent"], "--hash-priority"),
        (vec!["--csrf-header", "Content-Type"], "--csrf-header"),
        (vec!["--csrf-header", "Sec-Fetch-Site"], "--csrf-header"),
        (
            vec!["--forwarded-allow-ips", "10.0.0.0/8,lb"],
            "--forwarded-allow-ips",
        ),
    ] {
        let (code, stderr) = run_failing(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn without_basic_a_401_does_not_offer_it() {
    let (_dir, users, config) = setup("");
    let server = start(
        &users,
        &config,
        &["--no-basic-auth", "--session-cookie", "sid"],
    );
    let mut conn = Conn::new(server.connect());
    let r = request(&mut conn, "GET", "/stats", "", "");
    assert_eq!(r.status, 401);
    // The session cookie's challenge instead (a 401 must carry one: RFC 9110 §15.5.2).
    assert_eq!(
        r.header("www-authenticate"),
        Some("Cookie realm=\"percore\", form-action=\"/auth/login\", cookie-name=\"sid\"")
    );
    // Basic is not accepted: no identity, so still 401.
    let r = request(&mut conn, "GET", "/stats", &basic("alice", "alice-pw"), "");
    assert_eq!(r.status, 401);
}

#[test]
fn login_over_tls_sets_a_secure_cookie() {
    let (_dir, users, config) = setup("");
    let pki = common::tls::Pki::new();
    let (cert, key) = (pki.cert_arg(), pki.key_arg());
    let server = start(&users, &config, &["--tls-cert", &cert, "--tls-key", &key]);
    let mut conn = common::tls::conn(&pki, server.addr);
    conn.send(login_request("bob", "bob-pw", None).as_bytes());
    let r = conn.response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").unwrap().contains("; Secure"));
    assert!(r.header("strict-transport-security").is_some());
}

#[test]
fn every_hash_priority_logs_in() {
    let (_dir, users, config) = setup("");
    for priority in ["idle", "low", "normal"] {
        let server = start(&users, &config, &["--hash-priority", priority]);
        let mut conn = Conn::new(server.connect());
        assert_eq!(
            login(&mut conn, "bob", "bob-pw", None).status,
            200,
            "{priority}"
        );
    }
}

/// Starts like `start`, with the server's stderr as lines on a channel (to read what a SIGHUP
/// reload says).
fn start_reading_stderr(
    users: &Path,
    config: &Path,
    extra: &[&str],
) -> (Server, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let data_dir = temp_dir("data");
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--expose-shard",
        "--shards",
        "2",
        "--users",
        users.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn percore");
    let lines = |stream: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    let addr = loop {
        let line = stdout
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("percore did not print `listening on` for {args:?}")
            });
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    let server = Server {
        child,
        addr,
        addrs: vec![addr],
        data_dir: Some(data_dir),
    };
    (server, stderr)
}

/// Waits until Basic `user:password` gets `status` from /auth/me on `conn` (a reload reached
/// that connection's shard).
fn wait_for_basic(conn: &mut Conn, user: &str, password: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let credentials = basic(user, password);
    while request(conn, "GET", "/auth/me", &credentials, "").status != status {
        assert!(
            Instant::now() < deadline,
            "{user}:{password} never got {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue (review): a login session ended by a password change, or by the user's removal, came
/// back when the old hash (or the user) was put back. It is destroyed when first seen ended, and
/// its cookie cleared.
#[test]
fn a_session_ended_by_a_users_change_stays_ended_when_the_change_is_undone() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &["--login-max-failures", "1000"]);
    let mut conn = Conn::new(server.connect());
    let session_of = |conn: &mut Conn, user: &str, password: &str| {
        let r = login(conn, user, password, None);
        assert_eq!(r.status, 200, "{user}");
        format!("Cookie: {}\r\n", cookie_of(&r))
    };
    let alice = session_of(&mut conn, "alice", "alice-pw");
    let bob = session_of(&mut conn, "bob", "bob-pw");
    let original = std::fs::read_to_string(&users).unwrap();
    // alice removed, bob with another password.
    std::fs::write(&users, users_toml(&[("bob", "bob-new-pw", &["staff"])])).unwrap();
    server.signal(libc::SIGHUP);
    for mut c in one_per_shard(&server) {
        wait_for_basic(&mut c, "bob", "bob-new-pw", 200);
        wait_for_basic(&mut c, "alice", "alice-pw", 401);
    }
    let mut c = Conn::new(server.connect());
    for session in [&alice, &bob] {
        let me = request(&mut c, "GET", "/auth/me", session, "");
        assert_eq!(me.status, 401);
        let cleared = me
            .header("set-cookie")
            .expect("the ended session's cookie is cleared");
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
    }
    // The change undone: the same users, the same hashes, as when the sessions logged in.
    std::fs::write(&users, original).unwrap();
    server.signal(libc::SIGHUP);
    for mut c in one_per_shard(&server) {
        wait_for_basic(&mut c, "bob", "bob-pw", 200);
        wait_for_basic(&mut c, "alice", "alice-pw", 200);
        for session in [&alice, &bob] {
            let me = request(&mut c, "GET", "/auth/me", session, "");
            assert_eq!(me.status, 401, "an ended session came back: {}", me.text());
        }
    }
}

/// Issue (review): "alice" and "Alice" both in the users file shared one brute-force counter
/// (it is keyed by the lowercased name), and one's login reset the other's failures. Such a
/// file is refused: at start (exit 2, one line) and on SIGHUP (the old users stay).
#[test]
fn a_users_file_with_names_equal_but_for_case_is_refused_at_start_and_on_reload() {
    let (_dir, users, config) = setup("");
    let good = std::fs::read_to_string(&users).unwrap();
    let variant = users_toml(&[("Bob", "mallory-pw", &["staff"])]);
    std::fs::write(&users, format!("{good}{variant}")).unwrap();
    let (code, stderr) = run_failing(&["--users", users.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    for needle in [users.to_str().unwrap(), "\"bob\"", "\"Bob\""] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    std::fs::write(&users, &good).unwrap();
    let (server, stderr) = start_reading_stderr(&users, &config, &[]);
    std::fs::write(&users, format!("{good}{variant}")).unwrap();
    server.signal(libc::SIGHUP);
    let line = loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(10))
            .expect("a line about the SIGHUP");
        if line.contains("SIGHUP") {
            break line;
        }
    };
    for needle in [
        users.to_str().unwrap(),
        "\"bob\"",
        "\"Bob\"",
        "keeping the users loaded before",
    ] {
        assert!(line.contains(needle), "{needle}: {line}");
    }
    for mut c in one_per_shard(&server) {
        let bob = request(&mut c, "GET", "/auth/me", &basic("bob", "bob-pw"), "");
        assert_eq!(bob.status, 200);
        let variant = request(&mut c, "GET", "/auth/me", &basic("Bob", "mallory-pw"), "");
        assert_eq!(variant.status, 401);
    }
}

/// Stops the threads of a running server whose name starts with `prefix` (ptrace: the process
/// and its other threads run on) until dropped.
struct Frozen(Vec<libc::pid_t>);

impl Frozen {
    /// None where this machine forbids tracing our own child (Yama's ptrace_scope 2 or 3, a
    /// seccomp profile): the caller then cannot run.
    fn threads(server: &Server, prefix: &str) -> Option<Frozen> {
        let tasks = format!("/proc/{}/task", server.child.id());
        let mut frozen = Frozen(Vec::new());
        for task in std::fs::read_dir(tasks).unwrap() {
            let task = task.unwrap().path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
            let tid: libc::pid_t = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
            // SAFETY: ptrace and waitpid on a thread of our own child; the tracee is only
            // stopped, never written to.
            unsafe {
                if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
                    let error = std::io::Error::last_os_error();
                    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "ptrace: {error}");
                    assert!(
                        frozen.0.is_empty(),
                        "ptrace allowed for one thread, not another"
                    );
                    return None;
                }
                frozen.0.push(tid);
                assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
                let mut status = 0;
                assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
            }
        }
        assert!(!frozen.0.is_empty(), "no thread named {prefix}*");
        Some(frozen)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &tid in &self.0 {
            // SAFETY: detaching a thread this test seized; it runs on.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
        }
    }
}

/// Issue (review): a logged-in request whose session owner shard did not answer (past the
/// mesh deadline, or a refusal) was served as anonymous: 401 with `WWW-Authenticate: Basic`,
/// and a browser prompted for a password. It is a 503 to retry. The owner here is shard 0's
/// threads, stopped (calls to it meet the mesh deadline), so no timing decides the outcome.
/// Every route that uses a session answers such a 503 with one `Response::from(SessionError)`.
#[test]
fn a_session_whose_owner_does_not_answer_gets_503_not_anonymous() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &["--mesh-deadline-ms", "200"]);
    let [mut a, mut b] = one_per_shard(&server);
    let r = login(&mut a, "alice", "alice-pw", None);
    assert_eq!(r.header("x-shard"), Some("0"), "shard 0 owns the session");
    let cookie = format!("Cookie: {}\r\n", cookie_of(&r));
    assert_eq!(request(&mut b, "GET", "/auth/me", &cookie, "").status, 200);
    let Some(frozen) = Frozen::threads(&server, "percore-0-") else {
        eprintln!("SKIPPED: this machine forbids ptrace of a child; the owner cannot be stopped");
        return;
    };
    let r = request(&mut b, "GET", "/auth/me", &cookie, "");
    // /session's own routes answer the same way (they had no Retry-After).
    let data = request(&mut b, "GET", "/session", &cookie, "");
    drop(frozen);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(data.status, 503, "{}", data.text());
    assert_eq!(data.header("retry-after"), Some("1"));
    // Shard 0 answers again: so does the session.
    assert_eq!(request(&mut b, "GET", "/auth/me", &cookie, "").status, 200);
}

/// Issue (review): a login into a session without room for the user (`--max-session-bytes`)
/// rotated the session first and then failed to store the user: 413, the pre-login session and
/// its data gone, a copy left in the store under an id nobody had. Now it changes nothing.
#[test]
fn a_login_into_a_session_without_room_changes_nothing() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &["--max-session-bytes", "364"]);
    let mut conn = Conn::new(server.connect());
    let before = cookie_of(&request(&mut conn, "POST", "/session", "", ""));
    let cookie = format!("Cookie: {before}\r\n");
    // "cart" + 262 bytes of JSON + 64 (each value's overhead): 34 left, less than the login's
    // value takes (~63 + 64).
    let cart = format!("\"{}\"", "x".repeat(260));
    let put = request(&mut conn, "PUT", "/session/data/cart", &cookie, &cart);
    assert_eq!(put.status, 204);
    let r = login(&mut conn, "alice", "alice-pw", Some(&before));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("set-cookie"), None);
    let kept = request(&mut conn, "GET", "/session/data/cart", &cookie, "");
    assert_eq!(kept.status, 200, "the pre-login session lives on");
    assert_eq!(kept.text(), cart);
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", &cookie, "").status,
        401
    );
    // With room made, the same login works (and rotates).
    let removed = request(&mut conn, "DELETE", "/session/data/cart", &cookie, "");
    assert_eq!(removed.status, 204);
    let r = login(&mut conn, "alice", "alice-pw", Some(&before));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(cookie_of(&r), before);
}

/// An argon2id hash of `password` that takes on the order of a second to check (128 MiB, 16
/// passes), so the requests of a test overlap its check.
fn slow_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(128 * 1024, 16, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"a-salt-for-tests").unwrap();
    argon
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// A users file with one user, `slow`, whose password (`slow_hash`) takes a second to check.
fn slow_users(password: &str) -> String {
    format!(
        "[[user]]\nname = \"slow\"\npassword_hash = {:?}\nroles = []\n",
        slow_hash(password)
    )
}

/// One shard serving `users` (a file of `slow_users`), with `extra` flags.
fn start_slow(users: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--users",
        users.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start_exact(&args)
}

/// Password hashes running now on the server (`/stats` `password_hashes_running`).
fn hashes_running(server: &Server) -> serde_json::Value {
    server.stats()["total"]["password_hashes_running"].clone()
}

/// Waits until `server` runs exactly one password hash.
fn wait_for_one_hash(server: &Server) {
    common::wait_for(Duration::from_secs(10), || {
        (hashes_running(server) == 1).then_some(())
    })
    .expect("its hash runs");
}

/// `--hash-concurrency 1 --hash-queue-max 1`: one check runs, one waits, the next is 503 at
/// once; and a login whose client hangs up mid-check keeps its slot until the check ends (the
/// check runs on whatever becomes of the request: its slot was freed at once, so clients that
/// hung up could run any number of checks at a time; found in review).
#[test]
fn password_checks_run_within_their_bounds_even_when_clients_hang_up() {
    let dir = temp_dir("hash-bounds");
    let users = dir.path().join("users.toml");
    std::fs::write(&users, slow_users("slow-pw")).unwrap();
    let server = start_slow(
        &users,
        &[
            "--hash-concurrency",
            "1",
            "--hash-queue-max",
            "1",
            "--login-max-failures",
            "100",
        ],
    );
    let raw = login_request("slow", "wrong", None);
    let send_three = || {
        let mut conns: Vec<Conn> = (0..3).map(|_| Conn::new(server.connect())).collect();
        for conn in &mut conns {
            conn.send(raw.as_bytes());
        }
        let mut statuses: Vec<u16> = conns
            .iter_mut()
            .map(|conn| conn.response(false).unwrap().status)
            .collect();
        statuses.sort_unstable();
        statuses
    };
    let busy = |server: &Server| server.stats()["total"]["password_checks_busy"].clone();
    assert_eq!(send_three(), [401, 401, 503], "one runs, one waits");
    assert_eq!(busy(&server), 1);

    // A client that hangs up while its check runs: once its connection is gone, its check
    // still holds the one slot, so of the next three one waits and two are refused.
    assert_eq!(hashes_running(&server), 0);
    let mut gone = server.connect();
    std::io::Write::write_all(&mut gone, raw.as_bytes()).unwrap();
    wait_for_one_hash(&server);
    drop(gone);
    common::wait_for(Duration::from_secs(10), || {
        (server.stats()["total"]["connections_open"] == 1).then_some(())
    })
    .expect("the hung-up connection ends");
    let statuses = send_three();
    assert_eq!(
        statuses,
        [401, 503, 503],
        "the hung-up check holds its slot"
    );
    assert_eq!(busy(&server), 3);
    let in_flight = &server.stats()["total"]["password_checks_busy_in_flight"];
    assert_eq!(in_flight, 0, "a full hash queue, not attempts in flight");
}

/// An attempt whose counter owner answers after `--mesh-deadline-ms` is 503 and is taken back
/// all the same: the owner counts it late, and the refund that follows it by id finds it there
/// (found in review: it stayed counted, in flight, and with `--login-max-failures 1` every later
/// login of the name or address was 503 for the whole window); and a judgment reaches its owner
/// past the mesh's in-flight bound and through a full channel (found in review: one refused
/// there left its attempt in flight the same way). Owners are made late by a 1 ms deadline
/// while both shards serve pipelined requests.
#[test]
fn an_attempt_counted_after_its_deadline_is_taken_back() {
    let dir = temp_dir("late-attempt");
    let users = dir.path().join("users.toml");
    std::fs::write(&users, users_toml(&[("ann", "ann-pw", &[])])).unwrap();
    let server = Server::start(&[
        "--users",
        users.to_str().unwrap(),
        "--mesh-deadline-ms",
        "1",
        "--mesh-inflight-max",
        "2",
        "--login-max-failures",
        "1",
        "--login-window",
        "600",
        "--hash-priority",
        "normal",
    ]);
    /// Stops the load when dropped, so a failed assertion in the scope ends it (the scope joins
    /// every thread before it passes a panic on).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let late = |server: &Server| {
        let total = &server.stats()["total"];
        let busy = total["password_checks_busy"].as_u64().unwrap();
        busy - total["password_checks_busy_in_flight"].as_u64().unwrap()
    };
    let stopped = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = Stop(&stopped);
        for _ in 0..4 {
            scope.spawn(|| {
                let batch = "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16);
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut conn = server.connect();
                    for _ in 0..100 {
                        std::io::Write::write_all(&mut conn, batch.as_bytes()).unwrap();
                        let _ = std::io::Read::read(&mut conn, &mut [0; 65536]).unwrap();
                    }
                }
            });
        }
        // Logins from three clients at once, each on a connection of its own (either shard),
        // past the mesh's in-flight bound of 2, until owners were late or calls refused a few
        // times (one late reply may have been an `InFlight`, which counted nothing); without
        // the busy shards it would take a slow machine.
        for _ in 0..3 {
            scope.spawn(|| {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut conn = Conn::new(server.connect());
                    let status = login(&mut conn, "ann", "ann-pw", None).status;
                    assert!(matches!(status, 200 | 503), "{status}");
                }
            });
        }
        let started = Instant::now();
        while late(&server) < 10 || started.elapsed() < Duration::from_secs(3) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no counter owner answered late in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stop);
    });
    // Every late attempt and its refund have landed by now; the name and the address are free.
    std::thread::sleep(Duration::from_millis(200));
    let mut statuses = Vec::new();
    while statuses.last() != Some(&200) && statuses.len() < 20 {
        std::thread::sleep(Duration::from_millis(50));
        statuses.push(login(&mut Conn::new(server.connect()), "ann", "ann-pw", None).status);
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}

/// A connection from `source` (any 127.0.0.0/8 address is this machine's) to the server.
fn connect_from(server: &Server, source: [u8; 4]) -> Conn {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source = std::net::SocketAddr::from((source, 0));
    socket.bind(&source.into()).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    Conn::new(socket.into())
}

/// `--forwarded-allow-ips`: behind a trusted proxy the login limits count by the address its
/// `X-Forwarded-For` names, so one client's failures block that client, not every client of
/// the proxy; from any other peer the header is ignored, so a client cannot spread its guesses
/// over made-up addresses.
#[test]
fn login_limits_count_the_client_a_trusted_proxy_names() {
    let (dir, users, _) = setup("");
    let config = dir.path().join("open.toml");
    std::fs::write(&config, "").unwrap();
    let server = start(
        &users,
        &config,
        &[
            "--forwarded-allow-ips",
            "127.0.0.1",
            "--login-max-failures",
            "1",
        ],
    );
    let via = |conn: &mut Conn, forwarded: &str, user: &str, password: &str| {
        let raw = login_request(user, password, None).replacen(
            "\r\n",
            &format!("\r\nX-Forwarded-For: {forwarded}\r\n"),
            1,
        );
        conn.send(raw.as_bytes());
        conn.response(false).unwrap().status
    };
    let proxy = || Conn::new(server.connect()); // from 127.0.0.1
    let stranger = || connect_from(&server, [127, 0, 0, 2]);
    // A failure blocks the client the proxy names (and the unknown user name), no one else.
    assert_eq!(via(&mut proxy(), "203.0.113.1", "x1", "wrong"), 401);
    assert_eq!(via(&mut proxy(), "203.0.113.1", "bob", "bob-pw"), 429);
    let hops = "198.51.100.7, 203.0.113.2";
    assert_eq!(
        via(&mut proxy(), hops, "bob", "bob-pw"),
        200,
        "another client"
    );
    // An untrusted peer's header counts for nothing: its failure blocks the peer itself, and
    // the address it named is still free.
    assert_eq!(via(&mut stranger(), "203.0.113.3", "x2", "wrong"), 401);
    assert_eq!(via(&mut stranger(), "203.0.113.4", "bob", "bob-pw"), 429);
    assert_eq!(via(&mut proxy(), "203.0.113.3", "bob", "bob-pw"), 200);
}

/// Behind a TLS-terminating proxy named in `--forwarded-allow-ips`, its `X-Forwarded-Proto:
/// https` makes the session cookie `Secure` and the CSRF check expect the browser's `https`
/// origin (without it every session write from a browser behind such a proxy was 403); from
/// any other peer the header is ignored.
#[test]
fn a_trusted_proxy_says_the_client_used_https() {
    let (_dir, users, config) = setup("");
    let server = start(&users, &config, &["--forwarded-allow-ips", "127.0.0.1"]);
    let https = "X-Forwarded-Proto: https\r\n";
    let session_of = |conn: &mut Conn| {
        let raw = login_request("bob", "bob-pw", None).replacen("\r\n", &format!("\r\n{https}"), 1);
        conn.send(raw.as_bytes());
        let r = conn.response(false).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        (r.header("set-cookie").unwrap().to_string(), cookie_of(&r))
    };
    let put = |conn: &mut Conn, cookie: &str, extra: &str| {
        let headers = format!("Cookie: {cookie}\r\nOrigin: https://t\r\n{extra}");
        // 201 for the first write of the key, 204 after: 2 means written.
        let status = request(conn, "PUT", "/kv/c", &headers, "3").status;
        if status / 100 == 2 { 2 } else { status }
    };
    let mut proxy = Conn::new(server.connect()); // from 127.0.0.1
    let (set_cookie, cookie) = session_of(&mut proxy);
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
    assert_eq!(put(&mut proxy, &cookie, https), 2);
    assert_eq!(
        put(&mut proxy, &cookie, ""),
        403,
        "no forwarded scheme: http expected"
    );
    let mut stranger = connect_from(&server, [127, 0, 0, 2]);
    let (set_cookie, cookie) = session_of(&mut stranger);
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    assert_eq!(
        put(&mut stranger, &cookie, https),
        403,
        "an untrusted peer's header"
    );
}

/// `--login-tracked-max`: each failed login is tracked under two keys, its user name and its
/// address. With room for both, a name blocked after one failure stays blocked from another
/// address; with room for one, the address's key evicts the name's at once, and the name is
/// free again (the documented cost of the memory bound; review: the flag's wiring was untested).
#[test]
fn login_tracked_max_bounds_the_counters_and_evicts_the_oldest() {
    let (_dir, users, config) = setup("");
    for (tracked_max, second) in [("2", 429), ("1", 200)] {
        let server = start(
            &users,
            &config,
            &[
                "--shards",
                "1",
                "--login-max-failures",
                "1",
                "--login-window",
                "60",
                "--login-tracked-max",
                tracked_max,
            ],
        );
        let mut first = connect_from(&server, [127, 0, 0, 2]);
        assert_eq!(login(&mut first, "bob", "wrong", None).status, 401);
        let mut other = connect_from(&server, [127, 0, 0, 3]);
        let r = login(&mut other, "bob", "bob-pw", None);
        assert_eq!(
            r.status,
            second,
            "--login-tracked-max {tracked_max}: {}",
            r.text()
        );
    }
}

/// A login whose client hangs up mid-check is judged by its outcome when the check ends: a
/// right password counts nothing, a wrong one a failure (found in review: an attempt left
/// unjudged was taken for a failure later, a slow right login included).
#[test]
fn a_login_whose_client_hangs_up_is_judged_by_its_outcome() {
    let dir = temp_dir("hang-up-judged");
    let users = dir.path().join("users.toml");
    std::fs::write(&users, slow_users("slow-pw")).unwrap();
    let server = start_slow(
        &users,
        &["--login-max-failures", "1", "--login-window", "60"],
    );
    for (password, next) in [("slow-pw", 200), ("wrong", 429)] {
        let mut gone = server.connect();
        std::io::Write::write_all(&mut gone, login_request("slow", password, None).as_bytes())
            .unwrap();
        wait_for_one_hash(&server);
        drop(gone);
        // 503 while that attempt is still in flight (the bound is 1); then its judgment.
        let status = common::wait_for(Duration::from_secs(20), || {
            let mut conn = Conn::new(server.connect());
            let status = login(&mut conn, "slow", "slow-pw", None).status;
            (status != 503).then_some(status)
        });
        assert_eq!(
            status,
            Some(next),
            "after a hung-up login with {password:?}"
        );
    }
}

/// A login checked against users that a reload (SIGHUP) replaced before the check ended is
/// 503, to be retried against the new ones: its session would have carried the new password's
/// stamp and outlived the change (found in review).
#[test]
fn a_login_checked_against_users_a_reload_replaced_is_retried() {
    let dir = temp_dir("reload-race");
    let users = dir.path().join("users.toml");
    std::fs::write(&users, slow_users("old-pw")).unwrap();
    let server = start_slow(&users, &[]);
    let new_users = slow_users("new-pw");
    let mut conn = Conn::new(server.connect());
    conn.send(login_request("slow", "old-pw", None).as_bytes());
    wait_for_one_hash(&server);
    std::fs::write(&users, new_users).unwrap();
    server.signal(libc::SIGHUP);
    let r = conn.response(false).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let total = server.stats()["total"].clone();
    assert_eq!(
        (&total["password_checks_busy"], &total["password_checks_ok"]),
        (&1.into(), &0.into()),
        "counted as the 503 it was"
    );
    let mut conn = Conn::new(server.connect());
    assert_eq!(login(&mut conn, "slow", "old-pw", None).status, 401);
    assert_eq!(login(&mut conn, "slow", "new-pw", None).status, 200);
}
