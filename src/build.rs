//! Build script: links glommio's ring creation (runtime/uring.rs) and, in the `percore` binary on x86-64, libc's `syscall` (main.rs) through our wrappers; never compiled into percore.
// Route glommio's io_uring ring creation through `__wrap_io_uring_queue_init_params`
// (src/runtime/uring.rs), which adds IORING_SETUP_COOP_TASKRUN to every ring. glommio 0.9 has
// no API for setup flags; see ../shared/DESIGN.md for the measurement behind this.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params");
    // libc's `syscall` goes through main.rs's `__wrap_syscall`, which counts glommio's pre-park
    // membarriers (runtime/membarrier.rs) and passes every call to libc; in the `percore` binary
    // only: the wrapper lives there.
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && target("CARGO_CFG_TARGET_POINTER_WIDTH") == "64"
    {
        println!("cargo:rustc-link-arg-bin=percore=-Wl,--wrap=syscall");
    }
    println!("cargo:rerun-if-changed=src/build.rs");
}
