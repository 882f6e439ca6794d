//! `tenantctl rollback --to VERSION`: revert with the .down.sql scripts (see migrate.rs for
//! the shared run shape).

use crate::cli::RollbackArgs;
use crate::engine::plan::Direction;

use super::migrate::{fleet_command, require_on_disk, Sides};
use super::{load_migrations, Ctx};

/// Shared migrations are forward-only: rollback reverts tenant schemas only.
pub async fn rollback(ctx: &Ctx, args: RollbackArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    if args.to != 0 {
        require_on_disk(&migrations, args.to, "--to")?;
    }
    // --tenant/--from-file name tenants; --all, or --select alone, means every tenant.
    let ids = super::ids_from(&args.tenant, args.from_file.as_deref())?;
    let tenants = (!args.all && !ids.is_empty()).then_some(ids.as_slice());
    fleet_command(
        ctx,
        &migrations,
        Direction::Backward { to: args.to },
        tenants,
        args.fleet,
        Sides::TENANTS_ONLY,
    )
    .await
}
