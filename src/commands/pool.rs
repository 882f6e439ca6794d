//! `tenantctl tenant pool fill|status|drain`: schemas created and migrated ahead of
//! `tenant create`, on every selected cluster.
//!
//! A pooled schema is worked on like a tenant whose id is its schema's name (which holds
//! `__`, so no tenant can have it); its registry is the control schema's `pool` table, not
//! `tenants`. `tenant create` takes one at the latest version (see
//! `Control::claim_or_create_sql`); `migrate --all` and `rollback --all` move the pool along.

use std::collections::BTreeMap;

use serde_json::json;

use crate::cli::{PoolCommand, PoolDrainArgs, PoolFillArgs, PoolStatusArgs};
use crate::config::Target;
use crate::engine::apply::Mode;
use crate::engine::run::{self as engine_run, Planned, RunRequest};
use crate::exit::UsageError;
use crate::migrations::{version_label, MigrationSet};
use crate::report::json::Part;
use crate::report::Tally;
use crate::tenant::Tenant;

use super::clusters::{each, finish, Done};
use super::{load_migrations, run_output, Ctx};

/// The most schemas one pool may hold (as `[tenants] pool`).
const MAX_POOL: usize = 10_000;

pub async fn pool(ctx: &Ctx, command: PoolCommand) -> anyhow::Result<i32> {
    match command {
        PoolCommand::Fill(args) => fill(ctx, args).await,
        PoolCommand::Status(args) => status(ctx, args).await,
        PoolCommand::Drain(args) => drain(ctx, args).await,
    }
}

/// The pool of one cluster as its control schema has it: (schema, version), oldest first.
pub type Pooled = Vec<(Tenant, Option<i32>)>;

/// How many of `pool` are at `latest` (ready to be taken).
fn ready(pool: &Pooled, latest: Option<i32>) -> usize {
    pool.iter().filter(|(_, v)| *v == latest).count()
}

/// The pool's JSON entry for a cluster: `{size, ready, versions: [{version, schemas}]}`.
pub fn pool_json(pool: &Pooled, size: usize, latest: Option<i32>) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = by_version(pool)
        .into_iter()
        .rev()
        .map(|(version, schemas)| json!({ "version": version, "schemas": schemas }))
        .collect();
    json!({
        "size": size,
        "pooled": pool.len(),
        "ready": ready(pool, latest),
        "versions": versions,
    })
}

/// Pooled schemas per version.
fn by_version(pool: &Pooled) -> BTreeMap<Option<i32>, usize> {
    let mut groups = BTreeMap::new();
    for (_, v) in pool {
        *groups.entry(*v).or_insert(0) += 1;
    }
    groups
}

/// One line on the pool: `pool: 25 schema(s), 25 ready at V3 (size 25)`, with the versions
/// of any that are not ready.
pub fn pool_line(pool: &Pooled, size: usize, latest: Option<i32>) -> String {
    let ready = ready(pool, latest);
    let mut line = format!(
        "pool:       {} schema(s), {ready} ready at {} (size {size})",
        pool.len(),
        version_label(latest)
    );
    let behind: Vec<String> = by_version(pool)
        .into_iter()
        .rev()
        .filter(|(v, _)| *v != latest)
        .map(|(v, n)| format!("{n} at {}", version_label(v)))
        .collect();
    if !behind.is_empty() {
        line.push_str(&format!(
            "; not ready: {} (`tenantctl migrate --all` or `tenantctl tenant pool fill` brings them to the latest)",
            behind.join(", ")
        ));
    } else if ready < size {
        line.push_str("; `tenantctl tenant pool fill` tops it up");
    }
    line.push('\n');
    line
}

/// `pool fill`: on each selected cluster, under its fleet lock, brings pooled schemas that
/// are behind to the latest version and creates new ones until `size` are ready. A pool that
/// holds more is left as it is (`pool drain` empties it).
async fn fill(ctx: &Ctx, args: PoolFillArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let size = args.size.unwrap_or(config.tenants.pool);
    if size == 0 {
        return Err(UsageError(
            "the pool's size is 0: set [tenants] pool = N in the config, or pass --size N; nothing was changed".into(),
        )
        .into());
    }
    if size > MAX_POOL {
        return Err(UsageError(format!(
            "--size {size} is out of range; use 1 to {MAX_POOL}; nothing was changed"
        ))
        .into());
    }
    let migrations = load_migrations(config)?;
    super::gate(config, &migrations, |_| true, |_| false)?;
    if migrations.latest().is_none() {
        return Err(UsageError(format!(
            "there are no migrations in {}: a pooled schema would be an empty schema, which `tenant create` makes as fast; nothing was changed",
            migrations.dir.display()
        ))
        .into());
    }
    let (migrations, args) = (&migrations, &args);
    let results = each(&ctx.targets, |t| fill_one(ctx, t, migrations, size, args)).await;
    finish(ctx, results, args.run.json).await
}

async fn fill_one(
    ctx: &Ctx,
    target: &Target,
    migrations: &MigrationSet,
    size: usize,
    args: &PoolFillArgs,
) -> anyhow::Result<Done> {
    let (mut session, env) = ctx.fleet_session(target, false, args.wait).await?;
    crate::engine::files::refuse_unfaithful(&session, migrations).await?;
    let latest = migrations.latest();
    let pool = session.control.pool(&session.client).await?;
    // Behind: migrated forward. Ahead of the files (a rollback of the files, not of the
    // fleet): left alone, not taken by create (which wants the latest), not counted.
    let behind = pool
        .iter()
        .filter(|(_, v)| v.is_none_or(|v| latest.is_some_and(|l| v < l)))
        .count();
    let missing = size.saturating_sub(ready(&pool, latest) + behind);
    let names = session
        .control
        .pool_names(&session.client, &ctx.config.tenants.schema_prefix, missing)
        .await?;
    let mut tenants: Vec<Planned> = pool
        .iter()
        .filter(|(_, v)| *v == latest || v.is_none_or(|v| latest.is_some_and(|l| v < l)))
        .map(|(t, v)| Planned {
            tenant: t.clone(),
            version: *v,
            todo: *v != latest,
        })
        .collect();
    tenants.extend(names.into_iter().map(|name| Planned {
        tenant: Tenant::pooled(name),
        version: None,
        todo: true,
    }));
    let result = engine_run::run(
        &mut session,
        &env,
        pool_request(
            Mode::PoolFill,
            migrations,
            latest,
            tenants,
            args.run.fail_fast,
        ),
    )
    .await?;
    let after = session.control.pool(&session.client).await?;
    let line = pool_line(&after, size, latest);
    let mut done = run_output(&result);
    done.text.push_str(&line);
    Ok(done)
}

/// `pool status`: each cluster's pool, by version.
async fn status(ctx: &Ctx, args: PoolStatusArgs) -> anyhow::Result<i32> {
    let migrations = load_migrations(&ctx.config)?;
    let migrations = &migrations;
    let results = each(&ctx.targets, |t| status_one(ctx, t, migrations)).await;
    finish(ctx, results, args.json).await
}

async fn status_one(ctx: &Ctx, target: &Target, migrations: &MigrationSet) -> anyhow::Result<Done> {
    let session = ctx.session(target, false).await?;
    let pool = match session.control.exists(&session.client).await? {
        true => session.control.pool(&session.client).await?,
        false => Vec::new(),
    };
    let (size, latest) = (ctx.config.tenants.pool, migrations.latest());
    let mut text = pool_line(&pool, size, latest);
    if size == 0 && pool.is_empty() {
        text = "pool:       off ([tenants] pool = 0, and no pooled schemas)\n".into();
    }
    let part = Part::default()
        .top("command", json!("tenant pool status"))
        .top("latest_version", json!(latest))
        .list(
            "schemas",
            pool.iter()
                .map(|(t, v)| json!({ "schema": t.schema(), "version": v, "ready": *v == latest }))
                .collect(),
        )
        .cluster("pool", pool_json(&pool, size, latest));
    let counts = vec![
        (Tally::Pooled, pool.len()),
        (Tally::Ready, ready(&pool, latest)),
    ];
    Ok(Done::new(crate::exit::SUCCESS, text, part).counts(counts))
}

/// `pool drain`: drops every pooled schema, on each selected cluster, under its fleet lock.
/// A schema `tenant create` takes meanwhile is a tenant then, and is left alone.
async fn drain(ctx: &Ctx, args: PoolDrainArgs) -> anyhow::Result<i32> {
    if !args.yes {
        super::confirm(
            "This will DROP every pooled schema (no tenant's data is in them).",
            "drain",
            "drain the pool",
        )?;
    }
    let migrations = load_migrations(&ctx.config)
        .unwrap_or_else(|_| MigrationSet::empty(&ctx.config.migrations.dir));
    let (migrations, args) = (&migrations, &args);
    let results = each(&ctx.targets, |t| async move {
        let (mut session, env) = ctx.fleet_session(t, false, None).await?;
        let tenants = session
            .control
            .pool(&session.client)
            .await?
            .into_iter()
            .map(|(tenant, version)| Planned {
                tenant,
                version,
                todo: true,
            })
            .collect();
        let result = engine_run::run(
            &mut session,
            &env,
            pool_request(
                Mode::PoolDrain,
                migrations,
                None,
                tenants,
                args.run.fail_fast,
            ),
        )
        .await?;
        Ok(run_output(&result))
    })
    .await;
    finish(ctx, results, args.run.json).await
}

/// A run over pooled schemas: no labels, waves, seed or resume.
fn pool_request(
    mode: Mode,
    migrations: &MigrationSet,
    target: Option<i32>,
    tenants: Vec<Planned>,
    fail_fast: bool,
) -> RunRequest<'_> {
    RunRequest {
        mode,
        migrations,
        target,
        scope: "pool".into(),
        tenants,
        refused: Vec::new(),
        labels: Default::default(),
        waves: None,
        seed: None,
        load: None,
        sql: None,
        resume: false,
        fail_fast,
    }
}
