//! Integration tests: the real `tenantctl` binary against a real PostgreSQL that the suite
//! starts itself (see support). Every test gets its own database; tests run in parallel.

mod support;

mod bad_input;
mod clusters;
mod connect;
mod create;
mod data;
mod doctor;
mod failover;
mod faults;
mod fidelity;
mod fleet_sql;
mod guarantees;
mod json_docs;
mod migrate;
mod moves;
mod no_transaction;
mod observe;
mod output;
mod pool;
mod quick_start;
mod rollback;
mod security;
mod session;
mod snapshots;
mod status;
mod tiers;
mod toolkit;
mod waves;
