//! percore-load: parse flags -> validated Config -> run (or --find-max search) -> report -> exit code (0 ok, 1 the run saw errors, 2 bad input).

mod cli;
mod engine;
mod findmax;
mod framer;
mod limits;
mod machine;
mod plot;
mod progress;
mod report;
mod request;
mod scenario;
mod stats;
mod sys;
mod target;

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;

use cli::{Args, Config};
use engine::{Plan, Schedule};
use report::RunShape;
use stats::RunStats;

const EXIT_ERRORS_SEEN: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

/// `print!` that ignores a closed stdout (`| head`, `| grep -m1`): the output files are the
/// record and are written whatever happens here. `print!` panicked, and with `panic = "abort"`
/// the run ended before its files were written (found in review).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `println!` as `say!` does it.
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            say!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return bad_input(&first_line(&e.to_string())),
    };
    let config = match cli::validate(&args) {
        Ok(config) => config,
        Err(e) => return bad_input(&e),
    };
    if let Err(e) = check_outputs(&args) {
        return bad_input(&e);
    }
    if let Err(e) = sys::ensure_fds(config.connections + fds_reserved(&config)) {
        return bad_input(&format!("-c {} {e}", config.connections));
    }
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) =
        std::net::TcpStream::connect_timeout(&config.addr, Duration::from_nanos(config.timeout_ns))
    {
        return bad_input(&format!(
            "cannot connect to {} ({}): {e}",
            config.target.authority, config.addr
        ));
    }
    match config.find_max {
        Some(find_max) => run_find_max(&args, &config, find_max, started_unix_s),
        None => run_once(&args, &config, started_unix_s),
    }
}

/// File descriptors a run needs besides one per connection: stdio, one epoll per client thread,
/// the reachability check's socket, the output files, and room for the libraries' own.
fn fds_reserved(config: &Config) -> usize {
    limits::FDS_RESERVED + config.threads
}

/// Finds an output path that cannot be written before the run, not after it: each is opened
/// for writing (without truncating), and removed again if this check created it.
fn check_outputs(args: &Args) -> Result<(), String> {
    for path in [&args.json, &args.hgrm, &args.plot].into_iter().flatten() {
        // A FIFO (or a device) is written at the end as it is: opening one for writing here
        // waited for a reader before the run began (found in review). A directory is still
        // found here (the open fails), not after the run.
        use std::os::unix::fs::FileTypeExt;
        let kind = path.metadata().map(|meta| meta.file_type());
        if kind.is_ok_and(|kind| kind.is_fifo() || kind.is_char_device()) {
            continue;
        }
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if !existed {
            // Best effort: the run writes the file at the end anyway.
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// clap's error as one line: its first, and the next one where the first ends with a colon
/// ("the following required arguments were not provided:" names them there; found in review).
fn first_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match lines.next() {
        Some(next) if first.ends_with(':') => format!("{first} {next}"),
        _ => first.to_string(),
    }
}

fn bad_input(message: &str) -> ExitCode {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "percore-load: {message}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Runs the engine once at `rate` (None: closed loop), with the live progress line on a terminal.
fn measure(config: &Config, rate: Option<f64>) -> RunStats {
    let schedule = match rate {
        Some(rate) => Schedule::Open {
            interval_ns: ((config.connections as f64 * 1e9 / rate) as u64).max(1),
        },
        None => Schedule::Closed,
    };
    let plan = Plan {
        addr: config.addr,
        mix: config.mix.clone(),
        connections: config.connections,
        pipeline: config.pipeline,
        timeout_ns: config.timeout_ns,
        schedule,
        warmup_ns: config.warmup_ns,
        duration_ns: config.duration_ns,
        busy_poll_ns: config.busy_poll_ns,
    };
    let threads = if sys::is_terminal(2) {
        let (tx, rx) = mpsc::channel();
        // A second that holds any of the warm-up is marked as the warm-up's.
        let (threads, warmup_s) = (config.threads, config.warmup_ns.div_ceil(1_000_000_000));
        let printer = std::thread::spawn(move || progress::print_lines(rx, threads, warmup_s));
        let threads = engine::run(&plan, config.threads, &config.cpus, Some(tx));
        let _ = printer.join();
        threads
    } else {
        engine::run(&plan, config.threads, &config.cpus, None)
    };
    RunStats::merge(threads)
}

fn shape<'a>(config: &'a Config, rate: Option<f64>) -> RunShape<'a> {
    RunShape {
        url: &config.target.url,
        threads: config.threads,
        connections: config.connections,
        pipeline: config.pipeline,
        duration_s: config.duration_ns as f64 / 1e9,
        warmup_s: config.warmup_ns as f64 / 1e9,
        rate,
    }
}

fn run_once(args: &Args, config: &Config, started_unix_s: u64) -> ExitCode {
    let stats = measure(config, config.rate);
    let shape = shape(config, config.rate);
    say!("{}", report::text(&shape, &stats));
    if let Err(e) = write_outputs(args, config, &shape, &stats, None, started_unix_s) {
        return bad_input(&e);
    }
    if stats.error_total() > 0 {
        ExitCode::from(EXIT_ERRORS_SEEN)
    } else if stats.responses == 0 {
        // Nothing measured is no pass (found in review: `-d 1us` exited 0).
        sayln!("No request was sent and answered in the window: nothing was measured.");
        ExitCode::from(EXIT_ERRORS_SEEN)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_find_max(
    args: &Args,
    config: &Config,
    find_max: cli::FindMax,
    started_unix_s: u64,
) -> ExitCode {
    sayln!(
        "Finding the highest open-loop rate with p99 <= {} and no errors",
        report::format_us(find_max.p99_max_us as f64)
    );
    let mut knee_stats: Option<(f64, RunStats)> = None;
    let search = findmax::search(find_max.start_rate, find_max.p99_max_us, |rate| {
        let stats = measure(config, Some(rate));
        let verdict = findmax::judge(rate, &stats, find_max.p99_max_us);
        sayln!(
            "  target {:>10} req/s  achieved {:>10}  p99 {:>9}  errors {:<6} {}",
            report::format_count(rate),
            report::format_count(verdict.achieved_rate),
            report::format_us(verdict.p99_us as f64),
            verdict.errors,
            verdict
                .reason
                .map_or("pass".to_string(), |r| format!("FAIL ({r})"))
        );
        let better = verdict.passed && knee_stats.as_ref().is_none_or(|(best, _)| rate > *best);
        // Without a passing step, the failed first step is the run the outputs describe.
        if better || knee_stats.is_none() {
            knee_stats = Some((rate, stats));
        }
        verdict
    });
    let search_json = serde_json::to_value(&search).expect("plain struct");
    let Some((knee, stats)) = knee_stats else {
        return ExitCode::from(EXIT_ERRORS_SEEN);
    };
    if search.knee_rate.is_none() {
        sayln!(
            "No knee: the first step ({} req/s) already failed; {}.",
            report::format_count(find_max.start_rate),
            no_knee_hint(search.steps.first().and_then(|step| step.reason))
        );
        sayln!("Run of the first step:");
        let shape = shape(config, Some(knee));
        say!("{}", report::text(&shape, &stats));
        let written = write_outputs(
            args,
            config,
            &shape,
            &stats,
            Some(search_json),
            started_unix_s,
        );
        return match written {
            Ok(()) => ExitCode::from(EXIT_ERRORS_SEEN),
            Err(e) => bad_input(&e),
        };
    }
    match search.first_failing_rate {
        Some(bad) => sayln!(
            "Knee: {} req/s passes; {} req/s fails.",
            report::format_count(knee),
            report::format_count(bad)
        ),
        None => sayln!(
            "Knee: not reached; {} req/s still passes after {} steps.",
            report::format_count(knee),
            search.steps.len()
        ),
    }
    sayln!("Run at the knee:");
    let shape = shape(config, Some(knee));
    say!("{}", report::text(&shape, &stats));
    if let Err(e) = write_outputs(
        args,
        config,
        &shape,
        &stats,
        Some(search_json),
        started_unix_s,
    ) {
        return bad_input(&e);
    }
    ExitCode::SUCCESS
}

/// What to do when the first `--find-max` step failed, by why it failed: a lower rate only
/// helps when the server was too slow, not when it answered with errors.
fn no_knee_hint(reason: Option<&str>) -> &'static str {
    match reason {
        Some("errors") => "the server answered with errors (see the report below); fix those first",
        _ => "start lower with --rate",
    }
}

fn write_outputs(
    args: &Args,
    config: &Config,
    shape: &RunShape,
    stats: &RunStats,
    find_max: Option<serde_json::Value>,
    started_unix_s: u64,
) -> Result<(), String> {
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &args.json {
        let names: Vec<String> = config
            .mix
            .templates
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let run = report::run_json(shape, stats, &names);
        let doc = report::document(args, started_unix_s, run, find_max);
        write(
            path,
            serde_json::to_string_pretty(&doc).expect("json values serialize") + "\n",
        )?;
    }
    if let Some(path) = &args.hgrm {
        write(path, report::hgrm(&stats.latency_us))?;
    }
    if let Some(path) = &args.plot {
        let mode = match shape.rate {
            Some(rate) => format!("open loop {} req/s", report::format_count(rate)),
            None => "closed loop".to_string(),
        };
        let title = format!(
            "{} — {mode}, {} connections, {} requests",
            shape.url, shape.connections, stats.responses
        );
        let mut series = vec![plot::Series {
            label: if shape.rate.is_some() {
                "corrected (from intended send)"
            } else {
                "latency (from send)"
            },
            color: "#1f6fb4",
            dashed: false,
            histogram: &stats.latency_us,
        }];
        if shape.rate.is_some() {
            series.push(plot::Series {
                label: "uncorrected (from actual send)",
                color: "#e4731c",
                dashed: true,
                histogram: &stats.latency_uncorrected_us,
            });
        }
        write(path, plot::svg(&title, &series))?;
    }
    Ok(())
}
