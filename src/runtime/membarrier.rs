//! glommio's pre-park `membarrier` as a local fence on x86-64: the reasoning, and the per-thread park count for `/stats`. The `__wrap_syscall` that does it lives in main.rs, linked into the `percore` binary alone (`--wrap=syscall`, see build.rs).
//!
//! Before a glommio executor parks it stores "wake me" in its sleep notifier and then calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Seastar's asymmetric barrier) so that a sender
//! on another thread, who publishes a message and then reads that flag, cannot both miss the flag
//! and have its message missed by the parking executor's last look at its channels. The syscall
//! interrupts every CPU that runs a thread of this process; it was 5-8% of server CPU in
//! cross-shard profiles (bench/RESULTS.md).
//!
//! On x86-64 the sender's side is already a full barrier: glommio 0.9.0 reads the flag only in
//! `SleepNotifier::notify`, with `compare_exchange`, a `lock cmpxchg`, which orders the sender's
//! publish before its read whether it succeeds or not (every wake-up path ends there: shared
//! channel send, receive, close and drop, foreign task wakes, the blocking thread pool). The
//! remaining reordering, the parking thread's flag store passing its own channel loads, is stopped
//! by a fence on the parking thread alone (`fence(SeqCst)`, a `lock or`). That is the
//! store-buffering pattern with a full barrier on both sides, which x86-TSO forbids. The argument
//! is about the hardware, as glommio's own was (its remote side never had more than compiler
//! order either). Other architectures keep the syscall: there a relaxed compare-exchange orders
//! nothing. A glommio upgrade must re-check that `notify` is still the only reader of the flag.

use std::cell::Cell;

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` from linux/membarrier.h: the only command glommio issues
/// on its park path (it registers and queries with others at start-up; those pass through).
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;

thread_local! {
    /// How many times this thread's executor got ready to park: `/stats` `parks` per shard.
    static PARKS: Cell<u64> = const { Cell::new(0) };
}

/// Called by the wrapper in place of the barrier (no allocation, no lazy initialization: safe
/// on any thread at any time).
pub fn note_park() {
    PARKS.with(|parks| parks.set(parks.get() + 1));
}

/// Parks of the calling thread's executor so far: each time it found no work, stored its
/// "wake me" flag and passed the barrier. Most end in a sleep; some find a message that arrived
/// meanwhile and go on. 0 where the wrapper is not linked or glommio found no `membarrier` at
/// start-up and never calls it.
pub fn parks() -> u64 {
    PARKS.with(Cell::get)
}
