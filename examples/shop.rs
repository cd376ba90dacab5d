//! A user's app on percore's services: a cart kept in the session (typed values, any shard) and checkout as one cross-shard transaction (typed results).
//! Run: `cargo run --release --example shop`, stock up with `curl -X PUT -d 3 localhost:8080/kv/stock-apple`, then `curl -c j -b j -X POST localhost:8080/cart/apple` and `curl -b j -X POST localhost:8080/checkout` (412 when an item is out of stock).

use percore::router::{Request, Response, Router};
use percore::session::{Session, SessionError};
use percore::txn::op::{Op, OpResult, TxError};
use percore::txn::service::{TransactError, transact};

/// Changes the cart with `change`, in a read-modify-write no other write slips into (found in
/// review: an add that read the cart before a checkout took it wrote the bought items back, and
/// they were bought again). An error is answered, never taken for an empty cart (that would
/// overwrite the cart). None: it changed under us every time, with a growing, jittered pause
/// between tries (a shard that does not own the session loses such races to the one that does).
async fn update_cart(
    session: &Session,
    change: impl Fn(Vec<String>) -> Vec<String>,
) -> Result<Option<Vec<String>>, SessionError> {
    for attempt in 0..8 {
        if attempt > 0 {
            let pause = rand::random_range(100..400) << attempt;
            glommio::timer::sleep(std::time::Duration::from_micros(pause)).await;
        }
        let stored = session.get_value("cart").await?;
        let cart = match &stored {
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|_| SessionError::WrongType)?
            }
            None => Vec::new(),
        };
        let cart = change(cart);
        let new = serde_json::to_value(&cart).expect("strings encode as JSON");
        if session.replace("cart", stored.as_ref(), Some(new)).await? {
            return Ok(Some(cart));
        }
    }
    Ok(None)
}

/// Adds `item` to the cart in the caller's session (created on first use).
async fn add_to_cart(req: Request) -> Response {
    let item = req.param("item").unwrap_or_default().to_string();
    let Ok((session, created)) = Session::get_or_create(&req).await else {
        return Response::error(503, "session store unavailable");
    };
    let cart = match update_cart(&session, |cart| [cart, vec![item.clone()]].concat()).await {
        Ok(Some(cart)) => cart,
        Ok(None) => return Response::error(409, "the cart is changing; retry"),
        Err(e) => return Response::from(e),
    };
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
    // The cart is taken (read and removed in one step on its owner) before the stock: only the
    // checkout that takes it buys, and it buys what it took, so a retry or a double submit
    // never buys twice (found in review: with the cart removed after the transaction, a failed
    // removal kept it and a retry bought twice; with a read, then a removal, two checkouts
    // bought one cart). A transaction that wrote nothing puts the items back; an outcome
    // unknown (504: it may have committed) does not. All of it runs to the end in a task of its
    // own, even if this handler is dropped at an await (its client hung up, or
    // --handler-timeout passed).
    let checkout = glommio::spawn_local(async move {
        let cart: Vec<String> = session.take("cart").await?.unwrap_or_default();
        if cart.is_empty() {
            return Ok(None);
        }
        let ops = cart
            .iter()
            .map(|item| Op::Add {
                key: format!("stock-{item}").into(),
                delta: -1,
                floor: Some(0),
            })
            .collect();
        let outcome = transact(ops).await;
        let unknown = matches!(outcome, Err(TransactError::Tx(TxError::Unknown)));
        if outcome.is_err() && !unknown {
            // Before whatever was added meanwhile; lost if this fails too (nothing bought).
            let _ = update_cart(&session, |added| [cart.clone(), added].concat()).await;
        }
        Ok::<_, SessionError>(Some((cart, outcome)))
    })
    .detach();
    let (cart, outcome) = match checkout.await {
        Some(Ok(Some(checked_out))) => checked_out,
        Some(Ok(None)) => return Response::error(400, "the cart is empty"),
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
