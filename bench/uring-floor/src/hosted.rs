//! `UF_HOST=glommio`: the worker loop of main.rs hosted as a task inside a glommio
//! 0.9.0 executor, the shape percore has (one pinned executor per core).
//!
//! The question it answers: does an io_uring-native loop (multishot accept and recv,
//! provided buffers, sends as SQEs) keep its CPU advantage when it has to live inside
//! glommio, or does the integration (glommio's own loop and rings, parking, waking)
//! eat it?
//!
//! Two kinds of rings on each executor thread:
//! * ours, created on the executor thread by `build_ring` with the same flags as the
//!   standalone mode (COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN, or without
//!   DEFER_TASKRUN under UF_FLAGS=coop); only our task ever enters it;
//! * glommio's three (main, latency, poll), created by glommio through liburing, to
//!   which `__wrap_io_uring_queue_init_params` below adds IORING_SETUP_COOP_TASKRUN,
//!   as percore and the lab's raw glommio peer do.
//!
//! Loop (`run`):
//! ```text
//! loop {
//!     io_uring_enter(our ring: submit, GETEVENTS with DEFER_TASKRUN, never wait)
//!     drain our CQ, handle CQEs as the standalone loop does, queue the sends
//!     if CQEs were found: yield to glommio (UF_YIELD, see `Yield`)
//!     else: await an io_uring READ of our eventfd on glommio's ring (the executor
//!           parks if nothing else runs; our ring signals the eventfd when it has work)
//! }
//! ```
//! The standalone mode's cost model: one blocking io_uring_enter per iteration. Here:
//! one non-blocking enter per pass, plus glommio's park and wake (its READ, its own
//! io_uring_enter calls, its pre-park membarrier) each time a pass finds nothing.
use std::io;
use std::os::unix::io::FromRawFd;

use glommio::io::BufferedFile;
use glommio::{LocalExecutorBuilder, Placement};
use io_uring::{CompletionQueue, EnterFlags, IoUring, SubmissionQueue, Submitter};

use crate::{setup, Worker};

pub fn enabled() -> bool {
    match std::env::var("UF_HOST").as_deref() {
        Ok("glommio") => true,
        Ok("") | Ok("standalone") | Err(_) => false,
        Ok(other) => panic!("UF_HOST={other}: expected glommio or standalone"),
    }
}

/// How a pass that found CQEs gives glommio a turn (UF_YIELD).
#[derive(Clone, Copy, Debug)]
enum Yield {
    /// `glommio::yield_if_needed()` (default): returns at once unless glommio wants
    /// the CPU back (its latency ring has a completion, e.g. the preempt timer that it
    /// arms every time its loop turns, 100 ms by default). No cost per pass.
    IfNeeded,
    /// `executor().yield_task_queue_now()`: always suspends the task. With no other
    /// task queue ready glommio's scheduler resumes it at once, without polling its
    /// rings either (it polls them only between scheduler rounds, i.e. after a
    /// preemption or when no task is ready), so this only adds scheduler cost.
    TaskQueue,
    /// `UF_YIELD=park`: never loop; every pass ends by awaiting the eventfd READ on
    /// glommio's ring (notifications always on), as a driver sharing its executor with
    /// other tasks and glommio's own IO must: a task that keeps its queue active delays
    /// glommio's polling of its own rings to the next preemption. Measures what one READ
    /// per pass costs.
    Park,
}

/// Whether eventfd notifications stay on while the loop is busy (UF_EVFD).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Evfd {
    /// Default: notifications off (IORING_CQ_EVENTFD_DISABLED) while passes find
    /// CQEs, on only around a park. Saves an eventfd signal per CQ flush, and keeps
    /// the eventfd count at 0 so that the READ before a park does not complete at once
    /// on counts left over from busy passes.
    Toggle,
    /// UF_EVFD=always: notifications always on (the simplest scheme; for comparison).
    Always,
}

#[derive(Clone, Copy, Debug)]
struct Opts {
    yield_kind: Yield,
    evfd: Evfd,
}

fn opts() -> Opts {
    let yield_kind = match std::env::var("UF_YIELD").as_deref() {
        Ok("queue") => Yield::TaskQueue,
        Ok("park") => Yield::Park,
        Ok("if_needed") | Ok("") | Err(_) => Yield::IfNeeded,
        Ok(other) => panic!("UF_YIELD={other}: expected if_needed, queue or park"),
    };
    let evfd = match std::env::var("UF_EVFD").as_deref() {
        Ok("always") => Evfd::Always,
        Ok("toggle") | Ok("") | Err(_) => Evfd::Toggle,
        Ok(other) => panic!("UF_EVFD={other}: expected toggle or always"),
    };
    // Park reads the eventfd after every pass: notifications must stay on.
    let evfd = if matches!(yield_kind, Yield::Park) {
        Evfd::Always
    } else {
        evfd
    };
    Opts { yield_kind, evfd }
}

/// One glommio executor per worker, pinned with Placement::Fixed, each running `worker`.
pub fn main(port: u16, workers: usize, cpus: &[usize]) {
    let o = opts();
    let mut hs = Vec::new();
    for i in 0..workers {
        let cpu = cpus[i % cpus.len()];
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("uring-{i}"))
            .spawn(move || async move {
                if let Err(e) = worker(port, i, o).await {
                    eprintln!("worker {i}: {e}");
                    std::process::exit(1);
                }
            })
            .expect("spawn glommio executor");
        hs.push(h);
    }
    eprintln!("uring-floor listening on 127.0.0.1:{port} with {workers} worker(s) hosted in glommio executors ({o:?})");
    for h in hs {
        let _ = h.join();
    }
}

async fn worker(port: u16, idx: usize, o: Opts) -> io::Result<()> {
    // On the executor thread, so our ring's single issuer is this thread.
    let (mut ring, mut w, defer) = setup(port, idx)?;

    // The eventfd stays blocking: io_uring returns EAGAIN at once for a READ on an
    // O_NONBLOCK file, but on a blocking one it arms an internal poll and completes the
    // READ when the eventfd is signalled, which is what we want glommio to wait for.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    ring.submitter().register_eventfd(efd)?;
    // glommio owns (and eventually closes) the fd from here on. A BufferedFile read is
    // a plain IORING_OP_READ on glommio's main ring.
    let efd_file = unsafe { BufferedFile::from_raw_fd(efd) };
    eprintln!(
        "worker {idx}: hosted in glommio, eventfd notifications {:?}, yield {:?}",
        o.evfd, o.yield_kind
    );

    let r = run(&mut ring, &mut w, &efd_file, defer, o).await;
    // Tear our ring down before the buffer ring memory it points at.
    drop(ring);
    drop(w);
    r
}

/// Publish our pushed SQEs and enter our ring once, never waiting. With DEFER_TASKRUN
/// the kernel queues our completions as task work that runs only when we enter with
/// GETEVENTS (min_complete 0 runs it and returns); without it they are posted as task
/// work at the end of any syscall of this thread, ours or glommio's.
#[inline]
fn enter(sub: &Submitter<'_>, sq: &mut SubmissionQueue<'_>, flags: u32) -> io::Result<()> {
    sq.sync();
    match unsafe { sub.enter::<libc::sigset_t>(sq.len() as u32, 0, flags, None) } {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
        // CQ overflow backlog: the caller drains the CQ, the next enter flushes it
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drain our CQ as the standalone loop does and queue the sends; returns the CQE count.
#[inline]
fn drain(
    w: &mut Worker,
    sq: &mut SubmissionQueue<'_>,
    sub: &Submitter<'_>,
    cq: &mut CompletionQueue<'_>,
) -> usize {
    cq.sync();
    #[allow(clippy::len_zero)] // is_empty would clash with an unstable std method
    if cq.len() == 0 {
        return 0;
    }
    w.date.refresh();
    let mut n = 0;
    for cqe in &mut *cq {
        n += 1;
        w.on_cqe(&cqe, sq, sub);
    }
    cq.sync(); // hand the consumed CQ entries back to the kernel
    w.flush_dirty(sq, sub);
    n
}

async fn run(
    ring: &mut IoUring,
    w: &mut Worker,
    efd: &BufferedFile,
    defer: bool,
    o: Opts,
) -> io::Result<()> {
    let (sub, mut sq, mut cq) = ring.split();
    let getevents = if defer {
        EnterFlags::GETEVENTS.bits()
    } else {
        0
    };
    let toggle = o.evfd == Evfd::Toggle;
    if toggle {
        cq.disable_eventfd();
    }
    w.arm_accept(&mut sq, &sub);
    loop {
        enter(&sub, &mut sq, getevents)?;
        let mut found = drain(w, &mut sq, &sub, &mut cq) > 0;

        if !found && toggle {
            // About to park: notifications back on, then look once more. Anything that
            // completes after this point signals the eventfd; anything that completed
            // while they were off is caught by the second look:
            // * enable_eventfd is a locked RMW (a full barrier) on cq_flags, ordered
            //   before the second enter and the CQ read below;
            // * DEFER_TASKRUN: the kernel signals only when its local work list goes
            //   from empty to non-empty (io_req_local_work_add), so work queued while
            //   notifications were off would never signal again: the second enter
            //   runs it. Work queued after that enter emptied the list finds the list
            //   empty and the flag on (the kernel's list push is a full barrier too);
            // * without DEFER_TASKRUN our CQEs are posted by task work on this thread
            //   (COOP_TASKRUN), so in program order: before the CQ read below, or
            //   after notifications are on.
            // Known gap (both modes of UF_EVFD): since 6.13 one GETEVENTS pass runs at
            // most 20 local work items; the rest wait in a retry list that does not
            // signal. A pass that left some would almost surely have posted CQEs too,
            // so we would not be parking; new traffic also signals again.
            cq.enable_eventfd();
            if defer {
                enter(&sub, &mut sq, getevents)?;
            }
            found = drain(w, &mut sq, &sub, &mut cq) > 0;
            if found {
                cq.disable_eventfd();
            }
        }

        if found {
            match o.yield_kind {
                Yield::IfNeeded => glommio::yield_if_needed().await,
                Yield::TaskQueue => glommio::executor().yield_task_queue_now().await,
                Yield::Park => {}
            }
            if !matches!(o.yield_kind, Yield::Park) {
                continue;
            }
        }

        // Nothing to do: wait for our ring's eventfd through glommio. glommio queues the
        // READ on its main ring; if no other task is ready its loop submits it and parks
        // (a blocking io_uring_enter on its rings). Any signal since the last READ
        // (counts accumulate in the eventfd) makes this READ complete at once, so
        // nothing posted before it is lost. The 8 bytes read are the count; unused.
        if let Err(e) = efd.read_at(0, 8).await {
            return Err(io::Error::other(format!("eventfd read: {e}")));
        }
        if toggle {
            cq.disable_eventfd();
        }
    }
}

// ---------------------------------------------------------------- glommio's ring flags
// glommio 0.9 has no API for io_uring setup flags. build.rs links the binary with
// `--wrap=io_uring_queue_init_params`, so the statically linked liburing's calls from
// glommio come here first (the same mechanism as /work/shared/lab/peers/glommio and
// percore's src/runtime/uring.rs). Our own ring is created by the io-uring crate with
// raw syscalls and never passes through here, so the standalone mode is unaffected.

/// IORING_SETUP_COOP_TASKRUN: completions run as task work at the next kernel entry
/// instead of an IPI/reschedule to the executor's CPU.
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;

/// The first three fields of liburing's `struct io_uring_params`; only `flags` is touched.
#[repr(C)]
pub struct UringParamsHead {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
}

extern "C" {
    fn __real_io_uring_queue_init_params(
        entries: u32,
        ring: *mut libc::c_void,
        p: *mut UringParamsHead,
    ) -> i32;
}

/// Called by liburing (inside glommio) in place of `io_uring_queue_init_params`.
///
/// # Safety
/// Only liburing calls it, with a valid `io_uring_params` pointer.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: u32,
    ring: *mut libc::c_void,
    p: *mut UringParamsHead,
) -> i32 {
    (*p).flags |= IORING_SETUP_COOP_TASKRUN;
    let flags = (*p).flags;
    let r = __real_io_uring_queue_init_params(entries, ring, p);
    // Once per glommio ring (three per executor), at start-up only.
    eprintln!(
        "glommio ring: {entries} entries, setup flags {flags:#x} (COOP_TASKRUN added) -> {r}"
    );
    r
}
