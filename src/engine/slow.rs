//! A schema still running past `--slow-after`: what its session is waiting for, read from
//! `pg_stat_activity` and `pg_blocking_pids`, in words on-call can act on ("waiting for a lock
//! on tenant_acme.orders held by pid 4242 (app@10.0.0.7, idle in transaction for 540 s)").

use deadpool::managed::Manager as _;
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use crate::tenant::Tenant;

/// What the tenant's session is doing, found by the schema lock it holds or waits for and
/// the run's `application_name`; None when it cannot be told (a query, which takes no
/// schema lock, or the server did not answer). Asked on a connection of its own, outside
/// the pool, whose connections are all busy.
pub async fn diagnose(pool: &Pool, tenant: &Tenant, run_id: i64) -> Option<String> {
    let client = pool.manager().create().await.ok()?;
    let sql = format!(
        "SELECT a.pid, coalesce(a.state, ''), coalesce(a.wait_event_type, ''), coalesce(a.wait_event, ''), \
                (SELECT string_agg(DISTINCT l.relation::regclass::text, ', ') FROM pg_locks l \
                   WHERE l.pid = a.pid AND NOT l.granted AND l.relation IS NOT NULL), \
                (SELECT string_agg(format('pid %s (%s@%s, %s%s for %s s)', b.pid, coalesce(b.usename, '?'), \
                        coalesce(host(b.client_addr), 'local'), coalesce(b.state, '?'), \
                        CASE WHEN b.application_name <> '' THEN ', application ' || b.application_name ELSE '' END, \
                        coalesce(extract(epoch FROM now() - b.state_change)::int8, 0)), ', ' ORDER BY b.pid) \
                   FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))) \
         FROM pg_stat_activity a \
         WHERE a.pid = (SELECT l.pid FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid \
                        WHERE l.locktype = 'advisory' AND l.classid = {ns}::oid AND l.objid = hashtext($1)::oid \
                          AND l.objsubid = 2 AND s.application_name = $2 LIMIT 1)",
        ns = crate::control::LOCK_NAMESPACE
    );
    let row = client
        .query_typed(
            &sql,
            &[
                (&tenant.schema(), Type::TEXT),
                (&format!("tenantctl run {run_id}"), Type::TEXT),
            ],
        )
        .await
        .ok()?
        .into_iter()
        .next()?;
    let (pid, state, wait_type, wait): (i32, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let relations: Option<String> = row.get(4);
    let blockers: Option<String> = row.get(5);
    Some(match (blockers, relations) {
        (Some(by), Some(on)) => format!("waiting for a lock on {on} held by {by}"),
        (Some(by), None) => format!("waiting for {by}"),
        _ if wait_type.is_empty() => format!("pid {pid} {state}, not waiting (working)"),
        _ => format!("pid {pid} {state}, waiting on {wait_type}/{wait}"),
    })
}
