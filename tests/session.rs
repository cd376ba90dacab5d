//! Sessions over the real binary on 2 shards: cross-shard reads, writes and destroys, rotation, expiry, bounds, persistence, bad ids.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Conn, Server, cookie_of, one_per_shard};

fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> common::Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    if let Some(cookie) = cookie {
        raw.push_str(&format!("Cookie: theme=dark; {cookie}; other=1\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    conn.send(raw.as_bytes());
    conn.response(false).expect("a response")
}

fn json(response: &common::Response) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("JSON body: {}", response.text()))
}

/// `percore --bind 127.0.0.1:0 --shards 1` plus `args`.
fn one_shard(args: &[&str]) -> Server {
    Server::start_exact(&[&["--bind", "127.0.0.1:0", "--shards", "1"], args].concat())
}

/// Pipelined reads of a session owned by the other shard are served at once (one batch of mesh
/// calls) and answered in order; a write between them is a barrier: the reads after it see it.
#[test]
fn pipelined_cross_shard_reads_are_batched_and_ordered_around_writes() {
    let server = Server::start(&["--expose-shard"]);
    let [mut a, mut b] = one_per_shard(&server);
    let cookie = cookie_of(&request(&mut b, "POST", "/session", None, None));
    let put = |value: &str| {
        format!(
            "PUT /session/data/k HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{value}",
            value.len()
        )
    };
    let get = format!("GET /session/data/k HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n");
    // Answered at once by its handler (a direct route, /plaintext, would end the batch).
    let plain = "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut raw = put("1");
    for round in 2..=4 {
        // A remote read, a local answer that is ready first, another remote read, then a write.
        raw.push_str(&get);
        raw.push_str(plain);
        raw.push_str(&get);
        raw.push_str(&put(&round.to_string()));
    }
    raw.push_str(&get);
    a.send(raw.as_bytes());
    assert_eq!(a.response(false).unwrap().status, 204);
    for round in 1..=3 {
        let value = round.to_string();
        assert_eq!(a.response(false).unwrap().text(), value, "round {round}");
        assert_eq!(a.response(false).unwrap().text(), "not found\n");
        assert_eq!(a.response(false).unwrap().text(), value, "round {round}");
        assert_eq!(a.response(false).unwrap().status, 204);
    }
    assert_eq!(a.response(false).unwrap().text(), "4");
    let shard0 = &server.stats()["shards"][0];
    assert_eq!(
        shard0["requests_parallel"], 9,
        "three batches of three: {shard0}"
    );
    assert!(
        shard0["session_remote_calls"].as_u64().unwrap() >= 11,
        "{shard0}"
    );
    // /stats counts the calls of every mesh, the session mesh's too (it counted the stats
    // mesh's alone: one call per /stats).
    assert!(
        shard0["mesh_calls_sent"].as_u64().unwrap() >= 11,
        "{shard0}"
    );
}

#[test]
fn a_session_created_on_one_shard_is_served_by_the_other() {
    let server = Server::start(&["--expose-shard"]);
    let [mut a, mut b] = one_per_shard(&server);
    let created = request(&mut a, "POST", "/session", None, None);
    assert_eq!(created.status, 201);
    assert_eq!(json(&created)["shard"], 0);
    let set_cookie = created.header("set-cookie").unwrap();
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure") && !set_cookie.contains("Expires"),
        "{set_cookie}"
    );
    let cookie = cookie_of(&created);
    assert!(cookie.starts_with("percore_sid="));

    let read = request(&mut b, "GET", "/session", Some(&cookie), None);
    assert_eq!(read.header("x-shard"), Some("1"));
    assert_eq!(read.status, 200);
    assert_eq!(json(&read), serde_json::json!({"shard": 0, "data": {}}));

    assert_eq!(
        request(
            &mut b,
            "PUT",
            "/session/data/cart",
            Some(&cookie),
            Some(r#"{"items":[1,2]}"#)
        )
        .status,
        204
    );
    let value = request(&mut a, "GET", "/session/data/cart", Some(&cookie), None);
    assert_eq!(json(&value), serde_json::json!({"items": [1, 2]}));
    assert_eq!(
        request(&mut a, "GET", "/session/data/none", Some(&cookie), None).status,
        404
    );
    assert_eq!(
        request(
            &mut b,
            "PUT",
            "/session/data/bad",
            Some(&cookie),
            Some("{not json")
        )
        .status,
        400
    );
    assert_eq!(
        request(&mut b, "DELETE", "/session/data/cart", Some(&cookie), None).status,
        204
    );
    assert_eq!(
        request(&mut a, "GET", "/session/data/cart", Some(&cookie), None).status,
        404
    );

    let destroyed = request(&mut b, "DELETE", "/session", Some(&cookie), None);
    assert_eq!(destroyed.status, 204);
    assert!(
        destroyed
            .header("set-cookie")
            .unwrap()
            .contains("Max-Age=0")
    );
    for conn in [&mut a, &mut b] {
        let r = request(conn, "GET", "/session", Some(&cookie), None);
        assert_eq!(r.status, 401);
        // A 401 carries a challenge (RFC 9110 §15.5.2): the session cookie's.
        assert_eq!(
            r.header("www-authenticate"),
            Some("Cookie realm=\"percore\", cookie-name=\"percore_sid\"")
        );
        assert_eq!(
            request(conn, "PUT", "/session/data/x", Some(&cookie), Some("1")).status,
            401
        );
        assert_eq!(
            request(conn, "DELETE", "/session", Some(&cookie), None).status,
            401
        );
    }
    let stats = server.stats();
    assert!(
        stats["total"]["session_remote_calls"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert_eq!(stats["total"]["sessions"], 0);
}

#[test]
fn rotation_keeps_the_data_and_kills_the_old_id_everywhere() {
    let server = Server::start(&["--expose-shard"]);
    let [mut a, mut b] = one_per_shard(&server);
    let old = cookie_of(&request(&mut b, "POST", "/session", None, None));
    assert_eq!(
        request(
            &mut a,
            "PUT",
            "/session/data/user",
            Some(&old),
            Some(r#""ann""#)
        )
        .status,
        204
    );
    let rotated = request(&mut a, "POST", "/session/rotate", Some(&old), None);
    assert_eq!(rotated.status, 200);
    assert_eq!(
        json(&rotated)["shard"],
        1,
        "a rotated session stays on its owner"
    );
    let new = cookie_of(&rotated);
    assert_ne!(new, old);
    for conn in [&mut a, &mut b] {
        assert_eq!(
            request(conn, "GET", "/session", Some(&old), None).status,
            401
        );
        assert_eq!(
            json(&request(
                conn,
                "GET",
                "/session/data/user",
                Some(&new),
                None
            )),
            "ann"
        );
    }
}

#[test]
fn concurrent_clients_on_both_shards_read_exactly_what_they_wrote() {
    let server = Server::start(&["--expose-shard"]);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let [mut a, mut b] = one_per_shard(&server);
            std::thread::spawn(move || {
                let cookie = cookie_of(&request(&mut a, "POST", "/session", None, None));
                for i in 0..25 {
                    let conn = if i % 2 == 0 { &mut a } else { &mut b };
                    let body = format!("{}", t * 1000 + i);
                    assert_eq!(
                        request(
                            conn,
                            "PUT",
                            &format!("/session/data/k{i}"),
                            Some(&cookie),
                            Some(&body)
                        )
                        .status,
                        204
                    );
                }
                let data = json(&request(&mut b, "GET", "/session", Some(&cookie), None));
                for i in 0..25 {
                    assert_eq!(
                        data["data"][format!("k{i}")],
                        t * 1000 + i,
                        "thread {t} key {i}"
                    );
                }
                assert_eq!(data["data"].as_object().unwrap().len(), 25);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(server.stats()["total"]["sessions"], 8);
}

#[test]
fn idle_and_absolute_expiry() {
    let server = Server::start(&["--session-idle-timeout", "0.6", "--session-lifetime", "1.5"]);
    let mut conn = Conn::new(server.connect());
    let idle = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let active = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    // Touching `active` every 0.3 s keeps it alive past the idle timeout...
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            request(&mut conn, "GET", "/session", Some(&active), None).status,
            200
        );
    }
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&idle), None).status,
        401,
        "idle timeout"
    );
    // ...but not past its absolute lifetime.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let _ = request(&mut conn, "GET", "/session", Some(&active), None);
    }
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&active), None).status,
        401,
        "absolute lifetime"
    );
    assert_eq!(server.stats()["total"]["session_expirations"], 2);
}

#[test]
fn expired_sessions_are_swept_in_the_background() {
    let server = Server::start(&["--session-idle-timeout", "0.3"]);
    let mut conn = Conn::new(server.connect());
    for _ in 0..20 {
        request(&mut conn, "POST", "/session", None, None);
    }
    assert_eq!(server.stats()["total"]["sessions"], 20);
    std::thread::sleep(Duration::from_millis(1500));
    let stats = server.stats();
    assert_eq!(stats["total"]["sessions"], 0, "{stats}");
    assert_eq!(stats["total"]["session_expirations"], 20);
}

#[test]
fn at_the_session_bound_the_least_recently_used_is_evicted() {
    let server = one_shard(&["--max-sessions", "3"]);
    let mut conn = Conn::new(server.connect());
    let s: Vec<String> = (0..3)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&s[0]), None).status,
        200
    ); // s[1] is now the LRU
    let s3 = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&s[1]), None).status,
        401,
        "evicted"
    );
    for live in [&s[0], &s[2], &s3] {
        assert_eq!(
            request(&mut conn, "GET", "/session", Some(live), None).status,
            200
        );
    }
    let stats = server.stats();
    assert_eq!(stats["total"]["session_evictions"], 1);
    assert_eq!(stats["total"]["sessions"], 3);
}

/// A value's name is its path segment percent-decoded, as a `/kv` key is: one name has one
/// path (found in review: the raw segment was the name, so `a%20b` and an app's `a b` were two
/// values, and `a%2520b` a third spelling).
#[test]
fn session_value_names_are_percent_decoded_with_one_spelling() {
    let server = one_shard(&[]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let mut at = |method: &str, name: &str, body: Option<&str>| {
        let path = format!("/session/data/{name}");
        request(&mut conn, method, &path, Some(&cookie), body)
    };
    assert_eq!(at("PUT", "a%20b", Some("1")).status, 204);
    assert_eq!(at("PUT", "a%2Fb", Some("2")).status, 204);
    assert_eq!(at("PUT", "a%2520b", Some("3")).status, 204);
    let one = at("GET", "a%20b", None);
    assert_eq!((one.status, one.text()), (200, "1".to_string()));
    for (name, status) in [
        ("%61", 400),            // `a` escaped: a second spelling
        ("a%2fb", 400),          // lowercase hex
        ("a%", 400),             // a '%' without two hex digits
        ("%FF", 400),            // not UTF-8
        ("percore.user", 403),   // the server's
        ("percore%2Euser", 400), // its other spelling: not one at all
    ] {
        assert_eq!(at("PUT", name, Some("4")).status, status, "{name}");
        assert_eq!(at("DELETE", name, None).status, status, "{name}");
    }
    assert_eq!(at("GET", "%61", None).status, 400);
    let all = json(&request(&mut conn, "GET", "/session", Some(&cookie), None));
    assert_eq!(
        all["data"],
        serde_json::json!({"a b": 1, "a/b": 2, "a%20b": 3}),
        "{all}"
    );
    let mut at = |method: &str, name: &str| {
        let path = format!("/session/data/{name}");
        request(&mut conn, method, &path, Some(&cookie), None).status
    };
    assert_eq!(at("DELETE", "a%2Fb"), 204);
    assert_eq!(at("GET", "a%2Fb"), 404);
}

/// `--max-session-store-bytes`: the shard's session data stays within it; a write past it
/// evicts the least recently used anonymous session, and one that fits exactly does not.
#[test]
fn at_the_store_bytes_bound_a_write_evicts_the_least_recently_used() {
    // Each value counts its name (1), its JSON text (402) and 64: 467 bytes.
    let server = one_shard(&[
        "--max-session-store-bytes",
        "1401",
        "--max-session-bytes",
        "1000",
    ]);
    let mut conn = Conn::new(server.connect());
    let value = format!("\"{}\"", "x".repeat(400));
    let write = |conn: &mut Conn, cookie: &str| {
        request(conn, "PUT", "/session/data/v", Some(cookie), Some(&value)).status
    };
    let s: Vec<String> = (0..4)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    for cookie in &s[..3] {
        assert_eq!(write(&mut conn, cookie), 204);
    }
    let stats = server.stats();
    assert_eq!(
        stats["total"]["session_bytes"], 1401,
        "at the bound exactly"
    );
    assert_eq!(stats["total"]["session_evictions"], 0);
    assert_eq!(write(&mut conn, &s[3]), 204);
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&s[0]), None).status,
        401,
        "evicted"
    );
    for live in &s[1..] {
        let r = request(&mut conn, "GET", "/session/data/v", Some(live), None);
        assert_eq!((r.status, r.text()), (200, value.clone()));
    }
    let stats = server.stats();
    assert_eq!(stats["total"]["session_bytes"], 1401);
    assert_eq!(stats["total"]["session_evictions"], 1);
}

/// `--session-cookie-max-age`: the cookie lasts that long in the browser, its rotations too;
/// without it, a browser-session cookie (review: only the refusal of 0 was tested).
#[test]
fn the_session_cookie_carries_its_max_age() {
    let server = Server::start(&["--session-cookie-max-age", "3600"]);
    let mut conn = Conn::new(server.connect());
    let created = request(&mut conn, "POST", "/session", None, None);
    let set_cookie = created.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.ends_with("; Max-Age=3600"), "{set_cookie}");
    let cookie = cookie_of(&created);
    let rotated = request(&mut conn, "POST", "/session/rotate", Some(&cookie), None);
    let set_cookie = rotated.header("set-cookie").unwrap();
    assert!(set_cookie.ends_with("; Max-Age=3600"), "{set_cookie}");
    let server = Server::start(&[]);
    let mut conn = Conn::new(server.connect());
    let created = request(&mut conn, "POST", "/session", None, None);
    let set_cookie = created.header("set-cookie").unwrap();
    assert!(!set_cookie.contains("Max-Age"), "{set_cookie}");
}

#[test]
fn a_write_past_the_bytes_bound_gets_413_and_changes_nothing() {
    // Each value counts its name, its JSON and 64 bytes for its place in memory.
    let server = Server::start(&["--max-session-bytes", "192"]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let fits = format!("\"{}\"", "a".repeat(40)); // 1 + 42 + 64 = 107 bytes
    assert_eq!(
        request(
            &mut conn,
            "PUT",
            "/session/data/a",
            Some(&cookie),
            Some(&fits)
        )
        .status,
        204
    );
    let too_much = format!("\"{}\"", "b".repeat(30)); // 107 + 97 > 192
    assert_eq!(
        request(
            &mut conn,
            "PUT",
            "/session/data/b",
            Some(&cookie),
            Some(&too_much)
        )
        .status,
        413
    );
    let data = json(&request(&mut conn, "GET", "/session", Some(&cookie), None));
    assert_eq!(data["data"].as_object().unwrap().len(), 1);
    // Replacing a value counts the new size (117), not the sum (224).
    let replace = format!("\"{}\"", "c".repeat(50));
    assert_eq!(
        request(
            &mut conn,
            "PUT",
            "/session/data/a",
            Some(&cookie),
            Some(&replace)
        )
        .status,
        204
    );
    // At the bound: 117 + (1 + 10 + 64) is 192 exactly; one byte more is 413 (review: only
    // writes far on either side were tested).
    let put_b = |conn: &mut Conn, value: &str| {
        request(conn, "PUT", "/session/data/b", Some(&cookie), Some(value)).status
    };
    let at_bound = format!("\"{}\"", "d".repeat(8));
    assert_eq!(put_b(&mut conn, &at_bound), 204);
    assert_eq!(put_b(&mut conn, &format!("\"{}\"", "e".repeat(9))), 413);
    let b = request(&mut conn, "GET", "/session/data/b", Some(&cookie), None);
    assert_eq!(b.body, at_bound.as_bytes(), "the value at the bound stays");
}

#[test]
fn garbled_truncated_and_foreign_ids_are_unknown() {
    let server = Server::start(&[]);
    let other_node = Server::start(&["--node-id", "1"]);
    let mut conn = Conn::new(server.connect());
    let real = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let foreign = cookie_of(&request(
        &mut Conn::new(other_node.connect()),
        "POST",
        "/session",
        None,
        None,
    ));
    let id = real.trim_start_matches("percore_sid=");
    // The same random part claimed for shard 7 (which does not exist): AAAAB... encodes node 0 shard 7.
    let wrong_shard = {
        use std::fmt::Write as _;
        let mut s = String::new();
        write!(s, "AAAAB{}", &id[5..]).unwrap();
        s
    };
    let cases = [
        "percore_sid=".to_string(),
        "percore_sid=garbage".to_string(),
        format!("percore_sid={}", &id[..id.len() - 1]),
        format!("percore_sid={id}x"),
        format!(
            "percore_sid={}",
            id.replace(|c: char| c.is_ascii_lowercase(), "Z")
        ),
        format!("percore_sid={}", "*".repeat(27)),
        format!("percore_sid={wrong_shard}"),
        foreign.clone(),
    ];
    for cookie in &cases {
        let r = request(&mut conn, "GET", "/session", Some(cookie), None);
        assert_eq!(r.status, 401, "{cookie}");
    }
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&real), None).status,
        200,
        "the connection survives"
    );
    // No cookie at all.
    assert_eq!(
        request(&mut conn, "GET", "/session", None, None).status,
        401
    );
}

#[test]
fn sessions_survive_a_graceful_restart() {
    let dir = common::temp_dir("persist");
    let dir_arg = dir.path().to_str().unwrap();
    let server = Server::start(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    let cookies: Vec<String> = (0..6)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    for (i, cookie) in cookies.iter().enumerate() {
        let mut c = Conn::new(server.connect());
        assert_eq!(
            request(
                &mut c,
                "PUT",
                "/session/data/n",
                Some(cookie),
                Some(&i.to_string())
            )
            .status,
            204
        );
    }
    let destroyed = cookies[5].clone();
    assert_eq!(
        request(&mut conn, "DELETE", "/session", Some(&destroyed), None).status,
        204
    );
    drop(conn);
    server.stop();

    let server = Server::start(&["--data-dir", dir_arg]);
    for (i, cookie) in cookies.iter().enumerate().take(5) {
        let mut c = Conn::new(server.connect());
        let r = request(&mut c, "GET", "/session/data/n", Some(cookie), None);
        assert_eq!(
            (r.status, json(&r)),
            (200, serde_json::json!(i)),
            "session {i}"
        );
    }
    assert_eq!(
        request(
            &mut Conn::new(server.connect()),
            "GET",
            "/session",
            Some(&destroyed),
            None
        )
        .status,
        401
    );
}

/// A value at the nesting bound is kept and read back after a restart; one past it is refused.
/// Found in review: a value accepted 124 levels deep made the shard's whole snapshot unreadable,
/// and every session on that shard, logged-in ones included, was gone after the restart.
#[test]
fn a_deep_value_at_the_bound_survives_a_restart_and_one_past_it_is_refused() {
    let depth_max = 64; // SESSION_VALUE_DEPTH_MAX
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let dir = common::temp_dir("deep-value");
    let dir_arg = dir.path().to_str().unwrap();
    let server = one_shard(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let put = |conn: &mut Conn, key: &str, body: &str| {
        let path = format!("/session/data/{key}");
        request(conn, "PUT", &path, Some(&cookie), Some(body))
    };
    assert_eq!(put(&mut conn, "flat", "1").status, 204);
    assert_eq!(put(&mut conn, "deep", &nested(depth_max)).status, 204);
    let past = put(&mut conn, "deeper", &nested(depth_max + 1));
    assert_eq!(past.status, 400, "{}", past.text());
    assert!(
        past.text().contains("more than 64 arrays or objects"),
        "{}",
        past.text()
    );
    // What the review sent (124 to 127 levels were accepted), and past serde_json's own limit.
    for depth in [124, 127, 200] {
        assert_eq!(
            put(&mut conn, "deeper", &nested(depth)).status,
            400,
            "{depth}"
        );
    }
    drop(conn);
    server.stop();

    let server = one_shard(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    let r = request(&mut conn, "GET", "/session", Some(&cookie), None);
    assert_eq!(r.status, 200, "the session is back: {}", r.text());
    let data = &json(&r)["data"];
    assert_eq!(data["flat"], serde_json::json!(1));
    let deep: serde_json::Value = serde_json::from_str(&nested(depth_max)).unwrap();
    assert_eq!(data["deep"], deep);
    assert!(data.get("deeper").is_none());
}

/// The session value `k` of `cookie`, read on a new connection: (status, body).
fn value_k(server: &Server, cookie: &str) -> (u16, String) {
    let mut conn = Conn::new(server.connect());
    let r = request(&mut conn, "GET", "/session/data/k", Some(cookie), None);
    (r.status, r.text())
}

#[test]
fn a_crash_loses_at_most_what_changed_since_the_last_snapshot() {
    let dir = common::temp_dir("crash");
    let dir_arg = dir.path().to_str().unwrap();
    let server = Server::start(&["--data-dir", dir_arg, "--session-snapshot-interval", "0.5"]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    assert_eq!(
        request(
            &mut conn,
            "PUT",
            "/session/data/k",
            Some(&cookie),
            Some("42")
        )
        .status,
        204
    );
    std::thread::sleep(Duration::from_millis(1600));
    server.crash(); // SIGKILL: no shutdown snapshot
    let server = Server::start(&["--data-dir", dir_arg]);
    assert_eq!(value_k(&server, &cookie), (200, "42".to_string()));
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Writes shard 0's snapshot (node 0) of `sessions` sessions of one value of `value_bytes`
/// each, live now; returns its size.
fn write_big_snapshot(dir: &std::path::Path, sessions: usize, value_bytes: usize) -> u64 {
    use percore::session::persist;
    use percore::session::store::{SessionRecord, StoredValue};
    let now = percore::runtime::now_ms();
    let mut encoder = persist::Encoder::new(0, 0);
    for n in 0..sessions {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
        let mut data = std::collections::BTreeMap::new();
        let value = serde_json::Value::String(format!("{n:08}{}", "v".repeat(value_bytes)));
        data.insert("blob".to_string(), StoredValue::new(&value));
        let record = SessionRecord {
            created_ms: now,
            accessed_ms: now,
            data,
        };
        encoder.push(&key, &record);
    }
    let file_bytes = encoder.finish();
    persist::write_file(&persist::path(dir, 0), &file_bytes).unwrap();
    file_bytes.len() as u64
}

/// A shutdown while a periodic snapshot is being written waits for it, then writes its own:
/// both went through one temporary file, the shutdown's truncating it under the periodic one,
/// which renamed it into place half-written (found in review). Every session is back after.
#[test]
fn a_shutdown_during_a_snapshot_leaves_a_whole_one() {
    const SESSIONS: usize = 3_000;
    let dir = common::temp_dir("snapshot-at-stop");
    let dir_arg = dir.path().to_str().unwrap();
    write_big_snapshot(dir.path(), SESSIONS, 8_000);
    let tmp = percore::session::persist::path(dir.path(), 0).with_extension("snap.tmp");
    let server = one_shard(&["--data-dir", dir_arg, "--session-snapshot-interval", "0.2"]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let put = request(
        &mut conn,
        "PUT",
        "/session/data/k",
        Some(&cookie),
        Some("7"),
    );
    assert_eq!(put.status, 204);
    // The periodic snapshot of that change is being written: stop now.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tmp.exists() {
        assert!(std::time::Instant::now() < deadline, "no snapshot began");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(conn);
    server.stop();
    let server = one_shard(&["--data-dir", dir_arg]);
    assert_eq!(server.stats()["total"]["sessions"], SESSIONS + 1);
    assert_eq!(value_k(&server, &cookie), (200, "7".to_string()));
}

/// A start that loads a big snapshot, and the snapshot written after it, hold the store about
/// once: the file's bytes were held beside the parsed sessions at a start, and every snapshot
/// encoded a whole copy of the store before writing it (found in review: twice the store).
#[test]
fn loading_and_writing_a_big_snapshot_hold_the_store_about_once() {
    use percore::session::persist;
    const SESSIONS: usize = 6_000;
    let baseline = {
        let server = one_shard(&[]);
        let peak = peak_rss(server.child.id());
        server.stop();
        peak
    };
    let dir = common::temp_dir("big-snapshot");
    let dir_arg = dir.path().to_str().unwrap();
    let path = persist::path(dir.path(), 0);
    let snapshot = write_big_snapshot(dir.path(), SESSIONS, 8_000);
    let server = one_shard(&["--data-dir", dir_arg, "--session-snapshot-interval", "0.2"]);
    let pid = server.child.id();
    let stats = server.stats();
    assert_eq!(stats["total"]["sessions"], SESSIONS, "{stats}");
    let loaded = peak_rss(pid);
    // A change to the store: the next upkeep writes a snapshot.
    let written_before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "POST", "/session", None, None).status,
        201
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&path).unwrap().modified().unwrap() == written_before {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = peak_rss(pid);
    eprintln!(
        "snapshot {} MiB: peak {} MiB above an idle server's after the load, {} MiB after a \
         snapshot",
        snapshot >> 20,
        loaded.saturating_sub(baseline) >> 20,
        written.saturating_sub(baseline) >> 20
    );
    // The store once (about 1.3 times the snapshot's bytes: its bookkeeping and the
    // allocator's size classes), and a chunk: measured 1.3x after the load and 1.5x after a
    // snapshot, where it was 2.3x and 4.3x.
    let bound = baseline + snapshot * 7 / 4;
    assert!(
        loaded < bound,
        "load: {loaded} bytes at peak, bound {bound}"
    );
    assert!(
        written < bound,
        "snapshot: {written} bytes at peak, bound {bound}"
    );
    server.stop();
}

/// Found in review: a session's use moved its access time in memory only, the snapshot was
/// written only when something else changed, and a start judges idle expiry by the access time
/// on disk: a user who only read for longer than the idle timeout after logging in was logged
/// out by a crash. Each read here is within the idle timeout of the one before, and the last
/// write is well past it when the server is killed.
#[test]
fn a_session_in_use_but_only_read_survives_a_crash() {
    let dir = common::temp_dir("crash-read");
    let dir_arg = dir.path().to_str().unwrap();
    let args = [
        "--data-dir",
        dir_arg,
        "--session-snapshot-interval",
        "0.3",
        "--session-idle-timeout",
        "2",
    ];
    let server = Server::start(&args);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let put = request(
        &mut conn,
        "PUT",
        "/session/data/k",
        Some(&cookie),
        Some("42"),
    );
    assert_eq!(put.status, 204);
    let written = std::time::Instant::now();
    while written.elapsed() < Duration::from_millis(3500) {
        std::thread::sleep(Duration::from_millis(300));
        let read = request(&mut conn, "GET", "/session/data/k", Some(&cookie), None);
        assert_eq!(read.status, 200, "{}", read.text());
    }
    // Past two snapshot intervals after the last read: it is on disk.
    std::thread::sleep(Duration::from_millis(1000));
    server.crash();
    let server = Server::start(&args);
    assert_eq!(value_k(&server, &cookie), (200, "42".to_string()));
}

#[test]
fn a_corrupt_snapshot_is_reported_and_skipped() {
    let dir = common::temp_dir("corrupt");
    std::fs::write(
        dir.path().join("sessions-0.snap"),
        b"PCSESS1\n\x00\x00\x00\x00garbage",
    )
    .unwrap();
    std::fs::write(dir.path().join("sessions-1.snap"), b"not a snapshot at all").unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "POST", "/session", None, None).status,
        201
    );
    assert_eq!(server.stats()["total"]["sessions"], 1);
}

#[test]
fn persistence_can_be_switched_off() {
    let dir = common::temp_dir("off");
    let server = Server::start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--no-session-persist",
    ]);
    let mut conn = Conn::new(server.connect());
    request(&mut conn, "POST", "/session", None, None);
    drop(conn);
    server.stop();
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("sessions-")
        })
        .count();
    assert_eq!(snapshots, 0, "no session snapshot written");
    let _ = std::io::stdout().flush();
}

/// A users file with one user, `ann` / `ann-pw`, in `dir`; its path.
fn users_file(dir: &std::path::Path) -> String {
    let hash = common::tool("hash-password", "ann-pw");
    let path = dir.join("users.toml");
    std::fs::write(
        &path,
        format!("[[user]]\nname = \"ann\"\npassword_hash = {hash:?}\nroles = []\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// POST /auth/login as ann; the session cookie.
fn log_in(conn: &mut Conn) -> String {
    let body = r#"{"username":"ann","password":"ann-pw"}"#;
    let r = request(conn, "POST", "/auth/login", None, Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    cookie_of(&r)
}

/// Review finding: at `--max-sessions` the LRU bound evicted whatever session was oldest, so
/// cheap anonymous `POST /session`s logged users out. Anonymous sessions are evicted first;
/// with every session logged in, a new one is refused with 503 and Retry-After.
#[test]
fn anonymous_sessions_never_evict_a_logged_in_user() {
    let dir = common::temp_dir("evict-auth");
    let users = users_file(dir.path());
    let server = one_shard(&["--max-sessions", "5", "--users", &users]);
    let mut conn = Conn::new(server.connect());
    let mut logged_in = vec![log_in(&mut conn)];
    for _ in 0..10 {
        assert_eq!(
            request(&mut conn, "POST", "/session", None, None).status,
            201
        );
    }
    assert_eq!(
        request(&mut conn, "GET", "/auth/me", Some(&logged_in[0]), None).status,
        200,
        "ten anonymous sessions past the bound of 5 logged nobody out"
    );
    for _ in 0..4 {
        logged_in.push(log_in(&mut conn)); // each evicts one of the 4 anonymous sessions left
    }
    let refused = request(&mut conn, "POST", "/session", None, None);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert!(refused.header("set-cookie").is_none());
    for cookie in &logged_in {
        assert_eq!(
            request(&mut conn, "GET", "/auth/me", Some(cookie), None).status,
            200
        );
    }
    let stats = server.stats();
    assert_eq!(stats["total"]["session_evictions"], 6 + 4, "{stats}");
    assert_eq!(stats["total"]["sessions"], 5);
    assert_eq!(stats["total"]["session_refusals"], 1, "{stats}");
}

/// Review finding: with two session cookies the first id that decoded was taken, live or not,
/// so a stale (or planted) cookie sent first hid the real session. The first live one of up to
/// `SESSION_COOKIE_IDS_MAX` (4) is used, wherever its owner shard is.
#[test]
fn a_stale_cookie_sent_first_does_not_hide_the_live_session() {
    let server = Server::start(&["--expose-shard"]);
    let [mut a, mut b] = one_per_shard(&server);
    let live = cookie_of(&request(&mut b, "POST", "/session", None, None));
    assert_eq!(
        request(&mut a, "PUT", "/session/data/n", Some(&live), Some("7")).status,
        204
    );
    let stale = cookie_of(&request(&mut a, "POST", "/session", None, None));
    assert_eq!(
        request(&mut a, "DELETE", "/session", Some(&stale), None).status,
        204
    );
    let never = "percore_sid=AAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    for conn in [&mut a, &mut b] {
        for cookies in [
            format!("{stale}; {live}"),
            format!("{live}; {stale}"),
            format!("{never}; {stale}; percore_sid=garbage; {live}"),
        ] {
            let r = request(conn, "GET", "/session/data/n", Some(&cookies), None);
            assert_eq!((r.status, r.text()), (200, "7".to_string()), "{cookies}");
        }
        // Past the bound of 4 ids the live one is not looked for.
        let five = format!("{stale}; {never}; {stale}; {never}; {live}");
        assert_eq!(
            request(conn, "GET", "/session", Some(&five), None).status,
            401
        );
    }
    let both = format!("{stale}; {live}");
    assert_eq!(
        request(&mut a, "PUT", "/session/data/n", Some(&both), Some("8")).status,
        204
    );
    assert_eq!(
        request(&mut b, "GET", "/session/data/n", Some(&live), None).text(),
        "8"
    );
    assert_eq!(
        request(&mut a, "DELETE", "/session", Some(&both), None).status,
        204
    );
    assert_eq!(
        request(&mut b, "GET", "/session", Some(&live), None).status,
        401,
        "the live session was the one destroyed"
    );
}

/// POST /auth/logout with the session cookie and a same-origin Origin (the CSRF check).
fn log_out(conn: &mut Conn, cookie: &str) -> u16 {
    conn.send(
        format!(
            "POST /auth/logout HTTP/1.1\r\nHost: t\r\nOrigin: http://t\r\nCookie: {cookie}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    conn.response(false).unwrap().status
}

/// Review finding (t4.py): destroy and rotation changed only memory, so after `kill -9` the
/// snapshot brought logged-out, destroyed and rotated-away ids back. Each is in the owner's
/// revocation log, durable before the answer, and dropped from the snapshot at start; after
/// the next snapshot the log is cut.
#[test]
fn logout_destroy_and_rotation_survive_a_crash() {
    let dir = common::temp_dir("revoke");
    let users = users_file(dir.path());
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let args = [
        "--expose-shard",
        "--users",
        &users,
        "--data-dir",
        data,
        "--session-snapshot-interval",
        "0.5",
    ];
    let server = Server::start(&args);
    let [mut a, mut b] = one_per_shard(&server);
    let s: Vec<String> = (0..5)
        .map(|i| {
            let cookie = cookie_of(&request(&mut a, "POST", "/session", None, None));
            let put = request(
                &mut a,
                "PUT",
                "/session/data/n",
                Some(&cookie),
                Some(&i.to_string()),
            );
            assert_eq!(put.status, 204);
            cookie
        })
        .collect();
    let logged_in = log_in(&mut a);
    std::thread::sleep(Duration::from_millis(1600)); // a snapshot holds them all
    assert_eq!(log_out(&mut b, &logged_in), 204);
    assert_eq!(
        request(&mut a, "GET", "/auth/me", Some(&logged_in), None).status,
        401
    );
    for (conn, cookie) in [(&mut b, &s[0]), (&mut a, &s[4])] {
        assert_eq!(
            request(conn, "DELETE", "/session", Some(cookie), None).status,
            204
        );
    }
    let rotated = request(&mut b, "POST", "/session/rotate", Some(&s[1]), None);
    assert_eq!(rotated.status, 200);
    let mut dead = vec![logged_in, s[0].clone(), s[4].clone(), s[1].clone()];
    let check = |server: &Server, dead: &[String], live: &[usize], when: &str| {
        let mut conn = Conn::new(server.connect());
        for cookie in dead {
            let me = request(&mut conn, "GET", "/auth/me", Some(cookie), None);
            assert_eq!(me.status, 401, "{when}: {cookie} came back");
            let read = request(&mut conn, "GET", "/session", Some(cookie), None);
            assert_eq!(read.status, 401, "{when}: {cookie} came back");
        }
        for &i in live {
            let r = request(&mut conn, "GET", "/session/data/n", Some(&s[i]), None);
            assert_eq!((r.status, r.text()), (200, i.to_string()), "{when}");
        }
    };
    server.crash();
    let server = Server::start(&args);
    check(&server, &dead, &[2, 3], "killed right after");

    // The logs found at start, and a destroy after it, are cut once a snapshot covers them.
    let [_, mut b] = one_per_shard(&server);
    assert_eq!(
        request(&mut b, "DELETE", "/session", Some(&s[3]), None).status,
        204
    );
    dead.push(s[3].clone());
    std::thread::sleep(Duration::from_millis(1600));
    for shard in 0..2 {
        let log = dir.path().join(format!("data/sessions-{shard}.revoked"));
        let bytes = std::fs::metadata(&log).map_or(0, |m| m.len());
        assert_eq!(
            bytes, 0,
            "shard {shard}: a snapshot covers every revocation"
        );
    }
    server.crash();
    let server = Server::start(&args);
    check(&server, &dead, &[2], "killed after a snapshot and a cut");
}

/// Removes the transaction log's segment files (`wal-*.log`) from a data dir.
fn drop_transaction_log(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("wal-") && name.ends_with(".log") || name == "wal.shards" {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// Review finding: a run with fewer shards could not reach the sessions of the shards it lacks
/// (their ids were unknown, so a logout of one answered 204 and changed nothing), and a later
/// run with the old count brought them back. Their files are dropped at start.
#[test]
fn fewer_shards_drop_the_sessions_of_the_others_for_good() {
    let dir = common::temp_dir("shards");
    let dir_arg = dir.path().to_str().unwrap();
    let server = Server::start(&["--data-dir", dir_arg, "--expose-shard"]);
    let [mut a, mut b] = one_per_shard(&server);
    let on_0 = cookie_of(&request(&mut a, "POST", "/session", None, None));
    let on_1 = cookie_of(&request(&mut b, "POST", "/session", None, None));
    drop((a, b));
    server.stop();
    assert!(dir.path().join("sessions-1.snap").exists());

    // Another shard count is refused while the transaction log holds the old count's files
    // (keys are placed by shard count): the operator who changes it drops the key-value log.
    drop_transaction_log(dir.path());
    let server = one_shard(&["--data-dir", dir_arg]);
    assert!(
        !dir.path().join("sessions-1.snap").exists(),
        "shard 1's snapshot is dropped"
    );
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&on_0), None).status,
        200
    );
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&on_1), None).status,
        401
    );
    drop(conn);
    server.stop();

    drop_transaction_log(dir.path());
    let server = Server::start(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&on_0), None).status,
        200
    );
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&on_1), None).status,
        401,
        "a session of a shard that a run did without stays gone"
    );
}

/// Review finding: when the revocation log failed, a destroy had already taken effect in
/// memory: it answered 503, but a retry found the id unknown (a logout answered that with 204)
/// although nothing on disk said it was dead, so a crash brought it back. Until its revocation
/// is durable, every operation on such an id is 503.
#[test]
fn an_id_whose_revocation_could_not_be_logged_answers_503_not_unknown() {
    let dir = common::temp_dir("failing-log");
    let dir_arg = dir.path().to_str().unwrap();
    let server = one_shard(&["--data-dir", dir_arg, "--session-snapshot-interval", "3600"]);
    let mut conn = Conn::new(server.connect());
    let doomed = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let other = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    // Every write to the log fails from now on (it is opened at its first append).
    let log = dir.path().join("sessions-0.revoked");
    assert!(!log.exists(), "nothing revoked yet");
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let first = request(&mut conn, "DELETE", "/session", Some(&doomed), None);
    assert_eq!(first.status, 503, "{}", first.text());
    for (method, path) in [
        ("DELETE", "/session"),
        ("GET", "/session"),
        ("POST", "/session/rotate"),
    ] {
        let again = request(&mut conn, method, path, Some(&doomed), None);
        assert_eq!(
            again.status,
            503,
            "{method} {path} after the failed destroy: {}",
            again.text()
        );
    }
    // The log refuses what comes next: nothing changes.
    assert_eq!(
        request(&mut conn, "DELETE", "/session", Some(&other), None).status,
        503
    );
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&other), None).status,
        200
    );
}

/// Review finding: start-up inserted every session of the snapshot and only then removed the
/// ones the revocation log names, so after a crash and a start with a lower `--max-sessions`
/// dead sessions evicted live ones on their way in. They are never inserted now.
#[test]
fn revoked_sessions_do_not_evict_live_ones_at_start() {
    let dir = common::temp_dir("revoked-bound");
    let dir_arg = dir.path().to_str().unwrap();
    let start = |extra: &[&str]| one_shard(&[&["--data-dir", dir_arg], extra].concat());
    let server = start(&["--session-snapshot-interval", "0.5"]);
    let mut conn = Conn::new(server.connect());
    // The two live sessions are the least recently used: a snapshot lists them first.
    let live: Vec<String> = (0..2)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    let doomed: Vec<String> = (0..8)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    std::thread::sleep(Duration::from_millis(1600)); // a snapshot with all ten
    for cookie in &doomed {
        assert_eq!(
            request(&mut conn, "DELETE", "/session", Some(cookie), None).status,
            204
        );
    }
    server.crash(); // SIGKILL: the destroys are only in the revocation log
    let server = start(&["--max-sessions", "2"]);
    let mut conn = Conn::new(server.connect());
    for cookie in &live {
        assert_eq!(
            request(&mut conn, "GET", "/session", Some(cookie), None).status,
            200
        );
    }
    for cookie in &doomed {
        assert_eq!(
            request(&mut conn, "GET", "/session", Some(cookie), None).status,
            401
        );
    }
}

/// Review finding: a revocation log that could not be read at start (the shard rightly started
/// without its sessions) was then appended to where it lay, over its bad record, while the old
/// snapshot stayed: after a crash the log read as valid, and a logged-out session came back.
/// The log now starts failed: destroys wait for a forced snapshot, and the log is rewritten.
#[test]
fn an_unreadable_revocation_log_never_lets_a_dead_session_back() {
    let dir = common::temp_dir("unreadable-log");
    let dir_arg = dir.path().to_str().unwrap();
    let start = || one_shard(&["--data-dir", dir_arg, "--session-snapshot-interval", "3600"]);
    let server = start();
    let mut conn = Conn::new(server.connect());
    let dead = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    drop(conn);
    server.stop();
    // The snapshot holds `dead`; the log has a bad record before a good one.
    let record = |key: [u8; 16]| {
        let mut record = key.to_vec();
        record.extend_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&record);
        record.extend_from_slice(&crc.to_le_bytes());
        record
    };
    let mut log = record([1; 16]);
    log[0] ^= 0xff;
    log.extend(record([2; 16]));
    std::fs::write(dir.path().join("sessions-0.revoked"), &log).unwrap();

    let server = start();
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&dead), None).status,
        401
    );
    // A destroy in this run, retried until the log takes it (after the forced snapshot).
    let other = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = request(&mut conn, "DELETE", "/session", Some(&other), None).status;
        if status == 204 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the log never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.crash(); // SIGKILL
    let server = start();
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&dead), None).status,
        401
    );
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&other), None).status,
        401
    );
}

/// Review finding: a run with `--no-session-persist` left the snapshots of an earlier run, and
/// could not revoke what they held; a later persisted run brought back sessions logged out in
/// between. They are removed at a start without persistence.
#[test]
fn a_run_without_persistence_drops_the_old_snapshots() {
    let dir = common::temp_dir("no-persist");
    let dir_arg = dir.path().to_str().unwrap();
    let server = Server::start(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    drop(conn);
    server.stop();
    let snapshots = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("sessions-")
            })
            .count()
    };
    assert!(snapshots() > 0);
    let server = Server::start(&["--data-dir", dir_arg, "--no-session-persist"]);
    assert_eq!(snapshots(), 0, "the old snapshots are gone");
    drop(server);
    let server = Server::start(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&cookie), None).status,
        401
    );
}

/// Review finding: a second destroy of an id whose first destroy was still waiting for its
/// revocation to reach the disk found the id unknown and answered at once (a logout answered
/// 204 before the sync; a crash then brought the id back). It now waits for the same record.
/// The log here is a FIFO nobody reads yet, so the sync cannot happen until the test allows it.
#[test]
fn a_second_destroy_waits_for_the_first_ones_revocation() {
    use std::io::Read;
    let dir = common::temp_dir("pending-revocation");
    let dir_arg = dir.path().to_str().unwrap();
    let server = one_shard(&["--data-dir", dir_arg]);
    let mut conn = Conn::new(server.connect());
    let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
    let log = dir.path().join("sessions-0.revoked");
    let fifo = std::ffi::CString::new(log.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path of our own temp dir.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let delete = format!("DELETE /session HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n");
    let mut first = Conn::new(server.connect());
    first.send(delete.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let mut second = Conn::new(server.connect());
    second.send(delete.as_bytes());
    second
        .stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = second.stream.peek(&mut byte);
    assert!(
        early.is_err(),
        "the second destroy answered before the first one's revocation was written: {early:?}"
    );
    // Let the log's open go through (the reader ends when the server does). A FIFO takes no
    // positioned write, so the log then fails: the first destroy gets 503, and the second,
    // which waited on the same record, the same answer, never the early 401 of an unknown id.
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_end(&mut all));
    });
    let [first, second] = [&mut first, &mut second].map(|conn| {
        conn.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.response(false).expect("an answer").status
    });
    assert_eq!((first, second), (503, 503));
}

/// `--max-session-revocations`, at the bound: while snapshots fail (the snapshot's path is a
/// directory here, so its rename fails) the revocation log cannot be cut, and at 8 records the
/// 9th destroy is 503 and its session lives on. Once a snapshot succeeds (the forced one is
/// retried, backing off to `--session-snapshot-interval`) the log is cut and it goes through.
#[test]
fn destroys_past_the_revocation_bound_wait_for_a_snapshot() {
    let dir = common::temp_dir("revocation-bound");
    let server = one_shard(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--max-session-revocations",
        "8",
        "--session-snapshot-interval",
        "1",
    ]);
    let blocker = dir.path().join("sessions-0.snap");
    std::fs::create_dir_all(blocker.join("not-a-file")).unwrap();
    let mut conn = Conn::new(server.connect());
    let cookies: Vec<String> = (0..9)
        .map(|_| cookie_of(&request(&mut conn, "POST", "/session", None, None)))
        .collect();
    for cookie in &cookies[..8] {
        let destroy = request(&mut conn, "DELETE", "/session", Some(cookie), None);
        assert_eq!(destroy.status, 204, "{}", destroy.text());
    }
    let refused = request(&mut conn, "DELETE", "/session", Some(&cookies[8]), None);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&cookies[8]), None).status,
        200,
        "a refused destroy changes nothing"
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let destroy = request(&mut conn, "DELETE", "/session", Some(&cookies[8]), None);
        if destroy.status == 204 {
            break;
        }
        assert_eq!(destroy.status, 503, "{}", destroy.text());
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot cut the log within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(blocker.is_file(), "the snapshot that cut the log");
    assert_eq!(
        request(&mut conn, "GET", "/session", Some(&cookies[8]), None).status,
        401
    );
}

/// Review debt: a run with another `--node-id` skipped the snapshot on disk (its sessions are
/// another node's) but left it there until something changed; crashed before that, it let a
/// later run with the old node id load sessions as if nothing had happened since. A skipped
/// snapshot is replaced at once (on the upkeep's first pass).
#[test]
fn a_snapshot_of_another_node_is_replaced_at_once() {
    let dir = common::temp_dir("node-change");
    let dir_arg = dir.path().to_str().unwrap();
    let start = |node: &str| one_shard(&["--data-dir", dir_arg, "--node-id", node]);
    let server = start("0");
    let cookie = cookie_of(&request(
        &mut Conn::new(server.connect()),
        "POST",
        "/session",
        None,
        None,
    ));
    server.stop();
    let snapshot = dir.path().join("sessions-0.snap");
    let node_0 = std::fs::read(&snapshot).unwrap();

    let server = start("1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read(&snapshot).unwrap() == node_0 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 left node 0's snapshot in place"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.crash(); // SIGKILL: no shutdown snapshot

    let server = start("0");
    assert_eq!(
        request(
            &mut Conn::new(server.connect()),
            "GET",
            "/session",
            Some(&cookie),
            None
        )
        .status,
        401,
        "a session of node 0's snapshot came back after a run of node 1"
    );
}

/// Found while checking what start-up reads: the session files were opened plainly, so a FIFO under
/// their name blocked the shard's start for good (the server never listened), and a link to
/// `/dev/zero` would read without end. Only regular files are read now: anything else fails
/// closed (no sessions from it, said on stderr), and the server starts and serves.
#[test]
fn a_session_file_that_is_not_a_regular_file_fails_closed_and_the_start_goes_on() {
    for (name, kind) in [
        ("sessions-0.revoked", "fifo"),
        ("sessions-0.snap", "fifo"),
        ("sessions-0.snap", "link"),
    ] {
        let dir = common::temp_dir("not-regular");
        let path = dir.path().join(name);
        if kind == "fifo" {
            let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo on a path of our own temp dir.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        } else {
            std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        }
        // Waits (bounded) for `listening on`: the start must not hang on the file.
        let server = one_shard(&["--data-dir", dir.path().to_str().unwrap()]);
        let mut conn = Conn::new(server.connect());
        let health = request(&mut conn, "GET", "/health", None, None).status;
        assert!(health == 200 || health == 503, "{name} ({kind}): {health}");
        if name.ends_with(".snap") {
            // Only the snapshot was unreadable: sessions work, from none.
            let created = request(&mut conn, "POST", "/session", None, None);
            assert!(created.status < 300, "{name} ({kind}): {}", created.status);
            // And it is replaced at once, as a skipped one is: left there, a later run that
            // could read it brought back what this run destroyed (found in review).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} ({kind}) not replaced"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        server.stop();
    }
}

/// Review finding (black-box review of the release binary): two `DELETE /session` racing one
/// `POST /session/rotate` of the same session all succeeded (204, 204, 200) in 3 runs of 20,
/// and the rotated id lived on: a destroy that arrived while the rotation's revocation of the
/// old id was not yet synced waited for that record's ticket as if the id had been destroyed.
/// A 204 now means that neither the old id nor the one a concurrent rotation made from it is
/// live. Each round sends the three requests back to back on three connections, so they reach
/// the one shard together, inside the rotation's sync.
#[test]
fn a_destroy_racing_a_rotation_ends_the_rotated_session_too() {
    const ROUNDS: usize = 100;
    let server = one_shard(&[]);
    let mut setup = Conn::new(server.connect());
    let mut raced = 0;
    for round in 0..ROUNDS {
        let old = cookie_of(&request(&mut setup, "POST", "/session", None, None));
        let [mut rotation, mut first, mut second] = [(); 3].map(|()| Conn::new(server.connect()));
        let rotate = format!("POST /session/rotate HTTP/1.1\r\nHost: t\r\nCookie: {old}\r\n\r\n");
        let delete = format!("DELETE /session HTTP/1.1\r\nHost: t\r\nCookie: {old}\r\n\r\n");
        rotation.send(rotate.as_bytes());
        first.send(delete.as_bytes());
        second.send(delete.as_bytes());
        let rotated = rotation.response(false).expect("a response");
        let destroys = [&mut first, &mut second].map(|conn| conn.response(false).unwrap().status);
        assert_eq!(
            request(&mut setup, "GET", "/session", Some(&old), None).status,
            401,
            "round {round}: the old id, after {destroys:?} and a rotation's {}",
            rotated.status
        );
        if rotated.status != 200 || !destroys.contains(&204) {
            continue;
        }
        raced += 1;
        let new = cookie_of(&rotated);
        assert_eq!(
            request(&mut setup, "GET", "/session", Some(&new), None).status,
            401,
            "round {round}: destroys {destroys:?} answered 204, and the rotated id is live"
        );
    }
    // Sent together, the three nearly always meet inside the revocation's sync (every round
    // in a debug build here). On a disk whose syncs are instant they may never meet; the
    // deterministic cases are in `session::tests::a_destroy_of_an_id_a_pending_rotation_ended_destroys_the_new_id`, so this one does
    // not insist, and says so.
    if raced == 0 {
        eprintln!("a_destroy_racing_a_rotation: no round raced; the end-to-end check did not run");
    }
}

/// Review finding: the upkeep looked at the revocation log's wish for a snapshot only every
/// 500 ms, so at a small `--max-session-revocations` sequential destroys filled the log before
/// any snapshot could cut it (168 of 200 got 503), although snapshots were healthy. The log
/// now wakes the upkeep as soon as it wants a snapshot. At 64 the snapshot starts at 16
/// records, and the other 48 are the room for its write: on a loaded 2-CPU machine a snapshot's
/// fsyncs took up to 74 ms, while 12 destroys went through, so at 16 this failed one run in
/// three. Without the wake it fails at 16, 32 and 64 every time (136 of 200 got 503 at 64).
#[test]
fn sequential_destroys_at_a_small_revocation_bound_all_succeed() {
    let server = one_shard(&["--max-session-revocations", "64"]);
    let mut conn = Conn::new(server.connect());
    for pair in 0..200 {
        let cookie = cookie_of(&request(&mut conn, "POST", "/session", None, None));
        let destroy = request(&mut conn, "DELETE", "/session", Some(&cookie), None);
        assert_eq!(destroy.status, 204, "destroy {pair}: {}", destroy.text());
    }
}
