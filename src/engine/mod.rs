//! The migration engine. [`run`] is a run's lifecycle on one cluster; [`fleet`] drives many
//! schemas with bounded concurrency; [`apply`] does one schema in one transaction, in the
//! two pipelined round trips of [`schema_tx`], against its [`history`]; [`failure`] says what
//! went wrong; [`heartbeat`] keeps the run's locks honest;
//! [`shared`] is the once-per-cluster step; [`plan`] is pure planning; [`waves`] stages a
//! rollout; [`verify`] reads the schemas' own histories. The engine never prints: it emits
//! [`events`].

pub mod across;
pub mod apply;
pub mod checks;
pub mod copy;
pub mod events;
pub mod failure;
pub mod files;
pub mod fleet;
pub mod fleet_sql;
pub mod heartbeat;
pub mod history;
pub mod idle;
pub mod mover;
pub mod one_trip;
pub mod outcome;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod schema_tx;
pub mod segmented;
pub mod session;
pub mod shared;
pub mod slow;
pub mod staged;
pub mod tiers;
pub mod verify;
pub mod waves;
pub mod work;
