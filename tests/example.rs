//! The user-app example (`examples/hello.rs`, built by `cargo test`) runs and serves its own routes next to the built-in ones.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::Conn;

fn example_binary() -> PathBuf {
    // target/debug/percore -> target/debug/examples/hello
    let bin = PathBuf::from(common::BIN);
    let path = bin.parent().unwrap().join("examples").join("hello");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "hello"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example hello");
    }
    path
}

#[test]
fn hello_example_serves_params_middleware_and_builtins() {
    let server = common::Server::start_with(
        example_binary().to_str().unwrap(),
        &["--bind", "127.0.0.1:0", "--shards", "2"],
    );
    let mut conn = Conn::new(server.connect());
    let r = conn.get("/hello/ann");
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("hello, ann (#1 on shard "),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-powered-by"), Some("percore"));
    let r = conn.get("/hello/bob");
    assert!(
        r.text().starts_with("hello, bob (#2 on shard "),
        "per-shard state counts: {}",
        r.text()
    );
    assert_eq!(conn.get("/plaintext").body, b"Hello, World!");
}
