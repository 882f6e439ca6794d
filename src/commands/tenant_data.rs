//! `tenant export`, `tenant import`, `tenant clone`: a tenant's rows out of its schema into
//! an archive, and into a new tenant's schema (from an archive, or straight from another
//! tenant). The copier is `engine::copy`; a new tenant is registered the way `tenant create`
//! registers one (`tenant::register`, mode `Import`), its rows loaded in that transaction.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::FutureExt as _;
use serde_json::json;
use tokio_postgres::Client;

use crate::archive::Manifest;
use crate::cli::{CloneArgs, ExportArgs, ImportArgs, RunOpts};
use crate::config::Target;
use crate::control::{RunCommand, RunInfo, SharedOutcome, TenantRow, TenantState};
use crate::db::Session;
use crate::engine::apply::{ImportFrom, Load, Mode};
use crate::engine::copy::{self, export, files};
use crate::engine::events::{Event, Events};
use crate::engine::failure::{Failure, FailureKind};
use crate::exit::UsageError;
use crate::migrations::{version_label, MigrationSet};
use crate::report::json::Part;
use crate::tenant::Tenant;

use super::clusters::{finish, Done};
use super::tenant::{register, Registration};
use super::{load_migrations, parse_ids, Ctx};

/// A registered tenant found on one of the configured clusters, with its session there.
pub(super) struct Found<'a> {
    pub target: &'a Target,
    pub session: Session<'a>,
    pub row: TenantRow,
}

/// Where `tenant` is registered (active), asking `targets` at once; exit 2 when none has it.
pub(super) async fn find<'a>(
    ctx: &Ctx,
    targets: &'a [Target],
    tenant: &Tenant,
) -> anyhow::Result<Found<'a>> {
    let ids = [tenant.id().to_string()];
    let ids = &ids;
    let mut asked = futures::future::join_all(targets.iter().map(|t| async move {
        let session = ctx.session(t, false).await?;
        let rows = match session.control.exists(&session.client).await? {
            true => session.control.tenants(&session.client, Some(ids)).await?,
            false => Vec::new(),
        };
        let row = rows.into_iter().find(|r| r.state == TenantState::Active);
        anyhow::Ok((t, session, row))
    }))
    .await;
    super::clusters::single_error(ctx, &mut asked)?;
    super::require_registered(ids, targets, &asked, |(_, _, row), _| row.is_some())?;
    let (target, session, row) = asked
        .into_iter()
        .flatten()
        .find(|(_, _, row)| row.is_some())
        .expect("found above");
    Ok(Found {
        target,
        session,
        row: row.expect("found above"),
    })
}

/// Refuses (exit 2) an id that any configured cluster already holds.
pub(super) async fn require_new(ctx: &Ctx, tenant: &Tenant) -> anyhow::Result<()> {
    let all = ctx.config.targets(&[])?;
    match find(ctx, &all, tenant).await {
        Ok(found) => Err(UsageError(format!(
            "tenant {} already exists (on cluster {}); nothing was changed: pick another id, or drop it first",
            tenant.id(),
            found.target.name
        ))
        .into()),
        Err(e) if crate::exit::code_for(&e) == crate::exit::USAGE => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records a finished run of one tenant (an export, a clone's source side, a rename) in the
/// cluster's audit trail, in the session's transaction if it has one.
pub(super) async fn record_one(
    ctx: &Ctx,
    session: &Session<'_>,
    what: (RunCommand, &Tenant),
    version: Option<i32>,
    how: (&str, &str),
) -> anyhow::Result<i64> {
    record_on(ctx, (&session.control, &session.client), what, version, how).await
}

/// [`record_one`] on any connection to the cluster (in its transaction, if it has one);
/// the run's id.
pub(super) async fn record_on(
    ctx: &Ctx,
    (control, client): (&crate::control::Control, &Client),
    (command, tenant): (RunCommand, &Tenant),
    version: Option<i32>,
    (digest, scope): (&str, &str),
) -> anyhow::Result<i64> {
    let argv = crate::whoami::command_line();
    let info = RunInfo {
        command,
        target: version,
        digest,
        scope,
        total: 1,
        actor: &ctx.actor,
        argv: &argv,
        seed: None,
    };
    let outcome = SharedOutcome {
        before: version,
        after: version,
        applied: 0,
        failure: None,
    };
    control
        .record_single(client, &info, (tenant.id(), tenant.schema()), &outcome)
        .await
}

/// An export (or a clone's source side) in the source cluster's audit trail.
async fn record_export(
    ctx: &Ctx,
    session: &Session<'_>,
    tenant: &Tenant,
    manifest: &Manifest,
    digest: &str,
) -> anyhow::Result<()> {
    let scope = crate::digest::fnv1a_hex(tenant.id().bytes());
    let what = (RunCommand::TenantExport, tenant);
    record_one(ctx, session, what, manifest.version, (digest, &scope))
        .await
        .map(drop)
}

/// Registers one new tenant from rows (`tenant::register` in mode `Import`).
async fn register_one(
    ctx: &Ctx,
    migrations: &MigrationSet,
    (id, labels): (&str, &[String]),
    (clone, target): (bool, Option<i32>),
    (load, opts): (&dyn Load, &crate::cli::DataOpts),
) -> anyhow::Result<i32> {
    let request = Registration {
        mode: Mode::Import {
            from: match clone {
                true => ImportFrom::Clone,
                false => ImportFrom::Archive,
            },
        },
        target,
        if_not_exists: false,
        seed: None,
        load: Some(load),
    };
    let ids = [id.to_string()];
    register(
        ctx,
        migrations,
        &ids,
        None,
        labels,
        request,
        &run_opts(opts),
    )
    .await
}

pub async fn export(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    let tenant = parse_ids(&ctx.config, std::slice::from_ref(&args.id))?.remove(0);
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
    if to_stdout && args.opts.json {
        return Err(UsageError(
            "--output - writes the archive to stdout, where --json would print its document too: write the archive to a file, or drop --json".into(),
        )
        .into());
    }
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.tenantctl", tenant.id())));
    if !to_stdout && path.exists() && !args.force {
        return Err(UsageError(format!(
            "{} exists; nothing was written: pass --force to overwrite it, or choose another --output",
            path.display()
        ))
        .into());
    }
    let found = find(ctx, &ctx.targets, &tenant).await?;
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let out: Box<dyn std::io::Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        // The tenant's rows: readable by their owner only.
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| UsageError(format!("cannot write {}: {e}", partial.display())))?;
        Box::new(file)
    };
    // Stopped by a signal: no partial archive is left (the snapshot ends with the process).
    let _stop = (!to_stdout).then(|| {
        let partial = partial.clone();
        ctx.signals.on_signal(move |name| async move {
            let _ = std::fs::remove_file(&partial);
            crate::output::stderr_line(&format!(
                "{name} received: export stopped; no archive was written"
            ));
            std::process::exit(crate::exit::INTERRUPTED);
        })
    });
    let t0 = Instant::now();
    let events = ctx.reporters.for_cluster(&found.target.name);
    let (tx, writer) = files::writer(out);
    let source = export::Source {
        tenant: &found.row.tenant,
        labels: &found.row.labels,
        migrations: &migrations,
        allow_drift: args.allow_drift,
        registry_drift: found.row.drift.as_deref(),
    };
    let exported = export::export(&found.session.client, source, &tx, &events).await;
    if exported.is_err() {
        let _ = tx.send(Err("stopped".into())).await;
    }
    drop(tx);
    events.emit(&Event::RunFinished);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the archive's writer crashed"))?;
    let done = exported.and_then(|e| Ok((e, written?)));
    let (exported, written) = match done {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if !to_stdout {
        std::fs::rename(&partial, &path)?;
    }
    let digest = exported.digest();
    record_export(ctx, &found.session, &tenant, &exported.manifest, &digest).await?;
    let rows: u64 = exported.footer.tables.iter().map(|t| t.rows).sum();
    let raw: u64 = exported.footer.tables.iter().map(|t| t.bytes).sum();
    let shown = if to_stdout {
        "stdout".to_string()
    } else {
        path.display().to_string()
    };
    let m = &exported.manifest;
    let text = format!(
        "exported tenant {} ({}, {} table(s), {rows} row(s), {:.1} MB of rows) to {shown}: {:.1} MB in {:.1}s{}\n",
        tenant.id(),
        version_label(m.version),
        m.tables.len(),
        raw as f64 / 1_048_576.0,
        written.bytes as f64 / 1_048_576.0,
        t0.elapsed().as_secs_f64(),
        m.drift
            .as_ref()
            .map_or(String::new(), |d| format!("\nexported with --allow-drift: {d}")),
    );
    let part = Part::default()
        .top("command", json!("tenant export"))
        .top("tenant", json!({"id": tenant.id(), "schema": tenant.schema()}))
        .top("version", json!(m.version))
        .top("output", json!(shown))
        .top("rows", json!(rows))
        .top("bytes", json!(raw))
        .top("archive_bytes", json!(written.bytes))
        .top("drift", json!(m.drift))
        .top("elapsed_ms", json!(t0.elapsed().as_millis() as u64))
        .list(
            "tables",
            m.tables
                .iter()
                .zip(&exported.footer.tables)
                .map(|(t, s)| json!({"table": t.name, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256}))
                .collect(),
        );
    if to_stdout {
        // stdout is the archive: the summary goes to stderr.
        if !ctx.reporters.is_quiet() {
            crate::output::stderr_line(text.trim_end());
        }
        return Ok(crate::exit::SUCCESS);
    }
    let done = Done::new(crate::exit::SUCCESS, text, part);
    finish(ctx, vec![(found.target.clone(), Ok(done))], args.opts.json).await
}

/// An archive's manifest against the files on disk: a version they have, and the history's
/// checksums theirs (exit 2, naming the migration, otherwise).
fn check_manifest(manifest: &Manifest, migrations: &MigrationSet) -> anyhow::Result<()> {
    let Some(version) = manifest.version else {
        return Ok(());
    };
    if migrations.get(version).is_none() {
        return Err(UsageError(format!(
            "the archive is of tenant {} at V{version}, which the migration files here do not have (latest {}): import it with the files it was exported with, or newer ones",
            manifest.tenant,
            version_label(migrations.latest())
        ))
        .into());
    }
    for h in &manifest.history {
        let Some(file) = migrations.get(h.version) else {
            return Err(UsageError(format!(
                "the archive's history has V{}__{}, which is not in the migration files; nothing was imported",
                h.version, h.name
            ))
            .into());
        };
        if file.migration.checksum().to_string() != h.checksum {
            return Err(UsageError(format!(
                "{} differs from the file the archive's tenant applied (checksum {} then, {} now): the schema the files make is not the one its rows came from; import with the files it was exported with",
                file.path.display(),
                h.checksum,
                file.migration.checksum()
            ))
            .into());
        }
    }
    Ok(())
}

/// The rows of an archive file, read afresh for each attempt.
struct FileLoad {
    path: PathBuf,
}

impl Load for FileLoad {
    fn load<'c>(
        &'c self,
        client: &'c Client,
        tenant: &'c Tenant,
        events: &'c Events,
    ) -> futures::future::LocalBoxFuture<'c, Result<(), Failure>> {
        async move {
            let file = std::fs::File::open(&self.path).map_err(|e| {
                Failure::new(
                    FailureKind::Archive,
                    format!("cannot read {}: {e}", self.path.display()),
                    None,
                )
            })?;
            let mut frames = files::reader(Box::new(file));
            copy::load::load(client, tenant.schema(), &mut frames, events).await?;
            Ok(())
        }
        .boxed_local()
    }
}

/// The archive to read: the file, or stdin kept in a temporary file (it is read twice: once
/// to check it whole, once to load it).
fn input(path: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempPath>)> {
    if path != Path::new("-") {
        if !path.is_file() {
            return Err(UsageError(format!("{}: no such archive file", path.display())).into());
        }
        return Ok((path.to_path_buf(), None));
    }
    let mut spool = tempfile::NamedTempFile::new()?;
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut spool, &buf[..n])?;
    }
    let spool = spool.into_temp_path();
    Ok((spool.to_path_buf(), Some(spool)))
}

fn run_opts(opts: &crate::cli::DataOpts) -> RunOpts {
    RunOpts {
        actor: opts.actor.clone(),
        jobs: None,
        fail_fast: false,
        json: opts.json,
        observe: Default::default(),
    }
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    let tenant = parse_ids(&ctx.config, std::slice::from_ref(&args.id))?.remove(0);
    if args.migrate && args.opts.json {
        return Err(UsageError(
            "--migrate with --json would print two documents: import with --json, then run `tenantctl migrate --tenant ID --json`".into(),
        )
        .into());
    }
    let (path, _spool) = input(&args.input)?;
    let open = || {
        std::fs::File::open(&path)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))
    };
    let damaged = |e: crate::archive::ArchiveError| {
        UsageError(format!(
            "{}: {e}; nothing was imported",
            args.input.display()
        ))
    };
    // The whole archive is checked on a thread while the checks that need only its
    // manifest, and the database, go on; all before anything is created.
    let manifest = files::head(Box::new(open()?)).map_err(damaged)?;
    let checking = {
        let file = open()?;
        std::thread::spawn(move || files::check(Box::new(file)))
    };
    check_manifest(&manifest, &migrations)?;
    // What is imported must pass `migration check`, as for a new tenant.
    super::gate(
        &ctx.config,
        &migrations,
        |v| manifest.version.is_some_and(|at| v <= at),
        |_| false,
    )?;
    require_new(ctx, &tenant).await?;
    // The archive against the schema the files make (any selected cluster: the files are
    // the same everywhere), before anything is created.
    let target = ctx.targets.first().expect("a cluster");
    let session = ctx.session(target, false).await?;
    let also = ctx.config.migrations.extensions_schema.as_deref();
    if let Some(problem) =
        copy::preflight::check(&session.client, &migrations, &manifest, also).await?
    {
        return Err(UsageError(format!("{}: {problem}", args.input.display())).into());
    }
    drop(session);
    let (_, footer) = checking
        .join()
        .map_err(|_| anyhow::anyhow!("the archive's check crashed"))?
        .map_err(damaged)?;
    let rows: u64 = footer.tables.iter().map(|t| t.rows).sum();
    if args.dry_run {
        let text = format!(
            "would create tenant {} at {} from the archive of tenant {} ({} table(s), {rows} row(s), exported {}); nothing was changed\n",
            tenant.id(),
            version_label(manifest.version),
            manifest.tenant,
            manifest.tables.len(),
            manifest.exported_at
        );
        let part = Part::default()
            .top("command", json!("tenant import"))
            .top("dry_run", json!(true))
            .top("tenant", json!({"id": tenant.id(), "schema": tenant.schema()}))
            .top("version", json!(manifest.version))
            .top("source", json!({"tenant": manifest.tenant, "exported_at": manifest.exported_at, "tenantctl": manifest.tenantctl}))
            .top("rows", json!(rows));
        let target = ctx.targets.first().cloned().expect("a cluster");
        let done = Done::new(crate::exit::SUCCESS, text, part);
        return finish(ctx, vec![(target, Ok(done))], args.opts.json).await;
    }
    let loader = FileLoad { path };
    let code = register_one(
        ctx,
        &migrations,
        (&args.id, &args.label),
        (false, manifest.version),
        (&loader, &args.opts),
    )
    .await?;
    after_import(
        ctx,
        &migrations,
        &tenant,
        manifest.version,
        (code, args.migrate),
    )
    .await
}

/// Once imported at the archive's version: migrate it on with --migrate, or say how.
async fn after_import(
    ctx: &Ctx,
    migrations: &MigrationSet,
    tenant: &Tenant,
    at: Option<i32>,
    (code, migrate): (i32, bool),
) -> anyhow::Result<i32> {
    let behind = migrations.latest() != at;
    if code != crate::exit::SUCCESS || !behind {
        return Ok(code);
    }
    if !migrate {
        if !ctx.reporters.is_quiet() {
            crate::output::stderr_line(&format!(
                "{} is at {}; the files go to {}: `tenantctl migrate --tenant {}` brings it up (or import with --migrate)",
                tenant.id(),
                version_label(at),
                version_label(migrations.latest()),
                tenant.id()
            ));
        }
        return Ok(code);
    }
    let ids = [tenant.id().to_string()];
    super::migrate::fleet_command(
        ctx,
        migrations,
        crate::engine::plan::Direction::Forward {
            target: migrations.latest(),
        },
        Some(&ids),
        crate::cli::FleetOpts::for_tenants(run_opts(&crate::cli::DataOpts {
            actor: None,
            json: false,
        })),
        super::migrate::Sides::TENANTS_ONLY,
    )
    .await
}

/// A clone's rows: the source exported while the new schema loads them, over a channel.
struct CloneLoad<'a> {
    source: &'a Found<'a>,
    migrations: &'a MigrationSet,
    /// The manifest the source's export wrote, for the audit trail.
    exported: std::sync::Mutex<Option<(Manifest, String)>>,
}

impl Load for CloneLoad<'_> {
    fn load<'c>(
        &'c self,
        client: &'c Client,
        tenant: &'c Tenant,
        events: &'c Events,
    ) -> futures::future::LocalBoxFuture<'c, Result<(), Failure>> {
        async move {
            let source = export::Source {
                tenant: &self.source.row.tenant,
                labels: &self.source.row.labels,
                migrations: self.migrations,
                allow_drift: false,
                registry_drift: self.source.row.drift.as_deref(),
            };
            let from = &self.source.session.client;
            let exported =
                copy::pipe((from, source, false), (client, tenant.schema()), events).await?;
            let digest = exported.digest();
            *self.exported.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((exported.manifest, digest));
            Ok(())
        }
        .boxed_local()
    }
}

/// `--schema-only`: no rows.
struct NoRows;

impl Load for NoRows {
    fn load<'c>(
        &'c self,
        _: &'c Client,
        _: &'c Tenant,
        _: &'c Events,
    ) -> futures::future::LocalBoxFuture<'c, Result<(), Failure>> {
        async { Ok(()) }.boxed_local()
    }
}

pub async fn clone(ctx: &Ctx, args: CloneArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    let parsed = parse_ids(&ctx.config, &[args.source.clone(), args.new.clone()])?;
    let (source, new) = (&parsed[0], &parsed[1]);
    // The source may be on any configured cluster; the copy goes to the selected one.
    let all = ctx.config.targets(&[])?;
    let found = find(ctx, &all, source).await?;
    require_new(ctx, new).await?;
    let version = found.row.version;
    super::gate(
        &ctx.config,
        &migrations,
        |v| version.is_some_and(|at| v <= at),
        |_| false,
    )?;
    let (rows, no_rows) = (
        CloneLoad {
            source: &found,
            migrations: &migrations,
            exported: std::sync::Mutex::new(None),
        },
        NoRows,
    );
    let load: &dyn Load = if args.schema_only { &no_rows } else { &rows };
    let code = register_one(
        ctx,
        &migrations,
        (&args.new, &args.label),
        (true, version),
        (load, &args.opts),
    )
    .await?;
    let exported = rows
        .exported
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some((manifest, digest)) = exported {
        record_export(ctx, &found.session, source, &manifest, &digest).await?;
    }
    Ok(code)
}
