//! The mover: a tenant moved to another cluster (`tenant move`), and the fleet's sizes that
//! say which to move (`tenant stats`, `rebalance`). Built on the copier (`engine::copy`: the
//! first copy is `tenant clone`'s, from a snapshot on the source into the transaction that
//! creates the tenant on the target) and on PostgreSQL's logical replication for what is
//! written meanwhile (`link`: publication, slot, subscription); the cutover holds the
//! tenant's tables on the source for the moment the target needs to catch up (`cutover`).
//! Every step is recorded in both control schemas (`control::moves`), so that a move killed
//! anywhere is resumed, finished or undone by a later command. No printing: the command
//! (`commands::tenant_move`) says what happens.

pub mod cutover;
pub mod first_copy;
pub mod link;
pub mod plan;
pub mod prereq;
pub mod settle;

/// A fault point for the test suite: with `TENANTCTL_TEST_KILL_AT=<point>` in its
/// environment the process SIGKILLs itself there (a crash no cleanup can run after), so
/// that a test proves the move is resumed from exactly that point. The points: `copying`
/// (inside the target's transaction, rows loaded), `copied` (the target committed),
/// `streaming`, `cutover` (inside the source's transaction, before its COMMIT),
/// `committed` (the source committed, the target not flipped), `flipped`.
pub fn kill_point(point: &str) {
    if std::env::var("TENANTCTL_TEST_KILL_AT").as_deref() == Ok(point) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}
