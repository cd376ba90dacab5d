//! A user's own app on percore: path parameters, shard-local state, middleware, the logged-in
//! identity and the built-in routes. Run: `cargo run --release --example hello -- --bind
//! 127.0.0.1:8080`, then `curl localhost:8080/hello/you`; with `--users users.toml`,
//! `curl -u alice:PASSWORD localhost:8080/me` greets the logged-in user.

use std::{cell::Cell, rc::Rc};

use percore::router::{Next, Phase, Request, Response, Router};

fn app() -> Router {
    // Built once per shard: Rc and Cell are fine, nothing here is shared between cores.
    let greeted = Rc::new(Cell::new(0u64));
    Router::new()
        .get("/hello/{name}", move |req: Request| {
            greeted.set(greeted.get() + 1);
            let (count, shard) = (greeted.get(), req.ctx.shard);
            async move {
                let name = req.param("name").unwrap_or("world");
                Response::text(200, format!("hello, {name} (#{count} on shard {shard})\n"))
            }
        })
        // Whoever logged in (session, Basic or Bearer) is in `ctx.identity` from Authorize on.
        .get("/me", |req: Request| async move {
            let Some(who) = &req.ctx.identity else {
                return Response::text(401, "log in first\n");
            };
            let roles = who.roles.join(", ");
            Response::text(200, format!("hello, {} ({roles})\n", who.user))
        })
        .middleware(Phase::Request, |req: Request, next: Next| async move {
            next.run(req).await.header("x-powered-by", "percore")
        })
        .mount("/", percore::app::builtin_routes())
}

fn main() -> std::process::ExitCode {
    percore::main_with(app)
}
