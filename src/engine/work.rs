//! The work of one schema's transaction, planned from its history and the files: the
//! scripts to send (each as it is on disk, a very large one in pieces), cut into segments at
//! no-transaction scripts, each segment with its history bookkeeping; and how a segment's
//! messages are sent and a failure blamed on its file and line.

use refinery::Migration;
use tokio_postgres::Client;

use crate::engine::apply::{ApplyCtx, Mode};
use crate::engine::failure::{Failure, FailureKind};
use crate::engine::history;
use crate::engine::schema_tx::{line_of, trip};
use crate::migrations::scan::chunks;
use crate::tenant::{quote_ident, Tenant};

/// One script of the work trip: what to blame if it fails, and its text as on disk.
pub struct Script<'s> {
    pub label: String,
    /// The version of a forward migration (None for a rollback script).
    pub version: Option<i32>,
    pub sql: &'s str,
}

/// Files above this size are sent a piece at a time (cut at statement ends), so that a very
/// large migration is not copied whole into the driver's buffers.
const PIECE: usize = 1 << 20;

/// What the work does, checked against the history: its segments, in order.
pub struct Work<'s> {
    pub before: Option<i32>,
    pub after: Option<i32>,
    pub count: usize,
    /// Ordinarily one: every script and the bookkeeping in the opening's transaction. Cut at
    /// no-transaction scripts (see [`cut`]).
    pub segments: Vec<Segment<'s>>,
    /// `tenant drop --archive`: the schema the data is renamed to.
    pub archived_as: Option<String>,
}

/// Scripts that are recorded together: a run of ordinary scripts in one transaction, or one
/// no-transaction script, run statement by statement and recorded right after it.
pub struct Segment<'s> {
    pub no_transaction: bool,
    pub scripts: Vec<Script<'s>>,
    /// History rows (inserted or deleted) for these scripts.
    pub bookkeeping: String,
    /// The schema's version once this segment is recorded.
    pub after: Option<i32>,
    /// Migrations done once it is recorded, earlier segments included.
    pub done: usize,
}

impl<'s> Segment<'s> {
    /// Everything in one transaction.
    pub fn whole(scripts: Vec<Script<'s>>, bookkeeping: String, after: Option<i32>) -> Segment<'s> {
        let done = scripts.len();
        Segment {
            no_transaction: false,
            scripts,
            bookkeeping,
            after,
            done,
        }
    }
}

/// One script in the order it runs: outside a transaction or not, and the schema's version
/// once it is done.
struct Item<'s> {
    script: Script<'s>,
    no_transaction: bool,
    after: Option<i32>,
}

/// Cuts scripts into segments at the no-transaction ones (each a segment of its own);
/// `book(range)` is the history bookkeeping for the items in `range`. No scripts: one empty
/// segment ending at `before`.
fn cut<'s>(
    items: Vec<Item<'s>>,
    before: Option<i32>,
    book: impl Fn(std::ops::Range<usize>) -> String,
) -> Vec<Segment<'s>> {
    let total = items.len();
    let mut out: Vec<Segment<'s>> = Vec::new();
    let mut run: Vec<Script<'s>> = Vec::new();
    let mut run_start = 0usize;
    let mut after = before;
    for (i, item) in items.into_iter().enumerate() {
        if item.no_transaction {
            if !run.is_empty() {
                out.push(Segment {
                    no_transaction: false,
                    scripts: std::mem::take(&mut run),
                    bookkeeping: book(run_start..i),
                    after,
                    done: i,
                });
            }
            out.push(Segment {
                no_transaction: true,
                scripts: vec![item.script],
                bookkeeping: book(i..i + 1),
                after: item.after,
                done: i + 1,
            });
            run_start = i + 1;
        } else {
            run.push(item.script);
        }
        after = item.after;
    }
    if !run.is_empty() || out.is_empty() {
        out.push(Segment {
            no_transaction: false,
            scripts: run,
            bookkeeping: book(run_start..total),
            after,
            done: total,
        });
    }
    out
}

/// What the work trip does in each mode, checked against the history first.
pub fn plan_work<'s>(
    ctx: &ApplyCtx<'s>,
    tenant: &Tenant,
    mode: Mode,
    applied: &[Migration],
    table: &str,
    registry_version: Option<i32>,
) -> Result<Work<'s>, Failure> {
    let set = ctx.migrations;
    let before = applied.last().map(Migration::version);
    let forward = |target: Option<i32>, run: bool| -> Result<Work<'s>, Failure> {
        history::check(applied, set, true)?;
        let pending = history::pending(applied, set, target);
        let after = pending.last().map(|f| f.version).or(before);
        let segments = match run {
            true => cut(
                pending
                    .iter()
                    .map(|f| Item {
                        script: Script {
                            label: f.label(),
                            version: Some(f.version),
                            sql: f.sql(),
                        },
                        no_transaction: f.no_transaction,
                        after: Some(f.version),
                    })
                    .collect(),
                before,
                |r| history::record_sql(ctx.control, table, &pending[r]),
            ),
            // refinery's fake run: recorded as applied, not run.
            false => vec![Segment::whole(
                Vec::new(),
                history::record_sql(ctx.control, table, &pending),
                after,
            )],
        };
        Ok(Work {
            before,
            after,
            count: pending.len(),
            segments,
            archived_as: None,
        })
    };
    match mode {
        Mode::Create | Mode::Import { .. } | Mode::Migrate | Mode::PoolFill => {
            forward(ctx.target, true)
        }
        Mode::Adopt { baseline } => forward(Some(baseline), false),
        Mode::Rollback { to } => {
            history::check(applied, set, false)?;
            let mut items = Vec::new();
            let mut reverted = Vec::new();
            let versions: Vec<i32> = applied.iter().map(Migration::version).collect();
            for app in applied.iter().rev().filter(|m| m.version() > to) {
                let file = set.get(app.version()).expect("checked above");
                let Some((_, down)) = &file.down else {
                    return Err(Failure::new(
                        FailureKind::Other,
                        format!(
                            "{} has no rollback script {}.down.sql",
                            file.label(),
                            file.label()
                        ),
                        before,
                    ));
                };
                items.push(Item {
                    script: Script {
                        label: format!("{}.down", file.label()),
                        version: None,
                        sql: down,
                    },
                    no_transaction: file.down_no_transaction(),
                    // Once this is reverted: the newest applied version below it.
                    after: versions.iter().copied().filter(|v| *v < file.version).max(),
                });
                reverted.push(file.version);
            }
            let count = items.len();
            Ok(Work {
                before,
                after: versions.iter().copied().filter(|v| *v <= to).max(),
                count,
                segments: cut(items, before, |r| {
                    history::delete_sql(ctx.control, table, &reverted[r])
                }),
                archived_as: None,
            })
        }
        Mode::Repair { version } => {
            let file = set.get(version).expect("checked by the command");
            let Some(app) = applied.iter().find(|a| a.version() == version) else {
                return Err(Failure::new(
                    FailureKind::Other,
                    format!(
                        "{} is not applied here, so there is nothing to repair",
                        file.label()
                    ),
                    before,
                ));
            };
            let accepted = file.migration == *app;
            let bookkeeping = match accepted {
                true => String::new(),
                false => history::accept_sql(ctx.control, table, file),
            };
            Ok(Work {
                before,
                after: before,
                count: usize::from(!accepted),
                segments: vec![Segment::whole(Vec::new(), bookkeeping, before)],
                archived_as: None,
            })
        }
        // Never planned: fleet SQL is its own transaction (see engine::fleet_sql).
        Mode::Query | Mode::Exec { .. } => Err(Failure::new(
            FailureKind::Other,
            "fleet SQL has no migration work (a bug in tenantctl)".into(),
            registry_version,
        )),
        Mode::PoolDrain => Ok(Work {
            before: registry_version,
            after: None,
            count: 0,
            segments: vec![Segment::whole(
                Vec::new(),
                drop_sql(ctx, tenant, None),
                None,
            )],
            archived_as: None,
        }),
        Mode::Drop { archive } => {
            let archived_as = archive.then(|| crate::tenant::aside_name(tenant.schema(), "arch"));
            Ok(Work {
                before: registry_version,
                after: None,
                count: 0,
                segments: vec![Segment::whole(
                    Vec::new(),
                    drop_sql(ctx, tenant, archived_as.as_deref()),
                    None,
                )],
                archived_as,
            })
        }
    }
}

/// `tenant drop`: the schema goes (or is renamed out of the way), then the role, and the
/// registry marks the tenant dropped.
fn drop_sql(ctx: &ApplyCtx<'_>, tenant: &Tenant, archived_as: Option<&str>) -> String {
    let schema_q = tenant.quoted_schema();
    let first = match archived_as {
        Some(name) => format!("ALTER SCHEMA {schema_q} RENAME TO {};", quote_ident(name)),
        None => format!("DROP SCHEMA IF EXISTS {schema_q} CASCADE;"),
    };
    format!(
        "{} {first} {};",
        ctx.control.uncount_history_sql(tenant.schema()),
        ctx.control.drop_sql(tenant, archived_as)
    )
}

impl Segment<'_> {
    /// Sends `first` (the opening of a later segment's transaction), the scripts (each as it
    /// is on disk; a very large one in pieces) and then `last`, the bookkeeping with COMMIT.
    /// On failure the script that failed is blamed, at its line; a failure of `last` says
    /// that the outcome of a broken connection is unknown. `still_at`: the schema's version
    /// if this does not commit.
    pub async fn send(
        &self,
        client: &Client,
        first: Option<&str>,
        last: &str,
        still_at: Option<i32>,
    ) -> Result<(), Failure> {
        let first: Vec<&str> = first.into_iter().collect();
        self.send_after(client, &first, last, still_at)
            .await
            .map_err(|(_, f)| f)
    }

    /// [`Segment::send`] after several opening messages; a failure comes with the index of
    /// the message that failed (the openings first).
    pub async fn send_after(
        &self,
        client: &Client,
        first: &[&str],
        last: &str,
        still_at: Option<i32>,
    ) -> Result<(), (usize, Failure)> {
        // (script, lines before this piece in it, text)
        let mut pieces: Vec<(Option<&Script<'_>>, usize, &str)> = Vec::new();
        pieces.extend(first.iter().map(|m| (None, 0, *m)));
        for script in &self.scripts {
            match chunks(script.sql, PIECE) {
                Ok(cut) => pieces.extend(cut.into_iter().map(|(n, p)| (Some(script), n, p))),
                Err(_) => pieces.push((Some(script), 0, script.sql)),
            }
        }
        pieces.push((None, 0, last));
        let messages: Vec<&str> = pieces.iter().map(|p| p.2).collect();
        let Err(e) = trip(client, &messages).await else {
            return Ok(());
        };
        let mut f = Failure::from_pg(&e.error, still_at);
        match pieces[e.index] {
            (Some(script), lines_before, text) => {
                f.migration = Some(script.label.clone());
                f.migration_version = script.version;
                f.line = line_of(text, &e.error, e.completed).map(|l| (l + lines_before) as u32);
                if f.kind == FailureKind::Other {
                    f.kind = FailureKind::Migration;
                }
            }
            (None, ..) if f.kind == FailureKind::Connection && e.index + 1 == pieces.len() => {
                f.message = format!(
                    "{}; the connection broke while committing, so the outcome is not known: `tenantctl status` shows it and a re-run finishes the job without applying anything twice",
                    f.message
                );
            }
            (None, ..) => {}
        }
        Err((e.index, f))
    }
}
