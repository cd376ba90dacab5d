//! percore: a thread-per-core HTTP/1.1 application server on glommio and io_uring. The library is the server; `main.rs` only hands the built-in routes to `main_with`.
//!
//! Embed it with your own routes:
//! ```no_run
//! use percore::router::{Request, Response, Router};
//! fn main() -> std::process::ExitCode {
//!     percore::main_with(|| Router::new().get("/hi", |_req: Request| async { Response::text(200, "hi\n") }))
//! }
//! ```

/// The `mimalloc` feature (on by default; an embedder with its own allocator turns it off).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes one line to stderr, like `eprintln!`, but a closed or broken stderr (a log shipper
/// that restarted, `2>&-`) loses the line, not the process: `eprintln!` panics when the write
/// fails, and a panic aborts (release profile), which turned a SIGTERM's "draining" line into
/// an abort without the shutdown snapshot (found in review). Once the server runs, a stderr
/// nobody reads blocks no thread that logs: see `log`. Every server log line goes through it.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::log::line(format!($($arg)*))
    };
}

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod log;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod txn;
pub mod wal;

use std::process::ExitCode;

use clap::Parser;

pub use config::Config;
pub use router::{Request, Response, Router};

/// A panic anywhere in the server (a handler's `unwrap` on request data, most likely) ends the
/// process with exit code 101 after the panic's own message, whatever the build's panic
/// strategy: with `panic = "abort"` it aborted (134), and where panics unwind (Cargo's default
/// for an embedder's build) a panic in a connection task ended its shard's thread without a
/// word while the process served on, half of it dead, with `/health` 200 (found in review). A
/// shard cannot be restarted alone; the process is, by its supervisor.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        // The standard report writes to stderr in place, which a stderr nobody reads blocks
        // for good, the process then half dead; it stays for a backtrace (RUST_BACKTRACE).
        if crate::log::started() && std::env::var_os("RUST_BACKTRACE").is_none() {
            crate::log_line!("thread '{name}' {info}");
        } else {
            report(info);
        }
        crate::log_line!("percore: thread {name} panicked: exiting now");
        crate::log::flush(crate::log::EXIT_WAIT);
        std::process::exit(101);
    }));
}

/// Exit code for anything the operator must fix before the server can start.
pub const EXIT_USAGE: u8 = 2;

/// Parses the process's flags, runs a server whose shards each serve `app()`, and returns the
/// exit code: 0 after a graceful shutdown, 2 with one line on stderr for bad flags, config or
/// environment. Some ends exit the process from inside instead: a second signal, or one during
/// start-up (128 + the signal's number), a stop that outlasts `--grace` + `--stop-timeout` or a
/// start that outlasts `--start-timeout` (1), and a shard that panics (101). It owns the
/// process's signals: TERM, INT, QUIT, HUP, USR1 and USR2 are handled (README, "Graceful
/// shutdown"), TTIN and TTOU ignored.
pub fn main_with(app: impl Fn() -> Router + Send + Sync + 'static) -> ExitCode {
    // Until the signal thread handles them (`runtime::run`), the signals operators send out of
    // habit must not end a starting process: SIGHUP or SIGUSR1 in its first milliseconds killed
    // it, with no word (found in review). Their handlers replace this.
    for signal in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let args = match config::Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ")
                .to_string();
            // "the following required arguments were not provided:" names them on the next line.
            if line.ends_with(':')
                && let Some(next) = lines.next()
            {
                line = format!("{line} {next}");
            }
            crate::log_line!("percore: {line} (see --help)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut args = args;
    let command = args.command.take();
    match &command {
        Some(config::Command::Reshard { to }) => return reshard(&args, *to),
        Some(command) => return auth::cli::run(command),
        None => {}
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            crate::log_line!("percore: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for warning in &config.warnings {
        crate::log_line!("percore: {warning}");
    }
    exit_on_panic();
    // One app factory for the process's life; shards borrow it.
    let app: &'static runtime::AppFactory = Box::leak(Box::new(app));
    let code = match runtime::run(config, app) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::log_line!("percore: {}", e.0);
            ExitCode::from(EXIT_USAGE)
        }
    };
    crate::log::flush(crate::log::EXIT_WAIT);
    code
}

/// `percore reshard --to N`: one line on stdout when done, one on stderr (exit 2) when not.
fn reshard(args: &config::Args, to: usize) -> ExitCode {
    let result = Config::store_of(args)
        .map_err(|e| e.to_string())
        .and_then(|(dir, limits)| {
            if !dir.is_dir() {
                return Err(format!("data dir {}: no such directory", dir.display()));
            }
            let _lock = runtime::lock_data_dir(&dir)?;
            txn::reshard::run(&dir, to, limits)
        });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::log_line!("percore: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
