//! Nothing a migration does to its session reaches the next tenant. A worker connection
//! serves schema after schema; what a migration could leave on it beyond its transaction is
//! refused in the files where it can be seen (`migrations::session`), and here, for what
//! cannot be seen (dynamic SQL, a function that sets things):
//!
//! - every schema's opening resets the session first ([`RESET`], PgBouncer's
//!   `server_reset_query` in the transaction itself: a transaction that rolls back takes the
//!   reset with it, and the next one resets again, so every transaction starts clean, at no
//!   round trip of its own);
//! - the opening records who the transaction runs as and its `search_path` ([`RECORD`]), and
//!   the last message checks them before COMMIT ([`GUARD`]): a migration that leaves another
//!   role or search path (whose objects would belong to another role, or land outside the
//!   tenant) or a prepared statement fails its schema, with what changed;
//! - a no-transaction step is checked and reset the same way after it runs ([`STEP_RESET`]).

/// SQLSTATE of the guard's refusal.
pub const SQLSTATE_SESSION: &str = "TNG01";

/// The session as a connection starts it: statements that run in a transaction block.
/// (`DISCARD ALL` cannot; it is these, less `DISCARD PLANS/SEQUENCES`, which change nothing
/// a migration can see.)
pub const RESET: &str = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; DISCARD TEMP; DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all();";

/// Who the transaction runs as and its search path, for [`GUARD`] (transaction-local).
pub const RECORD: &str = " SELECT set_config('tenantctl.run_as', current_user, true), set_config('tenantctl.search_path', current_setting('search_path'), true);";

/// Before the bookkeeping and COMMIT: the session is as the opening left it.
pub const GUARD: &str = "DO $tenantctl_guard$ DECLARE was_as text := current_setting('tenantctl.run_as', true); \
    was_path text := current_setting('tenantctl.search_path', true); prepared text; BEGIN \
    IF was_as IS NOT NULL AND current_user <> was_as THEN RAISE EXCEPTION USING ERRCODE = 'TNG01', \
        MESSAGE = format('the migration left the session running as role %s (tenantctl runs it as %s): what it created since belongs to %s, and the bookkeeping would run as it', current_user, was_as, current_user), \
        HINT = 'remove the SET ROLE or set_config(''role'', …) (also in dynamic SQL and functions it calls); grant the role tenantctl connects as what the migration needs'; END IF; \
    IF was_path IS NOT NULL AND current_setting('search_path') <> was_path THEN RAISE EXCEPTION USING ERRCODE = 'TNG01', \
        MESSAGE = format('the migration changed search_path to %s (tenantctl set %s): what it created since may be outside the tenant''s schema', current_setting('search_path'), was_path), \
        HINT = 'remove the SET search_path or set_config(''search_path'', …): tenantctl sets it for each schema'; END IF; \
    SELECT string_agg(name, ', ') INTO prepared FROM pg_prepared_statements WHERE from_sql; \
    IF prepared IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = 'TNG01', \
        MESSAGE = format('the migration left prepared statement(s) %s on the session: the next tenant''s run of it would fail with \"already exists\"', prepared), \
        HINT = 'DEALLOCATE it in the migration, or run the statement itself'; END IF; \
    END $tenantctl_guard$; ";

/// After a no-transaction step: the role it ends with (to tell a step that changed it), and
/// the session put back as the step found it (`RESET ALL` alone keeps `role`).
pub const STEP_RESET: &str = "SELECT current_user <> session_user, current_user::text; RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL";
