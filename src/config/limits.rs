//! The default of every configurable bound, and the fixed bounds shared across modules, each with its reason; a subsystem's own fixed bounds are named constants beside it (txn/mod.rs, http/mod.rs, auth/, wal/).

use std::time::Duration;

/// Largest accepted request head (request line + headers). nginx: 8 KiB x 4 large buffers; Tomcat: 8 KiB.
pub const HEAD_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Most header fields in one request. Tomcat's maxHeaderCount is 100.
pub const HEADER_COUNT_MAX_DEFAULT: usize = 100;
/// Longest request-target. nginx's large_client_header_buffers line limit is 8 KiB.
pub const URI_BYTES_MAX_DEFAULT: usize = 8 * 1024;
/// Largest request body. nginx's client_max_body_size is 1 MiB.
pub const BODY_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// Pipelined safe requests (GET/HEAD without a body) one connection serves at once (RFC 9112
/// §9.3.2 allows it; answers still go out in order). Bounds what one connection holds: that many
/// handlers and responses. 1 serves pipelined requests one by one, as nginx does.
pub const PIPELINE_PARALLEL_DEFAULT: usize = 16;
/// The most `--pipeline-parallel` may be: a batch holds that many responses until the slowest
/// is ready (the shard's budget, half of `--mesh-inflight-max`, bounds all batches together).
pub const PIPELINE_PARALLEL_CEILING: usize = 64;
/// Chunk-size lines (with extensions) and the trailer section of a chunked body; and how many
/// bytes the extensions and leading zeros of one body's size lines may total beyond its data.
pub const TRAILER_BYTES_MAX: usize = 8 * 1024;

/// Open connections per shard. Tomcat's maxConnections is 8,192; actix's 25,000 per worker.
pub const CONNS_MAX_DEFAULT: usize = 10_000;
/// listen(2) backlog of each shard's listener (glommio hard-codes 1024; so do we, as a default).
pub const BACKLOG_DEFAULT: u32 = 1024;

/// From the first byte of a request head to its end (slowloris). nginx's client_header_timeout: 60 s; we are stricter.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Between two reads of a request body. nginx's client_body_timeout.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Bytes a second a body must arrive at on average: its reads may wait BODY_TIMEOUT in all,
/// plus a second per this many bytes received. Apache's mod_reqtimeout default
/// (`body=20,MinRate=500`); nginx has none, so a client that sends a byte every 59 s held a
/// connection for as long as its `--max-body` took to trickle (a 1 MiB body: 2 years).
pub const BODY_MIN_RATE_DEFAULT: u64 = 500;
/// Past it, a rate asks more than a loopback client sends; the ceiling keeps the allowance's
/// arithmetic far from overflow.
pub const BODY_MIN_RATE_CEILING: u64 = 1 << 30;
/// An idle keep-alive connection is closed after this. nginx: 75 s; Gunicorn: 2 s; Tomcat: 60 s.
pub const KEEPALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// From a request's head to its handler's answer (the response, not the streaming of its body):
/// past it the handler is dropped and the client gets 503 and a closed connection, so a handler
/// that never answers (a lost wake-up, a long poll without end) cannot hold its connection's
/// `--max-conns` slot for good (found in review). Gunicorn's timeout is 30 s; nginx's
/// proxy_read_timeout 60 s.
pub const HANDLER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// A write that makes no progress for this long closes the connection. nginx's send_timeout.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// After an answer that closes the connection, percore half-closes it and reads (and drops)
/// what the client still sends, until it closes too or sends nothing for this long, so a reset
/// never destroys the answer before the client read it (RFC 9112 §9.6). nginx's
/// lingering_timeout: 5 s.
pub const LINGERING_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest a connection lingers in all (`--lingering-time`). nginx's lingering_time: 30 s.
pub const LINGERING_TIME_DEFAULT: Duration = Duration::from_secs(30);
/// Graceful shutdown budget. Gunicorn's graceful_timeout is 30 s; Kubernetes gives 30 s.
pub const GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// From the start to every shard serving; past it the process exits 1, naming the shards not
/// ready, so a wedged start (a hung disk under a log replay, a shard stuck in its executor) ends
/// where a supervisor sees it and restarts it, instead of holding the port unserved. The slow
/// parts of a start are a shard's log replay (bounded by the checkpoint, well under a second)
/// and its session snapshot. systemd's TimeoutStartSec default.
pub const START_TIMEOUT_DEFAULT: Duration = Duration::from_secs(90);
/// Added to the grace period for the whole stop, counted from the signal: the drain, then each
/// shard's log sync and session snapshot; past it the process exits anyway (a wedged disk or
/// shard must not keep it, and its listening sockets, alive). Gunicorn kills workers still alive
/// at graceful_timeout; systemd sends SIGKILL at TimeoutStopSec (90 s).
pub const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// From accept to the end of the TLS handshake. nginx's ssl_handshake_timeout: 60 s; Envoy's
/// transport_socket_connect_timeout: 15 s. A stalled handshake holds a connection slot, so shorter.
pub const TLS_HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Steps of TLS handshakes one shard runs at once (a step, the server's key exchange and
/// signature or the client's answer, costs a few hundred microseconds of CPU); more wait for a
/// turn within their handshake timeout. A handshake waiting on its client holds no turn.
pub const TLS_HANDSHAKES_MAX_DEFAULT: usize = 256;
/// Strict-Transport-Security max-age: one year, the common recommendation (hstspreload.org).
pub const HSTS_MAX_AGE_DEFAULT: u64 = 365 * 24 * 60 * 60;

/// Failed logins for one user name (or from one address) before 429. fail2ban's maxretry: 5.
pub const LOGIN_FAILURES_MAX_DEFAULT: u32 = 5;
/// The failed-login window; 429 lasts until it ends. fail2ban's findtime is 10 minutes; 5 here
/// keeps a user's own typos from locking them out for as long.
pub const LOGIN_WINDOW_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// User names and addresses one shard tracks failures for (about 100 bytes each: 10 MB).
pub const LOGIN_TRACKED_MAX_DEFAULT: usize = 100_000;
/// Password hashes one shard computes at once. Each argon2id hash (m=19 MiB, t=2) takes about
/// 20-50 ms of a core and 19 MiB; the threads run beside the shards, not on them.
pub const HASH_CONCURRENCY_DEFAULT: usize = 1;
/// The most `--hash-concurrency` accepts: threads per shard, each holding an argon2 hash's
/// 19 MiB while it runs (a larger value failed to spawn its threads and aborted the server).
pub const HASH_CONCURRENCY_MAX: usize = 64;
/// Password checks queued per shard behind the running ones; more are answered 503.
pub const HASH_QUEUE_MAX_DEFAULT: usize = 64;
/// Verified Basic credentials a shard remembers (so scripts do not pay a hash per request);
/// cleared when full or when the users file is reloaded.
pub const BASIC_CACHE_ENTRIES_MAX: usize = 1024;

/// How often a shard checks its connections' read deadlines (header, body, keep-alive
/// timeouts fire up to this late). One sweep over the registry replaces a timer per read.
pub const TIMEOUT_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Initial capacity of a connection's read buffer; it grows up to head_bytes_max while a head is incomplete.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// A read buffer the connection alone holds, of at most this many bytes, is kept while the
/// connection waits, so the next request reads into it instead of new allocations (two mallocs
/// and two frees per request at c64: the bytes and their shared handle); a bigger one is freed. An idle connection holds at most this
/// much more than one without a buffer (a browser's ~800-byte request fits).
pub const READ_BUFFER_KEEP_BYTES: usize = 1024;
/// Pending response bytes that force a flush before more pipelined requests are parsed, so a client
/// that pipelines without reading cannot grow the write buffer without bound.
pub const WRITE_BUFFER_FLUSH_BYTES: usize = 64 * 1024;
/// A failing accept (EMFILE: out of file descriptors) is retried every 10 ms and logged at most
/// once per this interval, with the count since: a full descriptor table wrote 100 lines a
/// second per shard (found in review).
pub const ACCEPT_ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Requests one connection answers before its task queue yields to the reactor and the shard's
/// other connections: a client that keeps its pipeline full is always ready to read, so without
/// a yield it held the shard until its bytes ran out (another client's p99 went from 0.8 ms to
/// 30 ms in a review). A turn is ~0.1 ms of pipelined requests; one yield (a pass of glommio's
/// reactor) per 256 requests is under 1% of their CPU.
pub const REQUESTS_PER_TURN_MAX: u32 = 256;
/// A write buffer bigger than this after a flush is released rather than kept for the next request.
pub const WRITE_BUFFER_KEEP_BYTES: usize = 16 * 1024;
/// A whole body at least this big is written from the answer's own bytes, not copied into the
/// write buffer: a 1 MiB `/kv` value shares the store's bytes while its client reads (it was a
/// copy per connection, 1.15 MB each for 100 clients that did not read, in a soak review), and
/// a big answer costs no memcpy. Smaller ones are copied: one write for a batch of them.
pub const BODY_UNCOPIED_BYTES_MIN: usize = 64 * 1024;
/// A body read whole (`Body::bytes`) in one chunk smaller than this is copied out of the read
/// buffer it lies in: kept (a `/kv` value), a slice would keep that whole buffer alive, a 1-byte
/// value read with the tail of a 60 KB body 62 KB of it, 240 times what `--max-kv-bytes`
/// counted (found in review). A bigger one is kept as read: its buffer holds little else.
pub const BODY_COPIED_BELOW_BYTES: usize = 64 * 1024;
/// Bytes one shard may hold for clients that keep it waiting: answers queued for a client that
/// does not read them, and a body a handler reads whole (`Body::bytes`) while its client does
/// not send the rest. Each connection is bounded (an answer, `--max-body`), but not all of them
/// together: 2000 clients that stopped mid-way through 1 MiB uploads held 2.5 GB of one shard
/// (a soak review; now 256 MiB once they are judged). Past the bound the shard closes the connections of the slowest clients
/// (`Shard::shed_held`), as Envoy's overload manager resets the streams that buffer most;
/// nginx bounds the same memory with small buffers and temporary files. 256 MiB: 256 bodies of
/// the default `--max-body`.
pub const HELD_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// A connection is closed for the shard's `--max-held-bytes` only if its client's pace (what
/// its TCP connection moved over the last window, read by the sweep once a second) is known
/// and slow, so one whose write or body has waited on its client for a window at least; and
/// only if it holds at least HELD_SHED_BYTES_MIN: one that holds less is bounded by
/// `--max-conns` as its read buffer is, and shedding it frees little. A sliding window: a
/// client that sent fast and stopped has, a window later, the pace of one that stopped (an
/// average since its wait began took a minute to fall: a review).
///
/// An upload's window is a second: the server reads what arrives at once, so a client that
/// sends steadily moves bytes every second. An answer's is 8 seconds: a client's kernel opens
/// its receive window again only once about half its buffer is free, so a client that reads
/// steadily moves bytes in steps of up to its buffer, 128 KiB on loopback, one step every 8 s
/// at 16 KiB/s (a black-box test: a 40 KiB/s reader showed nothing in 2 of every 3 seconds,
/// and a one-second window shed it). A client that stops reading is judged that much later.
pub const HELD_PACE_WINDOW_READ: Duration = Duration::from_secs(1);
pub const HELD_PACE_WINDOW_WRITE: Duration = Duration::from_secs(8);
pub const HELD_SHED_BYTES_MIN: usize = 64 * 1024;
/// A client whose connection moves at least this many bytes a second is never shed for
/// `--max-held-bytes`: it is being served, not holding the shard up (128 kbit/s, below any
/// phone's link), and 10,000 clients that kept it up would have to take 160 MB/s. Apache's
/// mod_reqtimeout closes an upload below 500 bytes a second.
pub const HELD_SHED_PACE_MAX: u64 = 16 * 1024;
/// A request body left unread by its handler is read and discarded to keep the connection alive
/// when its Content-Length leaves at most this many bytes; past it the answer closes the
/// connection. A chunked body, whose size is unknown, is discarded to its end within
/// `--max-body`, as nginx discards bodies. A drain drops at most this much of what is queued.
pub const BODY_DISCARD_BYTES_MAX: u64 = 64 * 1024;

/// Foreign (cross-shard) requests a shard serves at once, and calls it has outstanding to others.
/// Fan-in multiplies by the shard count, so this is per shard, per direction.
pub const MESH_INFLIGHT_MAX_DEFAULT: usize = 1024;
/// Messages queued in each direction between two shards (glommio mesh channel capacity).
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Transaction messages a starting shard keeps until it can take them (more are dropped: the
/// protocol resends what matters).
pub const TXN_EARLY_MESSAGES_MAX: usize = 1024;
/// Deadline of one cross-shard request/reply.
pub const MESH_DEADLINE_DEFAULT: Duration = Duration::from_millis(1000);

/// Sessions one shard keeps; at the bound the least recently used anonymous session is evicted,
/// and with every session logged in a new one gets 503 (README, `--max-sessions`). Memory per shard
/// for sessions is bounded by SESSION_STORE_BYTES_MAX_DEFAULT of data, and about 1 KiB per session
/// for its entry and indexes (a review measured ~0.9 KiB, ~1.35 KiB after a restart): values are
/// held as their JSON text, and each counts `SESSION_VALUE_OVERHEAD_BYTES` for its place in the map.
pub const SESSIONS_MAX_DEFAULT: usize = 100_000;
/// Logged-in sessions of one user on one shard (`--max-sessions-per-user`); a login past it
/// ends that user's least recently used session there, as Spring Security's
/// `maximumSessions` does. Without it one account that logged in `--max-sessions` times (a
/// script that never logs out) pushed every other user's session out of the store (found in
/// review). A person's browsers and devices stay far below it.
pub const SESSIONS_PER_USER_MAX_DEFAULT: usize = 64;
/// Bytes of session data (counted as `SESSION_BYTES_MAX_DEFAULT` counts them) one shard holds; a
/// write past it evicts the least recently used anonymous sessions, and gets 503 when every
/// session is logged in. Without it the bound was sessions x bytes, 1.6 GB a shard that anonymous
/// clients could fill (found in review). 256 MiB is 2.5 KiB for each of 100,000 sessions, or
/// 16,384 sessions at the per-session bound; a snapshot holds about one more copy while written.
pub const SESSION_STORE_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Bytes of data (names + JSON values, each value 64 bytes more) one session may hold; a write
/// past it gets 413.
pub const SESSION_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// What a session value counts against `--max-session-bytes` besides its name and JSON text:
/// its share of the session's map, the name's and the text's allocations.
pub const SESSION_VALUE_OVERHEAD_BYTES: usize = 64;
/// Levels of arrays and objects one session value may nest (`[[1]]` is 2); a deeper one gets
/// 400. The snapshot nests every value a few levels further in, and JSON parsing stops at 128
/// levels: a value accepted at 124 levels made its shard's whole snapshot unreadable at the next
/// start (found in review). Far deeper than any real session value.
pub const SESSION_VALUE_DEPTH_MAX: usize = 64;
/// Sliding idle timeout of a session. Tomcat's default session-timeout is 30 minutes.
pub const SESSION_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// Absolute lifetime of a session, however active.
pub const SESSION_LIFETIME_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// How often a shard writes its sessions to the data dir (only when they changed).
pub const SESSION_SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Expired sessions removed per sweep step; the sweeper yields between steps.
pub const SESSION_SWEEP_STEP_MAX: usize = 256;
/// Sessions serialized per step of a snapshot before yielding to the serving queue.
pub const SESSION_SNAPSHOT_STEP: usize = 512;
/// Encoded snapshot bytes held before they are written to the file (from the blocking pool): a
/// snapshot holds about this much beside the store, and writes a full store in ~256 steps.
pub const SESSION_SNAPSHOT_WRITE_BYTES: usize = 1024 * 1024;
/// The first pause before a forced session snapshot is tried again after a failure; it doubles
/// up to `--session-snapshot-interval`.
pub const SESSION_SNAPSHOT_RETRY_MIN: Duration = Duration::from_millis(500);
/// How many session ids from one request's cookies are tried, in cookie order, for the first
/// live one: a stale or planted cookie sent first (browsers send the longer-Path cookie first)
/// must not hide the real session. Each try is a lookup on the id's owner shard, one after
/// another, so this bounds the mesh calls a request with many cookies makes; ids past it are
/// ignored.
pub const SESSION_COOKIE_IDS_MAX: usize = 4;
/// Records one shard's session revocation log holds at most (`--max-session-revocations`;
/// 1.75 MiB of file, under 3 MiB of memory): at the bound a destroy or a rotation is refused
/// (503, the session stays as it was) until a snapshot lets the log be cut. From a quarter of
/// it on, the log wakes the upkeep to write a snapshot at once rather than at its interval, so
/// the bound is reached only while snapshots fail, or when one takes longer than the other
/// three quarters take to arrive (a small bound under a burst of destroys).
pub const SESSION_REVOCATIONS_MAX_DEFAULT: usize = 65_536;
/// How often a shard asks another whether a revocation it logged is durable (an fdatasync
/// takes from tens of microseconds to a few milliseconds), and for how long at most.
pub const REVOKED_POLL_INTERVAL: Duration = Duration::from_millis(1);
pub const REVOKED_WAIT_MAX: Duration = Duration::from_secs(5);

/// How long a transaction that meets a lock (409) is tried again before the 409 goes out. A
/// cross-shard transaction's locks outlive its answer by a log sync and a message (the
/// parallel commit answers first), so a client's next request on the same keys met them most
/// of the time (found in review: 287 of 300 PUTs right after a committed transaction got 409).
/// A conflict changed nothing, so trying again is safe; a wait of a few log syncs on a slow
/// disk clears them. 0: answer 409 at once.
pub const TX_RETRY_DEFAULT: Duration = Duration::from_millis(100);
/// The longest `--tx-retry-ms`.
pub const TX_RETRY_MAX: Duration = Duration::from_secs(10);
/// The first pause before a conflicted transaction is tried again; each pause doubles, up to
/// the last. Short first: most locks go within a log sync (tens of microseconds to a few ms).
pub const TX_RETRY_PAUSE_MIN: Duration = Duration::from_micros(250);
pub const TX_RETRY_PAUSE_MAX: Duration = Duration::from_millis(8);

/// Log bytes after which a shard checkpoints its partition into a new log segment: bounds log
/// size and recovery time (replaying 64 MiB takes well under a second).
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The least `--checkpoint-bytes` may be: below a few dozen bytes, what a checkpoint writes itself
/// passes the bound, and an idle shard checkpointed (and synced) 20 times a second for good
/// (found in review, at 1). The tests' small checkpoints use 4096.
pub const CHECKPOINT_BYTES_MIN: u64 = 4096;

/// The most shards a data dir's log can be for (Linux's largest CPU count): a file named like a
/// segment of a higher shard is no segment (found in review: `wal-9223372036854775808-...`
/// made the layout check list every missing shard below it).
pub const SHARDS_MAX: usize = 8192;
// A session id names its owner shard in 16 bits.
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);

/// Memory glommio registers with io_uring per executor. glommio's default (10 MiB) exceeds the
/// common 8 MiB RLIMIT_MEMLOCK even for one shard; we do not use registered buffers for
/// sockets, so a small region is enough.
pub const IO_MEMORY_BYTES: usize = 512 * 1024;
/// glommio refuses to start below this RLIMIT_MEMLOCK.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

/// The most bytes percore reads from a `--config` file. A wrong path (`/dev/zero`, a log file)
/// is then one line at start-up, not a process reading until the OOM killer stops it. Room for
/// the most API tokens the file may hold at 1 KiB each (a hash, a name of at most 256 bytes and
/// roles), and the access rules beside them.
pub const CONFIG_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The most bytes percore reads from a `--users` file, at start-up and on SIGHUP: room for the
/// most users a file may hold at 512 bytes each (a PHC hash is ~100 bytes, a name at most 256).
pub const USERS_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The most bytes percore reads from a `--tls-cert` or `--tls-key` PEM file: a chain of ten
/// certificates with 4096-bit keys is ~20 KiB.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

const _: () = assert!(READ_BUFFER_BYTES <= HEAD_BYTES_MAX_DEFAULT);
const _: () = assert!(READ_BUFFER_KEEP_BYTES <= READ_BUFFER_BYTES);
const _: () = assert!(WRITE_BUFFER_KEEP_BYTES <= WRITE_BUFFER_FLUSH_BYTES);
const _: () = assert!(MESH_INFLIGHT_MAX_DEFAULT <= MESH_CHANNEL_CAPACITY);
const _: () = assert!(
    crate::auth::users::TOKENS_MAX as u64 * 1024 <= CONFIG_FILE_BYTES_MAX,
    "the config file bound must hold the most tokens"
);
const _: () = assert!(
    crate::auth::users::USERS_MAX as u64 * 512 <= USERS_FILE_BYTES_MAX,
    "the users file bound must hold the most users"
);
