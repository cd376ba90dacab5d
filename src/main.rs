//! The `percore` binary: the default server (built-in routes) with flags and config parsed by the library.

fn main() -> std::process::ExitCode {
    percore::main_with(percore::app::builtin_routes)
}
