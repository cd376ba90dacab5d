//! Accepts connections on a shard's listener within the per-shard connection bound and hands each to `conn`.

pub mod conn;

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use crate::router::App;
use crate::runtime::shard::Shard;

/// Accepts until the shard drains. At `conns_max` open connections it stops accepting (the
/// kernel backlog holds the rest) and resumes when a connection closes.
pub async fn accept_loop(shard: Rc<Shard>, app: Rc<App>, listener: TcpListener) {
    let slots = shard.conn_slots.clone();
    loop {
        let permit = match slots.try_acquire_static_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                let started = Instant::now();
                let waited = futures_lite::future::or(
                    async { slots.acquire_static_permit(1).await.ok() },
                    async {
                        shard.drain_started().await;
                        None
                    },
                )
                .await;
                shard.metrics.count_wait_at_bound(started.elapsed());
                match waited {
                    Some(permit) => permit,
                    None => return,
                }
            }
        };
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started().await;
            None
        })
        .await;
        match accepted {
            None => return, // dropping the listener closes it
            Some(Ok(stream)) => {
                glommio::spawn_local(conn::serve(shard.clone(), app.clone(), stream, permit))
                    .detach();
            }
            Some(Err(e)) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the connection waits in the backlog.
                eprintln!("percore: shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
