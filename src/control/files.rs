//! The migration files against what the fleet has seen and applied. `versions` remembers
//! every file a run has seen (a new file below the fleet's version is out of order);
//! `applied` keeps, per version, the checksums the fleet's histories hold and how many
//! schemas hold each, moved in step by every history write in the same transaction (the
//! hot-path SQL below), so that every command can compare every file on disk with what the
//! whole fleet applied in one small query, whatever the fleet's size.
//!
//! `applied` is sharded by the writing backend (`pg_backend_pid() % 16`): concurrent schema
//! transactions then rarely update the same row, so their commits never queue on one hot
//! counter. A version's count is the sum over its shards.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, Control, TenantState};
use crate::tenant::quote_literal;

/// refinery's history table, kept inside each tenant schema (engine::history reads and
/// writes it; the control schema's functions count its rows).
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// Schemas counted per transaction when `applied` is first filled from existing histories
/// (each read takes a lock on the history table and its index until the transaction ends).
const FILL_BATCH: i32 = 200;

/// What the fleet holds that the files on disk do not say, found before any change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCheck {
    /// New files below the fleet's version: (version, name).
    pub late: Vec<(i32, String)>,
    /// Files whose text differs from what schemas applied under their version.
    pub changed: Vec<Changed>,
    /// Versions applied in the fleet, below the newest file, with no file: (version, name
    /// as a run last saw it, schemas holding it).
    pub missing: Vec<(i32, String, i64)>,
}

impl FileCheck {
    pub fn is_clean(&self) -> bool {
        self.late.is_empty() && self.changed.is_empty() && self.missing.is_empty()
    }
}

/// A version the fleet applied in a form other than the file's current text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub version: i32,
    /// Every form the fleet holds: (checksum, schemas holding it), most held first; the
    /// file's current checksum among them when some schemas ran the current text.
    pub forms: Vec<(String, i64)>,
}

impl Changed {
    /// Schemas that applied a text other than `now`.
    pub fn other_than(&self, now: &str) -> i64 {
        self.forms.iter().filter(|f| f.0 != now).map(|f| f.1).sum()
    }
}

impl Control {
    /// DDL of `applied` and its functions (part of the control schema's DDL). A new
    /// `applied` comes with `applied_fill`, the schemas already counted, which
    /// [`Control::fill_applied`] works through and then drops.
    pub(super) fn applied_ddl(&self) -> String {
        let q = &self.q;
        let active = TenantState::Active.literal();
        let applied = quote_literal(&self.table("applied"));
        let version = quote_literal(super::CONTROL_VERSION);
        format!(
            r#"
DO $tenantctl$ BEGIN
    IF to_regclass({applied}) IS NULL THEN
        CREATE TABLE {q}.applied (
            version  integer NOT NULL,
            checksum text NOT NULL,
            shard    smallint NOT NULL,
            tenants  integer NOT NULL,
            PRIMARY KEY (version, checksum, shard)
        );
        CREATE TABLE {q}.applied_fill (schema_name text PRIMARY KEY);
    END IF;
END $tenantctl$;
CREATE OR REPLACE FUNCTION {q}.count_history(p_schema text, p_sign int)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $count$
BEGIN
    -- A schema's history, counted in (p_sign 1) or out (-1) of `applied`.
    IF to_regclass(format('%I.{HISTORY_TABLE}', p_schema)) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'INSERT INTO {q}.applied AS a (version, checksum, shard, tenants) '
        'SELECT version, coalesce(checksum, ''''), (pg_backend_pid() %% 16)::int2, %s * count(*) '
        'FROM %I.{HISTORY_TABLE} GROUP BY version, checksum ORDER BY version, checksum '
        'ON CONFLICT (version, checksum, shard) DO UPDATE SET tenants = a.tenants + EXCLUDED.tenants',
        p_sign, p_schema);
END $count$;
REVOKE ALL ON FUNCTION {q}.count_history(text, int) FROM PUBLIC;
CREATE OR REPLACE FUNCTION {q}.fill_applied(p_batch int)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS $fill$
DECLARE s text;
BEGIN
    -- Counts up to p_batch schemas not yet counted; true once every one is.
    IF to_regclass('{q}.applied_fill') IS NULL THEN
        RETURN true;
    END IF;
    FOR s IN SELECT x.schema_name FROM (
                 SELECT schema_name FROM {q}.tenants WHERE state = {active}
                 UNION SELECT schema_name FROM {q}.pool) x
             WHERE NOT EXISTS (SELECT 1 FROM {q}.applied_fill f WHERE f.schema_name = x.schema_name)
             ORDER BY 1 LIMIT p_batch LOOP
        PERFORM {q}.count_history(s, 1);
        INSERT INTO {q}.applied_fill VALUES (s);
    END LOOP;
    IF FOUND THEN
        RETURN false;
    END IF;
    DROP TABLE {q}.applied_fill;
    COMMENT ON SCHEMA {q} IS {version};
    RETURN true;
END $fill$;
REVOKE ALL ON FUNCTION {q}.fill_applied(int) FROM PUBLIC;
"#
        )
    }

    /// Counts the histories of the schemas that existed before `applied` did, a batch per
    /// transaction under the bootstrap lock (concurrent bootstraps share the work; one that
    /// dies leaves the rest to the next). Returns once every schema is counted.
    pub(super) async fn fill_applied(&self, client: &Client) -> anyhow::Result<()> {
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}, 0); SET LOCAL client_min_messages = warning; \
             SELECT {}.fill_applied({FILL_BATCH}); COMMIT;",
            super::LOCK_NAMESPACE,
            self.q
        );
        loop {
            let replies = client.simple_query(&sql).await.map_err(|e| {
                let _ = futures::FutureExt::now_or_never(client.batch_execute("ROLLBACK"));
                failed(
                    "counting the tenants' applied migrations (control schema upgrade)",
                    &e,
                )
            })?;
            let done = replies.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
            });
            if done {
                return Ok(());
            }
        }
    }

    /// Hot path, in a tenant schema's transaction with its history write: `applied` moves by
    /// the rows of `rows` (SQL yielding `(version int, checksum text, n int)`), after the
    /// common table expressions `with` (empty, or `WITH …` ending in none of them), in
    /// version order (concurrent writers lock rows in the same order: no deadlock).
    pub fn count_applied_sql(&self, with: &str, rows: &str) -> String {
        format!(
            "{with} INSERT INTO {t} AS a (version, checksum, shard, tenants) \
             SELECT v, c, (pg_backend_pid() % 16)::int2, sum(n) FROM ({rows}) d(v, c, n) \
             GROUP BY v, c ORDER BY v, c \
             ON CONFLICT (version, checksum, shard) DO UPDATE SET tenants = a.tenants + EXCLUDED.tenants;",
            t = self.table("applied"),
        )
    }

    /// Hot path: a schema's whole history counted out of `applied` (it is dropped, archived,
    /// or drained from the pool), before it goes.
    pub fn uncount_history_sql(&self, schema: &str) -> String {
        format!(
            "SELECT {}.count_history({}, -1);",
            self.q,
            quote_literal(schema)
        )
    }

    /// The files against the fleet, in one query (see [`FileCheck`]): `files` are (version,
    /// name, checksum) of every file on disk. On a control schema that is not this
    /// version's (read-only commands do not upgrade it), only the out-of-order check.
    pub async fn file_check(
        &self,
        client: &Client,
        files: &[(i32, String, String)],
    ) -> anyhow::Result<FileCheck> {
        let versions: Vec<i32> = files.iter().map(|f| f.0).collect();
        let names: Vec<&str> = files.iter().map(|f| f.1.as_str()).collect();
        let sums: Vec<&str> = files.iter().map(|f| f.2.as_str()).collect();
        let sql = format!(
            "SELECT 'late', v, n, 0::int8 FROM ({late}) l \
             UNION ALL SELECT kind, v, c, n FROM ({held}) h ORDER BY 1, 2, 4 DESC, 3",
            late = self.out_of_order_sql("$1", "$2"),
            held = self.held_sql("$1", "$3"),
        );
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&versions, Type::INT4_ARRAY),
                    (&names, Type::TEXT_ARRAY),
                    (&sums, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(|e| {
                failed(
                    "comparing the migration files with what the fleet applied",
                    &e,
                )
            })?;
        let mut check = FileCheck::default();
        for r in rows {
            let (kind, version, text, n): (String, i32, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            match kind.as_str() {
                "late" => check.late.push((version, text)),
                "missing" => check.missing.push((version, text, n)),
                _ => match check.changed.last_mut() {
                    Some(c) if c.version == version => c.forms.push((text, n)),
                    _ => check.changed.push(Changed {
                        version,
                        forms: vec![(text, n)],
                    }),
                },
            }
        }
        Ok(check)
    }

    /// SQL yielding `(kind, v, c, n)`: for each version whose file (`versions`, `sums`: array
    /// parameters) differs from a checksum the fleet holds, every form held (`changed`, the
    /// checksum and how many schemas hold it); and each version held below the newest file
    /// with no file (`missing`, the name a run last saw, how many hold it).
    fn held_sql(&self, versions: &str, sums: &str) -> String {
        format!(
            "WITH f AS (SELECT * FROM unnest({versions}::int4[], {sums}::text[]) AS f(v, c)), \
                  held AS (SELECT version AS v, checksum AS c, sum(tenants)::int8 AS n FROM {applied} \
                           GROUP BY 1, 2 HAVING sum(tenants) > 0) \
             SELECT 'changed'::text AS kind, h.v, h.c, h.n FROM held h \
             WHERE EXISTS (SELECT 1 FROM held o JOIN f ON f.v = o.v WHERE o.v = h.v AND o.c <> f.c) \
             UNION ALL \
             SELECT 'missing', h.v, coalesce(min(k.name), ''), sum(h.n)::int8 FROM held h \
             LEFT JOIN {known} k ON k.version = h.v \
             WHERE NOT EXISTS (SELECT 1 FROM f WHERE f.v = h.v) AND h.v < (SELECT max(v) FROM f) \
             GROUP BY h.v",
            applied = self.table("applied"),
            known = self.table("versions"),
        )
    }

    /// [`Control::file_check`]'s changed and missing files as one SQL condition: true when
    /// there are none (for a run recorded in the statement that decides it has nothing to do).
    pub(super) fn files_faithful_sql(&self, versions: &str, sums: &str) -> String {
        format!("NOT EXISTS ({})", self.held_sql(versions, sums))
    }

    /// Migration files that are out of order: never part of any earlier run's set, yet below
    /// the highest version a tenant is at, so refinery would never apply them (it applies in
    /// version order) and they would be skipped silently. Empty until a first run has
    /// recorded a set (an upgraded control schema starts from what it sees).
    ///
    /// The fleet's highest version (a scan of the registry) is only read when a file is new:
    /// the usual case, every file known, costs two index probes whatever the fleet's size.
    pub(super) fn out_of_order_sql(&self, versions: &str, names: &str) -> String {
        format!(
            "WITH unknown AS MATERIALIZED ( \
                 SELECT f.v, f.n FROM unnest({versions}::int4[], {names}::text[]) AS f(v, n) \
                 WHERE EXISTS (SELECT 1 FROM {known}) \
                   AND NOT EXISTS (SELECT 1 FROM {known} k WHERE k.version = f.v)) \
             SELECT v, n FROM unknown \
             WHERE v < (SELECT max(version) FROM {tenants} WHERE state = {active})",
            known = self.table("versions"),
            tenants = self.table("tenants"),
            active = TenantState::Active.literal(),
        )
    }
}
