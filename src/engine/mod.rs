//! The migration engine: [`apply`] does one schema in one transaction, [`fleet`] runs many
//! schemas with bounded concurrency and keeps the run ledger. The engine never prints; it
//! emits [`crate::report::Event`]s that a reporter draws.

pub mod apply;
pub mod fleet;
pub mod plan;
pub mod verify;
