//! The steps of a move, from where it stands: start, first copy, catch-up, cutover, flip.

use std::time::{Duration, Instant};

use crate::cli::MoveArgs;
use crate::control::{MovePhase, MoveRow, RunCommand, TenantRow, TenantState};
use crate::engine::apply::{ImportFrom, Mode};
use crate::engine::events::Event;
use crate::engine::mover::{cutover, first_copy::FirstCopy, kill_point, link, prereq};
use crate::engine::run::{self as engine_run, Planned, RunRequest};
use crate::exit::UsageError;
use crate::migrations::{version_label, MigrationSet};
use crate::tenant::Tenant;

use super::super::tenant_data::record_on;
use super::super::Ctx;
use super::report::Report;
use super::{admin, Side};

/// How many times a cutover is tried before the move stops (resumable) and says why.
const CUTOVER_ATTEMPTS: u32 = 5;
/// How long a subscription may stay disconnected before the move says its stream is broken.
const STALLED: Duration = Duration::from_secs(60);
/// The lag under which a cutover is tried.
const SMALL_LAG: i64 = 8 << 20;
/// How fast an offline move is expected to copy (the bench's order of magnitude), for the
/// pause it announces.
const OFFLINE_BYTES_PER_SEC: f64 = 60.0 * 1_048_576.0;

/// One move, driven from where it stands.
pub(super) struct Mover<'a> {
    pub ctx: &'a Ctx,
    pub migrations: &'a MigrationSet,
    pub tenant: &'a Tenant,
    pub args: &'a MoveArgs,
    pub report: Report,
}

impl Mover<'_> {
    fn info(&self, side: &Side<'_>, message: &str) {
        self.ctx
            .reporters
            .for_cluster(&side.target.name)
            .emit(&Event::Info { message });
    }

    pub(super) async fn run(
        &mut self,
        source: &mut Side<'_>,
        target: &mut Side<'_>,
    ) -> anyhow::Result<()> {
        let mut mv = match source.out.clone() {
            Some(mv) => {
                self.report.resumed = Some(mv.phase);
                mv
            }
            None => self.start(source, target).await?,
        };
        self.report.online = mv.online;
        self.report.version = source.row.as_ref().and_then(|r| r.version);
        if mv.phase == MovePhase::Copying {
            let arrived = target.state() == Some(TenantState::Incoming) && target.inn.is_some();
            match (arrived, mv.online) {
                // The target committed its copy and subscription before the process stopped.
                (true, true) => {}
                _ => {
                    if arrived || target.inn.is_some() {
                        admin::undo_target(&target.session, self.tenant, &mv.link).await?;
                    }
                    self.first_copy(source, target, &mv).await?;
                }
            }
            if mv.online {
                kill_point("copied");
                source
                    .session
                    .control
                    .set_move_phase(&source.session.client, mv.id, MovePhase::Streaming)
                    .await?;
                mv.phase = MovePhase::Streaming;
            } else {
                mv.phase = MovePhase::CutOver;
            }
        }
        if mv.phase == MovePhase::Streaming {
            kill_point("streaming");
            self.catch_up_and_cut(source, target, &mv).await?;
            mv.phase = MovePhase::CutOver;
        }
        self.after_cutover(source, target, &mv).await
    }

    /// A new move: checked, then the tenant marked moving on the source.
    async fn start(&mut self, source: &Side<'_>, target: &Side<'_>) -> anyhow::Result<MoveRow> {
        let row = source.row.as_ref().expect("active");
        let version = row.version;
        super::super::gate(
            &self.ctx.config,
            self.migrations,
            |v| version.is_some_and(|at| v <= at),
            |_| false,
        )?;
        let (sc, tc) = (&source.session.client, &target.session.client);
        let tables = prereq::tables(sc, self.tenant.schema()).await?;
        let bytes = crate::engine::copy::catalog::schema_bytes(sc, self.tenant.schema()).await?;
        let pause = Duration::from_secs_f64(bytes as f64 / OFFLINE_BYTES_PER_SEC);
        let online = !self.args.offline;
        if online {
            let mut missing = prereq::source(sc, &tables).await?;
            missing.extend(prereq::target(tc).await?);
            if !missing.is_empty() {
                return Err(UsageError(format!(
                    "tenant {} cannot be moved online from {} to {}:\n  - {}\nnothing was changed; `--offline` moves it without logical replication, holding its writes for the whole copy (about {:.0} s for its {:.1} MB)",
                    self.tenant.id(),
                    source.target.name,
                    target.target.name,
                    missing.join("\n  - "),
                    pause.as_secs_f64().ceil(),
                    bytes as f64 / 1_048_576.0
                ))
                .into());
            }
        } else {
            self.info(
                source,
                &format!(
                    "offline move: writes to tenant {} wait on {} for the whole copy, about {:.0} s for its {:.1} MB; reads go on",
                    self.tenant.id(),
                    source.target.name,
                    pause.as_secs_f64().ceil(),
                    bytes as f64 / 1_048_576.0
                ),
            );
        }
        let database: String = sc.query_one("SELECT current_database()", &[]).await?.get(0);
        let link_name = link::link_name(&database, self.tenant.id());
        let started = source
            .session
            .control
            .start_move_out(
                sc,
                self.tenant,
                (&target.target.name, online, &link_name),
                &self.ctx.actor,
            )
            .await?;
        started.ok_or_else(|| {
            UsageError(format!(
                "tenant {} stopped being active on {} meanwhile (dropped, renamed, or moved by another command); nothing was changed",
                self.tenant.id(),
                source.target.name
            ))
            .into()
        })
    }

    /// The first copy: the source's rows (from a snapshot aligned with the slot, or with
    /// writes held for an offline move) into the tenant's new schema on the target, its
    /// subscription (online) made in the same transaction.
    async fn first_copy(
        &mut self,
        source: &mut Side<'_>,
        target: &mut Side<'_>,
        mv: &MoveRow,
    ) -> anyhow::Result<()> {
        let schema = self.tenant.schema();
        let tables = prereq::table_names(&source.session.client, schema).await?;
        let copier = source.session.connect_again().await?;
        let started = match mv.online {
            true => self.start_stream(source, &copier, mv, &tables).await,
            false => cutover::hold_offline(&copier, (schema, &tables)).await,
        };
        if let Err(e) = started {
            // Nothing is on the target yet: the source's side is undone, the tenant active.
            admin::undo_source(&source.session, self.tenant, &mv.link).await?;
            return Err(e.context(format!(
                "tenant {} was not moved; it is active on {} as before",
                self.tenant.id(),
                source.target.name
            )));
        }
        let held = Instant::now();
        let row = source.row.clone().expect("the source's row");
        let target_control = target.session.control.clone();
        let load = FirstCopy {
            source: &copier,
            tenant: self.tenant,
            labels: &row.labels,
            migrations: self.migrations,
            control: &target_control,
            from: &source.target.name,
            link: &mv.link,
            actor: &self.ctx.actor,
            subscribe: mv.online.then(|| source.session.libpq_conninfo()),
            used: Default::default(),
            rows: Default::default(),
        };
        let t0 = Instant::now();
        let outcome = self.register_on_target(target, &row, &load).await;
        let failure = match outcome {
            Ok(None) => None,
            Ok(Some(f)) => Some(anyhow::anyhow!("{f}")),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            let _ = copier.batch_execute("ROLLBACK").await;
            // Nothing committed on the target: the source's side is undone too.
            admin::undo_source(&source.session, self.tenant, &mv.link).await?;
            return Err(e.context(format!(
                "the first copy of tenant {} to {} failed; nothing moved (the tenant is active on {} as before)",
                self.tenant.id(),
                target.target.name,
                source.target.name
            )));
        }
        self.report.first_copy = Some(t0.elapsed());
        self.report.rows = load.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !mv.online {
            // Still held: the cutover is on the same transaction.
            self.report.attempts = 1;
            self.cut(source, target, mv, (&copier, &tables), held)
                .await?;
        } else {
            let _ = copier.batch_execute("ROLLBACK").await;
        }
        Ok(())
    }

    /// The publication, then the slot and the snapshot `copier` reads.
    async fn start_stream(
        &mut self,
        source: &Side<'_>,
        copier: &tokio_postgres::Client,
        mv: &MoveRow,
        tables: &[String],
    ) -> anyhow::Result<()> {
        let client = &source.session.client;
        link::drop_source(client, &mv.link).await?;
        link::create_publication(client, &mv.link, self.tenant.schema(), tables).await?;
        let (locker, slotter) = futures::try_join!(
            source.session.connect_again(),
            source.session.connect_again()
        )?;
        let aligned = self
            .aligned_start(source, (&locker, &slotter, copier), mv, tables)
            .await?;
        self.report.start_pause = Some(aligned.pause);
        Ok(())
    }

    /// The slot and the first copy's snapshot (see `link::aligned_start`): after the write
    /// transactions running on the source have ended (they would hold the tenant's writes
    /// while the slot is made), within --max-pause, tried up to [`CUTOVER_ATTEMPTS`] times.
    async fn aligned_start(
        &self,
        source: &Side<'_>,
        clients: (
            &tokio_postgres::Client,
            &tokio_postgres::Client,
            &tokio_postgres::Client,
        ),
        mv: &MoveRow,
        tables: &[String],
    ) -> anyhow::Result<link::Aligned> {
        let schema = self.tenant.schema();
        for attempt in 1..=CUTOVER_ATTEMPTS {
            if !link::wait_for_running(clients.1, Duration::from_secs(30)).await? {
                self.info(
                    source,
                    "write transactions on the source have run for more than 30 s; making the slot anyway",
                );
            }
            let made =
                link::aligned_start(clients, &mv.link, (schema, tables), self.args.max_pause)
                    .await?;
            if let Some(aligned) = made {
                return Ok(aligned);
            }
            self.info(
                source,
                &format!(
                    "start of the stream, attempt {attempt}: the slot waited for transactions running on the source longer than --max-pause {}; the tenant's writes were let go, trying again",
                    humantime::format_duration(self.args.max_pause)
                ),
            );
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        Err(anyhow::anyhow!(
            "the replication slot for tenant {} could not be made within --max-pause {} in {CUTOVER_ATTEMPTS} attempts (it waits for the transactions running on the source, which were too long); nothing was moved: try again later, or with a larger --max-pause",
            self.tenant.id(),
            humantime::format_duration(self.args.max_pause)
        ))
    }

    /// The tenant created on the target in one transaction, registered incoming, loaded by
    /// `load`. Some(message) when its transaction failed.
    async fn register_on_target(
        &self,
        target: &mut Side<'_>,
        row: &TenantRow,
        load: &FirstCopy<'_>,
    ) -> anyhow::Result<Option<String>> {
        if let Some(set) = super::super::load_shared(&self.ctx.config)? {
            crate::engine::shared::apply_shared_recorded(
                &target.session,
                &self.ctx.config,
                &self.ctx.actor,
                &set,
                RunCommand::TenantCreateShared,
            )
            .await
            .map_err(|f| anyhow::anyhow!("the target's shared migrations failed: {f}"))?;
        }
        let env = self.ctx.run_env(target.target);
        let labels = [(self.tenant.id().to_string(), row.labels.clone())].into();
        let result = engine_run::run(
            &mut target.session,
            &env,
            RunRequest {
                mode: Mode::Import {
                    from: ImportFrom::Move,
                },
                migrations: self.migrations,
                target: row.version,
                scope: crate::engine::run::scope_of(Some(std::slice::from_ref(self.tenant))),
                tenants: vec![Planned {
                    tenant: self.tenant.clone(),
                    version: None,
                    todo: true,
                }],
                refused: Vec::new(),
                labels,
                waves: None,
                seed: None,
                load: Some(load),
                sql: None,
                resume: false,
                fail_fast: true,
            },
        )
        .await?;
        let failed = result
            .tenants
            .iter()
            .find_map(|t| t.failure.as_ref().map(|f| f.error.clone()));
        Ok(
            match result.counts.failed > 0 || result.counts.not_started > 0 {
                true => {
                    Some(failed.unwrap_or_else(|| "the target's transaction did not commit".into()))
                }
                false => None,
            },
        )
    }

    /// Waits for the stream to be nearly caught up, then cuts over; a cutover that the
    /// target cannot catch up with within --max-pause is let go and tried again.
    async fn catch_up_and_cut(
        &mut self,
        source: &mut Side<'_>,
        target: &mut Side<'_>,
        mv: &MoveRow,
    ) -> anyhow::Result<()> {
        let schema = self.tenant.schema();
        let tables = prereq::table_names(&source.session.client, schema).await?;
        let cut = source.session.connect_again().await?;
        for attempt in 1..=CUTOVER_ATTEMPTS {
            self.wait_small_lag(source, target, mv).await?;
            self.report.attempts = attempt;
            match cutover::hold(
                (&cut, &source.session.client),
                (schema, &tables),
                &mv.link,
                self.args.max_pause,
            )
            .await
            {
                Ok(cutover::Held::CaughtUp { since }) => {
                    return self.cut(source, target, mv, (&cut, &tables), since).await;
                }
                Ok(cutover::Held::TooSlow { lag_bytes }) => {
                    self.info(
                        source,
                        &format!(
                            "cutover attempt {attempt}: the target had not applied everything within --max-pause {} ({:.1} MB behind); writes let go, catching up",
                            humantime::format_duration(self.args.max_pause),
                            lag_bytes as f64 / 1_048_576.0
                        ),
                    );
                }
                Err(e) => {
                    let _ = cut.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
        Err(anyhow::anyhow!(
            "tenant {}: the target did not catch up within --max-pause {} in {CUTOVER_ATTEMPTS} cutovers; the move goes on streaming: run the same command again (with a larger --max-pause, or when the source is quieter), or --abort",
            self.tenant.id(),
            humantime::format_duration(self.args.max_pause)
        ))
    }

    async fn wait_small_lag(
        &self,
        source: &Side<'_>,
        target: &Side<'_>,
        mv: &MoveRow,
    ) -> anyhow::Result<()> {
        let (mut shown, mut connected) = (Instant::now(), Instant::now());
        loop {
            let lag = link::lag(&source.session.client, &mv.link).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "the move's replication slot {} is gone from {}: the stream is broken; `tenant move {} --abort`, then move it again",
                    mv.link,
                    source.target.name,
                    self.tenant.id()
                )
            })?;
            let streaming = link::applied_up_to(&source.session.client, &mv.link, "0/0").await?;
            if streaming && lag <= SMALL_LAG {
                return Ok(());
            }
            if streaming {
                connected = Instant::now();
            }
            if shown.elapsed() >= Duration::from_secs(2) {
                let failing = link::apply_errors(&target.session.client, &mv.link).await?;
                let stalled = connected.elapsed() > STALLED;
                if failing > 0 || stalled {
                    return Err(anyhow::anyhow!(
                        "the subscription {} on {} {}: the stream is broken (the target's server log says why). Nothing was cut over; the tenant is still served by {}: `tenant move {} --abort`, fix the cause, and move it again",
                        mv.link,
                        target.target.name,
                        match failing > 0 {
                            true => format!("failed to apply changes {failing} time(s)"),
                            false => format!("has not been connected to {} for {} s", source.target.name, STALLED.as_secs()),
                        },
                        source.target.name,
                        self.tenant.id()
                    ));
                }
                let what = match streaming {
                    true => format!("catching up: {:.1} MB behind", lag as f64 / 1_048_576.0),
                    false => format!(
                        "waiting for {}'s subscription to connect",
                        target.target.name
                    ),
                };
                self.info(target, &what);
                shown = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Inside the held source transaction on `cut`: the target made whole and compared, the
    /// hook, the audit, the commit. Anything failing rolls the cutover back.
    async fn cut(
        &mut self,
        source: &Side<'_>,
        target: &Side<'_>,
        mv: &MoveRow,
        (cut, tables): (&tokio_postgres::Client, &[String]),
        since: Instant,
    ) -> anyhow::Result<()> {
        let result = self.cut_inner(source, target, mv, (cut, tables)).await;
        match result {
            Ok(()) => {
                self.report.pause = Some(since.elapsed());
                Ok(())
            }
            Err(e) => {
                let _ = cut.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// `tables`: read before the hold (migrations are held off during a move, so they are
    /// the same): no catalog read while the tenant's writes wait.
    async fn cut_inner(
        &mut self,
        source: &Side<'_>,
        target: &Side<'_>,
        mv: &MoveRow,
        (cut, tables): (&tokio_postgres::Client, &[String]),
    ) -> anyhow::Result<()> {
        let schema = self.tenant.schema();
        let tc = &target.session.client;
        if mv.online {
            cutover::settle_target(cut, tc, schema).await?;
        }
        self.report.checks =
            cutover::compare((cut, tc), (schema, schema), tables, self.args.verify).await?;
        if let Some(cmd) = &self.args.on_cutover {
            run_hook(cmd, self.tenant, (&source.target.name, &target.target.name)).await?;
        }
        let scope = crate::digest::fnv1a_hex(self.tenant.id().bytes());
        let run_id = record_on(
            self.ctx,
            (&source.session.control, cut),
            (RunCommand::TenantMove, self.tenant),
            self.report.version,
            (&mv.link, &scope),
        )
        .await?;
        let old = crate::tenant::aside_name(schema, "moved");
        kill_point("cutover");
        cutover::commit(cut, &source.session.control, (self.tenant, mv.id), &old).await?;
        kill_point("committed");
        self.report.run_id = Some(run_id);
        self.report.old_schema = Some(old);
        Ok(())
    }

    /// After the source committed: the target's copy made the tenant, the replication
    /// objects dropped, the move finished (the old copy kept as asked).
    async fn after_cutover(
        &mut self,
        source: &Side<'_>,
        target: &Side<'_>,
        mv: &MoveRow,
    ) -> anyhow::Result<()> {
        let (sc, tc) = (&source.session.client, &target.session.client);
        target
            .session
            .control
            .flip_incoming(tc, self.tenant.id())
            .await?;
        kill_point("flipped");
        link::drop_subscription(tc, &mv.link).await?;
        target
            .session
            .control
            .finish_move_in(tc, self.tenant.id())
            .await?;
        link::drop_source(sc, &mv.link).await?;
        let keep = self.args.keep_source;
        source
            .session
            .control
            .finish_move(sc, mv.id, MovePhase::Done, keep.map(|k| k.as_secs_f64()))
            .await?;
        if self.report.old_schema.is_none() {
            self.report.old_schema = old_schema_of(source, mv.id).await?;
        }
        self.report.keep = keep;
        if keep == Some(Duration::ZERO) {
            let copies = source.session.control.old_copies(sc).await?;
            if let Some(copy) = copies.iter().find(|c| c.id == mv.id) {
                sc.batch_execute(&format!(
                    "BEGIN; {} COMMIT;",
                    source.session.control.drop_old_copy_sql(copy)
                ))
                .await?;
                self.report.dropped_old = true;
            }
        }
        if self.report.checks.is_empty() {
            // A resumed move that cut over earlier: the target's counts.
            let tables = prereq::table_names(tc, self.tenant.schema()).await?;
            self.report.checks = cutover::compare(
                (tc, tc),
                (self.tenant.schema(), self.tenant.schema()),
                &tables,
                false,
            )
            .await?;
        }
        let latest = self.migrations.latest();
        if latest != self.report.version && !self.ctx.reporters.is_quiet() {
            crate::output::stderr_line(&format!(
                "tenant {} is at {} on {}; the files go to {}: `tenantctl migrate --tenant {}` brings it up",
                self.tenant.id(),
                version_label(self.report.version),
                target.target.name,
                version_label(latest),
                self.tenant.id()
            ));
        }
        Ok(())
    }
}

/// The old copy's name recorded at the cutover (a resumed move did not see it made).
async fn old_schema_of(source: &Side<'_>, move_id: i64) -> anyhow::Result<Option<String>> {
    let copies = source
        .session
        .control
        .old_copies(&source.session.client)
        .await?;
    Ok(copies
        .into_iter()
        .find(|c| c.id == move_id)
        .map(|c| c.schema))
}

/// `--on-cutover`: the command, through the shell, with the move in its environment; its
/// failure (or a run longer than a minute) stops the cutover.
async fn run_hook(cmd: &str, tenant: &Tenant, (from, to): (&str, &str)) -> anyhow::Result<()> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TENANTCTL_TENANT", tenant.id())
        .env("TENANTCTL_FROM", from)
        .env("TENANTCTL_TO", to)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(anyhow::anyhow!(
            "--on-cutover failed ({status}); the cutover was rolled back and nothing moved: the tenant is still served by {from}, the stream goes on (run the same command again, or --abort)"
        )),
        Ok(Err(e)) => Err(anyhow::anyhow!("--on-cutover could not be run: {e}; nothing moved")),
        Err(_) => Err(anyhow::anyhow!(
            "--on-cutover ran for more than 60 s; it was stopped, the cutover rolled back, nothing moved"
        )),
    }
}
