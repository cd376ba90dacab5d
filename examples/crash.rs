//! What a handler that panics does: `GET /crash` unwraps a missing value, and the whole process
//! ends with exit code 101 (the panic's message, then one line) for its supervisor to restart, on
//! every build (README, "Embedding"). Handle bad input with an answer, never with `unwrap`.
//! Run: `cargo run --example crash`, then `curl localhost:8080/crash`.

use percore::router::{Request, Response, Router};

fn app() -> Router {
    Router::new()
        .get("/crash", |req: Request| async move {
            let missing: Option<&str> = req.param("no-such-parameter");
            Response::text(200, missing.unwrap().to_string())
        })
        .mount("/", percore::app::builtin_routes())
}

fn main() -> std::process::ExitCode {
    percore::main_with(app)
}
