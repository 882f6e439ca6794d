//! Migrate and rollback of a schema in one round trip, when the registry's version says what
//! its history holds: the history is checked in the opening message, ahead of the scripts.

use refinery::Migration;
use tokio_postgres::Client;

use crate::engine::apply::{begin_sql, Applied, ApplyCtx, Mode};
use crate::engine::failure::Failure;
use crate::engine::history;
use crate::engine::work::plan_work;
use crate::tenant::Tenant;

/// Migrate and rollback in one round trip instead of two, when the registry's version says
/// what the history holds (it does whenever tenantctl wrote both, in one transaction): the
/// work is planned from the files up to that version, and the opening checks the history
/// against them (one statement, [`history::guard_sql`]) ahead of the scripts, in the same
/// pipeline and transaction, so nothing runs on a history that is not the expected one.
/// None: not tried (another mode, a plan that does not fit one transaction), or the opening
/// failed (the history is not as expected, say): the transaction is rolled back and the
/// caller goes the usual way, which reads the history and says what it found.
pub async fn in_one_trip(
    client: &Client,
    ctx: &ApplyCtx<'_>,
    tenant: &Tenant,
    mode: Mode,
    registry_version: Option<i32>,
    table: &str,
) -> Option<Result<Applied, Failure>> {
    if !matches!(mode, Mode::Migrate | Mode::Rollback { .. }) {
        return None;
    }
    let expected: Vec<&crate::migrations::MigrationFile> = ctx
        .migrations
        .files()
        .iter()
        .filter(|f| registry_version.is_some_and(|v| f.version <= v))
        .collect();
    let applied: Vec<Migration> = expected.iter().map(|f| f.migration.clone()).collect();
    let work = plan_work(ctx, tenant, mode, &applied, table, registry_version).ok()?;
    let [only] = work.segments.as_slice() else {
        return None;
    };
    if only.no_transaction {
        return None;
    }
    // One message: each message is answered (and flushed) on its own.
    let opening = format!(
        "{} {}; {};",
        begin_sql(ctx, tenant, mode),
        history::ensure_sql(table),
        history::guard_sql(table, &expected),
    );
    let last = format!(
        "{}{}{}; COMMIT;",
        crate::engine::session::GUARD,
        only.bookkeeping,
        ctx.control
            .schema_done_sql(ctx.run_id, tenant, work.after, work.count, false)
    );
    match only
        .send_after(client, &[&opening], &last, work.before)
        .await
    {
        Ok(()) => Some(Ok(Applied {
            before: work.before,
            after: work.after,
            count: work.count,
            archived_as: None,
            from_pool: false,
            rows: None,
        })),
        Err((0, f)) if !f.broken_connection => match client.batch_execute("ROLLBACK").await {
            Ok(()) => None,
            Err(e) => Some(Err(Failure::from_pg(&e, work.before))),
        },
        Err((_, f)) => Some(Err(f)),
    }
}
