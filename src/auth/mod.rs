//! Security on top of the session store: who the client is (login sessions, Basic, Bearer tokens) and what it may do (`[[access]]` rules, CSRF). The pure pieces (users, passwords, credentials, rules, counters) do no IO; `service`, `middleware` and `routes` wire them into a shard.

pub mod access;
pub mod cli;
pub mod credentials;
pub mod csrf;
pub mod limiter;
pub mod middleware;
pub mod password;
pub mod routes;
pub mod service;
pub mod users;
