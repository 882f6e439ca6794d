//! migrate and rollback over the fleet: the request from the arguments, the run across the
//! clusters (`engine::across`), and each cluster's outcome as text and JSON.

use serde_json::json;

use crate::cli::FleetOpts;
use crate::control::RunCommand;
use crate::engine::across::{self, ClusterOutcome, FleetRequest, SharedStep, Work};
use crate::engine::plan::Direction;
use crate::engine::waves::WaveSpec;
use crate::exit;
use crate::migrations::{version_label, MigrationSet};
use crate::report::summary::no_run_part;

use super::clusters::{finish, Done};
use super::migrate::{plan_output, Sides};
use super::{parse_ids, run_output, Ctx};

/// migrate and rollback: everything after the command-specific checks.
pub async fn fleet_command(
    ctx: &Ctx,
    migrations: &MigrationSet,
    direction: Direction,
    tenant_ids: Option<&[String]>,
    opts: FleetOpts,
    sides: Sides<'_>,
) -> anyhow::Result<i32> {
    let ids = tenant_ids
        .map(|ids| parse_ids(&ctx.config, ids))
        .transpose()?
        .map(|ts| ts.iter().map(|t| t.id().to_string()).collect());
    let req = FleetRequest {
        migrations,
        direction,
        shared: sides.shared,
        tenants: sides.tenants,
        ids,
        select: super::selector(opts.select.as_deref())?,
        waves: WaveSpec::parse(&opts.waves.ask())?,
        failed: opts.failed,
        dry_run: opts.dry_run,
        wait: opts.wait,
        fresh: opts.fresh,
        fail_fast: opts.run.fail_fast,
    };
    let outcomes = across::run(ctx, req).await?;
    let results = outcomes
        .into_iter()
        .map(|(t, o)| (t, o.map(|o| render(ctx, direction, opts.dry_run, o))))
        .collect();
    finish(ctx, results, opts.run.json).await
}

/// One cluster's outcome: the shared set's line first, then the plan or the run.
fn render(ctx: &Ctx, direction: Direction, dry_run: bool, outcome: ClusterOutcome) -> Done {
    let schema = &ctx.config.migrations.shared_schema;
    let (command, target) = match direction {
        Direction::Forward { target } => (RunCommand::Migrate, target),
        Direction::Backward { to } => (RunCommand::Rollback, Some(to)),
    };
    let done = match outcome.work {
        Work::Plan(p) => {
            let labels = p.labels.iter().map(|(k, v)| (k.as_str(), v)).collect();
            plan_output(
                command,
                direction,
                target,
                p.tenants,
                &p.steps,
                &labels,
                p.waves.as_deref().map(Vec::as_slice),
            )
        }
        Work::Ran(result) => run_output(&result),
        // --shared-only: the same document, with no tenants.
        Work::None => {
            let part = no_run_part(command, target).top("dry_run", json!(dry_run));
            Done::new(exit::SUCCESS, String::new(), part)
        }
    };
    let (line, value) = match outcome.shared {
        None => (String::new(), serde_json::Value::Null),
        Some(SharedStep::Planned { at, pending }) => (
            format!(
                "shared: schema {schema} at {}, {pending} shared migration(s) would apply\n",
                version_label(at)
            ),
            json!({ "schema": schema, "version_before": at, "version": at, "applied": 0, "pending": pending, "failure": null }),
        ),
        Some(SharedStep::Applied {
            before,
            after,
            count,
        }) => (
            if count == 0 {
                format!(
                    "shared: schema {schema} up to date at {}\n",
                    version_label(after)
                )
            } else {
                format!(
                    "shared: schema {schema} {} -> {}: {count} shared migration(s) applied\n",
                    version_label(before),
                    version_label(after),
                )
            },
            json!({ "schema": schema, "version_before": before, "version": after, "applied": count, "pending": 0, "failure": null }),
        ),
        Some(SharedStep::Failed {
            failure: f,
            pending,
        }) => {
            let text = format!(
                "shared migrations in schema {schema} failed: {f}. This cluster's tenants were not started (their migrations may need the shared tables); fix the shared migration and re-run\n"
            );
            let part = no_run_part(RunCommand::Migrate, target).cluster(
                "shared",
                json!({ "schema": schema, "version_before": f.still_at, "version": f.still_at, "applied": 0,
                        "pending": pending, "failure": f.row() }),
            );
            let mut done = Done::new(exit::FAILED, text, part);
            done.down = true;
            return done;
        }
    };
    done.prepend(&line, "shared", value)
}
