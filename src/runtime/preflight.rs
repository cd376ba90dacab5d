//! Start-up checks of what the kernel must allow (io_uring, locked memory), each failing with one line that names the fix.

use crate::config::limits::{IO_MEMORY_BYTES, MEMLOCK_BYTES_MIN};

/// Raises RLIMIT_MEMLOCK's soft limit to its hard limit, then checks it and io_uring.
pub fn check(shards: usize) -> Result<(), String> {
    check_memlock(shards)?;
    check_io_uring()
}

/// Locked memory `shards` shards and the signal thread need: each executor registers
/// `IO_MEMORY_BYTES` with its rings, and twice that leaves room for the pages around it (a
/// review measured 2 shards failing now and then at 2 MiB, never at 3). Below it a start
/// failed with a line that named no fix, or a glommio panic (exit 101).
fn memlock_needed(shards: usize) -> u64 {
    (shards as u64 + 1) * 2 * IO_MEMORY_BYTES as u64
}

/// Whether the process may lock memory past RLIMIT_MEMLOCK (CAP_IPC_LOCK, as root has it
/// outside a container): then only glommio's own minimum applies. Only in the initial user
/// namespace: io_uring checks the capability there, and in a user namespace of its own
/// (rootless Podman, `unshare -U`) `CapEff` shows a root that io_uring does not see (found in
/// review).
fn may_lock_past_the_limit() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let initial_namespace = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    });
    if !initial_namespace {
        return false;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    (status.lines())
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Set by `runtime::uring`'s wrapper each time glommio makes a ring. Here, not there: the wrapper
/// is linked only where the linker was told to `--wrap` glommio's ring setup (percore's own
/// build.rs does; a crate that embeds percore must too), and this must be readable either way.
pub static RINGS_TUNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A warning when the shards' rings were made without the wrapper (an embedder's build without
/// the link argument, found in review): no COOP_TASKRUN, which costs 2.4x the CPU per request,
/// and glommio's small completion queue.
pub fn untuned_rings_warning() -> Option<&'static str> {
    (!RINGS_TUNED.load(std::sync::atomic::Ordering::Relaxed)).then_some(
        "io_uring rings made without IORING_SETUP_COOP_TASKRUN (2.4x the CPU per request): add \
         `println!(\"cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params\");` to the \
         build.rs of the binary that embeds percore (README, \"Embedding\")",
    )
}

/// File descriptors one shard holds before it accepts anything (10 measured: io_uring rings,
/// eventfds, its log and its filler; 21 for an idle 1-shard server, 31 for 2), and what the
/// process holds besides (stdio, the data dir's lock), with room for the files start-up reads.
/// Below it glommio panics building an executor, or a shard fails after others began (found in
/// review).
const NOFILE_PER_SHARD: u64 = 12;
const NOFILE_BASE: u64 = 16;

/// File descriptors kept free per shard, under a limit too low for every connection, for what a
/// shard opens while it serves: a new log segment and its filler, a session snapshot, the
/// revocation log's rewrite, a blocking-pool thread's. Without them connections took the last
/// descriptors, the next segment switch failed (EMFILE), and the shard's log was failed for
/// good (found in review).
const NOFILE_RESERVE_PER_SHARD: u64 = 16;

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (the soft default, 1024, is below one
/// shard's `--max-conns`). Err (one line) when it is too small to start `shards` shards with
/// `listeners` listeners each at all, or to leave them a connection each; Ok with the
/// connections each shard may hold open: `conns_per_shard`, or fewer where the limit cannot
/// hold them all and what the shards open themselves (a warning says so; the rest wait in
/// the backlog).
pub fn raise_nofile(
    conns_per_shard: u64,
    shards: usize,
    listeners: usize,
) -> Result<(u64, Option<String>), String> {
    let connections = conns_per_shard.saturating_mul(shards as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok((conns_per_shard, None));
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let start = NOFILE_BASE + (NOFILE_PER_SHARD + listeners as u64) * shards as u64;
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < start {
        return Err(format!(
            "RLIMIT_NOFILE is {}: {shards} shards need at least {start} file descriptors to \
             start; raise it (ulimit -n; systemd: LimitNOFILE=)",
            limit.rlim_cur
        ));
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok((conns_per_shard, None));
    }
    // Besides its reserve, each listener of a shard may hold one accepted connection waiting
    // for a slot (found in review: those ate the reserve). Computed whatever the shard count: a
    // flat spare fell short of it from 9 shards on.
    let reserved = start + (NOFILE_RESERVE_PER_SHARD + listeners as u64) * shards as u64;
    let needed = connections.saturating_add(reserved);
    let fit = (limit.rlim_cur.saturating_sub(reserved) / shards as u64).min(conns_per_shard);
    if fit == 0 {
        return Err(format!(
            "RLIMIT_NOFILE is {}: {shards} shards need {reserved} file descriptors of their own \
             and leave none for connections; raise it to {needed} (ulimit -n; systemd: \
             LimitNOFILE=)",
            limit.rlim_cur
        ));
    }
    if fit == conns_per_shard {
        return Ok((fit, None));
    }
    let warning = format!(
        "RLIMIT_NOFILE is {}: not all of the {connections} connections allowed ({} per shard by \
         --max-conns or max_conns, {shards} shards) can be open: each shard holds {fit} at once \
         and keeps descriptors for its own files, the rest wait in the backlog; raise it to \
         {needed} (ulimit -n; systemd: LimitNOFILE=)",
        limit.rlim_cur, conns_per_shard
    );
    Ok((fit, Some(warning)))
}

fn check_memlock(shards: usize) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    memlock_verdict(limit.rlim_cur, shards, may_lock_past_the_limit())
}

/// Err (one line naming the fix) when a RLIMIT_MEMLOCK of `limit` bytes is too small for
/// `shards` shards; `may_lock`: the process may lock past it (only glommio's minimum applies).
fn memlock_verdict(limit: u64, shards: usize, may_lock: bool) -> Result<(), String> {
    let needed = match may_lock {
        true => MEMLOCK_BYTES_MIN,
        false => memlock_needed(shards).max(MEMLOCK_BYTES_MIN),
    };
    if limit < needed {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB, io_uring needs at least {} KiB for {shards} shards: run \
             `ulimit -l unlimited` first (systemd: LimitMEMLOCK=infinity; docker: --ulimit \
             memlock=-1)",
            limit / 1024,
            needed / 1024
        ));
    }
    Ok(())
}

fn check_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the params buffer we own; a returned fd is closed.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd is a descriptor we just received and own.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    let fix = match error.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring: percore needs Linux 5.11 or newer",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is blocked: set sysctl kernel.io_uring_disabled=0, or run the container with a seccomp \
             profile that allows io_uring (Docker 25+: --security-opt seccomp=unconfined)"
        }
        Some(libc::ENOMEM) => "io_uring could not lock memory: run `ulimit -l unlimited` first",
        _ => "io_uring is not usable here",
    };
    Err(format!("io_uring_setup failed ({error}): {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each executor (the shards' and the signal thread's) registers `IO_MEMORY_BYTES`: the
    /// limit a start needs grows with the shards, unless the process may lock past it (found in
    /// review: 2 shards under a 512 KiB limit failed with a line naming no fix, or a panic).
    #[test]
    fn locked_memory_needed_grows_with_the_shards() {
        const KIB: u64 = 1024;
        for (limit, shards, may_lock, ok) in [
            (3072 * KIB, 2, false, true),
            (3071 * KIB, 2, false, false),
            (512 * KIB, 2, false, false),
            (2048 * KIB, 1, false, true),
            (2047 * KIB, 1, false, false),
            (512 * KIB, 16, true, true),
            (511 * KIB, 16, true, false),
            (0, 1, true, false),
        ] {
            let verdict = memlock_verdict(limit, shards, may_lock);
            assert_eq!(
                verdict.is_ok(),
                ok,
                "{limit} {shards} {may_lock}: {verdict:?}"
            );
            if let Err(line) = verdict {
                assert!(line.contains("ulimit -l unlimited"), "{line}");
                assert!(line.contains(&format!("for {shards} shards")), "{line}");
            }
        }
        assert_eq!(memlock_needed(16), 17 * 1024 * KIB);
        // This process (the tests run as root in CI, with CAP_IPC_LOCK) is read without error.
        let _ = may_lock_past_the_limit();
    }
}
