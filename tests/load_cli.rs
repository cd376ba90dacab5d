//! Black-box tests of percore-load's handling of bad input: one clear line on stderr and exit code 2.

use std::net::TcpListener;
use std::process::Command;

fn check(args: &[&str], fragment: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_percore-load"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        stderr.starts_with("percore-load: ") && stderr.contains(fragment),
        "{args:?}: {stderr}"
    );
    assert!(output.stdout.is_empty(), "{args:?}");
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let live = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", live.local_addr().unwrap());
    let dead = format!("http://127.0.0.1:{}/", closed_port());
    let dir = tempfile::Builder::new()
        .prefix("percore-load-cli-")
        .tempdir()
        .unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "[[request]]\nweight = \"heavy\"\n").unwrap();
    let bad_toml = bad_toml.to_str().unwrap();
    check(&["--bogus", &url], "--bogus");
    check(&[], "required arguments were not provided: <URL>");
    check(&["not a url"], "invalid URL");
    check(&["https://127.0.0.1/"], "https");
    check(&["http://127.0.0.1:99999/"], "invalid URL");
    check(&[&dead], "cannot connect");
    check(&["-c", "0", &url], "--connections");
    check(&["-c", "1", "-t", "2", &url], "--threads");
    check(&["-d", "ten", &url], "--duration");
    check(&["--rate=-5", &url], "--rate");
    check(&["--rate", "0", &url], "--rate");
    check(
        &["--rate", "1e30", &url],
        "up to 1000000000, not 1000000000000000000000000000000",
    );
    check(&["--pipeline", "0", &url], "--pipeline");
    check(&["--cpus", "9999", &url], "--cpus");
    check(&["-H", "NoColon", &url], "header");
    check(&["--scenario", bad_toml, &url], "bad scenario file");
    check(
        &["--scenario", "/nonexistent/s.toml", &url],
        "bad scenario file",
    );
    check(&["--body", "/nonexistent/body", &url], "body file");
    // A device claims 0 bytes: the read is bounded, not only the claim (found in review).
    check(&["--body", "/dev/zero", &url], "over 16777216 bytes");
    check(&["--scenario", "/dev/zero", &url], "over 16777216 bytes");
    // Review of 2026-11-30: a framing header was dropped without a word, a p99 bound under the
    // histograms' resolution was taken, and the flags allowed petabytes of requests in flight.
    check(&["-H", "Content-Length: 5", &url], "frames the body itself");
    check(
        &["-H", "transfer-encoding: chunked", &url],
        "frames the body itself",
    );
    check(
        &["--find-max", "--p99-max", "0", &url],
        "--p99-max must be at least 1 us",
    );
    let long = format!("X-Long: {}", "x".repeat(100));
    check(
        &["-c", "100000", "--pipeline", "1024", "-H", &long, &url],
        "MiB in flight, over 4096 MiB",
    );
}

/// Review items 6, 9 and 10: scenario errors name file, line and key on one line; duplicate
/// names are refused; `--p99-max` needs `--find-max`; an unwritable output path is found
/// before the run (nothing on stdout).
#[test]
fn scenario_and_flag_errors_are_found_before_the_run() {
    let live = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", live.local_addr().unwrap());
    let dir = tempfile::Builder::new()
        .prefix("percore-load-cli-")
        .tempdir()
        .unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let typed = write("typed.toml", "[[request]]\npath = \"/a\"\nweight = \"9\"\n");
    check(
        &["--scenario", &typed, &url],
        &format!("bad scenario file {typed}: line 3 (weight): invalid type"),
    );
    let syntax = write("syntax.toml", "[[request]]\nweight = \n");
    check(&["--scenario", &syntax, &url], "line 2 (weight)");
    let dup = write(
        "dup.toml",
        "[[request]]\nname = \"a\"\npath = \"/x\"\n[[request]]\nname = \"a\"\npath = \"/y\"\n",
    );
    check(&["--scenario", &dup, &url], "both named \"a\"");
    check(&["--p99-max", "5ms", &url], "--p99-max needs --find-max");
    check(
        &["--json", "/nonexistent/dir/out.json", "-d", "1s", &url],
        "cannot write /nonexistent/dir/out.json",
    );
    // A directory too, before the run (review of 2026-11-30: found only after it).
    let dir_path = dir.path().to_str().unwrap();
    check(&["--hgrm", dir_path, "-d", "1s", &url], "cannot write");
}

/// Review item 3: with more connections than the hard RLIMIT_NOFILE allows, the run ran with
/// fewer and blamed the server with connect errors; now it is refused up front.
#[test]
fn too_few_file_descriptors_exit_2() {
    let live = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", live.local_addr().unwrap());
    let output = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 64 && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_percore-load"),
            "-c",
            "200",
            "-d",
            "1s",
            &url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("-c 200 needs") && stderr.contains("the limit is 64 (ulimit -n)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn help_exits_0() {
    let output = Command::new(env!("CARGO_BIN_EXE_percore-load"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--find-max"));
}
