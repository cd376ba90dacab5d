//! Starts the shards (one pinned glommio executor per CPU), their listeners and mesh, forwards signals, and waits for the drain; the only place threads are made.

pub mod listener;
pub mod membarrier;
pub mod preflight;
pub mod shard;
pub mod uring;

use std::cell::RefCell;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

use crate::auth::service::{Auth, AuthMesh, LimitReply, LimitRequest};
use crate::auth::users::Users;
use crate::config::limits::{IO_MEMORY_BYTES, MESH_CHANNEL_CAPACITY, TXN_EARLY_MESSAGES_MAX};
use crate::config::{Config, ListenerKind};
use crate::mesh::{Envelope, Mesh, MeshError, MeshLimits};
use crate::metrics::ShardStats;
use crate::router::Router;
use crate::server::Serves;
use crate::session::{self, SessionReply, SessionRequest, Sessions};
use crate::txn::service::Txn;
use crate::txn::twopc::Msg;
use glommio::{Latency, Shares};
use shard::{Shard, StatsRequest};

/// Builds a shard's router; called once on every shard thread.
pub type AppFactory = dyn Fn() -> Router + Send + Sync;

/// Why the server could not start. Each is one line for stderr; the exit code is 2.
#[derive(Debug)]
pub struct StartError(pub String);

/// Control messages from the signal thread to a shard.
#[derive(Debug, Clone)]
enum Control {
    /// Every shard is ready: start accepting.
    Serve,
    Drain,
    /// The users file was re-read (SIGHUP) and is valid.
    Users(Arc<Users>),
}

/// What the threads tell the main thread while the server starts.
enum Started {
    /// Shard N read its transaction log: whole, or the start's error line (`LogGate`).
    LogRead(usize, Result<(), String>),
    /// Shard N is serving.
    Ready(usize),
    /// This thread ended before it was ready (`StartReport`).
    Lost(String),
    /// A shard could not start, for this reason (its one line).
    Failed(String),
}

/// How far the start has come, as the main thread has heard it, for the start-up watchdog: it
/// names what is late when `--start-timeout` passes, even when the main thread itself is stuck
/// (its own writes to the data dir, between the shards' log reads and their go).
struct StartProgress {
    /// Per shard: `JOINING`, `LOG_READ` or `READY`.
    shards: Vec<AtomicU8>,
    /// The main thread is writing the data dir (`before_shards_write`).
    preparing: AtomicBool,
}

impl StartProgress {
    /// Building its executor, joining the mesh, reading its transaction log.
    const JOINING: u8 = 0;
    /// Its log was read: waiting for the others' (`LogGate`), then loading its sessions,
    /// replaying its log, preparing its listeners.
    const LOG_READ: u8 = 1;
    const READY: u8 = 2;

    fn new(shard_count: usize) -> StartProgress {
        StartProgress {
            shards: (0..shard_count)
                .map(|_| AtomicU8::new(StartProgress::JOINING))
                .collect(),
            preparing: AtomicBool::new(false),
        }
    }

    fn set(&self, index: usize, step: u8) {
        self.shards[index].store(step, Ordering::SeqCst);
    }

    /// The shards not ready, with what each was doing: "shard 0 (CPU 0) waiting for the other
    /// shards' logs, shard 1 (CPU 1) starting or reading its log".
    fn describe(&self, cpus: &[usize]) -> String {
        let steps: Vec<u8> = self
            .shards
            .iter()
            .map(|step| step.load(Ordering::SeqCst))
            .collect();
        let logs_read = steps.iter().all(|&step| step != StartProgress::JOINING);
        let preparing = self.preparing.load(Ordering::SeqCst);
        let late: Vec<String> = steps
            .iter()
            .zip(cpus)
            .enumerate()
            .filter(|(_, (step, _))| **step != StartProgress::READY)
            .map(|(index, (step, cpu))| {
                let doing = match *step {
                    StartProgress::JOINING => "starting or reading its log",
                    _ if !logs_read => "waiting for the other shards' logs",
                    _ if preparing => "waiting for the main thread to write the data dir",
                    _ => "loading its sessions or replaying its log",
                };
                format!("shard {index} (CPU {cpu}) {doing}")
            })
            .collect();
        late.join(", ")
    }
}

/// Tells the main thread whether an executor thread came up: `Ready` when a shard is ready,
/// `Lost(name)` when the report is dropped first, which is what happens when glommio cannot
/// build the executor (it drops the closure holding this and ends the thread without a word).
struct StartReport {
    sender: Option<mpsc::Sender<Started>>,
    what: String,
}

impl StartReport {
    fn new(sender: mpsc::Sender<Started>, what: String) -> StartReport {
        StartReport {
            sender: Some(sender),
            what,
        }
    }

    /// Shard `index` is serving.
    fn ready(mut self, index: usize) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Started::Ready(index));
        }
    }

    /// The shard cannot start, for `reason`: the main thread ends the start with it. One report
    /// per shard, read by the one thread that prints: shards that exited on their own raced
    /// each other and the main thread's "could not start its executor" (found in review:
    /// lines cut mid-way, or only the wrong one).
    fn fail(mut self, reason: String) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Started::Failed(reason));
        }
    }

    /// The thread runs (for threads that report nothing more).
    fn disarm(mut self) {
        self.sender = None;
    }
}

impl Drop for StartReport {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Started::Lost(std::mem::take(&mut self.what)));
        }
    }
}

/// Transaction messages that reached a shard before it could take them: (from, message).
type EarlyMessages = Vec<(usize, Msg)>;

/// What one shard thread is given at spawn.
struct ShardInit {
    index: usize,
    cpu: usize,
    config: Config,
    listeners: Vec<OwnedFd>,
    https_port: Option<u16>,
    stats_mesh: MeshBuilder<Envelope<StatsRequest, ShardStats>, Full>,
    session_mesh: MeshBuilder<Envelope<SessionRequest, SessionReply>, Full>,
    txn_mesh: MeshBuilder<Envelope<Msg, ()>, Full>,
    auth_mesh: MeshBuilder<Envelope<LimitRequest, LimitReply>, Full>,
    control: SharedReceiver<Control>,
    ready: StartReport,
    log_read: LogGate,
    app: &'static AppFactory,
}

/// Holds a shard between reading its transaction log and changing anything in the data dir:
/// it reports whether its log is whole, and goes on only once every shard's is. A damaged log
/// on one shard then refuses the start before a healthy shard cuts its torn tail, checkpoints
/// or deletes old segments (found in review: a refused start used to leave the other shards'
/// logs rewritten).
struct LogGate {
    index: usize,
    verdict: mpsc::Sender<Started>,
    go: mpsc::Receiver<()>,
}

impl LogGate {
    /// Reports `verdict` and blocks until every shard has: true to go on. Blocking the executor
    /// is fine here: every mesh is joined, and nothing else runs on the shard yet.
    fn pass(self, verdict: Result<(), String>) -> bool {
        let whole = verdict.is_ok();
        let _ = self.verdict.send(Started::LogRead(self.index, verdict));
        whole && self.go.recv().is_ok()
    }
}

/// Runs the server until a graceful shutdown completes. Prints `listening on http://ADDR` once
/// every shard accepts.
pub fn run(config: Config, app: &'static AppFactory) -> Result<(), StartError> {
    let start_deadline = Instant::now() + config.start_timeout;
    preflight::check(config.shard_count()).map_err(StartError)?;
    // Raised before anything opens a file; said once the start succeeded (a failed start says
    // one line: its error).
    let (conns_fit, nofile_warning) = preflight::raise_nofile(
        config.conns_max as u64,
        config.shard_count(),
        config.listeners.len(),
    )
    .map_err(StartError)?;
    let mut config = config;
    config.conns_max = conns_fit as usize;
    // Held until the process ends, however it ends (the kernel drops the lock with it): not
    // dropped when this returns, since a start refused after the shards began (one could not
    // create its log) returns while the others still write theirs (found in review).
    std::mem::forget(lock_data_dir(&config.data_dir).map_err(StartError)?);
    // Before any shard reads or writes the data dir; what the main thread writes there waits
    // for every shard to have read its log (`before_shards_write`).
    crate::txn::reshard::check_finished(&config.data_dir).map_err(StartError)?;
    crate::wal::check_layout(&config.data_dir, config.shard_count()).map_err(StartError)?;
    let shard_count = config.shard_count();
    let binds: Vec<_> = config.listeners.iter().map(|l| l.addr).collect();
    let (addrs, mut sockets) =
        listener::bind_all(&binds, shard_count, config.backlog).map_err(StartError)?;
    // From here on threads that must not block (shards, the signal thread, this one) log.
    crate::log::start();
    // Where --redirect-https listeners send clients: the first HTTPS listener's (resolved) port.
    let https_port = config
        .listeners
        .iter()
        .zip(&addrs)
        .find(|(l, _)| matches!(l.kind, ListenerKind::Tls(_)))
        .map(|(_, addr)| addr.port());
    // Registered before any shard starts, so a signal right after "listening" is never lost.
    // Besides TERM, INT and HUP, the signals operators of nginx and Gunicorn send out of habit
    // (found in review: each killed or stopped the process, requests in flight and sessions
    // lost): QUIT stops gracefully (nginx's graceful stop); USR1 (reopen logs) and USR2
    // (binary upgrade) are logged and ignored: percore logs to stderr and has no upgrade.
    let signals = signal_hook::iterator::Signals::new(
        STOP_SIGNALS.into_iter().chain([SIGHUP, SIGUSR1, SIGUSR2]),
    )
    .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    // TTIN and TTOU (Gunicorn's worker count; job control) stop a process by default: ignored
    // outright, not handled, because a caught SIGTTOU restarts the terminal write that raised
    // it, and a log line about it would raise it again.
    for signal in [libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }

    let stats_mesh = MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY);
    let session_mesh = MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY);
    let txn_mesh = MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY);
    let auth_mesh = MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut log_gos = Vec::with_capacity(shard_count);
    let mut controls = Vec::with_capacity(shard_count);
    let mut handles = Vec::with_capacity(shard_count);
    // Each shard reports here once it has stopped (drained, log synced, snapshot written), and
    // the signal thread when a drain begins: the main thread bounds the whole stop by `--grace`
    // + `--stop-timeout` from the signal.
    let (stopped_tx, stopped_rx) = mpsc::channel();
    // Shards are created in index order: glommio numbers executors in creation order and the
    // mesh orders peers by that number, so mesh peer id == shard index (asserted in Mesh::join).
    for (index, listeners) in sockets.drain(..).enumerate() {
        let cpu = config.cpus[index];
        let (control_tx, control_rx) = shared_channel::new_bounded(4);
        controls.push(control_tx);
        let (go_tx, go_rx) = mpsc::channel();
        log_gos.push(go_tx);
        let init = ShardInit {
            index,
            cpu,
            config: config.clone(),
            listeners,
            https_port,
            stats_mesh: stats_mesh.clone(),
            session_mesh: session_mesh.clone(),
            txn_mesh: txn_mesh.clone(),
            auth_mesh: auth_mesh.clone(),
            control: control_rx,
            ready: StartReport::new(ready_tx.clone(), format!("shard {index} (CPU {cpu})")),
            log_read: LogGate {
                index,
                verdict: ready_tx.clone(),
                go: go_rx,
            },
            app,
        };
        let placement = if config.pin {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("percore-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            // Password hashes run on this pool, beside the shard (auth/service.rs).
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(
                config.auth.hash_concurrency,
            ))
            .spin_before_park(config.spin)
            .spawn({
                let stopped = stopped_tx.clone();
                move || async move {
                    let report = ShardEnd {
                        stops: stopped,
                        index,
                        finished: false,
                    };
                    shard_main(init).await;
                    report.finish();
                }
            })
            .map_err(|e| StartError(format!("cannot start shard {index} on CPU {cpu}: {e}")))?;
        handles.push(handle);
    }
    // Before waiting for the shards: connecting a shared channel waits for both ends.
    let forwarder_started = StartReport::new(ready_tx.clone(), "the signal thread".into());
    drop(ready_tx);
    let serving = Arc::new(AtomicBool::new(false));
    spawn_signal_forwarder(
        signals,
        controls,
        config.auth.users_path.clone(),
        forwarder_started,
        serving.clone(),
        stopped_tx,
    )?;
    // Every shard reads its log before any changes a file (`LogGate`): they go on once all
    // have, and the first damaged log ends the start. A shard whose executor could not be
    // built (no file descriptors left, io_uring memory, CPU binding) never runs: glommio drops
    // its closure, whose report says so here. Without it, the other shards spin forever waiting
    // to connect to it (found by a stress run).
    let progress = Arc::new(StartProgress::new(shard_count));
    // Exits rather than fails the start: a wedged thread (a shard's, or this one in its own
    // writes) may never come back, and nothing it holds needs cleaning up (the logs are
    // crash-safe).
    let start_watchdog = Watchdog::start(start_deadline, {
        let (progress, cpus, limit) = (progress.clone(), config.cpus.clone(), config.start_timeout);
        move || {
            exit_saying(
                format!(
                    "percore: not ready {:.1} s after the start (--start-timeout): {}; exiting now",
                    limit.as_secs_f64(),
                    progress.describe(&cpus)
                ),
                1,
            );
        }
    });
    let (mut logs_read, mut ready) = (0, 0);
    while ready < shard_count {
        match ready_rx.recv() {
            Ok(Started::LogRead(index, Ok(()))) => {
                progress.set(index, StartProgress::LOG_READ);
                logs_read += 1;
                if logs_read == shard_count {
                    progress.preparing.store(true, Ordering::SeqCst);
                    before_shards_write(&config)?;
                    progress.preparing.store(false, Ordering::SeqCst);
                    for go in &log_gos {
                        let _ = go.send(());
                    }
                }
            }
            Ok(Started::LogRead(_, Err(e))) => return Err(StartError(e)),
            Ok(Started::Ready(index)) => {
                progress.set(index, StartProgress::READY);
                ready += 1;
            }
            Ok(Started::Failed(reason)) => return Err(StartError(reason)),
            Ok(Started::Lost(what)) => {
                return Err(StartError(format!(
                    "{what} could not start its executor (out of file descriptors, io_uring memory or CPU binding?)"
                )));
            }
            Err(_) => return Err(StartError("a shard failed during start-up".into())),
        }
    }
    drop(start_watchdog);
    if let Err(e) = crate::wal::record_served(&config.data_dir) {
        // Only a later start's check of a shard without log files goes without it.
        crate::log_line!(
            "percore: data dir {}: cannot write {}: {e}",
            config.data_dir.display(),
            crate::wal::SERVED_FILE
        );
    }
    // Every shard built its TLS acceptors before reporting ready: the ticket seeds are no
    // longer needed, and erasing them limits what a look at memory later could open.
    for listener in &config.listeners {
        if let ListenerKind::Tls(material) = &listener.kind {
            material.forget_ticket_seed();
        }
    }
    serving.store(true, Ordering::SeqCst);
    let mut listening = String::new();
    for (listener, addr) in config.listeners.iter().zip(&addrs) {
        use std::fmt::Write;
        let _ = match (&listener.kind, https_port) {
            (ListenerKind::Plain, _) => writeln!(listening, "listening on http://{addr}"),
            (ListenerKind::Tls(_), _) => writeln!(listening, "listening on https://{addr}"),
            (ListenerKind::RedirectHttps, Some(port)) => writeln!(
                listening,
                "listening on http://{addr} (redirects to https port {port})"
            ),
            (ListenerKind::RedirectHttps, None) => unreachable!("validated in config"),
        };
    }
    // From a thread of its own: a stdout pipe nobody reads blocked the main thread here, before
    // it watches the stop, and SIGTERM then drained the shards but never ended the process
    // (found in review). Waited for (briefly) before the process exits.
    let (printed, listening_printed) = mpsc::channel::<()>();
    let print = |text: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    };
    let text = listening.clone();
    let spawned = std::thread::Builder::new()
        .name("percore-stdout".into())
        .spawn(move || {
            print(&text);
            let _ = printed.send(());
        });
    if spawned.is_err() {
        // No thread to spare: the lines still go out, from here.
        print(&listening);
    }
    // Not from this thread, which watches the stop next (a stderr nobody reads).
    if let Some(warning) = preflight::untuned_rings_warning() {
        crate::log::line(format!("percore: {warning}"));
    }
    if let Some(warning) = nofile_warning {
        crate::log::line(format!("percore: {warning}"));
    }
    let deadline = wait_stopped(&stopped_rx, shard_count, config.grace + config.stop_timeout);
    // Every shard has stopped (drained, log synced); what is left is each executor's teardown,
    // which waits for its IO in flight. The same bound holds for it: a wedged teardown must not
    // keep the process alive past --grace + --stop-timeout either.
    let _watchdog = Watchdog::start(
        deadline.unwrap_or_else(|| Instant::now() + config.stop_timeout),
        || {
            exit_saying(
                "percore: the shards' executors are still closing at the stop deadline \
                 (--grace + --stop-timeout): exiting now"
                    .into(),
                1,
            );
        },
    );
    for handle in handles {
        let _ = handle.join();
    }
    let _ = listening_printed.recv_timeout(crate::log::EXIT_WAIT);
    Ok(())
}

/// What the main thread changes in the data dir once every shard's log was read whole, before
/// any shard writes (`LogGate`): a refused start leaves the dir as it was. Records the log's
/// shard count (`wal::LAYOUT_FILE`) where none is recorded yet, and drops the session files no
/// shard of this run uses.
fn before_shards_write(config: &Config) -> Result<(), StartError> {
    if crate::wal::recorded_shards(&config.data_dir)
        .map_err(StartError)?
        .is_none()
    {
        crate::wal::record_shards(&config.data_dir, config.shard_count()).map_err(|e| {
            StartError(format!(
                "data dir {}: cannot write {}: {e}",
                config.data_dir.display(),
                crate::wal::LAYOUT_FILE
            ))
        })?;
    }
    {
        // Without persistence nothing revokes what old snapshots hold: they go too.
        let keep = if config.session.persist {
            config.shard_count()
        } else {
            0
        };
        let retired = crate::session::persist::retire_beyond(&config.data_dir, keep)
            .map_err(|e| StartError(format!("data dir {}: {e}", config.data_dir.display())))?;
        if !retired.is_empty() {
            let why = if config.session.persist {
                format!("{} shards now", config.shard_count())
            } else {
                "--no-session-persist".to_string()
            };
            crate::log_line!(
                "percore: session files no shard of this run uses are dropped ({why}): {}",
                retired.join(", ")
            );
        }
    }
    Ok(())
}

/// The lock file in the data dir; it holds the owner's pid.
const DATA_DIR_LOCK_FILE: &str = "percore.lock";

/// Takes `DIR/percore.lock` with an exclusive `flock`, before any shard opens a file there, and
/// writes this process's pid into it. Every run writes there (the transaction log always; the
/// session snapshots unless `--no-session-persist`), and two processes on one directory would
/// append to the same logs and overwrite each other's snapshots. Refused with the owner's pid
/// when another process holds it. A lock, not the file, is what counts: the kernel releases it
/// when its holder exits (a crash included), so a stale file never blocks a start.
pub(crate) fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    let fail = |what: &str, e: std::io::Error| format!("data dir {}: {what}: {e}", dir.display());
    if dir.metadata().is_ok_and(|meta| !meta.is_dir()) {
        return Err(format!("data dir {}: not a directory", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
    let path = dir.join(DATA_DIR_LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(&format!("cannot open {DATA_DIR_LOCK_FILE}"), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // Empty while the owner is between its lock and its write: then no pid to name.
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let owner = match text.trim().parse::<u32>() {
                Ok(pid) => format!(" (pid {pid})"),
                Err(_) => String::new(),
            };
            return Err(format!(
                "data dir {}: in use by another percore{owner}",
                dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(fail(&format!("cannot lock {DATA_DIR_LOCK_FILE}"), e));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| fail(&format!("cannot write {DATA_DIR_LOCK_FILE}"), e))?;
    Ok(file)
}

/// Runs `on_expiry` on a thread of its own at `deadline`, unless dropped first: bounds the start
/// (`--start-timeout`) and the stop (`--grace` + `--stop-timeout`).
struct Watchdog {
    _cancel: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(deadline: Instant, on_expiry: impl FnOnce() + Send + 'static) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("percore-watchdog".into())
            .spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                // Dropping the Watchdog disconnects the channel: no expiry.
                if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(left) {
                    on_expiry();
                }
            })
            .expect("spawn a watchdog thread");
        Watchdog { _cancel: cancel }
    }
}

/// What the main thread hears while the server runs.
enum Stop {
    /// The signal thread began a drain (at this instant).
    Draining(Instant),
    /// This shard has stopped.
    Shard(usize),
    /// This shard's task panicked (only where panics unwind: release builds abort at once).
    Panicked(usize),
}

/// Tells the main thread how a shard ended, also when it unwinds from a panic (a test build):
/// the process then exits at once instead of serving on with a dead shard.
struct ShardEnd {
    stops: mpsc::Sender<Stop>,
    index: usize,
    finished: bool,
}

impl ShardEnd {
    fn finish(mut self) {
        self.finished = true;
        let _ = self.stops.send(Stop::Shard(self.index));
    }
}

impl Drop for ShardEnd {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.stops.send(Stop::Panicked(self.index));
        }
    }
}

/// Waits until every shard reported that it stopped. From the signal that began the drain they
/// have `limit` in all; past it the process exits 1 and says which shards were still stopping (a
/// wedged disk or executor must not keep the process, and its listening sockets, alive: the logs
/// are crash-safe, and the next start replays them). Returns that deadline, if a drain began.
fn wait_stopped(
    stops: &mpsc::Receiver<Stop>,
    shard_count: usize,
    limit: Duration,
) -> Option<Instant> {
    let mut running: std::collections::BTreeSet<usize> = (0..shard_count).collect();
    let mut deadline: Option<Instant> = None;
    while !running.is_empty() {
        let stop = match deadline {
            None => stops
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(deadline) => {
                stops.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match stop {
            Ok(Stop::Shard(index)) => {
                running.remove(&index);
            }
            Ok(Stop::Panicked(index)) => {
                exit_saying(format!("percore: shard {index} panicked: exiting now"), 101);
            }
            Ok(Stop::Draining(at)) => {
                deadline.get_or_insert(at + limit);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let running: Vec<String> = running.iter().map(usize::to_string).collect();
                exit_saying(
                    format!(
                        "percore: shard {} still stopping {:.1} s after the signal (--grace + \
                         --stop-timeout): exiting now",
                        running.join(", "),
                        limit.as_secs_f64()
                    ),
                    1,
                );
            }
            // Every shard thread and the signal thread are gone: the joins return at once.
            Err(mpsc::RecvTimeoutError::Disconnected) => return deadline,
        }
    }
    deadline
}

/// Says `line` and exits with `code`, after a bounded wait for the log (`log::flush`): a stderr
/// nobody reads must not keep a process that decided to exit alive.
fn exit_saying(line: String, code: i32) -> ! {
    crate::log::line(line);
    crate::log::flush(crate::log::EXIT_WAIT);
    std::process::exit(code);
}

/// The signals that stop percore gracefully (a second one exits at once).
const STOP_SIGNALS: [i32; 3] = [SIGTERM, SIGINT, SIGQUIT];

/// USR1 and USR2 mean "reopen your logs" and "upgrade" to nginx and Gunicorn: percore has
/// neither, says so and goes on. True for such a signal.
fn ignored_with_a_word(signal: i32) -> bool {
    let name = match signal {
        SIGUSR1 => "SIGUSR1 (percore logs to stderr: there are no log files to reopen)",
        SIGUSR2 => "SIGUSR2 (percore has no in-place binary upgrade)",
        _ => return false,
    };
    crate::log::line(format!("percore: {name}: ignored"));
    true
}

/// A small unpinned executor that turns SIGTERM/SIGINT/SIGQUIT into a drain message to every shard (a
/// second one exits at once) and tells the main thread when the drain began, and turns SIGHUP
/// into a re-read of the users file: read and checked here once, then handed to every shard; a
/// bad file keeps the old users and says why.
/// Once every shard is ready (`serving`, set by the main thread) it tells them to accept. Before
/// that, SIGTERM/SIGINT exits at once: nothing was accepted yet, and a shard replaying a long
/// log reads no messages until it is done; the logs are crash-safe, so the next start replays
/// them again.
fn spawn_signal_forwarder(
    mut signals: signal_hook::iterator::Signals,
    controls: Vec<SharedSender<Control>>,
    users_path: Option<std::path::PathBuf>,
    started: StartReport,
    serving: Arc<AtomicBool>,
    stops: mpsc::Sender<Stop>,
) -> Result<(), StartError> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("percore-signals")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || {
            started.disarm();
            async move {
                // Connecting waits for every shard to reach its first statement; one stuck
                // while glommio builds its executor kept SIGTERM unread, and this thread and
                // the shards already connected spinning (glommio's connect wakes itself every
                // pass). So signals are watched meanwhile: TERM and INT exit, HUP waits.
                let mut hup_during_start = false;
                let connect_all = async {
                    let mut connected = Vec::with_capacity(controls.len());
                    for control in controls {
                        connected.push(control.connect().await);
                    }
                    connected
                };
                let watch = async {
                    let never = exit_on_start_signal(&mut signals, &mut hup_during_start).await;
                    match never {}
                };
                let connected = futures_lite::future::or(connect_all, watch).await;
                let mut received = 0;
                let mut announced = false;
                // The newest users re-read on SIGHUP that a shard has not taken yet (its channel
                // was full): retried every pass, so every shard ends with the newest file.
                let mut users_pending: Vec<Option<Arc<Users>>> = vec![None; connected.len()];
                // Drains not yet taken (a shard's channel was full): retried every pass, never
                // awaited, so a shard that reads no messages cannot hold up the others' drain
                // or a second signal.
                let mut drains_pending = vec![false; connected.len()];
                let mut reload = UsersReload::new(users_path);
                if hup_during_start {
                    reload.request();
                }
                loop {
                    if !announced && serving.load(Ordering::SeqCst) {
                        for control in &connected {
                            let _ = control.send(Control::Serve).await;
                        }
                        announced = true;
                    }
                    for signal in signals.pending() {
                        if signal == SIGHUP {
                            reload.request();
                            continue;
                        }
                        if ignored_with_a_word(signal) {
                            continue;
                        }
                        received += 1;
                        if !serving.load(Ordering::SeqCst) {
                            exit_during_start(signal);
                        }
                        if received == 1 {
                            let _ = stops.send(Stop::Draining(Instant::now()));
                            drains_pending.fill(true);
                            crate::log::line(format!(
                                "percore: signal {signal}: draining (a second signal exits \
                                     at once)"
                            ));
                        } else {
                            exit_saying(
                                format!("percore: signal {signal} again: exiting now"),
                                128 + signal,
                            );
                        }
                    }
                    if let Some(users) = reload.finished() {
                        users_pending.fill(Some(users));
                    }
                    offer_pending(&connected, &mut drains_pending, &mut users_pending);
                    // Signals are rare; a 50 ms poll keeps this thread off every hot path
                    // (2 ms until the shards are told to serve: that wait is start-up time).
                    let poll = if announced { 50 } else { 2 };
                    glommio::timer::sleep(Duration::from_millis(poll)).await;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StartError(format!("cannot start the signal thread: {e}")))
}

/// Until the shards are connected: exits at once on a stop signal, as before serving
/// (nothing was accepted), and notes a SIGHUP for later. Never returns.
async fn exit_on_start_signal(
    signals: &mut signal_hook::iterator::Signals,
    hup: &mut bool,
) -> std::convert::Infallible {
    loop {
        for signal in signals.pending() {
            if signal == SIGHUP {
                *hup = true;
                continue;
            }
            if ignored_with_a_word(signal) {
                continue;
            }
            exit_during_start(signal);
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// A stop signal before every shard serves: nothing was accepted, so exit at once.
fn exit_during_start(signal: i32) -> ! {
    exit_saying(
        format!("percore: signal {signal} during start-up: exiting now"),
        128 + signal,
    );
}

/// Offers every shard what it has not taken yet, without waiting: its drain, and the newest
/// users. What a full channel refuses stays pending for the next pass.
fn offer_pending(
    controls: &[ConnectedSender<Control>],
    drains: &mut [bool],
    users: &mut [Option<Arc<Users>>],
) {
    for (control, pending) in controls.iter().zip(drains) {
        if *pending && control.try_send(Control::Drain).is_ok() {
            *pending = false;
        }
    }
    for (control, pending) in controls.iter().zip(users) {
        if let Some(newest) = pending.take()
            && control.try_send(Control::Users(newest.clone())).is_err()
        {
            *pending = Some(newest);
        }
    }
}

/// SIGHUP's re-read of the users file, on the signal thread's blocking pool: a read that
/// blocks (a hung network mount) must not stop the thread that turns SIGTERM into a drain
/// (found in review: a FIFO put in the file's place did, for good). One read at a time; a
/// SIGHUP during one asks for another once it ends, as the file may have changed since it
/// began.
struct UsersReload {
    path: Option<std::path::PathBuf>,
    /// Where the read under way leaves its result (None inside: the file was bad).
    done: Rc<RefCell<Option<Option<Arc<Users>>>>>,
    /// When the read under way began.
    reading: Option<Instant>,
    again: bool,
}

impl UsersReload {
    fn new(path: Option<std::path::PathBuf>) -> UsersReload {
        UsersReload {
            path,
            done: Rc::new(RefCell::new(None)),
            reading: None,
            again: false,
        }
    }

    /// Every SIGHUP during a read says so, with the read's age: one that never ends (a hung
    /// mount) must show, not leave every later SIGHUP silent.
    fn request(&mut self) {
        match self.reading {
            None => self.start(),
            Some(began) => {
                self.again = true;
                crate::log::line(format!(
                    "percore: SIGHUP: the users file is still being read ({:.1} s so far); \
                         it is read again after",
                    began.elapsed().as_secs_f64()
                ));
            }
        }
    }

    fn start(&mut self) {
        self.reading = Some(Instant::now());
        let (path, done) = (self.path.clone(), self.done.clone());
        glommio::spawn_local(async move {
            let read = move || reload_users(path.as_deref());
            let users = glommio::executor().spawn_blocking(read).await;
            *done.borrow_mut() = Some(users);
        })
        .detach();
    }

    /// The users a read that ended since the last call loaded, if it loaded any.
    fn finished(&mut self) -> Option<Arc<Users>> {
        let users = self.done.borrow_mut().take()?;
        self.reading = None;
        if std::mem::take(&mut self.again) {
            self.start();
        }
        users
    }
}

fn reload_users(path: Option<&std::path::Path>) -> Option<Arc<Users>> {
    let Some(path) = path else {
        crate::log_line!("percore: SIGHUP: no --users file to reload");
        return None;
    };
    match crate::config::read_users(path) {
        Ok(users) => {
            crate::log_line!(
                "percore: SIGHUP: {} users loaded from {}",
                users.len(),
                path.display()
            );
            Some(Arc::new(users))
        }
        Err(e) => {
            crate::log_line!("percore: SIGHUP: {e}; keeping the users loaded before");
            None
        }
    }
}

async fn shard_main(init: ShardInit) {
    // First: the signal forwarder connects to every shard before it handles any signal, so a
    // shard that is slow to start (a long log replay) must not hold up SIGTERM for the others.
    let control = init.control.connect().await;
    let limits = MeshLimits {
        inflight_max: init.config.mesh_inflight_max,
        deadline: init.config.mesh_deadline,
    };
    let stats_mesh = Mesh::join(
        init.stats_mesh,
        init.index,
        limits,
        Rc::new(|_from, StatsRequest| Box::pin(async { shard::current().stats() })),
    )
    .await;
    let session_mesh = Mesh::join(
        init.session_mesh,
        init.index,
        limits,
        Rc::new(|_from, request| {
            Box::pin(async move { shard::current().sessions.handle(request) })
        }),
    )
    .await;
    let sessions = Rc::new(Sessions::new(
        init.config.node_id,
        init.config.session.clone(),
        session_mesh.clone(),
    ));
    let data_dir = init
        .config
        .session
        .persist
        .then(|| init.config.data_dir.clone());
    // Transaction messages that arrive before this shard finished starting wait here, up to a
    // bound, and are fed in once it has: the first questions a restarted shard asks about
    // transactions a crash left in doubt reach peers still replaying their logs, and dropped,
    // they were asked again only a resolve interval later, their keys locked (409) meanwhile
    // (found by a crash test: ~0.9 s after most restarts under load). Past the bound they are
    // dropped: the protocol resends what matters.
    let early: Rc<RefCell<Option<EarlyMessages>>> = Rc::new(RefCell::new(Some(Vec::new())));
    let txn_mesh = Mesh::join(
        init.txn_mesh,
        init.index,
        limits,
        // Taken in the call itself: nothing here waits, so the future is an empty one (no
        // allocation, and no clone of the queue's handle per message).
        Rc::new({
            let early = early.clone();
            move |from, msg| {
                if let Some(shard) = shard::try_current() {
                    shard.txn.receive(from, msg);
                } else if let Some(waiting) = early.borrow_mut().as_mut()
                    && waiting.len() < TXN_EARLY_MESSAGES_MAX
                {
                    waiting.push((from, msg));
                }
                Box::pin(std::future::ready(()))
            }
        }),
    )
    .await;
    // Every mesh is joined before the slow parts of start-up (the session snapshot, the log
    // replay): joining waits for every shard, and a shard that waits to join while another
    // reads a large file spins (glommio's channel connect).
    let (auth, auth_mesh) = start_auth(&init.config, init.auth_mesh, init.index, limits).await;
    let dir = &init.config.data_dir;
    let recovered = crate::txn::service::read_log(dir, init.index);
    let verdict = match &recovered {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "shard {}: cannot open the transaction log in {}: {e}",
            init.index,
            dir.display()
        )),
    };
    if !init.log_read.pass(verdict) {
        // The main thread refuses the start (this shard's log or another's).
        return;
    }
    let recovered = recovered.expect("a log that failed to read does not pass the gate");
    if let Some(dir) = &data_dir {
        sessions.load(dir);
    }
    let txn = match Txn::start(dir, &init.config.txn, txn_mesh.clone(), recovered).await {
        Ok(txn) => txn,
        Err(e) => {
            init.ready.fail(format!(
                "shard {}: cannot open the transaction log in {}: {e}",
                init.index,
                init.config.data_dir.display()
            ));
            return;
        }
    };
    let shard = Shard::install(
        init.index,
        init.cpu,
        init.config,
        stats_mesh.clone(),
        sessions.clone(),
        txn.clone(),
        auth.clone(),
    );
    for (from, msg) in early.borrow_mut().take().unwrap_or_default() {
        txn.receive(from, msg);
    }
    let router = (init.app)();
    let router = if shard.config.auth.enabled() {
        crate::auth::middleware::install(router)
    } else {
        router
    };
    let app = router.into_app();

    let background = glommio::executor().create_task_queue(
        Shares::Static(50),
        Latency::NotImportant,
        "background",
    );
    glommio::spawn_local_into(
        session::upkeep(sessions.clone(), data_dir.clone()),
        background,
    )
    .map(|task| task.detach())
    .expect("the background queue exists");

    glommio::spawn_local(clock(shard.clone())).detach();
    glommio::spawn_local(sweep_timeouts(shard.clone())).detach();
    // Before the ready report: the main thread erases the TLS ticket seeds once every shard
    // is ready, so every acceptor must have taken its copy by then.
    let listeners = prepare_listeners(&shard, init.listeners, init.https_port);
    init.ready.ready(init.index);

    // Accepting starts when every shard is ready (the signal thread says so): no connection is
    // served while another shard still replays its log, and a signal before that exits at once.
    let mut listeners = Some(listeners);
    futures_lite::future::or(
        async {
            while let Some(message) = control.recv().await {
                match message {
                    Control::Serve => {
                        if let Some(listeners) = listeners.take() {
                            spawn_accept_loops(&shard, &app, listeners);
                        }
                    }
                    Control::Drain => return,
                    Control::Users(users) => auth.replace_users(users),
                }
            }
        },
        shard.drain_started(),
    )
    .await;
    drop(listeners);
    shard.begin_drain();
    let deadline = Instant::now() + shard.config.grace;
    while shard.open_conns() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if shard.open_conns() > 0 {
        crate::log_line!(
            "percore: shard {}: grace period over, closing {} connections",
            shard.index,
            shard.open_conns()
        );
    }
    // A request still served on another shard may need this one (a session it owns, the keys
    // of a transaction): it goes on answering the mesh until every shard has drained, within
    // the same grace. A shard that has stopped (`Closed`) counts as drained; one that answers
    // late is a busy one, not a drained one (found in review: with a short mesh deadline a
    // shard still serving a transaction was taken for drained, and its peers stopped under
    // it), so a wedged shard holds the others to the grace's end.
    while Instant::now() < deadline {
        // Within what is left of the grace: a round that waits out a long mesh deadline on a
        // wedged shard would overrun it, past `--stop-timeout` (review).
        let left = deadline.saturating_duration_since(Instant::now());
        let round = crate::mesh::with_deadline(left, shard.stats_mesh.call_all(|| StatsRequest));
        let Some(replies) = round.await else { break };
        if replies.iter().all(|reply| match reply {
            Ok(stats) => stats.drained == 1,
            Err(error) => *error == MeshError::Closed,
        }) {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    txn.close().await;
    if let Some(dir) = &data_dir
        && let Err(e) = sessions.final_snapshot(dir).await
    {
        crate::log_line!(
            "percore: shard {}: cannot write the session snapshot: {e}",
            shard.index
        );
    }
    // This shard serves no more: the others' calls to it fail at once instead of at their
    // deadline (glommio would leave its receiving tasks, and so its channels, open).
    stats_mesh.close().await;
    session_mesh.close().await;
    txn_mesh.close().await;
    auth_mesh.close().await;
}

/// The shard's auth service, with the brute-force counters it owns served on the auth mesh
/// (returned too, to close at the end).
async fn start_auth(
    config: &Config,
    mesh: MeshBuilder<Envelope<LimitRequest, LimitReply>, Full>,
    index: usize,
    limits: MeshLimits,
) -> (Rc<Auth>, Rc<AuthMesh>) {
    let limiter = Rc::new(std::cell::RefCell::new(crate::auth::limiter::Limiter::new(
        config.auth.limiter.clone(),
    )));
    let auth_mesh: Rc<AuthMesh> = Mesh::join(mesh, index, limits, {
        let limiter = limiter.clone();
        Rc::new(move |_from, request| {
            let reply = crate::auth::service::serve_limit(&limiter, request);
            Box::pin(async move { reply })
        })
    })
    .await;
    let auth = Rc::new(Auth::new(
        config.auth.clone(),
        index,
        limiter,
        auth_mesh.clone(),
    ));
    (auth, auth_mesh)
}

/// This shard's listening sockets, each with what it serves (TLS acceptors built here).
fn prepare_listeners(
    shard: &Rc<Shard>,
    listeners: Vec<OwnedFd>,
    https_port: Option<u16>,
) -> Vec<(glommio::net::TcpListener, Serves)> {
    let mut prepared = Vec::with_capacity(listeners.len());
    for (fd, config) in listeners.into_iter().zip(&shard.config.listeners) {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is a bound, listening TCP socket whose ownership we just released.
        let listener =
            unsafe { <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let serves = match &config.kind {
            ListenerKind::Plain => Serves::App,
            ListenerKind::Tls(material) => Serves::Tls(
                // Checked at start (config): building it again cannot fail.
                crate::net::tls::Acceptor::new(material).expect("validated at start"),
            ),
            ListenerKind::RedirectHttps => {
                Serves::Redirect(https_port.expect("validated in config"))
            }
        };
        prepared.push((listener, serves));
    }
    prepared
}

/// One accept loop per listening socket of this shard, each serving what its listener is for.
fn spawn_accept_loops(
    shard: &Rc<Shard>,
    app: &Rc<crate::router::App>,
    listeners: Vec<(glommio::net::TcpListener, Serves)>,
) {
    for (listener, serves) in listeners {
        glommio::spawn_local(crate::server::accept_loop(
            shard.clone(),
            app.clone(),
            listener,
            serves,
        ))
        .detach();
    }
}

/// Milliseconds on the monotonic clock since this process first asked: the time base of the
/// transaction protocol's deadlines, which one shard sets and another checks (a forwarded run's
/// expiry). The same on every shard, and never stepped back, as the wall clock may be (found in
/// review: a clock stepped back let a run expired at its coordinator run at its owner). Never
/// persisted.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Wall-clock milliseconds since the Unix epoch: the time base of session expiry (persisted in
/// snapshots) and of the login windows.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ends reads that waited past their deadline (see `Shard::sweep_timeouts`).
async fn sweep_timeouts(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(crate::config::limits::TIMEOUT_SWEEP_INTERVAL).await;
        shard.sweep_timeouts();
    }
}

/// Refreshes the shard's Date cache at every turn of the wall-clock second.
async fn clock(shard: Rc<Shard>) {
    loop {
        let subsec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        glommio::timer::sleep(Duration::from_nanos(1_000_000_000 - u64::from(subsec))).await;
        shard.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_start_names_each_shard_not_ready_and_its_step() {
        let progress = StartProgress::new(3);
        let cpus = [4, 5, 6];
        let check = |expected: &str| assert_eq!(progress.describe(&cpus), expected);
        check(
            "shard 0 (CPU 4) starting or reading its log, shard 1 (CPU 5) starting or reading its \
             log, shard 2 (CPU 6) starting or reading its log",
        );
        progress.set(0, StartProgress::LOG_READ);
        progress.set(2, StartProgress::LOG_READ);
        check(
            "shard 0 (CPU 4) waiting for the other shards' logs, shard 1 (CPU 5) starting or \
             reading its log, shard 2 (CPU 6) waiting for the other shards' logs",
        );
        progress.set(1, StartProgress::LOG_READ);
        progress.preparing.store(true, Ordering::SeqCst);
        check(
            "shard 0 (CPU 4) waiting for the main thread to write the data dir, shard 1 (CPU 5) \
             waiting for the main thread to write the data dir, shard 2 (CPU 6) waiting for the \
             main thread to write the data dir",
        );
        progress.preparing.store(false, Ordering::SeqCst);
        progress.set(0, StartProgress::READY);
        progress.set(2, StartProgress::READY);
        check("shard 1 (CPU 5) loading its sessions or replaying its log");
    }

    #[test]
    fn a_watchdog_fires_at_its_deadline_unless_dropped_first() {
        let (fired, heard) = mpsc::channel();
        let started = Instant::now();
        let _watchdog = Watchdog::start(started + Duration::from_millis(50), {
            let fired = fired.clone();
            move || fired.send("late").unwrap()
        });
        assert_eq!(heard.recv_timeout(Duration::from_secs(5)), Ok("late"));
        assert!(started.elapsed() >= Duration::from_millis(50));

        // A deadline no slow machine reaches before the drop: the thread must end at the drop.
        let watchdog = Watchdog::start(Instant::now() + Duration::from_secs(60), move || {
            fired.send("cancelled one fired").unwrap()
        });
        drop(watchdog);
        assert_eq!(
            heard.recv_timeout(Duration::from_secs(10)),
            Err(mpsc::RecvTimeoutError::Disconnected),
            "the dropped watchdog's thread ends without firing (and drops its sender)"
        );
    }

    #[test]
    fn a_shard_end_reports_a_stop_when_finished_and_a_panic_when_unwound() {
        let (stops, heard) = mpsc::channel();
        let end = ShardEnd {
            stops: stops.clone(),
            index: 3,
            finished: false,
        };
        end.finish();
        assert!(matches!(heard.try_recv(), Ok(Stop::Shard(3))));
        assert!(heard.try_recv().is_err(), "one report");

        let unwound = std::panic::catch_unwind(move || {
            let _end = ShardEnd {
                stops,
                index: 1,
                finished: false,
            };
            panic!("a shard's task panicked");
        });
        assert!(unwound.is_err());
        assert!(matches!(heard.try_recv(), Ok(Stop::Panicked(1))));
    }

    /// A shard whose control channel is full (it is stuck, and reloads queued up) cannot take
    /// its drain at once: the drain stays pending, is offered again on every pass, and reaches
    /// the shard once it reads again, after what was queued before it.
    #[test]
    fn a_drain_a_full_channel_refuses_is_offered_again_until_taken() {
        let (tx, rx) = shared_channel::new_bounded::<Control>(2);
        let (read_one, may_read) = mpsc::channel::<()>();
        let shard = LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let rx = rx.connect().await;
                let mut heard = Vec::new();
                while may_read.recv().is_ok() {
                    heard.push(rx.recv().await.expect("a message"));
                }
                heard
            })
            .unwrap();
        let signals = LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let controls = [tx.connect().await];
                controls[0].try_send(Control::Serve).unwrap();
                controls[0].try_send(Control::Serve).unwrap();
                let mut drains = [true];
                let mut users = [None];
                // Full: refused on every pass while the shard reads nothing.
                for _ in 0..3 {
                    offer_pending(&controls, &mut drains, &mut users);
                    assert!(drains[0], "a full channel took the drain");
                }
                // The shard reads one message: the next passes deliver the drain.
                read_one.send(()).unwrap();
                while drains[0] {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    offer_pending(&controls, &mut drains, &mut users);
                }
                read_one.send(()).unwrap();
                read_one.send(()).unwrap();
                drop(read_one);
            })
            .unwrap();
        signals.join().unwrap();
        let heard = shard.join().unwrap();
        assert!(
            matches!(
                heard.as_slice(),
                [Control::Serve, Control::Serve, Control::Drain]
            ),
            "{heard:?}"
        );
    }
}
