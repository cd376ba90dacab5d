//! The per-thread park count for `/stats`, taken where glommio calls its pre-park `membarrier`, and why that barrier stays a real system call. The `__wrap_syscall` that counts lives in main.rs, linked into the `percore` binary alone (`--wrap=syscall`, see build.rs).
//!
//! Before a glommio executor parks it stores "wake me" in its sleep notifier and then calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Seastar's asymmetric barrier) so that a sender
//! on another thread, who publishes a message and then reads that flag, cannot both miss the flag
//! and have its message missed by the parking executor's last look at its channels. The syscall
//! interrupts every CPU that runs a thread of this process: 17-21% of the CPU of a cross-shard
//! transfer and 18% of a request at 20k req/s on 2 shards (bench/RESULTS.md).
//!
//! From 2026-11-27 to 2026-11-28 the wrapper replaced it on x86-64 with a local `fence(SeqCst)`,
//! on the argument that every glommio wake-up path reads the flag with a `compare_exchange` (a
//! full barrier on x86). That lost wake-ups: a shard slept through its peer's message while
//! joining a channel mesh at start-up, about one start in four in `tests/kv.rs`'s kill -9
//! tests on a loaded 2-CPU machine (the start never finished; the other shard spun waiting for
//! it; a review saw the same with both shards asleep, and an earlier run a shard wedged at 100%
//! CPU under load). With the real barrier: no hang in 30 runs. Which wake-up path the argument
//! missed is not known, so the barrier stays until one is proven unnecessary by a test that
//! reproduces the loss.

use std::cell::Cell;

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` from linux/membarrier.h: the only command glommio issues
/// on its park path (it registers and queries with others at start-up; those pass through).
pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;

thread_local! {
    /// How many times this thread's executor got ready to park: `/stats` `parks` per shard.
    static PARKS: Cell<u64> = const { Cell::new(0) };
}

/// Called by the wrapper before the barrier (no allocation, no lazy initialization: safe on any
/// thread at any time).
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
