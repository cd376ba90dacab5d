//! glommio's pre-park `membarrier` replaced by a local fence on x86-64 (linker `--wrap=syscall`, see build.rs); nothing else.
//!
//! Before a glommio executor parks it stores "wake me" in its sleep notifier and then calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Seastar's asymmetric barrier) so that a sender
//! on another thread, who publishes a message and then reads that flag, cannot both miss the flag
//! and have its message missed by the parking executor's last look at its channels. The syscall
//! interrupts every CPU that runs a thread of this process; it was 5-8% of server CPU in
//! cross-shard profiles (bench/RESULTS.md).
//!
//! On x86-64 the sender's side is already a full barrier: glommio reads the flag with
//! `compare_exchange`, a `lock cmpxchg`, which drains the sender's store buffer after its publish
//! whether it succeeds or not. The remaining reordering, the parking thread's flag store passing
//! its own channel loads, is stopped by a fence on the parking thread alone (`mfence`). That is
//! the classic store-buffering pattern with a full barrier on both sides, which x86-TSO forbids.
//! Other architectures keep the syscall: there a relaxed compare-exchange orders nothing.

use std::cell::Cell;
use std::sync::atomic::{Ordering, fence};

use libc::c_long;

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` from linux/membarrier.h: the only command glommio issues
/// on its park path (it registers and queries with others at start-up; those pass through).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: c_long = 1 << 3;

thread_local! {
    /// How many times this thread's executor got ready to park: `/stats` `parks` per shard.
    static PARKS: Cell<u64> = const { Cell::new(0) };
}

/// Parks of the calling thread's executor so far: each time it found no work, stored its
/// "wake me" flag and passed the barrier. Most end in a sleep; some find a message that arrived
/// meanwhile and go on. 0 where glommio found no `membarrier` at start-up and never calls it.
pub fn parks() -> u64 {
    PARKS.with(Cell::get)
}

unsafe extern "C" {
    fn __real_syscall(number: c_long, ...) -> c_long;
}

/// Called in place of libc's `syscall` by every caller in the binary (std's futex, glommio, ...).
///
/// Declared with six fixed arguments after the number: on x86-64 System V a variadic call puts
/// integer arguments exactly where a fixed-argument function reads them (rdi, rsi, rdx, rcx, r8,
/// r9, then the stack), which is how libc's own `syscall` reads them. Arguments a caller did not
/// pass are passed on unread, as libc does.
///
/// # Safety
/// The same contract as libc's `syscall`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_syscall(
    number: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    if number == libc::SYS_membarrier && a1 == MEMBARRIER_CMD_PRIVATE_EXPEDITED {
        fence(Ordering::SeqCst);
        PARKS.with(|parks| parks.set(parks.get() + 1));
        return 0;
    }
    // SAFETY: forwarded unchanged to the real `syscall`, under the caller's contract.
    unsafe { __real_syscall(number, a1, a2, a3, a4, a5, a6) }
}
