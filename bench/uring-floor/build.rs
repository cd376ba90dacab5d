//! Build script: routes glommio's io_uring ring creation (liburing's io_uring_queue_init_params,
//! statically linked into glommio) through `__wrap_io_uring_queue_init_params` in
//! src/hosted.rs, which adds IORING_SETUP_COOP_TASKRUN, as percore and the lab's raw
//! glommio peer do. Our own ring (io-uring crate, raw syscalls) never goes through
//! liburing, so the standalone mode is unaffected.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--wrap=io_uring_queue_init_params");
    println!("cargo:rerun-if-changed=build.rs");
}
