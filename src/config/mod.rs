//! Command-line flags and the TOML config file, merged (flags win) and validated into `Config`; never touches the network.

pub mod limits;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use serde::Deserialize;

use crate::auth::access::{AccessRule, AccessRules};
use crate::auth::limiter::LimiterConfig;
use crate::auth::users::{Token, Tokens, Users};
use crate::http::{HEAD_BYTES_CEILING, HEADER_COUNT_CEILING, TrustedProxies};
use crate::net::tls::{self, TlsMaterial};

/// A problem with flags or the config file: printed as one line, exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    /// One line whatever a value held: control characters (a newline in a `bind` string, an
    /// escape sequence in a key) are written escaped (found in review: two-line errors, and raw
    /// escape sequences on the terminal).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// How an error names a setting: as the flag when a flag gave its value (`--grace`), as the
/// config file's key when the file did (`config file /etc/percore.toml: grace =`). Naming the
/// flag for a file's value sent users looking for a flag they never typed (audit L3).
/// Displayed before a value: `--grace -1`, `config file /etc/percore.toml: grace = -1`.
#[derive(Debug)]
enum Named {
    Flag(String),
    Key { origin: String, key: String },
}

impl Named {
    fn flag(key: &str) -> Named {
        Named::Flag(format!("--{}", key.replace('_', "-")))
    }

    /// Without " =", for a message about the setting itself: `config file F: bind`.
    fn bare(&self) -> String {
        match self {
            Named::Flag(flag) => flag.clone(),
            Named::Key { origin, key } => format!("{origin}: {key}"),
        }
    }

    /// Without the file's name, for a second setting in one message: `max_head_bytes =`.
    fn short(&self) -> String {
        match self {
            Named::Flag(flag) => flag.clone(),
            Named::Key { key, .. } => format!("{key} ="),
        }
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Flag(flag) => f.write_str(flag),
            Named::Key { origin, key } => write!(f, "{origin}: {key} ="),
        }
    }
}

/// A setting's value (the flag's over the config file's) and its name as the one that gave it.
macro_rules! setting {
    ($args:expr, $file:expr, $key:ident) => {{
        let flag = $args.$key.as_ref();
        let from_file = flag.is_none() && $file.$key.is_some();
        (
            flag.or($file.$key.as_ref()).cloned(),
            $file.named(stringify!($key), from_file),
        )
    }};
}

/// The flags. Every flag is optional here so that the config file can fill what is missing.
#[derive(Parser, Debug, Default)]
#[command(
    name = "percore",
    version,
    about = "A thread-per-core HTTP/1.1 application server on io_uring",
    // `--backlog -1` said "unexpected argument '-1'", naming no flag (found in review).
    allow_negative_numbers = true
)]
pub struct Args {
    /// TOML config file; every other flag has a key of the same name with '_' for '-'.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable; IPv4 or [IPv6]:port). Default 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub bind: Vec<String>,
    /// CPUs to run shards on, taskset syntax (0-3,6): one shard per CPU.
    #[arg(long, value_name = "LIST", conflicts_with = "shards")]
    pub cores: Option<String>,
    /// Number of shards, on the first N CPUs this process may use. Default: all of them.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Do not pin shards to their CPUs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_pin: Option<bool>,
    /// Plain connections wait for bytes through glommio's one-shot polls instead of the shard's
    /// readiness ring (one multishot poll per connection).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_multishot_poll: Option<bool>,
    /// listen(2) backlog of each shard's listener.
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
    /// Open connections per shard; at the bound the shard stops accepting.
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,
    /// Largest request head in bytes (431 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_head_bytes: Option<usize>,
    /// Most header fields per request (431 past it).
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,
    /// Longest request-target in bytes (414 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_uri_bytes: Option<usize>,
    /// Largest request body in bytes (413 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<u64>,
    /// Bytes one shard may hold for clients that keep it waiting (answers they do not read,
    /// bodies read whole that they do not send); past it the slowest clients (under 16 KiB/s)
    /// are closed.
    #[arg(long, value_name = "BYTES")]
    pub max_held_bytes: Option<usize>,
    /// Pipelined GET/HEAD requests one connection serves at once (answers stay in order); 1 serves them one by one.
    #[arg(long, value_name = "N")]
    pub pipeline_parallel: Option<usize>,
    /// Seconds to receive a whole request head (408 past it).
    #[arg(long, value_name = "SECONDS")]
    pub header_timeout: Option<f64>,
    /// Seconds between two reads of a request body (408 past it).
    #[arg(long, value_name = "SECONDS")]
    pub body_timeout: Option<f64>,
    /// Bytes a second a request body must arrive at: its reads may wait --body-timeout in all,
    /// plus a second for each this many bytes received (408 past it); 0 turns it off.
    #[arg(long, value_name = "BYTES")]
    pub body_min_rate: Option<u64>,
    /// Seconds an idle keep-alive connection is kept.
    #[arg(long, value_name = "SECONDS")]
    pub keepalive_timeout: Option<f64>,
    /// Seconds a handler may take to answer, or a streamed answer between chunks (503 and the connection closed past it)
    #[arg(long, value_name = "SECONDS")]
    pub handler_timeout: Option<f64>,
    /// Let a handler run on when its client hangs up (by default it is dropped, as nginx's
    /// proxy_ignore_client_abort off does).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ignore_client_abort: Option<bool>,
    /// Seconds a write may make no progress before the connection is closed.
    #[arg(long, value_name = "SECONDS")]
    pub write_timeout: Option<f64>,
    /// Seconds to wait for more client data after a closing answer before closing for good (0: close at once).
    #[arg(long, value_name = "SECONDS")]
    pub lingering_timeout: Option<f64>,
    /// Seconds a lingering close (or a wait for the client to take a drained connection's
    /// answers) lasts at most in all, however the client keeps sending.
    #[arg(long, value_name = "SECONDS")]
    pub lingering_time: Option<f64>,
    /// Seconds allowed for a graceful shutdown after SIGTERM, SIGINT or SIGQUIT.
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<f64>,
    /// Seconds added to --grace for the whole stop, counted from the signal (the drain, then each
    /// shard's log sync and session snapshot); past it the process exits 1, naming the shards still
    /// stopping.
    #[arg(long, value_name = "SECONDS")]
    pub stop_timeout: Option<f64>,
    /// Seconds from the start to every shard serving; past it the process exits 1, naming the
    /// shards not ready.
    #[arg(long, value_name = "SECONDS")]
    pub start_timeout: Option<f64>,
    /// Cross-shard requests a shard serves at once (and has outstanding).
    #[arg(long, value_name = "N")]
    pub mesh_inflight_max: Option<usize>,
    /// Deadline of one cross-shard request in milliseconds.
    #[arg(long, value_name = "MS")]
    pub mesh_deadline_ms: Option<u64>,
    /// This node's id (0-65535), carried in session ids so a balancer can route by it.
    #[arg(long, value_name = "N")]
    pub node_id: Option<u16>,
    /// Directory for session snapshots and transaction logs; one percore at a time (locked).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Add `X-Shard: <index>` to every response.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub expose_shard: Option<bool>,
    /// Name of the session cookie.
    #[arg(long, value_name = "NAME")]
    pub session_cookie: Option<String>,
    /// Max-Age of the session cookie in seconds (default: a browser-session cookie).
    #[arg(long, value_name = "SECONDS")]
    pub session_cookie_max_age: Option<u64>,
    /// Seconds of inactivity after which a session expires.
    #[arg(long, value_name = "SECONDS")]
    pub session_idle_timeout: Option<f64>,
    /// Seconds after creation at which a session expires, however active.
    #[arg(long, value_name = "SECONDS")]
    pub session_lifetime: Option<f64>,
    /// Sessions per shard; at the bound the least recently used anonymous session is evicted
    /// (never a logged-in one for an anonymous one); with every session logged in a new one gets
    /// 503.
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Logged-in sessions of one user per shard; a login past it ends that user's least
    /// recently used session there.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_user: Option<usize>,
    /// Bytes of data per session (413 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_session_bytes: Option<usize>,
    /// Bytes of session data per shard, counted as --max-session-bytes counts them; past it a
    /// write evicts the least recently used anonymous sessions, and with every session logged
    /// in it gets 503.
    #[arg(long, value_name = "BYTES")]
    pub max_session_store_bytes: Option<usize>,
    /// Records a shard's session revocation log holds; at the bound a destroy, logout or
    /// rotation gets 503 until a snapshot lets the log be cut.
    #[arg(long, value_name = "N")]
    pub max_session_revocations: Option<usize>,
    /// Do not write sessions to the data dir (on shutdown and periodically) nor load them at
    /// start; a start with it deletes the data dir's session files (nothing could revoke what they
    /// hold).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_session_persist: Option<bool>,
    /// Seconds between periodic session snapshots.
    #[arg(long, value_name = "SECONDS")]
    pub session_snapshot_interval: Option<f64>,
    /// When a transaction is acknowledged: always (own fdatasync), batch (group commit), off (no sync).
    #[arg(long, value_name = "MODE")]
    pub fsync: Option<String>,
    /// Longest key of the key-value store in bytes (413 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value of the key-value store in bytes (413 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Most operations in one transaction (413 past it).
    #[arg(long, value_name = "N")]
    pub max_tx_ops: Option<usize>,
    /// Bytes of keys and values one shard's store holds, each key counted 256 bytes more for
    /// what it costs besides them (507 past it).
    #[arg(long, value_name = "BYTES")]
    pub max_kv_bytes: Option<usize>,
    /// Log bytes after which a shard checkpoints its partition and starts a new log segment.
    #[arg(long, value_name = "BYTES")]
    pub checkpoint_bytes: Option<u64>,
    /// Milliseconds a transaction that meets a lock is tried again before it gets 409 (0: 409
    /// at once).
    #[arg(long, value_name = "MS")]
    pub tx_retry_ms: Option<u64>,
    /// Microseconds a shard spins for new work before it sleeps (0: sleep at once). Spinning
    /// saves the sleep/wake cost of cross-shard round trips at the price of idle CPU.
    #[arg(long, value_name = "US")]
    pub spin_us: Option<u64>,
    /// PEM certificate chain (leaf first): every --bind address serves HTTPS with it.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to start with an expired (or not yet valid) certificate instead of warning.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_refuse_expired: Option<bool>,
    /// Seconds a client has to complete the TLS handshake (from accept).
    #[arg(long, value_name = "SECONDS")]
    pub tls_handshake_timeout: Option<f64>,
    /// Steps of TLS handshakes (the server's key exchange, the client's answer) a shard runs at
    /// once; more wait (within their handshake timeout). A handshake waiting on its client holds none.
    #[arg(long, value_name = "N")]
    pub tls_handshakes_max: Option<usize>,
    /// max-age of Strict-Transport-Security on HTTPS responses, in seconds (0: no header).
    #[arg(long, value_name = "SECONDS")]
    pub hsts_max_age: Option<u64>,
    /// Plain-HTTP address whose every request gets a 308 redirect to the HTTPS listener (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub redirect_https: Vec<String>,
    /// Proxies whose X-Forwarded-For names the client (addresses, networks like 10.0.0.0/8, or
    /// *; comma-separated or repeated). Default: none, the TCP peer is the client.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub forwarded_allow_ips: Vec<String>,
    /// Users file (TOML `[[user]]` tables: name, password_hash, roles); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Access of a request no `[[access]]` rule matches: public, authenticated, or role:NAME[,NAME].
    #[arg(long, value_name = "ACCESS")]
    pub default_access: Option<String>,
    /// Do not accept `Authorization: Basic` (sessions and Bearer tokens only).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_basic_auth: Option<bool>,
    /// A request header whose presence satisfies the CSRF check (e.g. X-Requested-With).
    #[arg(long, value_name = "NAME")]
    pub csrf_header: Option<String>,
    /// Failed logins for one user name, or from one client address, before 429 until the window ends.
    #[arg(long, value_name = "N")]
    pub login_max_failures: Option<u32>,
    /// Seconds of the failed-login window.
    #[arg(long, value_name = "SECONDS")]
    pub login_window: Option<f64>,
    /// User names and addresses whose failures one shard tracks; the oldest is forgotten past it.
    #[arg(long, value_name = "N")]
    pub login_tracked_max: Option<usize>,
    /// Password hashes a shard computes at once (on background threads).
    #[arg(long, value_name = "N")]
    pub hash_concurrency: Option<usize>,
    /// Password checks a shard queues behind those; more get 503.
    #[arg(long, value_name = "N")]
    pub hash_queue_max: Option<usize>,
    /// CPU priority of password hashing: low (nice 19, the default), idle (SCHED_IDLE: never
    /// delays a shard, but waits while the CPUs are busy), normal.
    #[arg(long, value_name = "PRIORITY")]
    pub hash_priority: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools that run instead of the server.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Read a password from stdin, print its argon2id hash (PHC) for the users file.
    HashPassword,
    /// Read an API token from stdin, print its hash for a `[[token]]` table.
    HashToken,
    /// Print a new random API token and, on the next line, its hash.
    NewToken,
    /// Move the key-value store's transaction log (in --data-dir) to another shard count,
    /// offline; then start with --shards of that count. The old log is kept in a backup dir.
    #[command(allow_negative_numbers = true)]
    Reshard {
        /// The shard count to move to.
        #[arg(long, value_name = "N")]
        to: usize,
    },
}

/// The config file: the same keys as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<Vec<String>>,
    cores: Option<String>,
    shards: Option<usize>,
    no_pin: Option<bool>,
    no_multishot_poll: Option<bool>,
    backlog: Option<u32>,
    max_conns: Option<usize>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_uri_bytes: Option<usize>,
    pipeline_parallel: Option<usize>,
    max_body: Option<u64>,
    max_held_bytes: Option<usize>,
    header_timeout: Option<f64>,
    body_timeout: Option<f64>,
    body_min_rate: Option<u64>,
    keepalive_timeout: Option<f64>,
    handler_timeout: Option<f64>,
    ignore_client_abort: Option<bool>,
    write_timeout: Option<f64>,
    lingering_timeout: Option<f64>,
    lingering_time: Option<f64>,
    grace: Option<f64>,
    stop_timeout: Option<f64>,
    start_timeout: Option<f64>,
    mesh_inflight_max: Option<usize>,
    mesh_deadline_ms: Option<u64>,
    node_id: Option<u16>,
    data_dir: Option<PathBuf>,
    expose_shard: Option<bool>,
    session_cookie: Option<String>,
    session_cookie_max_age: Option<u64>,
    session_idle_timeout: Option<f64>,
    session_lifetime: Option<f64>,
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_session_bytes: Option<usize>,
    max_session_store_bytes: Option<usize>,
    max_session_revocations: Option<usize>,
    no_session_persist: Option<bool>,
    session_snapshot_interval: Option<f64>,
    fsync: Option<String>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    max_tx_ops: Option<usize>,
    max_kv_bytes: Option<usize>,
    checkpoint_bytes: Option<u64>,
    tx_retry_ms: Option<u64>,
    spin_us: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_refuse_expired: Option<bool>,
    tls_handshake_timeout: Option<f64>,
    tls_handshakes_max: Option<usize>,
    hsts_max_age: Option<u64>,
    redirect_https: Option<Vec<String>>,
    forwarded_allow_ips: Option<Vec<String>>,
    /// `[[listener]]` tables: per-address TLS or redirect (instead of `bind`).
    listener: Option<Vec<FileListener>>,
    users: Option<PathBuf>,
    default_access: Option<String>,
    no_basic_auth: Option<bool>,
    csrf_header: Option<String>,
    login_max_failures: Option<u32>,
    login_window: Option<f64>,
    login_tracked_max: Option<usize>,
    hash_concurrency: Option<usize>,
    hash_queue_max: Option<usize>,
    hash_priority: Option<String>,
    /// `[[access]]` rules: path prefix, optional methods, who is allowed.
    access: Option<Vec<AccessRule>>,
    /// `[[token]]` API tokens: name, hash, roles.
    token: Option<Vec<Token>>,
    /// The file's path, for naming its keys (None without a file).
    #[serde(skip)]
    path: Option<PathBuf>,
}

impl FileConfig {
    /// `key`, named as the file's (`from_file`) or as its flag.
    fn named(&self, key: &str, from_file: bool) -> Named {
        if from_file {
            Named::Key {
                origin: self.origin(),
                key: key.to_string(),
            }
        } else {
            Named::flag(key)
        }
    }

    /// "config file PATH", to begin a message about the file.
    fn origin(&self) -> String {
        match &self.path {
            Some(path) => format!("config file {}", path.display()),
            None => "config file".to_string(),
        }
    }
}

/// Authentication and authorization settings (see auth/).
#[derive(Clone)]
pub struct AuthConfig {
    pub users_path: Option<PathBuf>,
    /// The users read at start; SIGHUP replaces them on every shard.
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub access: Arc<AccessRules>,
    pub basic: bool,
    /// Lower-case header name.
    pub csrf_header: Option<String>,
    pub limiter: LimiterConfig,
    pub hash_concurrency: usize,
    pub hash_queue_max: usize,
    pub hash_priority: HashPriority,
}

/// How the password-hashing threads share a CPU with the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashPriority {
    /// SCHED_IDLE: runs only when the CPU has nothing else to do.
    Idle,
    /// nice 19: a small share next to busy shards.
    Low,
    /// nice 0, like the shards.
    Normal,
}

impl AuthConfig {
    /// Whether any of authentication or authorization is configured. When not, no auth
    /// middleware runs and requests pay nothing for it.
    pub fn enabled(&self) -> bool {
        self.users_path.is_some() || !self.tokens.is_empty() || !self.access.is_open()
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users_path", &self.users_path)
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .field("basic", &self.basic)
            .field("csrf_header", &self.csrf_header)
            .finish_non_exhaustive()
    }
}

/// One `[[listener]]` table of the config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileListener {
    bind: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    redirect_https: bool,
}

/// What a listening address serves.
#[derive(Clone, Debug)]
pub enum ListenerKind {
    Plain,
    Tls(Arc<TlsMaterial>),
    /// Plain HTTP answering every request with a 308 to the first HTTPS listener.
    RedirectHttps,
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

/// TLS settings shared by every HTTPS listener.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub handshake_timeout: Duration,
    pub handshakes_max: usize,
    /// 0: no Strict-Transport-Security header.
    pub hsts_max_age: u64,
}

/// The validated configuration every shard gets a copy of.
#[derive(Clone, Debug)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Lines to print on stderr at start (an expired certificate served anyway).
    pub warnings: Vec<String>,
    pub cpus: Vec<usize>,
    pub pin: bool,
    /// Plain connections wait on the shard's readiness ring (net/ready.rs).
    pub multishot_poll: bool,
    pub backlog: u32,
    pub conns_max: usize,
    pub head_bytes_max: usize,
    pub header_count_max: usize,
    pub uri_bytes_max: usize,
    pub pipeline_parallel_max: usize,
    pub body_bytes_max: u64,
    /// Bytes a shard holds for waiting clients before it sheds them (`Shard::shed_held`).
    pub held_bytes_max: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes a second; 0: off (`ConnBody::wait_left`).
    pub body_min_rate: u64,
    pub keepalive_timeout: Duration,
    pub handler_timeout: Duration,
    /// A handler runs on when its client hangs up (`ConnIo::handler_wait`).
    pub ignore_client_abort: bool,
    pub write_timeout: Duration,
    /// Zero: no lingering close.
    pub lingering_timeout: Duration,
    pub lingering_time: Duration,
    pub grace: Duration,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub mesh_inflight_max: usize,
    pub mesh_deadline: Duration,
    pub node_id: u16,
    pub data_dir: PathBuf,
    pub expose_shard: bool,
    /// Whose `X-Forwarded-For` names the client (`RequestCtx::client`).
    pub trusted_proxies: TrustedProxies,
    pub session: SessionConfig,
    pub txn: TxnConfig,
    /// How long an idle shard spins before it sleeps.
    pub spin: Duration,
}

/// Transaction settings (see txn/).
#[derive(Clone, Debug)]
pub struct TxnConfig {
    pub fsync: crate::wal::FsyncMode,
    pub limits: crate::txn::TxnLimits,
    pub checkpoint_bytes: u64,
    /// How long a conflicted transaction is tried again before 409 (zero: never).
    pub retry: Duration,
}

/// Session settings (see session/).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub cookie_name: String,
    pub cookie_max_age: Option<u64>,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub sessions_max: usize,
    /// `--max-sessions-per-user`: one user's logged-in sessions on one shard.
    pub sessions_per_user_max: usize,
    pub session_bytes_max: usize,
    /// `--max-session-store-bytes`: session data one shard holds.
    pub store_bytes_max: usize,
    /// `--max-session-revocations`: records of one shard's revocation log.
    pub revocations_max: usize,
    pub persist: bool,
    pub snapshot_interval: Duration,
}

impl Config {
    pub fn shard_count(&self) -> usize {
        self.cpus.len()
    }

    /// Builds the config from parsed flags and the file they name (exit 2 with clap's message on
    /// a bad flag happens in `main_with`).
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        merge(args, file, &allowed_cpus())
    }

    /// The data dir and the store's bounds the flags and the config file name, and nothing
    /// else checked: for tools that run instead of the server (`percore reshard`), which a
    /// server setting this machine cannot run (more shards than CPUs, a missing certificate)
    /// must not stop (found in review).
    pub fn store_of(args: &Args) -> Result<(PathBuf, crate::txn::TxnLimits), ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let limits = txn_limits(args, &file)?;
        Ok((data_dir(args, &file)?, limits))
    }
}

/// Two bounds out of order, each a (given, name, value): "`first` <relation.0> `second`", or,
/// when only the second was given, "`second` <relation.1> `first`". Named as given; a default
/// is named as one, not as a setting somebody wrote, and the file once, unless only the
/// second came from it.
fn out_of_order(
    (first_given, first_name, first): (bool, Named, usize),
    (second_given, second_name, second): (bool, Named, usize),
    (relation, converse): (&str, &str),
) -> String {
    match (first_given, second_given) {
        (true, true) => {
            let second_name = match (&first_name, &second_name) {
                (Named::Flag(_), Named::Key { .. }) => second_name.to_string(),
                _ => second_name.short(),
            };
            format!("{first_name} {first} {relation} {second_name} {second}")
        }
        (true, false) => format!(
            "{first_name} {first} {relation} {} {second} (the default)",
            second_name.bare()
        ),
        _ => format!(
            "{second_name} {second} {converse} {} {first} (the default)",
            first_name.bare()
        ),
    }
}

/// The key-value store's bounds; the rest of them are fixed (`src/txn/mod.rs`).
fn txn_limits(args: &Args, file: &FileConfig) -> Result<crate::txn::TxnLimits, ConfigError> {
    let mut txn_limits = crate::txn::TxnLimits::default();
    txn_limits.key_bytes_max = positive(
        setting!(args, file, max_key_bytes),
        txn_limits.key_bytes_max,
    )?;
    txn_limits.value_bytes_max = positive(
        setting!(args, file, max_value_bytes),
        txn_limits.value_bytes_max,
    )?;
    txn_limits.ops_max = positive(setting!(args, file, max_tx_ops), txn_limits.ops_max)?;
    txn_limits.partition_bytes_max = positive(
        setting!(args, file, max_kv_bytes),
        txn_limits.partition_bytes_max,
    )?;
    txn_limits.validate().map_err(|e| {
        // The check names the bounds by their flags; those the file gave, by their keys; those
        // nobody gave, as defaults.
        let mut message = format!("transaction limits: {e}");
        let defaults = crate::txn::TxnLimits::default();
        let bounds = [
            (
                "max_key_bytes",
                setting!(args, file, max_key_bytes),
                defaults.key_bytes_max,
            ),
            (
                "max_value_bytes",
                setting!(args, file, max_value_bytes),
                defaults.value_bytes_max,
            ),
            (
                "max_tx_ops",
                setting!(args, file, max_tx_ops),
                defaults.ops_max,
            ),
        ];
        let mut renamed = false;
        for (key, (value, named), default) in bounds {
            let flag = Named::flag(key).to_string();
            if matches!(named, Named::Key { .. }) && message.contains(&flag) {
                message = message.replace(&flag, key);
                renamed = true;
            } else if value.is_none() {
                let given = format!("{flag} {default}");
                message = message.replace(&given, &format!("{given} (the default)"));
            }
        }
        if renamed {
            message = format!("{}: {message}", file.origin());
        }
        ConfigError(message)
    })?;
    Ok(txn_limits)
}

/// Where session snapshots and transaction logs go when no flag or key says.
const DATA_DIR_DEFAULT: &str = "percore-data";

/// The flag's data dir, else the file's, else the default; never empty (found in review: the
/// file's `data_dir = ""` was taken, and the start wrote its lock and logs into the working
/// directory before it failed; the flag's empty value clap refuses).
fn data_dir(args: &Args, file: &FileConfig) -> Result<PathBuf, ConfigError> {
    match args.data_dir.clone().or(file.data_dir.clone()) {
        Some(dir) if dir.as_os_str().is_empty() => err(format!(
            "{}: data_dir: empty (leave it out for ./percore-data)",
            file.origin()
        )),
        dir => Ok(dir.unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT))),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = read_named_text(path, limits::CONFIG_FILE_BYTES_MAX)
        .or_else(|e| err(format!("config file {}: {e}", path.display())))?;
    let mut file: FileConfig =
        toml::from_str(&text).or_else(|e: toml::de::Error| err(file_error(path, &text, &e)))?;
    file.path = Some(path.to_path_buf());
    Ok(file)
}

/// One line about a config file that does not parse: where (the line and its text) and what,
/// in the file's terms: "unknown field `max-conns`, expected one of" and the 70 keys became
/// "unknown key `max-conns` (did you mean `max_conns`?)"; "expected u64" "expected a whole
/// number".
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().replace('\n', " ");
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((key, known)) = rest.split_once('`')
    {
        let dashless = key.replace('-', "_");
        let known: Vec<&str> = known.split('`').skip(1).step_by(2).collect();
        message = if dashless != key && known.contains(&dashless.as_str()) {
            format!("unknown key `{key}` (did you mean `{dashless}`?)")
        } else {
            format!(
                "unknown key `{key}` (the keys are the flags' names with _ for -: percore --help)"
            )
        };
    }
    // With the range: "integer `70000`, expected a whole number" read as a contradiction.
    for (rust, words) in [
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        (
            "expected u64",
            "expected a whole number from 0 to 18446744073709551615",
        ),
        (
            "expected usize",
            "expected a whole number from 0 to 18446744073709551615",
        ),
        ("expected f64", "expected a number"),
    ] {
        if let Some(start) = message.strip_suffix(rust) {
            message = format!("{start}{words}");
        }
    }
    let place = match e.span() {
        Some(span) => {
            let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let end = text[span.start..]
                .find('\n')
                .map_or(text.len(), |i| span.start + i);
            let line = text[..span.start].matches('\n').count() + 1;
            // Control characters are escaped where `ConfigError` is printed.
            let shown: String = text[start..end].trim().chars().take(80).collect();
            format!(" line {line} ({shown})")
        }
        None => String::new(),
    };
    format!("config file {}{place}: {message}", path.display())
}

/// `--forwarded-allow-ips`, else the file's list (a flag replaces the file's whole list, as
/// `--bind` does).
fn trusted_proxies(args: &Args, file: &FileConfig) -> Result<TrustedProxies, ConfigError> {
    let (entries, from_file) = match &file.forwarded_allow_ips {
        _ if !args.forwarded_allow_ips.is_empty() => (&args.forwarded_allow_ips, false),
        Some(entries) => (entries, true),
        None => return Ok(TrustedProxies::default()),
    };
    TrustedProxies::parse(entries).map_err(|e| {
        let name = file.named("forwarded_allow_ips", from_file);
        ConfigError(format!("{name} {e}"))
    })
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

fn merge(args: Args, file: FileConfig, allowed: &[usize]) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let listeners = listeners(&args, &file, &mut warnings)?;
    let trusted_proxies = trusted_proxies(&args, &file)?;
    let auth = auth(&args, &file)?;
    let txn_limits = txn_limits(&args, &file)?;
    // Both pick the CPUs: a flag for either overrides the file's choice, whichever key it used.
    let from_file = args.cores.is_none() && args.shards.is_none();
    let (cores, shards) = if from_file {
        (file.cores.clone(), file.shards)
    } else {
        (args.cores.clone(), args.shards)
    };
    let cores_name = file.named("cores", from_file);
    let shards_name = file.named("shards", from_file);
    let cpus = match (cores, shards) {
        (Some(_), Some(_)) if from_file => {
            return err(format!(
                "{}: give `cores` or `shards`, not both",
                file.origin()
            ));
        }
        (Some(_), Some(_)) => return err("--cores and --shards: give one, not both"),
        (Some(list), None) => {
            let cpus = parse_cpu_list(&list)
                .map_err(|e| ConfigError(format!("{cores_name} {list}: {e}")))?;
            if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                return err(format!(
                    "{cores_name} {list}: CPU {cpu} is not available to this process (allowed: {allowed:?})"
                ));
            }
            cpus
        }
        (None, Some(0)) => return err(format!("{shards_name} 0: at least one shard is needed")),
        (None, Some(n)) if n > allowed.len() => {
            return err(match allowed.len() {
                1 => format!("{shards_name} {n}: only 1 CPU is available to this process"),
                cpus => {
                    format!("{shards_name} {n}: only {cpus} CPUs are available to this process")
                }
            });
        }
        (None, Some(n)) => allowed[..n].to_vec(),
        (None, None) => allowed.to_vec(),
    };

    let (fsync_text, fsync_name) = setting!(args, file, fsync);
    let txn = TxnConfig {
        fsync: fsync_text
            .as_deref()
            .unwrap_or("batch")
            .parse()
            .map_err(|e| ConfigError(format!("{fsync_name} {e}")))?,
        limits: txn_limits,
        checkpoint_bytes: match setting!(args, file, checkpoint_bytes) {
            (None, _) => limits::CHECKPOINT_BYTES_DEFAULT,
            (Some(bytes), _) if bytes >= limits::CHECKPOINT_BYTES_MIN => bytes,
            (Some(bytes), name) => {
                return err(format!(
                    "{name} {bytes}: at least {}",
                    limits::CHECKPOINT_BYTES_MIN
                ));
            }
        },
        retry: match setting!(args, file, tx_retry_ms) {
            (None, _) => limits::TX_RETRY_DEFAULT,
            (Some(ms), _) if ms <= limits::TX_RETRY_MAX.as_millis() as u64 => {
                Duration::from_millis(ms)
            }
            (Some(ms), name) => {
                return err(format!(
                    "{name} {ms}: at most {}",
                    limits::TX_RETRY_MAX.as_millis()
                ));
            }
        },
    };
    let (spin_us, spin_name) = setting!(args, file, spin_us);
    let spin_us = spin_us.unwrap_or(0);
    if spin_us > 1_000_000 {
        return err(format!("{spin_name} {spin_us}: at most 1000000"));
    }
    let mut config = Config {
        txn,
        spin: Duration::from_micros(spin_us),
        listeners,
        warnings,
        auth,
        tls: TlsConfig {
            handshake_timeout: seconds(
                setting!(args, file, tls_handshake_timeout),
                limits::TLS_HANDSHAKE_TIMEOUT_DEFAULT,
            )?,
            handshakes_max: positive(
                setting!(args, file, tls_handshakes_max),
                limits::TLS_HANDSHAKES_MAX_DEFAULT,
            )?,
            hsts_max_age: args
                .hsts_max_age
                .or(file.hsts_max_age)
                .unwrap_or(limits::HSTS_MAX_AGE_DEFAULT),
        },
        cpus,
        pin: !args.no_pin.or(file.no_pin).unwrap_or(false),
        ignore_client_abort: args
            .ignore_client_abort
            .or(file.ignore_client_abort)
            .unwrap_or(false),
        multishot_poll: !args
            .no_multishot_poll
            .or(file.no_multishot_poll)
            .unwrap_or(false),
        backlog: positive(setting!(args, file, backlog), limits::BACKLOG_DEFAULT)?,
        conns_max: positive(setting!(args, file, max_conns), limits::CONNS_MAX_DEFAULT)?,
        head_bytes_max: positive(
            setting!(args, file, max_head_bytes),
            limits::HEAD_BYTES_MAX_DEFAULT,
        )?,
        header_count_max: positive(
            setting!(args, file, max_headers),
            limits::HEADER_COUNT_MAX_DEFAULT,
        )?,
        uri_bytes_max: positive(
            setting!(args, file, max_uri_bytes),
            limits::URI_BYTES_MAX_DEFAULT,
        )?,
        pipeline_parallel_max: positive(
            setting!(args, file, pipeline_parallel),
            limits::PIPELINE_PARALLEL_DEFAULT,
        )?,
        // 0 is refused, not "no limit" as in nginx's client_max_body_size: here it answered
        // every body 413, nothing said (found in review).
        body_bytes_max: positive(
            setting!(args, file, max_body),
            limits::BODY_BYTES_MAX_DEFAULT,
        )?,
        held_bytes_max: positive(
            setting!(args, file, max_held_bytes),
            limits::HELD_BYTES_MAX_DEFAULT,
        )?,
        header_timeout: seconds(
            setting!(args, file, header_timeout),
            limits::HEADER_TIMEOUT_DEFAULT,
        )?,
        body_timeout: seconds(
            setting!(args, file, body_timeout),
            limits::BODY_TIMEOUT_DEFAULT,
        )?,
        body_min_rate: at_most(
            setting!(args, file, body_min_rate),
            limits::BODY_MIN_RATE_DEFAULT,
            limits::BODY_MIN_RATE_CEILING,
        )?,
        keepalive_timeout: seconds(
            setting!(args, file, keepalive_timeout),
            limits::KEEPALIVE_TIMEOUT_DEFAULT,
        )?,
        handler_timeout: seconds(
            setting!(args, file, handler_timeout),
            limits::HANDLER_TIMEOUT_DEFAULT,
        )?,
        write_timeout: seconds(
            setting!(args, file, write_timeout),
            limits::WRITE_TIMEOUT_DEFAULT,
        )?,
        lingering_timeout: match setting!(args, file, lingering_timeout) {
            (Some(0.0), _) => Duration::ZERO,
            other => seconds(other, limits::LINGERING_TIMEOUT_DEFAULT)?,
        },
        lingering_time: seconds(
            setting!(args, file, lingering_time),
            limits::LINGERING_TIME_DEFAULT,
        )?,
        grace: seconds(setting!(args, file, grace), limits::GRACE_DEFAULT)?,
        stop_timeout: seconds(
            setting!(args, file, stop_timeout),
            limits::STOP_TIMEOUT_DEFAULT,
        )?,
        start_timeout: seconds(
            setting!(args, file, start_timeout),
            limits::START_TIMEOUT_DEFAULT,
        )?,
        mesh_inflight_max: positive(
            setting!(args, file, mesh_inflight_max),
            limits::MESH_INFLIGHT_MAX_DEFAULT,
        )?,
        mesh_deadline: mesh_deadline(setting!(args, file, mesh_deadline_ms))?,
        node_id: args.node_id.or(file.node_id).unwrap_or(0),
        data_dir: data_dir(&args, &file)?,
        expose_shard: args.expose_shard.or(file.expose_shard).unwrap_or(false),
        trusted_proxies,
        session: SessionConfig {
            cookie_name: cookie_name(setting!(args, file, session_cookie))?,
            // Max-Age=0 tells a browser to delete the cookie at once: every session would be
            // lost as it is made (found in review: 0 was accepted).
            cookie_max_age: match setting!(args, file, session_cookie_max_age) {
                (Some(0), name) => {
                    return err(format!(
                        "{name} 0: must be greater than 0 (leave it out for a cookie that lasts \
                         the browser session)"
                    ));
                }
                (other, _) => other,
            },
            idle_timeout: seconds(
                setting!(args, file, session_idle_timeout),
                limits::SESSION_IDLE_TIMEOUT_DEFAULT,
            )?,
            lifetime: seconds(
                setting!(args, file, session_lifetime),
                limits::SESSION_LIFETIME_DEFAULT,
            )?,
            sessions_max: positive(
                setting!(args, file, max_sessions),
                limits::SESSIONS_MAX_DEFAULT,
            )?,
            sessions_per_user_max: positive(
                setting!(args, file, max_sessions_per_user),
                limits::SESSIONS_PER_USER_MAX_DEFAULT,
            )?,
            session_bytes_max: positive(
                setting!(args, file, max_session_bytes),
                limits::SESSION_BYTES_MAX_DEFAULT,
            )?,
            store_bytes_max: positive(
                setting!(args, file, max_session_store_bytes),
                limits::SESSION_STORE_BYTES_MAX_DEFAULT,
            )?,
            revocations_max: positive(
                setting!(args, file, max_session_revocations),
                limits::SESSION_REVOCATIONS_MAX_DEFAULT,
            )?,
            persist: !args
                .no_session_persist
                .or(file.no_session_persist)
                .unwrap_or(false),
            snapshot_interval: seconds(
                setting!(args, file, session_snapshot_interval),
                limits::SESSION_SNAPSHOT_INTERVAL_DEFAULT,
            )?,
        },
    };
    if config.head_bytes_max > HEAD_BYTES_CEILING {
        return err(format!(
            "{} {}: at most {HEAD_BYTES_CEILING}",
            setting!(args, file, max_head_bytes).1,
            config.head_bytes_max
        ));
    }
    if config.header_count_max > HEADER_COUNT_CEILING {
        return err(format!(
            "{} {}: at most {HEADER_COUNT_CEILING}",
            setting!(args, file, max_headers).1,
            config.header_count_max
        ));
    }
    if config.pipeline_parallel_max > limits::PIPELINE_PARALLEL_CEILING {
        return err(format!(
            "{} {}: at most {}",
            setting!(args, file, pipeline_parallel).1,
            config.pipeline_parallel_max,
            limits::PIPELINE_PARALLEL_CEILING
        ));
    }
    let session = &config.session;
    if session.store_bytes_max < session.session_bytes_max {
        // One session at its bound must fit the store: a write past the store alone was
        // answered 503 "retry later", which could never succeed (found in review).
        let (store_given, store_name) = setting!(args, file, max_session_store_bytes);
        let (bound_given, bound_name) = setting!(args, file, max_session_bytes);
        return err(out_of_order(
            (store_given.is_some(), store_name, session.store_bytes_max),
            (bound_given.is_some(), bound_name, session.session_bytes_max),
            ("must be at least", "must be at most"),
        ));
    }
    if config.uri_bytes_max >= config.head_bytes_max {
        let (uri_given, uri_name) = setting!(args, file, max_uri_bytes);
        let (head_given, head_name) = setting!(args, file, max_head_bytes);
        return err(out_of_order(
            (uri_given.is_some(), uri_name, config.uri_bytes_max),
            (head_given.is_some(), head_name, config.head_bytes_max),
            ("must be smaller than", "must be larger than"),
        ));
    }
    if config.mesh_inflight_max > limits::MESH_CHANNEL_CAPACITY {
        return err(format!(
            "{} {}: at most {}",
            setting!(args, file, mesh_inflight_max).1,
            config.mesh_inflight_max,
            limits::MESH_CHANNEL_CAPACITY
        ));
    }
    if let Some(warning) = cookie_prefix_warning(&config, &setting!(args, file, session_cookie).1) {
        config.warnings.push(warning);
    }
    for warning in crate::auth::access::warnings(file.access.as_deref().unwrap_or_default()) {
        config
            .warnings
            .push(format!("{}: [[access]]: {warning}", file.origin()));
    }
    Ok(config)
}

/// Browsers keep a `__Secure-` or `__Host-` cookie only when it is `Secure` (RFC 6265bis §4.1.3,
/// prefixes matched case-insensitively), and percore marks the session cookie `Secure` over
/// HTTPS alone: with such a name, sessions on a plain listener never stick.
/// `setting` names where the cookie name came from.
fn cookie_prefix_warning(config: &Config, setting: &Named) -> Option<String> {
    let name = &config.session.cookie_name;
    let lower = name.to_ascii_lowercase();
    let prefix = ["__secure-", "__host-"]
        .into_iter()
        .find(|prefix| lower.starts_with(prefix))?;
    let plain = config
        .listeners
        .iter()
        .find(|listener| matches!(listener.kind, ListenerKind::Plain))?;
    Some(format!(
        "warning: {setting} {name}: browsers keep a cookie named {}... only when it is \
         Secure, which percore sets over HTTPS only: sessions will not stick on the plain \
         listener {}",
        &name[..prefix.len()],
        plain.addr
    ))
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().or_else(|_| {
        err(format!(
            "{flag} {text}: not an IP address with a port (127.0.0.1:8080, [::1]:8080)"
        ))
    })
}

/// Reads each certificate/key pair once, however many listeners use it.
struct TlsLoader {
    /// The setting that refuses expired certificates, if one does.
    refuse_expired: Option<String>,
    now: SystemTime,
    loaded: Vec<(PathBuf, PathBuf, Arc<TlsMaterial>)>,
}

impl TlsLoader {
    /// `names`: the settings that gave `cert` and `key`, for messages.
    fn load(
        &mut self,
        (cert, key): (&Path, &Path),
        names: &(String, String),
        warnings: &mut Vec<String>,
    ) -> Result<Arc<TlsMaterial>, ConfigError> {
        if let Some((_, _, m)) = self.loaded.iter().find(|(c, k, _)| c == cert && k == key) {
            return Ok(m.clone());
        }
        let read = |name: &str, path: &Path| {
            read_named_file(path, limits::PEM_FILE_BYTES_MAX)
                .or_else(|e| err(format!("{name} {}: cannot read: {e}", path.display())))
        };
        let (cert_pem, key_pem) = (read(&names.0, cert)?, read(&names.1, key)?);
        let material = tls::load(
            cert,
            &cert_pem,
            key,
            &key_pem,
            (&names.0, &names.1),
            self.refuse_expired.as_deref(),
            self.now,
            warnings,
        )
        .map_err(ConfigError)?;
        self.loaded
            .push((cert.to_path_buf(), key.to_path_buf(), material.clone()));
        Ok(material)
    }
}

/// The listening addresses and what each serves, from `--bind` (+ `--tls-cert`/`--tls-key` for
/// all of them) and `--redirect-https`, or the config file's `bind`/`[[listener]]`.
fn listeners(
    args: &Args,
    file: &FileConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut loader = TlsLoader {
        refuse_expired: match setting!(args, file, tls_refuse_expired) {
            (Some(true), named) => Some(named.bare()),
            _ => None,
        },
        now: SystemTime::now(),
        loaded: Vec::new(),
    };
    let tls_pair = match (
        args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
        args.tls_key.as_ref().or(file.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) if args.tls_cert.is_none() => {
            return err(format!("{}: tls_cert needs tls_key", file.origin()));
        }
        (Some(_), None) => return err("--tls-cert needs --tls-key"),
        (None, Some(_)) if args.tls_key.is_none() => {
            return err(format!("{}: tls_key needs tls_cert", file.origin()));
        }
        (None, Some(_)) => return err("--tls-key needs --tls-cert"),
    };
    let pair_names = (
        file.named("tls_cert", args.tls_cert.is_none()).to_string(),
        file.named("tls_key", args.tls_key.is_none()).to_string(),
    );
    let bind_name = file.named("bind", args.bind.is_empty() && file.bind.is_some());
    let mut listeners = match &file.listener {
        Some(tables) if args.bind.is_empty() => {
            if file.bind.is_some() {
                return err(format!(
                    "{}: give `bind` or `[[listener]]` tables, not both",
                    file.origin()
                ));
            }
            let pair = tls_pair.as_ref().map(|pair| (pair, &pair_names));
            listener_tables(tables, &file.origin(), pair, &mut loader, warnings)?
        }
        _ => {
            let bind_texts = if !args.bind.is_empty() {
                args.bind.clone()
            } else {
                file.bind
                    .clone()
                    .unwrap_or_else(|| vec!["127.0.0.1:8080".to_string()])
            };
            let mut listeners = Vec::with_capacity(bind_texts.len());
            for text in &bind_texts {
                let addr = parse_addr(&bind_name.to_string(), text)?;
                let kind = match &tls_pair {
                    Some((cert, key)) => {
                        ListenerKind::Tls(loader.load((cert, key), &pair_names, warnings)?)
                    }
                    None => ListenerKind::Plain,
                };
                listeners.push(ListenerConfig { addr, kind });
            }
            listeners
        }
    };
    let redirects = if !args.redirect_https.is_empty() {
        args.redirect_https.clone()
    } else {
        file.redirect_https.clone().unwrap_or_default()
    };
    let redirect_name = file.named("redirect_https", args.redirect_https.is_empty());
    for text in &redirects {
        let addr = parse_addr(&redirect_name.to_string(), text)?;
        listeners.push(ListenerConfig {
            addr,
            kind: ListenerKind::RedirectHttps,
        });
    }
    let bind_name = match &file.listener {
        Some(_) if args.bind.is_empty() => format!("{}: [[listener]]", file.origin()),
        _ => bind_name.bare(),
    };
    check_listeners(&listeners, &bind_name, &redirect_name.bare())?;
    Ok(listeners)
}

/// A certificate's path and its key's.
type TlsPair = (PathBuf, PathBuf);

/// `origin` names the file in messages; `tls_pair`, the top level's pair and the settings that
/// gave it.
fn listener_tables(
    tables: &[FileListener],
    origin: &str,
    tls_pair: Option<(&TlsPair, &(String, String))>,
    loader: &mut TlsLoader,
    warnings: &mut Vec<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut listeners = Vec::with_capacity(tables.len());
    for table in tables {
        let addr = parse_addr(&format!("{origin}: [[listener]] bind ="), &table.bind)?;
        let kind = match (&table.tls_cert, &table.tls_key, table.redirect_https) {
            (Some(_), Some(_), true) => {
                return err(format!(
                    "{origin}: [[listener]] {addr}: redirect_https and tls_cert exclude each other"
                ));
            }
            (Some(cert), Some(key), false) => {
                let names = (
                    format!("{origin}: [[listener]] tls_cert ="),
                    format!("{origin}: [[listener]] tls_key ="),
                );
                ListenerKind::Tls(loader.load((cert, key), &names, warnings)?)
            }
            (None, None, true) => ListenerKind::RedirectHttps,
            (None, None, false) => match tls_pair {
                Some(((cert, key), names)) => {
                    ListenerKind::Tls(loader.load((cert, key), names, warnings)?)
                }
                None => ListenerKind::Plain,
            },
            _ => {
                return err(format!(
                    "{origin}: [[listener]] {addr}: tls_cert and tls_key go together"
                ));
            }
        };
        listeners.push(ListenerConfig { addr, kind });
    }
    Ok(listeners)
}

/// At least one listener, no address twice, and an HTTPS listener for redirects to point at.
/// `bind` and `redirect` name the settings the addresses came from.
fn check_listeners(
    listeners: &[ListenerConfig],
    bind: &str,
    redirect: &str,
) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return err(format!("{bind}: at least one address is needed"));
    }
    let has_tls = listeners
        .iter()
        .any(|l| matches!(l.kind, ListenerKind::Tls(_)));
    let has_redirect = listeners
        .iter()
        .any(|l| matches!(l.kind, ListenerKind::RedirectHttps));
    if has_redirect && !has_tls {
        return err(format!(
            "{redirect}: no HTTPS listener to redirect to (give a TLS certificate and key)"
        ));
    }
    for (i, listener) in listeners.iter().enumerate() {
        if listener.addr.port() != 0 && listeners[..i].iter().any(|l| l.addr == listener.addr) {
            return err(format!("{bind} {}: given twice", listener.addr));
        }
    }
    Ok(())
}

/// Reads a users file: one line naming the file and the problem on error. Only a regular file:
/// it is read again on SIGHUP, where a pipe (`--users <(...)`) would read as empty and remove
/// every user. Opened without blocking and checked on the open file: a FIFO without a writer
/// put in its place must not block the reader (found in review: on SIGHUP it blocked the signal
/// thread, SIGTERM with it, for good).
pub fn read_users(path: &Path) -> Result<Users, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: String| format!("users file {}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        return Err(fail(
            "not a regular file (it is read again on SIGHUP)".to_string(),
        ));
    }
    let bytes = read_bounded(file, limits::USERS_FILE_BYTES_MAX).map_err(fail)?;
    Users::parse(&utf8_text(bytes).map_err(fail)?).map_err(fail)
}

/// Reads a whole file an operator named, if it holds at most `bytes_max` bytes: a wrong path
/// (`/dev/zero`, a growing log) is an error naming the bound, not a start-up that reads until
/// the OOM killer stops it. The error does not name the file; the caller does.
///
/// A pipe works (`--config <(...)`), but the open does not block: opening a FIFO nobody writes
/// blocked the start for good, with nothing said (found in review). Such a FIFO reads as
/// empty, which is an error for a path that names a FIFO; `/dev/null` and an empty pipe read as
/// empty, as they did (a review found the first cut refused `--config /dev/null`).
pub fn read_named_file(path: &Path, bytes_max: u64) -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let regular = file.metadata().is_ok_and(|meta| meta.is_file());
    if !regular {
        // Reads block again, so a pipe's writer has time to write.
        // SAFETY: fcntl on a descriptor this function owns.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0
            || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) }
                < 0
        {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    let bytes = read_bounded(file, bytes_max)?;
    if bytes.is_empty() && !regular && is_named_fifo(path) {
        return Err("nothing to read (a FIFO that nobody writes?)".to_string());
    }
    Ok(bytes)
}

/// A FIFO with a name, through any symlinks (found in review: a symlink to one read as an empty
/// config), not a pipe reached through `/dev/fd` (`--config <(...)`: its link names `pipe:[N]`).
fn is_named_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let mut path = path.to_path_buf();
    for _ in 0..16 {
        match std::fs::read_link(&path) {
            Ok(target) if target.as_os_str().as_encoded_bytes().starts_with(b"pipe:") => {
                return false;
            }
            Ok(target) => path = path.parent().unwrap_or(Path::new("/")).join(target),
            Err(_) => break,
        }
    }
    std::fs::metadata(&path).is_ok_and(|meta| meta.file_type().is_fifo())
}

fn read_bounded(file: std::fs::File, bytes_max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let too_big = || format!("larger than {bytes_max} bytes, the most percore reads from it");
    if file.metadata().is_ok_and(|meta| meta.len() > bytes_max) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > bytes_max {
        return Err(too_big());
    }
    Ok(bytes)
}

fn read_named_text(path: &Path, bytes_max: u64) -> Result<String, String> {
    utf8_text(read_named_file(path, bytes_max)?)
}

fn utf8_text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (a bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn auth(args: &Args, file: &FileConfig) -> Result<AuthConfig, ConfigError> {
    let users_path = args.users.clone().or(file.users.clone());
    let users = match &users_path {
        Some(path) => read_users(path).map_err(ConfigError)?,
        None => Users::default(),
    };
    let tokens = Tokens::new(file.token.clone().unwrap_or_default())
        .map_err(|e| ConfigError(format!("{}: [[token]]: {e}", file.origin())))?;
    let (default_text, default_name) = setting!(args, file, default_access);
    let default_text = default_text.unwrap_or_else(|| "public".to_string());
    let default = crate::auth::access::parse_default(&default_text)
        .map_err(|e| ConfigError(format!("{default_name} {default_text}: {e}")))?;
    let access = AccessRules::new(file.access.clone().unwrap_or_default(), default)
        .map_err(|e| ConfigError(format!("{}: [[access]]: {e}", file.origin())))?;
    let (csrf_header, csrf_name) = setting!(args, file, csrf_header);
    let csrf_header = match csrf_header {
        Some(name) if name.is_empty() || !name.bytes().all(is_token_byte) => {
            return err(format!("{csrf_name} {name}: not a header name"));
        }
        Some(name) if browser_sends_cross_site(&name) => {
            return err(format!(
                "{csrf_name} {name}: browsers send this header on cross-site requests, so it proves nothing; pick a custom one (X-Requested-With)"
            ));
        }
        Some(name) => Some(name.to_ascii_lowercase()),
        None => None,
    };
    let window = seconds(
        setting!(args, file, login_window),
        limits::LOGIN_WINDOW_DEFAULT,
    )?;
    Ok(AuthConfig {
        users_path,
        users: Arc::new(users),
        tokens: Arc::new(tokens),
        access: Arc::new(access),
        basic: !args.no_basic_auth.or(file.no_basic_auth).unwrap_or(false),
        csrf_header,
        limiter: LimiterConfig {
            failures_max: positive(
                setting!(args, file, login_max_failures),
                limits::LOGIN_FAILURES_MAX_DEFAULT,
            )?,
            window_ms: window.as_millis() as u64,
            entries_max: positive(
                setting!(args, file, login_tracked_max),
                limits::LOGIN_TRACKED_MAX_DEFAULT,
            )?,
        },
        hash_concurrency: match positive(
            setting!(args, file, hash_concurrency),
            limits::HASH_CONCURRENCY_DEFAULT,
        )? {
            n if n > limits::HASH_CONCURRENCY_MAX => {
                return err(format!(
                    "{} {n}: at most {} threads per shard",
                    setting!(args, file, hash_concurrency).1,
                    limits::HASH_CONCURRENCY_MAX
                ));
            }
            n => n,
        },
        hash_queue_max: positive(
            setting!(args, file, hash_queue_max),
            limits::HASH_QUEUE_MAX_DEFAULT,
        )?,
        hash_priority: match setting!(args, file, hash_priority) {
            (None, _) => HashPriority::Low,
            (Some(text), name) => match text.as_str() {
                "low" => HashPriority::Low,
                "idle" => HashPriority::Idle,
                "normal" => HashPriority::Normal,
                other => return err(format!("{name} {other}: one of low, idle, normal")),
            },
        },
    })
}

/// Headers a cross-site page can make a browser send without a CORS preflight (the Fetch
/// standard's CORS-safelisted and forbidden request headers, and `Sec-`/`Proxy-` names).
fn browser_sends_cross_site(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "range",
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-length",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "authorization",
    ];
    let lower = name.to_ascii_lowercase();
    NAMES.contains(&lower.as_str()) || lower.starts_with("sec-") || lower.starts_with("proxy-")
}

/// RFC 9110 tchar.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A cookie name is an RFC 6265 token.
fn cookie_name((name, setting): (Option<String>, Named)) -> Result<String, ConfigError> {
    let name = name.unwrap_or_else(|| "percore_sid".to_string());
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return err(format!(
            "{setting} {name}: not a valid cookie name (letters, digits, !#$%&'*+-.^_`|~)"
        ));
    }
    Ok(name)
}

fn positive<T: PartialOrd + Default + std::fmt::Display + Copy>(
    (value, name): (Option<T>, Named),
    default: T,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if value <= T::default() {
        return err(format!("{name} {value}: must be greater than 0"));
    }
    Ok(value)
}

/// `--mesh-deadline-ms`: above 0 and, like every duration, at most a year (found in review:
/// 99999999999999 was accepted).
fn mesh_deadline((ms, name): (Option<u64>, Named)) -> Result<Duration, ConfigError> {
    let ms = ms.unwrap_or(limits::MESH_DEADLINE_DEFAULT.as_millis() as u64);
    if ms == 0 {
        return err(format!("{name} 0: must be greater than 0"));
    }
    if ms as f64 > SECONDS_MAX * 1000.0 {
        return err(format!(
            "{name} {ms}: at most {} (a year)",
            SECONDS_MAX as u64 * 1000
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// The longest duration a flag takes: a year (a week-long or month-long session lifetime is
/// common; one day was the bound until a review found it refused). Far below where `Instant`
/// arithmetic could overflow.
const SECONDS_MAX: f64 = 365.0 * 86_400.0;

/// The shortest: a millisecond, what the shortest timer here counts in. Below it a duration
/// passed "above 0" and was zero where it counted in milliseconds: `--login-window 0.0009`
/// turned the brute-force limiter off (found in review).
const SECONDS_MIN: f64 = 0.001;

/// A count from 0 to `ceiling`.
fn at_most(
    (value, name): (Option<u64>, Named),
    default: u64,
    ceiling: u64,
) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if value > ceiling {
        return err(format!("{name} {value}: at most {ceiling}"));
    }
    Ok(value)
}

fn seconds(
    (value, name): (Option<f64>, Named),
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) if (SECONDS_MIN..=SECONDS_MAX).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) => err(format!(
            "{name} {s}: must be a number of seconds from {SECONDS_MIN} to {SECONDS_MAX} (a year)"
        )),
    }
}

/// Parses taskset-style CPU lists: `0-3,6`, and ranges with a stride, `0-7:2` (every second
/// CPU, as taskset and cpuset lists write it). Sorted, without duplicates.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    // Linux's largest CPU count, the most shards (the bound said 4096 where SHARDS_MAX said
    // 8192, and a shard count check past u16::MAX could not fire: found in review).
    const CPU_MAX: usize = limits::SHARDS_MAX;
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (range, stride) = match part.split_once(':') {
            Some((range, stride)) => match stride.trim().parse::<usize>() {
                Ok(stride) if stride > 0 && range.contains('-') => (range, stride),
                _ => return Err(format!("'{part}' is not a CPU range with a stride (0-7:2)")),
            },
            None => (part, 1),
        };
        let (low, high) = match range.split_once('-') {
            Some((a, b)) => (a, b),
            None => (range, range),
        };
        let low: usize = low
            .trim()
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU number or range"))?;
        let high: usize = high
            .trim()
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU number or range"))?;
        if low > high || high >= CPU_MAX {
            return Err(format!("'{part}' is not a valid range"));
        }
        cpus.extend((low..=high).step_by(stride));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_files_are_read_up_to_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for (len, bound, ok) in [(0, 0, true), (8, 8, true), (9, 8, false), (8, 9, true)] {
            std::fs::write(&path, vec![b'x'; len]).unwrap();
            let read = read_named_file(&path, bound);
            assert_eq!(read.is_ok(), ok, "{len} bytes, bound {bound}: {read:?}");
            match read {
                Ok(bytes) => assert_eq!(bytes.len(), len),
                Err(e) => assert!(e.contains(&format!("larger than {bound} bytes")), "{e}"),
            }
        }
        // A file whose size says nothing: read until one byte past the bound, then refused.
        let zeros = read_named_file(Path::new("/dev/zero"), 1000).unwrap_err();
        assert!(zeros.contains("larger than 1000 bytes"), "{zeros}");
        // A FIFO nobody writes: read as empty (its open used to block for good).
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let empty = read_named_file(&fifo, 10).unwrap_err();
        assert!(empty.contains("nothing to read"), "{empty}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let empty = read_named_file(&link, 10).unwrap_err();
        assert!(
            empty.contains("nothing to read"),
            "through a symlink: {empty}"
        );
        // `/dev/null`, a common "no config", is empty, as an empty file is.
        assert_eq!(read_named_file(Path::new("/dev/null"), 10).unwrap(), b"");
        // A pipe whose writer is still writing (`--config <(...)`): read whole, waiting for it.
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(b"writ").unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            writer.write_all(b"ten")
        });
        let path_of_pipe = format!("/proc/self/fd/{}", reader.as_raw_fd());
        assert_eq!(
            read_named_file(Path::new(&path_of_pipe), 10).unwrap(),
            b"written"
        );
        late.join().unwrap().unwrap();
        std::fs::write(&path, b"ok\xff").unwrap();
        let text = read_named_text(&path, 10).unwrap_err();
        assert!(
            text.contains("not UTF-8") && text.contains("offset 2"),
            "{text}"
        );
    }

    fn check_cpus(text: &str, expected: Result<Vec<usize>, ()>) {
        assert_eq!(parse_cpu_list(text).map_err(|_| ()), expected, "{text}");
    }

    #[test]
    fn cpu_lists() {
        check_cpus("0", Ok(vec![0]));
        check_cpus("0-3,6", Ok(vec![0, 1, 2, 3, 6]));
        check_cpus("3,1,1", Ok(vec![1, 3]));
        check_cpus(" 2 - 3 ", Ok(vec![2, 3]));
        check_cpus("0-7:2", Ok(vec![0, 2, 4, 6]));
        check_cpus("1-7:3,0", Ok(vec![0, 1, 4, 7]));
        check_cpus("0-7:0", Err(()));
        check_cpus("3:2", Err(()));
        check_cpus("0-7:x", Err(()));
        check_cpus("", Err(()));
        check_cpus("a", Err(()));
        check_cpus("3-1", Err(()));
        check_cpus("-1", Err(()));
        check_cpus("1,", Err(()));
        check_cpus("99999", Err(()));
    }

    fn merged(args: &[&str], file: &str) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("percore").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let file: FileConfig = toml::from_str(file).map_err(|e| e.to_string())?;
        merge(args, file, &[0, 1, 2, 3]).map_err(|e| e.0)
    }

    /// `--forwarded-allow-ips`: comma-separated or repeated; a flag replaces the file's list;
    /// a bad entry is named.
    #[test]
    fn forwarded_allow_ips_from_flags_or_the_file() {
        let proxies = |args: &[&str], file: &str| merged(args, file).map(|c| c.trusted_proxies);
        let parse = |entries: &[&str]| {
            let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
            TrustedProxies::parse(&entries).unwrap()
        };
        assert_eq!(proxies(&[], ""), Ok(TrustedProxies::default()));
        let both = parse(&["10.0.0.0/8", "::1"]);
        assert_eq!(
            proxies(&["--forwarded-allow-ips", "10.0.0.0/8,::1"], ""),
            Ok(both.clone())
        );
        let repeated = [
            "--forwarded-allow-ips",
            "10.0.0.0/8",
            "--forwarded-allow-ips",
            "::1",
        ];
        assert_eq!(proxies(&repeated, ""), Ok(both.clone()));
        let file = "forwarded_allow_ips = [\"10.0.0.0/8\", \"::1\"]";
        assert_eq!(proxies(&[], file), Ok(both));
        assert_eq!(
            proxies(&["--forwarded-allow-ips", "*"], file),
            Ok(parse(&["*"])),
            "the flag replaces the file's list"
        );
        assert_eq!(
            proxies(&["--forwarded-allow-ips", "10.0.0.1,proxy.example"], ""),
            Err("--forwarded-allow-ips \"proxy.example\": not an IP address, a network (10.0.0.0/8) or *".to_string())
        );
    }

    #[test]
    fn a_secure_prefixed_cookie_name_on_a_plain_listener_is_warned_of() {
        let warned = |name: &str| {
            let c = merged(&["--session-cookie", name], "").unwrap();
            c.warnings
                .iter()
                .any(|w| w.contains("sessions will not stick"))
        };
        assert!(warned("__Host-sid"));
        assert!(warned("__SECURE-sid"));
        assert!(!warned("percore_sid"));
        assert!(!warned("_Host-sid"));
        let c = merged(&["--session-cookie", "__Host-sid"], "").unwrap();
        assert_eq!(
            c.warnings,
            [
                "warning: --session-cookie __Host-sid: browsers keep a cookie named __Host-... only \
              when it is Secure, which percore sets over HTTPS only: sessions will not stick on \
              the plain listener 127.0.0.1:8080"
            ]
        );
        // From the file, named as the file's key.
        let c = merged(&[], "session_cookie = \"__Host-sid\"").unwrap();
        assert!(
            c.warnings[0].starts_with("warning: config file: session_cookie = __Host-sid: "),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn defaults() {
        let c = merged(&[], "").unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].addr, "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(c.listeners[0].kind, ListenerKind::Plain));
        assert_eq!(c.cpus, vec![0, 1, 2, 3]);
        assert!(c.pin);
        assert_eq!(c.conns_max, 10_000);
        assert_eq!(c.head_bytes_max, 16 * 1024);
        assert_eq!(c.header_count_max, 100);
        assert_eq!(c.uri_bytes_max, 8 * 1024);
        assert_eq!(c.pipeline_parallel_max, 16);
        assert_eq!(c.body_bytes_max, 1024 * 1024);
        assert_eq!(c.held_bytes_max, 256 * 1024 * 1024);
        assert_eq!(c.txn.limits.partition_bytes_max, 1 << 30);
        assert_eq!(c.lingering_time, Duration::from_secs(30));
        let c = merged(&["--lingering-time", "2.5"], "lingering_time = 7").unwrap();
        assert_eq!(c.lingering_time, Duration::from_millis(2500));
        assert!(merged(&[], "lingering_time = 0").is_err());
        let c = merged(&["--max-kv-bytes", "5"], "max_kv_bytes = 7").unwrap();
        assert_eq!(c.txn.limits.partition_bytes_max, 5);
        let zero = merged(&[], "max_kv_bytes = 0").unwrap_err();
        assert!(zero.contains("max_kv_bytes = 0"), "{zero}");
        let c = merged(&["--max-held-bytes", "5"], "max_held_bytes = 7").unwrap();
        assert_eq!(c.held_bytes_max, 5);
        let c = merged(&[], "max_held_bytes = 7").unwrap();
        assert_eq!(c.held_bytes_max, 7);
        let zero = merged(&["--max-held-bytes", "0"], "").unwrap_err();
        assert!(zero.contains("--max-held-bytes 0"), "{zero}");
        assert_eq!(merged(&[], "").unwrap().body_min_rate, 500);
        let c = merged(&["--body-min-rate", "0"], "body_min_rate = 7").unwrap();
        assert_eq!(c.body_min_rate, 0);
        assert_eq!(merged(&[], "body_min_rate = 7").unwrap().body_min_rate, 7);
        let c = merged(&["--body-min-rate", "1073741824"], "").unwrap();
        assert_eq!(c.body_min_rate, 1 << 30);
        let over = merged(&["--body-min-rate", "1073741825"], "").unwrap_err();
        assert_eq!(over, "--body-min-rate 1073741825: at most 1073741824");
        let c = merged(&[], "").unwrap();
        assert_eq!(c.grace, Duration::from_secs(10));
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        let c = merged(&["--stop-timeout", "2.5"], "").unwrap();
        assert_eq!(c.stop_timeout, Duration::from_millis(2500));
        let c = merged(&[], "stop_timeout = 3").unwrap();
        assert_eq!(c.stop_timeout, Duration::from_secs(3));
        assert_eq!(c.start_timeout, Duration::from_secs(90));
        assert_eq!(c.txn.retry, Duration::from_millis(100));
        let c = merged(&["--tx-retry-ms", "0"], "tx_retry_ms = 7").unwrap();
        assert_eq!(c.txn.retry, Duration::ZERO);
        let c = merged(&[], "tx_retry_ms = 10000").unwrap();
        assert_eq!(c.txn.retry, Duration::from_secs(10));
        let past = merged(&["--tx-retry-ms", "10001"], "").unwrap_err();
        assert!(
            past.contains("--tx-retry-ms 10001: at most 10000"),
            "{past}"
        );
        let c = merged(&["--start-timeout", "0.5"], "start_timeout = 7").unwrap();
        assert_eq!(c.start_timeout, Duration::from_millis(500));
        let c = merged(&[], "start_timeout = 7").unwrap();
        assert_eq!(c.start_timeout, Duration::from_secs(7));
        assert!(merged(&["--start-timeout", "0"], "").is_err());
    }

    #[test]
    fn durations_run_from_a_fraction_of_a_second_to_a_year() {
        let parse = |value: f64| {
            seconds(
                (Some(value), Named::flag("session_lifetime")),
                Duration::ZERO,
            )
        };
        assert_eq!(parse(0.5).unwrap(), Duration::from_millis(500));
        assert_eq!(parse(604_800.0).unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse(SECONDS_MAX).unwrap(), Duration::from_secs(31_536_000));
        assert_eq!(parse(0.001).unwrap(), Duration::from_millis(1));
        for bad in [
            0.0,
            0.0009,
            -1.0,
            SECONDS_MAX + 1.0,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_file() {
        let c = merged(
            &["--shards", "2", "--max-body", "10"],
            "shards = 3\nmax_body = 5\nmax_conns = 7\nno_pin = true",
        )
        .unwrap();
        assert_eq!(c.cpus, vec![0, 1]);
        assert_eq!(c.body_bytes_max, 10);
        assert_eq!(c.conns_max, 7);
        assert!(!c.pin);
        assert!(c.multishot_poll, "on by default");
        assert!(
            !merged(&[], "no_multishot_poll = true")
                .unwrap()
                .multishot_poll
        );
        assert!(!merged(&["--no-multishot-poll"], "").unwrap().multishot_poll);
        assert!(!c.ignore_client_abort, "off by default");
        assert!(
            merged(&[], "ignore_client_abort = true")
                .unwrap()
                .ignore_client_abort
        );
        // An on/off flag set in the file is turned off by `--flag=false` (review: the file's
        // `true` could not be overridden).
        assert!(merged(&["--no-pin=false"], "no_pin = true").unwrap().pin);
        assert!(
            !merged(&["--expose-shard=false"], "expose_shard = true")
                .unwrap()
                .expose_shard
        );
        assert!(merged(&["--expose-shard"], "").unwrap().expose_shard);
        assert!(
            merged(&["--no-session-persist=false"], "no_session_persist = true")
                .unwrap()
                .session
                .persist
        );
        assert!(merged(&["--no-pin=maybe"], "").is_err());
        // A flag for either of cores and shards overrides the file's, whichever key it used.
        assert_eq!(
            merged(&["--cores", "0"], "shards = 2").unwrap().cpus,
            vec![0]
        );
        assert_eq!(
            merged(&["--shards", "1"], "cores = \"1\"").unwrap().cpus,
            vec![0]
        );
        // At the bound and one past it.
        let threads = |n: usize| merged(&["--hash-concurrency", &n.to_string()], "");
        assert_eq!(
            threads(limits::HASH_CONCURRENCY_MAX)
                .unwrap()
                .auth
                .hash_concurrency,
            limits::HASH_CONCURRENCY_MAX
        );
        assert!(threads(limits::HASH_CONCURRENCY_MAX + 1).is_err());
        let deadline = |ms: &str| merged(&["--mesh-deadline-ms", ms], "");
        assert_eq!(
            deadline("31536000000").unwrap().mesh_deadline,
            Duration::from_secs(31_536_000)
        );
        let past = deadline("31536000001").unwrap_err();
        assert!(
            past.starts_with("--mesh-deadline-ms 31536000001: at most"),
            "{past}"
        );
        assert!(deadline("0").is_err());
    }

    /// A bad value is named the way its user wrote it: the file's key when the file gave it,
    /// the flag when a flag did (the file's `grace = -1` was reported as `--grace -1`).
    #[test]
    fn a_bad_value_is_named_where_it_was_given() {
        for (file, named) in [
            ("grace = -1", "config file: grace = -1: must be"),
            ("max_conns = 0", "config file: max_conns = 0: must be"),
            (
                "lingering_timeout = -1",
                "config file: lingering_timeout = -1",
            ),
            ("mesh_deadline_ms = 0", "config file: mesh_deadline_ms = 0"),
            (
                "max_headers = 257",
                "config file: max_headers = 257: at most",
            ),
            (
                "max_uri_bytes = 20000",
                "config file: max_uri_bytes = 20000 must be smaller than --max-head-bytes 16384 (the default)",
            ),
            (
                "max_head_bytes = 1024",
                "config file: max_head_bytes = 1024 must be larger than --max-uri-bytes 8192 (the default)",
            ),
            (
                "max_session_store_bytes = 300",
                "config file: max_session_store_bytes = 300 must be at least --max-session-bytes 16384 (the default)",
            ),
            (
                "max_session_store_bytes = 300\nmax_session_bytes = 400",
                "config file: max_session_store_bytes = 300 must be at least max_session_bytes = 400",
            ),
            (
                "max_session_bytes = 300000000",
                "config file: max_session_bytes = 300000000 must be at most --max-session-store-bytes 268435456 (the default)",
            ),
            (
                "max_key_bytes = 4000000\nmax_value_bytes = 4000000",
                "config file: transaction limits: max_key_bytes 4000000 + max_value_bytes 4000000",
            ),
            // A bound nobody gave is named as the default it is.
            (
                "max_value_bytes = 4194304",
                "config file: transaction limits: --max-key-bytes 1024 (the default) + \
                 max_value_bytes 4194304 = 4195328",
            ),
            ("data_dir = \"\"", "config file: data_dir: empty"),
            (
                "tls_cert = \"CARGO_TOML\"\ntls_key = \"CARGO_TOML\"",
                "config file: tls_cert = CARGO_TOML: no PEM certificate",
            ),
            (
                "max_head_bytes = 100\nmax_uri_bytes = 200",
                "config file: max_uri_bytes = 200 must be smaller than max_head_bytes = 100",
            ),
            ("shards = 0", "config file: shards = 0"),
            ("cores = \"7\"", "config file: cores = 7: CPU 7"),
            ("fsync = \"sometimes\"", "config file: fsync = "),
            (
                "checkpoint_bytes = 1",
                "config file: checkpoint_bytes = 1: at least",
            ),
            (
                "tx_retry_ms = 99999",
                "config file: tx_retry_ms = 99999: at most",
            ),
            ("spin_us = 2000000", "config file: spin_us = 2000000"),
            (
                "session_cookie = \"a b\"",
                "config file: session_cookie = a b: not",
            ),
            (
                "session_cookie_max_age = 0",
                "config file: session_cookie_max_age = 0",
            ),
            ("default_access = \"x\"", "config file: default_access = x"),
            (
                "csrf_header = \"Origin\"",
                "config file: csrf_header = Origin",
            ),
            (
                "hash_priority = \"urgent\"",
                "config file: hash_priority = urgent",
            ),
            (
                "hash_concurrency = 100000",
                "config file: hash_concurrency = 100000",
            ),
            (
                "forwarded_allow_ips = [\"x\"]",
                "config file: forwarded_allow_ips = ",
            ),
            ("bind = [\"nope\"]", "config file: bind = nope: not an IP"),
            ("bind = []", "config file: bind: at least one address"),
            (
                "bind = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
                "config file: bind 127.0.0.1:1: given twice",
            ),
            (
                "redirect_https = [\"127.0.0.1:1\"]",
                "config file: redirect_https: no HTTPS listener",
            ),
            (
                "tls_cert = \"c.pem\"",
                "config file: tls_cert needs tls_key",
            ),
            (
                "tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"k.pem\"",
                "config file: tls_cert = /nonexistent/c.pem: cannot read",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"k.pem\"",
                "config file: [[listener]] tls_cert = /nonexistent/c.pem: cannot read",
            ),
            (
                "[[listener]]\nbind = \"nope\"",
                "config file: [[listener]] bind = nope",
            ),
        ] {
            let toml = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
            let (file, named) = (
                file.replace("CARGO_TOML", toml),
                named.replace("CARGO_TOML", toml),
            );
            let message = merged(&[], &file).unwrap_err();
            assert!(message.starts_with(&named), "{file:?}: {message}");
        }
        // The same values from flags name the flags.
        for (args, named) in [
            (&["--grace", "-1"][..], "--grace -1: must be"),
            (&["--max-conns", "0"][..], "--max-conns 0: must be"),
            (&["--bind", "nope"][..], "--bind nope: not an IP"),
        ] {
            let message = merged(args, "grace = 1").unwrap_err();
            assert!(message.starts_with(named), "{args:?}: {message}");
        }
    }

    /// Names reach the TLS checks as names: a path holding a flag's text is left alone (a string
    /// replacement renamed inside it, found in review), and a message is one line whatever a
    /// value held.
    #[test]
    fn tls_material_errors_name_the_keys_and_keep_paths_whole() {
        let dir = std::env::temp_dir().join(format!("percore-tls-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("--tls-key cert.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let file = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            cert.display()
        );
        let message = merged(&[], &file).unwrap_err();
        assert_eq!(
            message,
            format!(
                "config file: tls_cert = {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                cert.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let multiline = ConfigError("bind = 1.2.3.4\n:80\u{1b}[31m".to_string());
        assert_eq!(multiline.to_string(), "bind = 1.2.3.4\\n:80\\u{1b}[31m");
        let mixed = merged(&["--max-uri-bytes", "2000"], "max_head_bytes = 1000").unwrap_err();
        assert_eq!(
            mixed,
            "--max-uri-bytes 2000 must be smaller than config file: max_head_bytes = 1000"
        );
    }

    /// A file that does not parse is named with its line, in the file's terms.
    #[test]
    fn a_file_that_does_not_parse_is_named_with_its_line() {
        let dir = std::env::temp_dir().join(format!("percore-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("percore.toml");
        for (text, message) in [
            (
                "grace = 1\nmax-conns = 5\n",
                "line 2 (max-conns = 5): unknown key `max-conns` (did you mean `max_conns`?)",
            ),
            (
                "nosuch = 1",
                "line 1 (nosuch = 1): unknown key `nosuch` (the keys are",
            ),
            (
                "max_body = \"1x\"",
                "line 1 (max_body = \"1x\"): invalid type: string \"1x\", expected a whole number from 0 to 18446744073709551615",
            ),
            (
                "node_id = 70000",
                "line 1 (node_id = 70000): invalid value: integer `70000`, expected a whole number from 0 to 65535",
            ),
            ("x\u{1b}y = 1", "line 1 (x\\u{1b}y = 1): "),
            (
                "grace = \"soon\"",
                "line 1 (grace = \"soon\"): invalid type: string \"soon\", expected a number",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = read_file(&path).unwrap_err().to_string();
            let expected = format!("config file {} {message}", path.display());
            assert!(error.starts_with(&expected), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
        std::fs::write(&path, "grace = -1").unwrap();
        let file = read_file(&path).unwrap();
        let args = Args::try_parse_from(["percore"]).unwrap();
        let error = merge(args, file, &[0]).unwrap_err().0;
        assert_eq!(
            error,
            format!(
                "config file {}: grace = -1: must be a number of seconds from 0.001 to 31536000 (a year)",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects() {
        for (args, file, needle) in [
            (&["--bind", "nope"][..], "", "--bind nope"),
            (&["--shards", "0"][..], "", "--shards 0"),
            (&["--shards", "5"][..], "", "--shards 5"),
            (&["--cores", "7"][..], "", "CPU 7"),
            (&["--cores", "x"][..], "", "--cores x"),
            (&["--max-conns", "0"][..], "", "--max-conns 0"),
            (&["--max-headers", "257"][..], "", "--max-headers 257"),
            (&["--grace", "-1"][..], "", "--grace -1"),
            (&["--stop-timeout", "0"][..], "", "--stop-timeout 0"),
            (&["--max-uri-bytes", "20000"][..], "", "--max-uri-bytes"),
            (&["--spin-us", "2000000"][..], "", "--spin-us 2000000"),
            (&[][..], "data_dir = \"\"", "data_dir: empty"),
            (
                &["--checkpoint-bytes", "4095"][..],
                "",
                "--checkpoint-bytes 4095: at least 4096",
            ),
            (
                &["--pipeline-parallel", "65"][..],
                "",
                "--pipeline-parallel 65",
            ),
            (
                &["--lingering-timeout", "-1"][..],
                "",
                "--lingering-timeout -1",
            ),
            (
                &["--max-head-bytes", "65536"][..],
                "",
                "--max-head-bytes 65536",
            ),
            (
                &["--pipeline-parallel", "0"][..],
                "",
                "--pipeline-parallel 0",
            ),
            (&["--fsync", "sometimes"][..], "", "--fsync"),
            (&[][..], "cores = \"0\"\nshards = 1", "`cores` or `shards`"),
            (
                &["--hash-concurrency", "100000"][..],
                "",
                "--hash-concurrency 100000: at most 64",
            ),
            (
                &[][..],
                "[[listener]]\nbind = \"127.0.0.1:1\"\nredirect_https = true",
                "no HTTPS listener",
            ),
            (
                &[][..],
                "bind = [\"127.0.0.1:1\"]\n[[listener]]\nbind = \"127.0.0.1:2\"",
                "not both",
            ),
            (
                &[][..],
                "[[listener]]\nbind = \"127.0.0.1:1\"\ntls_cert = \"c.pem\"",
                "go together",
            ),
            (&["--hash-priority", "urgent"][..], "", "--hash-priority"),
            (
                &["--default-access", "everyone"][..],
                "",
                "--default-access",
            ),
            (&["--csrf-header", "Origin"][..], "", "--csrf-header"),
            (&["--login-window", "0"][..], "", "--login-window"),
            (
                &["--login-window", "0.0009"][..],
                "",
                "--login-window 0.0009",
            ),
            (&[][..], "max_body = 0", "config file: max_body = 0"),
        ] {
            let e = merged(args, file).unwrap_err();
            assert!(e.contains(needle), "{args:?} {file:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    /// Each ceiling takes its own value and refuses one more (review: only the refusing side
    /// was tested).
    #[test]
    fn ceilings_hold_at_the_bound_and_refuse_past_it() {
        let head = HEAD_BYTES_CEILING.to_string();
        let headers = HEADER_COUNT_CEILING.to_string();
        let parallel = limits::PIPELINE_PARALLEL_CEILING.to_string();
        let inflight = limits::MESH_CHANNEL_CAPACITY.to_string();
        for (flag, at) in [
            ("--max-head-bytes", head.as_str()),
            ("--max-headers", headers.as_str()),
            ("--pipeline-parallel", parallel.as_str()),
            ("--mesh-inflight-max", inflight.as_str()),
            ("--spin-us", "1000000"),
        ] {
            let c = merged(&[flag, at], "");
            assert!(c.is_ok(), "{flag} {at}: {c:?}");
            let past = (at.parse::<u64>().unwrap() + 1).to_string();
            let e = merged(&[flag, &past], "").unwrap_err();
            assert!(e.contains(&format!("{flag} {past}: at most {at}")), "{e}");
        }
        let c = merged(&["--max-head-bytes", &head], "").unwrap();
        assert_eq!(c.head_bytes_max, HEAD_BYTES_CEILING);
        let c = merged(&["--mesh-inflight-max", &inflight], "").unwrap();
        assert_eq!(c.mesh_inflight_max, limits::MESH_CHANNEL_CAPACITY);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
    }

    /// Every flag but `--config` has a key of its name, and every key but the tables a flag
    /// (README; a review compared them by hand).
    #[test]
    fn every_flag_has_a_file_key_and_every_key_a_flag() {
        use clap::CommandFactory;
        let e = toml::from_str::<FileConfig>("nope = 1").unwrap_err();
        let message = e.message();
        let (_, expected) = message.split_once("expected one of").expect(message);
        let mut keys: Vec<&str> = expected
            .split(',')
            .map(|key| key.trim().trim_matches('`'))
            .collect();
        keys.sort_unstable();
        let mut flags: Vec<String> = Args::command()
            .get_arguments()
            .map(|arg| arg.get_id().as_str().to_string())
            .filter(|id| !["config", "help", "version"].contains(&id.as_str()))
            .chain(["access", "listener", "token"].map(String::from))
            .collect();
        flags.sort_unstable();
        assert_eq!(keys, flags);
    }
}
