//! The words the control schema stores, as enums: run commands, run states, tenant states and
//! the states of a run's schemas. Each has `as_str()` for what is written and `parse()` for
//! what is read back; every match over them is exhaustive, so a new command or state does not
//! compile until every place handles it.

use std::fmt;

/// Defines a stored enum: `as_str`, `parse`, `ALL`, `Display` and `Serialize` as the stored text.
macro_rules! stored_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text stored in the control schema.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            // Generated for every stored enum; not every enum needs every method.
            #[allow(dead_code)]
            /// The stored text as a SQL literal, for statements that name a state or command
            /// (a constant, not a value: the stored words hold no quotes).
            pub fn literal(self) -> String {
                format!("'{}'", self.as_str())
            }

            #[allow(dead_code)]
            /// The value for stored text; None for text this version does not know.
            pub fn parse(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

stored_enum! {
    /// What a run did (`runs.command`).
    RunCommand {
        TenantCreate => "tenant create",
        TenantAdopt => "tenant adopt",
        Migrate => "migrate",
        Rollback => "rollback",
        TenantDrop => "tenant drop",
        TenantDropArchive => "tenant drop --archive",
        /// The shared migrations' step of a `migrate`, recorded as a run of its own.
        MigrateShared => "migrate (shared)",
        /// The shared migrations' step of a `tenant create`.
        TenantCreateShared => "tenant create (shared)",
        /// `repair --accept`: an edited, already applied file's checksum recorded anew.
        Repair => "repair",
        /// `tenant label`: labels set or removed.
        TenantLabel => "tenant label",
        /// `tenant pool fill`: schemas created and migrated ahead of `tenant create`.
        PoolFill => "tenant pool fill",
        /// `tenant pool drain`: pooled schemas dropped.
        PoolDrain => "tenant pool drain",
        /// `tenant import` (and the target side of `tenant clone`): a tenant created from
        /// an archive's rows.
        TenantImport => "tenant import",
        /// `tenant clone`: a tenant created from another's rows (the source's side is
        /// recorded as an export).
        TenantClone => "tenant clone",
        /// `tenant export` (and the source side of `tenant clone`): who took which tenant's
        /// data, when.
        TenantExport => "tenant export",
        /// `tenant rename`: a tenant's id, schema (and role) renamed.
        TenantRename => "tenant rename",
        /// `tenant move`: a tenant moved to another cluster (recorded on both: the target's
        /// run creates it there, the source's records the cutover).
        TenantMove => "tenant move",
        /// `tenant move --abort`: a move that had not cut over, undone.
        TenantMoveAbort => "tenant move --abort",
        /// `tenant move --cleanup`: the old copies moves left behind, dropped.
        TenantMoveCleanup => "tenant move --cleanup",
        /// `rebalance --apply`: the plan, recorded before its moves run.
        Rebalance => "rebalance",
        /// `tenant tiers apply`: tenant roles brought to their tier's settings (one row per
        /// role changed).
        TenantTiers => "tenant tiers apply",
        /// `exec`: one piece of SQL run in each tenant, exactly once per tenant (the run's
        /// digest is the SQL's).
        Exec => "exec",
        /// `query`: read-only, never recorded (named for its events and its JSON).
        Query => "query",
    }
}

stored_enum! {
    /// Where a run stands (`runs.state`).
    RunState {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Interrupted => "interrupted",
        /// A staged rollout stopped by its own rule (a wave's failures, the between-waves
        /// command): later waves not started; the same command resumes it.
        Halted => "halted",
    }
}

stored_enum! {
    /// A registered tenant's state (`tenants.state`).
    TenantState {
        Active => "active",
        Dropped => "dropped",
        /// Being moved to another cluster (`tenant move`): not migrated here, still served.
        Moving => "moving",
        /// Moved to another cluster: it lives there now (the row keeps the id taken).
        Moved => "moved",
        /// Arriving from another cluster: its schema filled and streaming, not active yet.
        Incoming => "incoming",
    }
}

stored_enum! {
    /// Where a move stands (`moves.phase`), on either side.
    MovePhase {
        /// The publication and slot made, the rows being copied (the target not committed).
        Copying => "copying",
        /// The target committed its copy and its subscription streams the changes.
        Streaming => "streaming",
        /// The source committed the cutover: the tenant lives on the target (whose registry
        /// row is flipped to active right after).
        CutOver => "cut_over",
        /// Flipped, and the replication objects dropped.
        Done => "done",
        /// Undone (`tenant move --abort`, or a failed first copy): nothing moved.
        Aborted => "aborted",
    }
}

stored_enum! {
    /// One schema's state within a run (`run_schemas.state`).
    SchemaState {
        Pending => "pending",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
    }
}

stored_enum! {
    /// What became of one tenant in a run, as reports and `--json` name it. Derived from the
    /// ledger row (see [`SchemaResult::of`]); the ledger's counts use the same rule in SQL.
    SchemaResult {
        /// The command did its work (created, migrated, rolled back, dropped, repaired).
        Done => "done",
        /// Nothing to do: already where asked.
        Unchanged => "unchanged",
        Failed => "failed",
        /// Never started (fail-fast, interrupted, the database went away).
        NotStarted => "not_started",
        /// Dropped by `tenant drop` while the run was going on: not touched.
        DroppedMeanwhile => "dropped_meanwhile",
    }
}

impl SchemaResult {
    /// The result of a ledger row: a fleet command's success that changed nothing (a
    /// re-checked schema) is unchanged.
    pub fn of(command: RunCommand, state: SchemaState, changed: bool) -> SchemaResult {
        match state {
            SchemaState::Succeeded if command.counts_rechecks() && !changed => {
                SchemaResult::Unchanged
            }
            SchemaState::Succeeded => SchemaResult::Done,
            SchemaState::Failed => SchemaResult::Failed,
            SchemaState::Pending => SchemaResult::NotStarted,
            SchemaState::Skipped => SchemaResult::DroppedMeanwhile,
        }
    }
}

impl RunCommand {
    /// A schema this command ran on without changing its version or applying anything is
    /// "unchanged" (a re-check), not "done": fleet commands, except `pool drain` (whose every
    /// schema is dropped, which changes no version on its ledger row).
    pub fn counts_rechecks(self) -> bool {
        self.is_fleet_command() && !matches!(self, RunCommand::PoolDrain | RunCommand::Exec)
    }

    /// Fleet commands (migrate, rollback, repair) work on registered tenants that may already
    /// be where asked: they hold the fleet lock (one of them per control schema at a time),
    /// and a schema they re-check without changing counts as unchanged.
    pub fn is_fleet_command(self) -> bool {
        match self {
            RunCommand::Migrate
            | RunCommand::Rollback
            | RunCommand::Repair
            | RunCommand::PoolFill
            | RunCommand::PoolDrain => true,
            RunCommand::TenantCreate
            | RunCommand::TenantAdopt
            | RunCommand::TenantDrop
            | RunCommand::TenantDropArchive
            | RunCommand::MigrateShared
            | RunCommand::TenantCreateShared
            | RunCommand::TenantLabel
            | RunCommand::TenantImport
            | RunCommand::TenantClone
            | RunCommand::TenantExport
            | RunCommand::TenantRename
            | RunCommand::TenantMove
            | RunCommand::TenantMoveAbort
            | RunCommand::TenantMoveCleanup
            | RunCommand::Rebalance
            | RunCommand::TenantTiers
            | RunCommand::Query => false,
            // Under the fleet lock (the tenants' versions cannot change under it), but each
            // tenant it ran on is done, whatever its version.
            RunCommand::Exec => true,
        }
    }

    /// Whether the command moves tenants to a version (a drop has none to name).
    pub fn has_target(self) -> bool {
        match self {
            RunCommand::TenantDrop
            | RunCommand::TenantDropArchive
            | RunCommand::Repair
            | RunCommand::TenantLabel
            | RunCommand::TenantRename
            | RunCommand::TenantMoveAbort
            | RunCommand::TenantMoveCleanup
            | RunCommand::Rebalance
            | RunCommand::TenantTiers
            | RunCommand::Exec
            | RunCommand::Query
            | RunCommand::PoolDrain => false,
            RunCommand::TenantCreate
            | RunCommand::TenantImport
            | RunCommand::TenantClone
            | RunCommand::TenantExport
            | RunCommand::TenantMove
            | RunCommand::TenantAdopt
            | RunCommand::Migrate
            | RunCommand::Rollback
            | RunCommand::MigrateShared
            | RunCommand::TenantCreateShared
            | RunCommand::PoolFill => true,
        }
    }
}

/// Text read from the control schema that this version of tenantctl does not know.
pub fn unknown(what: &str, text: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the control schema holds {what} {text:?}, which this tenantctl does not know (written by a newer version?); upgrade tenantctl"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_and_matches_the_check_constraints() {
        for c in RunCommand::ALL {
            assert_eq!(RunCommand::parse(c.as_str()), Some(*c));
        }
        let states: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            states,
            ["running", "succeeded", "failed", "interrupted", "halted"]
        );
        let states: Vec<&str> = SchemaState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, ["pending", "succeeded", "failed", "skipped"]);
        assert_eq!(TenantState::parse("dropped"), Some(TenantState::Dropped));
        assert_eq!(RunState::parse("paused"), None);
        assert_eq!(
            serde_json::to_string(&RunCommand::TenantDropArchive).unwrap(),
            "\"tenant drop --archive\""
        );
    }
}
