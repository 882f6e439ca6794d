//! The migration engine. [`run`] is a run's lifecycle on one cluster; [`fleet`] drives many
//! schemas with bounded concurrency; [`apply`] does one schema in one transaction, through
//! refinery's traits implemented in [`schema_tx`]; [`failure`] says what went wrong;
//! [`shared`] is the once-per-cluster step; [`plan`] is pure planning; [`verify`] reads the
//! schemas' own histories. The engine never prints: it emits [`events`].

pub mod apply;
pub mod events;
pub mod failure;
pub mod fleet;
pub mod heartbeat;
pub mod plan;
pub mod run;
pub mod schema_tx;
pub mod shared;
pub mod verify;
