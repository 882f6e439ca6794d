//! `tenant rename OLD NEW`: the tenant's id, its schema and its role renamed, and the
//! registry and the audit trail written, in one transaction under [run] lock_timeout.

use serde_json::json;

use crate::cli::RenameArgs;
use crate::control::{schema_lock_sql, RunCommand};
use crate::engine::apply::spells_its_name_sql;
use crate::exit::UsageError;
use crate::report::json::Part;
use crate::tenant::{quote_ident, quote_literal, role_name};

use super::clusters::{finish, Done};
use super::observed::OneShot;
use super::tenant_data::{find, record_one, require_new};
use super::{parse_ids, Ctx};
use crate::engine::failure::Failure;

/// SQLSTATE of [`spells_its_name_sql`].
const SPELLS_ITS_NAME: &str = "TNF04";

pub async fn rename(ctx: &Ctx, args: RenameArgs) -> anyhow::Result<i32> {
    let config = &ctx.config;
    let parsed = parse_ids(config, &[args.old.clone(), args.new.clone()])?;
    let (old, new) = (&parsed[0], &parsed[1]);
    let all = config.targets(&[])?;
    let found = find(ctx, &all, old).await?;
    require_new(ctx, new).await?;
    let roles = config
        .tenants
        .role_template
        .as_deref()
        .map(|t| (role_name(t, old), role_name(t, new)));
    // A view's text spells a schema only where it is not on search_path: on it, as a
    // migration made it, what the check finds is what the view's author wrote.
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {}; {}; {}; SET LOCAL search_path TO {};",
        config.run.lock_timeout.as_millis(),
        schema_lock_sql(old.schema()),
        schema_lock_sql(new.schema()),
        quote_ident(old.schema()),
    );
    sql.push_str(&spells_its_name_sql(
        old.schema(),
        "objects of the schema spell its name (%), and would still point at the old name after the rename: write them without the schema name (no SET search_path FROM CURRENT, no schema-qualified names in function bodies or views), then rename; nothing was changed",
    ));
    sql.push_str(&format!(
        " ALTER SCHEMA {} RENAME TO {};",
        quote_ident(old.schema()),
        quote_ident(new.schema())
    ));
    if let Some((was, will)) = &roles {
        sql.push_str(&format!(
            " DO $tenantctl$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN \
                 ALTER ROLE {} RENAME TO {}; END IF; END $tenantctl$;",
            quote_literal(was),
            quote_ident(was),
            quote_ident(will)
        ));
    }
    let session = &found.session;
    sql.push_str(&session.control.rename_sql(
        old,
        new,
        roles.as_ref().map(|(_, will)| will.as_str()),
    ));
    let scope = crate::digest::fnv1a_hex(format!("{}>{}", old.id(), new.id()).into_bytes());
    let client = &session.client;
    let version = found.row.version;
    let done = async {
        client.batch_execute(&sql).await?;
        let what = (RunCommand::TenantRename, new);
        let run_id = record_one(ctx, session, what, version, ("-", &scope)).await?;
        client.batch_execute("COMMIT").await?;
        anyhow::Ok(run_id)
    }
    .await;
    let cluster = &found.target.name;
    let what = |run_id| (RunCommand::TenantRename, run_id, version);
    let one_old = std::slice::from_ref(old);
    let run_id = match done {
        Ok(run_id) => run_id,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            let mut failure = Failure::from_error(&e, version);
            let err = not_renamed(old, e);
            failure.message = format!("{err:#}");
            let code = crate::exit::Kind::of(&err).code();
            OneShot::start(ctx, cluster, what(0), 1, one_old).failed_with(one_old, &failure, code);
            return Err(err);
        }
    };
    OneShot::done(ctx, cluster, what(run_id), new);
    let mut text = format!(
        "renamed tenant {} to {} (schema {} -> {}",
        old.id(),
        new.id(),
        old.schema(),
        new.schema()
    );
    if let Some((was, will)) = &roles {
        text.push_str(&format!(", role {was} -> {will}"));
    }
    text.push_str(")\n");
    let part = Part::default().top("command", json!("tenant rename")).top(
        "tenant",
        json!({"id": new.id(), "schema": new.schema(), "was": old.id(), "was_schema": old.schema(),
                   "role": roles.as_ref().map(|(_, w)| w)}),
    );
    let done = Done::new(crate::exit::SUCCESS, text, part);
    finish(ctx, vec![(found.target.clone(), Ok(done))], args.opts.json).await
}

/// Why the rename failed, said for the operator (nothing was changed).
fn not_renamed(old: &crate::tenant::Tenant, e: anyhow::Error) -> anyhow::Error {
    let pg = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|p| p.as_db_error());
    match pg {
        Some(db) if db.code().code() == SPELLS_ITS_NAME => {
            UsageError(format!("tenant {} not renamed: {}", old.id(), db.message())).into()
        }
        Some(db) => anyhow::anyhow!(
            "tenant {} not renamed (nothing was changed): {}",
            old.id(),
            db.message()
        ),
        None => e.context(format!("tenant {} not renamed", old.id())),
    }
}
