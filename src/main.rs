//! The `percore` binary: the default server (built-in routes) with flags and config parsed by the library, and the link-time wrapper of libc's `syscall` that counts parks (x86-64, see runtime/membarrier.rs).

fn main() -> std::process::ExitCode {
    percore::main_with(percore::app::builtin_routes)
}

/// Counts glommio's pre-park barriers (`/stats` `parks`) and passes every syscall, the barrier
/// included, through to libc. Here, not in
/// the library, because only this binary is linked with `--wrap=syscall` (build.rs): anything
/// else that links the library must not reference `__real_syscall`.
#[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
mod syscall_wrapper {
    use libc::{c_int, c_long};
    use percore::runtime::membarrier::{MEMBARRIER_CMD_PRIVATE_EXPEDITED, note_park};

    unsafe extern "C" {
        fn __real_syscall(number: c_long, ...) -> c_long;
    }

    /// Called in place of libc's `syscall` by every caller in the binary (std's futex, glommio,
    /// liburing, mimalloc, ...).
    ///
    /// Declared with six fixed arguments after the number: on x86-64 System V a variadic call
    /// puts integer arguments exactly where a fixed-argument function reads them (rdi, rsi, rdx,
    /// rcx, r8, r9, then the stack), which is how libc's own `syscall` reads them. Arguments a
    /// caller did not pass are passed on unread, as libc does; errno is the real call's.
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
        // The command is a C int: only the low 32 bits of its register are defined.
        if number == libc::SYS_membarrier && a1 as c_int == MEMBARRIER_CMD_PRIVATE_EXPEDITED {
            note_park();
        }
        // SAFETY: forwarded unchanged to the real `syscall`, under the caller's contract.
        unsafe { __real_syscall(number, a1, a2, a3, a4, a5, a6) }
    }
}
