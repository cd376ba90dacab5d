//! Every bound percore-load obeys, with its default and its reason; nothing else holds a magic number.

/// Lowest latency the histograms hold, in microseconds (HdrHistogram needs a lowest value >= 1).
pub const LATENCY_US_MIN: u64 = 1;
/// Highest latency the histograms hold: 60 s. Longer latencies are recorded as 60 s.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits kept by every histogram (0.1% value resolution).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Connections per run. Each costs one fd and `READ_BUFFER_BYTES` plus its write buffer.
pub const CONNECTIONS_MAX: usize = 100_000;
/// File descriptors a run needs besides one per connection and one epoll per thread: stdio,
/// the reachability check's socket, the output files, and room for the libraries' own.
pub const FDS_RESERVED: usize = 32;
/// Client threads per run; more threads than cores only adds context switches.
pub const THREADS_MAX: usize = 256;
/// Requests in flight on one connection (`--pipeline`).
pub const PIPELINE_MAX: usize = 1024;

/// Bytes a response head may take before it is a protocol error (as large as nginx's biggest default).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;
/// Bytes of one chunk-size line (size, extensions, CRLF) before it is a protocol error.
pub const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;
/// Interim (1xx) responses that may precede one final response (RFC 9110 §15.2). Real servers
/// send one or two (100 Continue, 103 Early Hints); past this the stream is a parse error.
pub const INTERIM_RESPONSES_MAX: usize = 64;
/// Response headers parsed from the stack; a head with more is parsed again with room for one
/// per line it holds (found in review: a valid 65-field head was a parse error). The head's
/// bytes are the bound.
pub const RESPONSE_HEADERS_INLINE: usize = 64;
/// Per-connection read buffer. Bodies are counted and skipped, never kept, so only a head (and
/// whatever follows it in the same read) must fit: one read of this size per wake-up.
pub const READ_BUFFER_BYTES: usize = 2 * RESPONSE_HEAD_BYTES_MAX;
const _: () = assert!(READ_BUFFER_BYTES >= RESPONSE_HEAD_BYTES_MAX + CHUNK_LINE_BYTES_MAX);

/// The highest `--rate`: one request per nanosecond, the open loop's schedule resolution (found
/// in review: 1e30 was taken, and its "due but never sent" count could not mean it).
pub const RATE_MAX: f64 = 1e9;

/// Request body read from `--body FILE` or a scenario's `body_file`.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Requests a scenario may define, and the sum of their weights (the mix table has one entry per
/// unit of weight). 16,384 lets a scenario spread its keys as a real key space does (the transfer
/// benchmark's 32,768 accounts, bench/txn_vs_redis.py); the mix table indexes templates with a u16.
pub const SCENARIO_REQUESTS_MAX: usize = 16 * 1024;
/// Bytes read from a scenario file (its bodies are files of their own).
pub const SCENARIO_FILE_BYTES_MAX: usize = 16 * 1024 * 1024;
const _: () = assert!(SCENARIO_REQUESTS_MAX <= u16::MAX as usize + 1);
pub const SCENARIO_WEIGHT_SUM_MAX: u32 = 1_000_000;
/// Cookies one connection keeps from `Set-Cookie`.
pub const COOKIES_PER_CONNECTION_MAX: usize = 32;
/// Bytes of one cookie (name and value) a connection keeps: the size RFC 6265 §6.1 asks user
/// agents to support, and browsers' limit; a bigger one is ignored, as browsers do.
pub const COOKIE_BYTES_MAX: usize = 4096;
/// Bytes of the `Cookie` header a connection sends: nginx's default header line limit
/// (`large_client_header_buffers 8k`). A cookie that would take it past is not kept. Without
/// it a server's cookies grew each request it copies into every pipelined request (found in
/// review: 305 MB for two connections).
pub const COOKIE_HEADER_BYTES_MAX: usize = 8 * 1024;
/// Bytes of requests one run may have waiting in its write buffers at once: connections x
/// pipeline x the largest request (found in review: 2 connections x 64 x a 2 MB body held
/// 259 MB; the flags allowed 1.6 PB).
pub const IN_FLIGHT_REQUEST_BYTES_MAX: u64 = 4 << 30;

/// Events taken per epoll_wait.
pub const EPOLL_EVENTS_MAX: usize = 512;
/// How long a wake-up may wait when nothing is scheduled: also the granularity of the timeout scan.
pub const EPOLL_IDLE_WAIT_US: u64 = 10_000;
/// Timer slack of client threads: open-loop sends wake on time (the kernel default is 50 µs).
pub const TIMER_SLACK_NS: u64 = 1_000;
/// Busy-poll before sleeping when the client has its own cores (`--cpus`). Measured on the 2-CPU
/// VM (bench/RESULTS.md): a sleeping client pays an idle exit and a wake-up IPI per batch and
/// wakes up to ~40 us late for open-loop sends; polling 100 us covers the gap between batches.
pub const BUSY_POLL_NS_PINNED_DEFAULT: u64 = 100_000;
/// After a failed connect, wait this long before trying again, so a dead server is not hammered.
pub const RECONNECT_BACKOFF_US: u64 = 10_000;
/// After the run ends, requests still in flight get their `--timeout`, but at most this long:
/// then the ones that waited their timeout are timeouts and the rest unanswered. A fixed 2 s
/// counted a 3.5 s answer under `--timeout 5s` as unanswered (found in review).
pub const DRAIN_US_MAX: u64 = 5_000_000;

/// Seconds of per-thread req/s samples kept (one per second of the run).
pub const RATE_SAMPLES_MAX: usize = 24 * 3600;
/// `--find-max`: steps at most, and how much each growth step multiplies the rate.
pub const FIND_MAX_STEPS_MAX: usize = 40;
pub const FIND_MAX_GROWTH: f64 = 1.5;
/// `--find-max`: bisection steps between the last good and the first bad rate.
pub const FIND_MAX_BISECT_STEPS: usize = 3;
/// `--find-max`: a step whose achieved rate is below this share of its target is overloaded.
pub const FIND_MAX_ACHIEVED_SHARE_MIN: f64 = 0.95;
