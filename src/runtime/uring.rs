//! io_uring setup flags for every ring glommio creates (linker `--wrap`, see build.rs); nothing else.

/// IORING_SETUP_COOP_TASKRUN: completions run as task work at the next kernel entry instead of a
/// reschedule IPI to the shard's CPU. Measured: 11.0 -> 4.6 µs of server CPU per request.
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
/// IORING_SETUP_CQSIZE: take `cq_entries` from us. The kernel sizes the hash table that every
/// io_uring cancel walks from the CQ size (ilog2(cq) - 5 bits, at most 8): glommio's 256-entry CQ
/// gives 8 buckets, so each cancel walked 1/8 of all idle connections' armed polls (21% of the
/// server's CPU at 15,000 idle connections, bench/RESULTS.md). 8192 entries give the full 256.
const IORING_SETUP_CQSIZE: u32 = 1 << 3;
const CQ_ENTRIES: u32 = 8192;

/// The first three fields of liburing's `struct io_uring_params`; we set `flags` and `cq_entries`.
#[repr(C)]
pub struct UringParamsHead {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
}

unsafe extern "C" {
    fn __real_io_uring_queue_init_params(
        entries: u32,
        ring: *mut libc::c_void,
        params: *mut UringParamsHead,
    ) -> i32;
}

/// Called by glommio's statically linked liburing in place of `io_uring_queue_init_params`.
///
/// # Safety
/// Called only by liburing with a valid `io_uring_params` pointer, as the real function is.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: u32,
    ring: *mut libc::c_void,
    params: *mut UringParamsHead,
) -> i32 {
    super::preflight::RINGS_TUNED.store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: `params` points to a live io_uring_params whose layout starts with these fields.
    unsafe {
        (*params).flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
        (*params).cq_entries = (*params).cq_entries.max(CQ_ENTRIES).max(2 * entries);
        __real_io_uring_queue_init_params(entries, ring, params)
    }
}
