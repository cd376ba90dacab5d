//! Builds the SO_REUSEPORT listening sockets, one per shard and address, before any shard starts.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// One listening socket per (shard, address): `sockets[shard][address]`. Port 0 is resolved by
/// the first socket, and every other shard binds the same port.
pub fn bind_all(
    binds: &[SocketAddr],
    shard_count: usize,
    backlog: u32,
) -> Result<(Vec<SocketAddr>, Vec<Vec<OwnedFd>>), String> {
    let mut resolved = Vec::with_capacity(binds.len());
    let mut sockets: Vec<Vec<OwnedFd>> = (0..shard_count)
        .map(|_| Vec::with_capacity(binds.len()))
        .collect();
    for &bind in binds {
        if bind.port() != 0 {
            ensure_unused(bind)?;
        }
        let first = bind_one(bind, backlog)?;
        let addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| format!("listening address {bind}: cannot read the bound address"))?;
        if resolved.contains(&addr) {
            return Err(format!("listening address {bind}: given twice"));
        }
        sockets[0].push(first.into());
        for shard_sockets in sockets.iter_mut().skip(1) {
            shard_sockets.push(bind_one(addr, backlog)?.into());
        }
        resolved.push(addr);
    }
    Ok((resolved, sockets))
}

/// SO_REUSEPORT lets any socket of the same user join a port's group, so a second percore (or
/// any reuseport server) on the same address would bind without an error and the kernel would
/// split the connections between the two. A probe bound without SO_REUSEPORT fails while any
/// listener holds the address (SO_REUSEADDR still lets it past a previous run's TIME_WAIT).
fn ensure_unused(addr: SocketAddr) -> Result<(), String> {
    bound_socket(addr, false).map(drop)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> Result<Socket, String> {
    let socket = bound_socket(addr, true)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(|e| format!("listening address {addr}: cannot listen: {e}"))?;
    Ok(socket)
}

/// A TCP socket bound to `addr` with SO_REUSEADDR (and SO_REUSEPORT if asked), v6-only for IPv6.
fn bound_socket(addr: SocketAddr, reuse_port: bool) -> Result<Socket, String> {
    // Not "--bind": the address may come from the config file, `[[listener]]` or
    // `--redirect-https` (found in review).
    let fail = |what: &str, e: std::io::Error| format!("listening address {addr}: {what}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| fail("SO_REUSEADDR", e))?;
    if reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(|e| fail("SO_REUSEPORT", e))?;
    }
    if addr.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|e| fail("IPV6_V6ONLY", e))?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| fail("cannot bind", e))?;
    Ok(socket)
}
