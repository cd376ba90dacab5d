//! Black-box tests of percore-load against the real percore server: what the load generator counted must equal what /stats saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The percore binary: cargo's when this file is built inside the percore package, otherwise
/// `$PERCORE_BIN`. Without either, the tests say so and pass vacuously.
fn percore_bin() -> Option<String> {
    option_env!("CARGO_BIN_EXE_percore")
        .map(String::from)
        .or_else(|| std::env::var("PERCORE_BIN").ok())
}

/// How long percore may take to start, and to answer /stats.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A percore server on 127.0.0.1:0, killed on drop; its data dir is removed after that (fields
/// drop after `Drop::drop` has killed and reaped the child).
struct Percore {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Percore {
    fn start(bin: &str) -> Percore {
        let data = tempfile::Builder::new()
            .prefix("percore-load-test-")
            .tempdir()
            .unwrap();
        let mut child = Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--no-session-persist",
                "--data-dir",
            ])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("percore exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Percore {
            child,
            addr,
            _data: data,
        }
    }

    fn get_json(&self, path: &str) -> Value {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(STARTUP_TIMEOUT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
    }
}

impl Drop for Percore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_json(args: &[&str]) -> Value {
    let json = tempfile::Builder::new()
        .prefix("percore-load-percore-")
        .suffix(".json")
        .tempfile()
        .unwrap();
    let path = json.path();
    let output = Command::new(env!("CARGO_BIN_EXE_percore-load"))
        .args(args)
        .arg("--json")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check_counts_match(extra: &[&str]) {
    let Some(bin) = percore_bin() else {
        eprintln!("percore binary not found (set PERCORE_BIN); skipped");
        return;
    };
    let server = Percore::start(&bin);
    let url = format!("http://{}/plaintext", server.addr);
    let mut args = vec!["-c", "8", "-t", "2", "-d", "1s"];
    args.extend(extra);
    args.push(&url);
    let run = load_json(&args);
    let stats = server.get_json("/stats");
    let sent = run["run"]["requests"].as_u64().unwrap();
    // The /stats request counts itself before it snapshots the counters.
    assert_eq!(
        stats["total"]["requests"].as_u64().unwrap(),
        sent + 1,
        "{stats}"
    );
    assert!(
        stats["total"]["status_2xx"].as_u64().unwrap() >= sent,
        "{stats}"
    );
    assert_eq!(run["run"]["errors"]["total"].as_u64(), Some(0));
    assert!(sent > 100, "{run}");
}

#[test]
fn counts_match_percore_stats() {
    check_counts_match(&[]);
}

#[test]
fn pipelined_counts_match_percore_stats() {
    check_counts_match(&["--pipeline", "16"]);
}
