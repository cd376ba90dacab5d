//! A user's app on percore's services: a cart kept in the session (typed values, any shard) and checkout as one cross-shard transaction (typed results).
//! Run: `cargo run --release --example shop`, stock up with `curl -X PUT -d 3 localhost:8080/kv/stock-apple`, then `curl -c j -b j -X POST localhost:8080/cart/apple` and `curl -b j -X POST localhost:8080/checkout` (412 when an item is out of stock).

use percore::router::{Request, Response, Router};
use percore::session::{Session, SessionError};
use percore::txn::op::{Op, OpResult, TxError};
use percore::txn::service::{TransactError, transact};

/// Adds `item` to the cart in the caller's session (created on first use).
async fn add_to_cart(req: Request) -> Response {
    let item = req.param("item").unwrap_or_default().to_string();
    let Ok((session, created)) = Session::get_or_create(&req).await else {
        return Response::error(503, "session store unavailable");
    };
    // An error is answered, not taken for an empty cart: that would overwrite the cart.
    let mut cart: Vec<String> = match session.get("cart").await {
        Ok(cart) => cart.unwrap_or_default(),
        Err(e) => return Response::from(e),
    };
    cart.push(item);
    if let Err(e) = session.set("cart", &cart).await {
        return Response::from(e);
    }
    let response = Response::json(200, &cart);
    if created {
        response.header("Set-Cookie", session.cookie(req.ctx.tls))
    } else {
        response
    }
}

/// Takes one of each cart item from stock, all or nothing, and empties the cart.
async fn checkout(req: Request) -> Response {
    let Some(session) = Session::from_request(&req) else {
        return Response::error(401, "no cart");
    };
    let cart: Vec<String> = match session.get("cart").await {
        Ok(cart) => cart.unwrap_or_default(),
        Err(e) => return Response::from(e),
    };
    if cart.is_empty() {
        return Response::error(400, "the cart is empty");
    }
    let ops = cart
        .iter()
        .map(|item| Op::Add {
            key: format!("stock-{item}").into(),
            delta: -1,
            floor: Some(0),
        })
        .collect();
    // The cart goes first, then the stock; a transaction that wrote nothing puts the cart
    // back. A checkout that cannot empty the cart buys nothing, and only the one that emptied
    // it buys, so a retry or a double submit never buys twice (found in review: with the cart
    // removed after the transaction, a failed removal kept it, and a retry bought twice). An
    // outcome unknown (504: it may have committed) keeps the cart empty. Both run to the end in
    // a task of their own, even if this handler is dropped at an await (its client hung up, or
    // --handler-timeout passed).
    let checkout = glommio::spawn_local({
        let cart = cart.clone();
        async move {
            if !session.remove("cart").await? {
                return Ok(None);
            }
            let outcome = transact(ops).await;
            let unknown = matches!(outcome, Err(TransactError::Tx(TxError::Unknown)));
            if outcome.is_err() && !unknown {
                // Lost if this fails too: an empty cart, and nothing bought.
                let _ = session.set("cart", &cart).await;
            }
            Ok::<_, SessionError>(Some(outcome))
        }
    })
    .detach();
    let outcome = match checkout.await {
        Some(Ok(Some(outcome))) => outcome,
        Some(Ok(None)) => return Response::error(409, "another checkout took this cart"),
        Some(Err(e)) => return Response::from(e),
        None => return Response::error(500, "the checkout did not finish"),
    };
    match outcome {
        Ok(results) => {
            let left: Vec<i64> = results
                .iter()
                .filter_map(|r| {
                    if let OpResult::Add { value, .. } = r {
                        Some(*value)
                    } else {
                        None
                    }
                })
                .collect();
            Response::json(
                200,
                &serde_json::json!({ "bought": cart, "stock_left": left }),
            )
        }
        Err(TransactError::Tx(e)) => Response::error(e.status(), e.message()),
        Err(TransactError::Invalid(e)) => Response::error(e.status, &e.message),
    }
}

fn main() -> std::process::ExitCode {
    percore::main_with(|| {
        Router::new()
            .post("/cart/{item}", add_to_cart)
            .post("/checkout", checkout)
            .mount("/", percore::app::builtin_routes())
    })
}
