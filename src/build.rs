//! Build script: links glommio's ring creation through our wrapper (see runtime/uring.rs); never compiled into percore.
// Route glommio's io_uring ring creation through `__wrap_io_uring_queue_init_params`
// (src/runtime/uring.rs), which adds IORING_SETUP_COOP_TASKRUN to every ring. glommio 0.9 has
// no API for setup flags; see ../shared/DESIGN.md for the measurement behind this.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params");
    // glommio's pre-park membarrier becomes a local fence on x86-64 (src/runtime/membarrier.rs).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        println!("cargo:rustc-link-arg-bin=percore=-Wl,--wrap=syscall");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
