//! `tenantctl tenant …`: the subcommands that work on tenants, their doc comments being
//! their `--help`.

use clap::Subcommand;

use super::*;

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create tenants: for each id, create its schema, apply every migration, register it.
    ///
    /// Each tenant is created in one transaction, so a failure or crash never leaves a
    /// half-made tenant. Many ids are created in parallel, at most --jobs at once.
    ///
    /// Tenant ids: lowercase letters, digits and underscores, starting with a letter; the
    /// schema name (prefix + id) must fit in 63 bytes.
    ///
    /// With several clusters, ids are unique across all of them (every cluster is asked
    /// first) and each new tenant goes to the selected cluster with the fewest tenants, or to
    /// the one named with --cluster. Pending shared migrations of that cluster apply first.
    ///
    /// Examples:
    ///   tenantctl tenant create acme
    ///   tenantctl tenant create bigco --cluster bigco
    ///   tenantctl tenant create acme globex initech --if-not-exists
    ///   tenantctl tenant create --from-file new-tenants.txt
    ///   cat ids.txt | tenantctl tenant create --from-file -
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),

    /// Register existing schemas (made by another tool) as tenants.
    ///
    /// For each id, checks that its schema exists, registers it, and records the migrations up
    /// to --baseline as applied without running them. Later migrations then apply normally.
    ///
    /// Example:
    ///   tenantctl tenant adopt acme globex --baseline 5 && tenantctl migrate --all
    #[command(verbatim_doc_comment)]
    Adopt(AdoptArgs),

    /// Write a tenant's rows to an archive file: one consistent snapshot, compressed.
    ///
    /// Reads the tenant in one REPEATABLE READ, READ ONLY transaction (the application
    /// keeps writing meanwhile) and streams each table's rows with COPY into one archive:
    /// a manifest (id, labels, version, the history's checksums, per-table row counts and
    /// SHA-256), then the rows, zstd-compressed and checksummed per chunk. The schema itself
    /// is not in it: the migration files at the tenant's version are (tenant import rebuilds
    /// it from them). Recorded in the audit trail.
    ///
    /// Examples:
    ///   tenantctl tenant export acme
    ///   tenantctl tenant export acme --output /backups/acme.tenantctl
    ///   tenantctl tenant export acme --output - | ssh backup 'cat > acme.tenantctl'
    #[command(verbatim_doc_comment)]
    Export(ExportArgs),

    /// Create a tenant from an archive, under any id, on any cluster.
    ///
    /// Checks the whole archive first (every chunk, count and checksum, the history against
    /// the files on disk), then, in one transaction: creates the schema at the archive's
    /// version with the migration files, loads the rows (foreign keys checked after the
    /// load, user triggers off during it), sets every sequence, refreshes materialized
    /// views, checks counts and checksums, creates the role (roles on) and registers the
    /// tenant. A failed import leaves nothing.
    ///
    /// Examples:
    ///   tenantctl tenant import acme_restored --input acme.tenantctl
    ///   tenantctl tenant import acme --input acme.tenantctl --cluster eu --migrate
    ///   tenantctl tenant import acme --input acme.tenantctl --dry-run
    #[command(verbatim_doc_comment)]
    Import(ImportArgs),

    /// Copy a tenant, rows and all, to a new id: export piped into import, no file.
    ///
    /// The source is read in one snapshot while the new tenant is created and loaded in
    /// one transaction, on the source's cluster or the one named with --cluster.
    ///
    /// Examples:
    ///   tenantctl tenant clone acme acme_staging
    ///   tenantctl tenant clone acme acme_demo --schema-only
    ///   tenantctl tenant clone acme acme_eu --cluster eu
    #[command(verbatim_doc_comment)]
    Clone(CloneArgs),

    /// Rename a tenant: its id, its schema (ALTER SCHEMA … RENAME) and its role.
    ///
    /// One transaction under [run] lock_timeout. Refused when a function body, a view or a
    /// function's search_path spells the old schema name (they would not follow the rename).
    ///
    /// Example:
    ///   tenantctl tenant rename acme acme_corp
    #[command(verbatim_doc_comment)]
    Rename(RenameArgs),

    /// Move a tenant to another cluster, online: seconds of write pause, nothing lost.
    ///
    /// Online (the default): the tenant's schema is made on the target at its version by the
    /// migration files; its rows are copied from a snapshot aligned with a logical
    /// replication slot, and a subscription streams what the application writes meanwhile
    /// (it keeps reading and writing the source). At the cutover the source's tables are held
    /// against writes (reads go on) until the target has applied everything (at most
    /// --max-pause, else it lets go and tries again), sequences are copied, counts compared,
    /// the source schema is renamed to <schema>__moved_<UTC> (a write still sent there fails)
    /// and the tenant is marked moved, in one transaction; then the target's copy becomes
    /// the tenant. Never active on both clusters; never migrated while moving.
    ///
    /// --offline: writes held on the source for the whole copy; no replication needed.
    /// Killed anywhere, the same command resumes or finishes the move; --abort undoes one
    /// that has not cut over. The old copy is kept until --cleanup (see --keep-source).
    ///
    /// Examples:
    ///   tenantctl tenant move acme --to dedicated
    ///   tenantctl tenant move acme --to eu --max-pause 1s --on-cutover './route acme eu'
    ///   tenantctl tenant move acme --to eu --offline
    ///   tenantctl tenant move acme --abort
    ///   tenantctl tenant move --cleanup --yes
    #[command(verbatim_doc_comment)]
    Move(MoveArgs),

    /// Tenant sizes and activity: tables, indexes, TOAST, rows, writes, scans.
    ///
    /// One catalog query per cluster. Rows are the planner's estimates; writes and scans
    /// count since the server's statistics were last reset. Per cluster, the sums.
    ///
    /// Examples:
    ///   tenantctl tenant stats
    ///   tenantctl tenant stats --sort writes --select 'tier=enterprise' --json
    #[command(verbatim_doc_comment)]
    Stats(StatsArgs),

    /// List registered tenants, with their labels.
    ///
    /// Examples:
    ///   tenantctl tenant list
    ///   tenantctl tenant list --select 'tier=enterprise,region in (eu,uk)' --json
    #[command(verbatim_doc_comment)]
    List(ListArgs),

    /// Keep schemas created and migrated ahead of `tenant create` ([tenants] pool = N).
    ///
    /// A pooled schema is made and migrated under a reserved name (<prefix>pool__<n>, which no
    /// tenant id can take); `tenant create` takes one at the latest version in its own
    /// transaction (renamed to the tenant's schema, role, seed and registration included), so
    /// creation costs a rename instead of every migration. migrate --all and rollback --all
    /// move the pool along with the tenants.
    ///
    /// Examples:
    ///   tenantctl tenant pool fill            (to [tenants] pool)
    ///   tenantctl tenant pool fill --size 50
    ///   tenantctl tenant pool status
    ///   tenantctl tenant pool drain --yes
    #[command(subcommand, verbatim_doc_comment)]
    Pool(PoolCommand),

    /// Per-tier limits on tenant roles: [tiers.<name>] picks tenants by label and sets
    /// their role's statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
    /// work_mem, temp_file_limit and CONNECTION LIMIT.
    ///
    /// The limits hold for sessions that log in as the tenant's role (tiers make the
    /// roles LOGIN; `SET ROLE` skips them): see docs/tiers.md. `tenant create` and
    /// `tenant label` apply a tenant's tier; `apply` brings every role to its tier and
    /// says what it changed; `status` shows each tier's tenants and the roles that differ.
    ///
    /// Examples:
    ///   tenantctl tenant tiers status
    ///   tenantctl tenant tiers apply --dry-run
    ///   tenantctl tenant tiers apply --json
    #[command(subcommand, verbatim_doc_comment)]
    Tiers(TiersCommand),

    /// Set and remove tenants' labels: `key=value` sets, `key-` removes (as kubectl does).
    ///
    /// Labels (lowercase letters, digits, `_ - .`, at most 63 characters) select tenants for
    /// migrate, rollback, status, tenant list and tenant drop (--select), and pick a canary.
    /// Recorded in the audit trail.
    ///
    /// Examples:
    ///   tenantctl tenant label acme globex tier=enterprise region=eu
    ///   tenantctl tenant label acme canary=true
    ///   tenantctl tenant label acme canary-
    #[command(verbatim_doc_comment)]
    Label(LabelArgs),

    /// Drop tenants: their schema (and role) go, the registry marks them dropped.
    ///
    /// Needs --yes, or the confirmation typed on a terminal. --archive renames the schema out
    /// of the way (<schema>__arch_<UTC timestamp>) instead of DROP SCHEMA ... CASCADE, so
    /// the data can still be recovered. Recorded in the audit trail.
    ///
    /// Examples:
    ///   tenantctl tenant drop acme --archive --yes
    ///   tenantctl tenant drop trial_42 trial_43 --yes
    #[command(verbatim_doc_comment)]
    Drop(DropArgs),
}
