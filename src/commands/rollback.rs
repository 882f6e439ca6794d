//! `tenantctl rollback --to VERSION`: revert with the .down.sql scripts (see migrate.rs for
//! the shared run shape).

use crate::cli::RollbackArgs;
use crate::config::Settings;
use crate::engine::plan::Direction;

use super::load_migrations;
use super::migrate::{fleet_command, require_on_disk};

pub async fn rollback(settings: &Settings, args: RollbackArgs, quiet: bool) -> anyhow::Result<i32> {
    let migrations = load_migrations(settings)?;
    if args.to != 0 {
        require_on_disk(&migrations, args.to, "--to")?;
    }
    let tenants = (!args.all).then_some(args.tenant.as_slice());
    fleet_command(
        settings,
        &migrations,
        Direction::Backward { to: args.to },
        tenants,
        args.fleet,
        quiet,
    )
    .await
}
