//! What a fleet command does when it meets a move: a tenant being moved is left alone (with
//! a word saying why), and a tenant whose source has cut over but whose target was never
//! flipped to active (the process died between the two commits) is flipped here, so that
//! a moved tenant is never left out of a `migrate --all`.

use crate::config::Config;
use crate::control::TenantState;
use crate::db::Session;

/// On `session`'s cluster: flips (with `flip`; a dry run only says so) the incoming tenants
/// whose source has cut over, and returns a line for each tenant still in motion (not worked
/// on by this command).
pub async fn settle(
    config: &Config,
    session: &Session<'_>,
    flip: bool,
) -> anyhow::Result<Vec<String>> {
    let (control, client) = (&session.control, &session.client);
    if !control.exists(client).await? || !control.is_current(client).await? {
        return Ok(Vec::new());
    }
    let moving = control.in_motion(client).await?;
    if moving.is_empty() {
        return Ok(Vec::new());
    }
    let mut notes = Vec::new();
    let arriving = control.open_moves(client, true, None).await?;
    for (id, state) in moving {
        let peer = arriving
            .iter()
            .find(|m| m.tenant_id == id)
            .map(|m| m.peer.clone());
        match (state, peer) {
            (TenantState::Incoming, Some(peer)) => {
                let Ok(cut) = source_cut_over(config, &peer, &id).await else {
                    notes.push(format!(
                        "tenant {id} is arriving from {peer}, which could not be asked whether its move cut over: not worked on here"
                    ));
                    continue;
                };
                if cut && !flip {
                    notes.push(format!(
                        "tenant {id}: its move from {peer} cut over but was not finished; the same command without --dry-run (or `tenant move {id} --to {}`) makes it active here",
                        session.target.name
                    ));
                } else if cut {
                    control.flip_incoming(client, &id).await?;
                    notes.push(format!(
                        "tenant {id}: its move from {peer} had cut over but was not finished; it is active here now (`tenant move {id} --to {}` drops the replication objects it left)",
                        session.target.name
                    ));
                } else {
                    notes.push(format!(
                        "tenant {id} is arriving from {peer} (a move in progress): not worked on here until it has moved"
                    ));
                }
            }
            (TenantState::Moving, _) => {
                let to = control
                    .open_moves(client, false, Some(&id))
                    .await?
                    .pop()
                    .map_or("another cluster".to_string(), |m| m.peer);
                notes.push(format!(
                    "tenant {id} is being moved to {to}: not worked on here; once moved, the same command works on it there"
                ));
            }
            (state, _) => notes.push(format!(
                "tenant {id} is {state} with no move recorded: `tenant move {id} --abort` clears it"
            )),
        }
    }
    Ok(notes)
}

/// Whether the source cluster `peer` has the tenant marked moved (its cutover committed).
async fn source_cut_over(config: &Config, peer: &str, id: &str) -> anyhow::Result<bool> {
    let Ok(targets) = config.targets(&[peer.to_string()]) else {
        return Ok(false);
    };
    let Some(target) = targets.first() else {
        return Ok(false);
    };
    let session = Session::connect(target, &config.control_schema).await?;
    let rows = session
        .control
        .tenants(&session.client, Some(&[id.to_string()]))
        .await?;
    Ok(rows.iter().any(|r| r.state == TenantState::Moved))
}
