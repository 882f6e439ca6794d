//! `status`'s word on moves: the moves going on (out of and into this cluster), the old
//! copies moves left here, and replication objects named like a move's that no move owns
//! (a leaked slot keeps WAL until the disk is full: status fails while one is there).

use serde_json::json;

use crate::control::{MoveRow, OldCopy};
use crate::db::Session;
use crate::engine::mover::link::{self, Leftovers};
use crate::report::json::Part;

/// What one cluster shows of moves.
#[derive(Default)]
pub(super) struct Moves {
    out: Vec<MoveRow>,
    inn: Vec<MoveRow>,
    copies: Vec<OldCopy>,
    stray: Leftovers,
}

/// Reads it (nothing on a control schema older than moves).
pub(super) async fn read(session: &Session<'_>, exists: bool) -> anyhow::Result<Moves> {
    let (control, client) = (&session.control, &session.client);
    if !exists || !control.is_current(client).await? {
        return Ok(Moves::default());
    }
    let (out, inn, copies, found) = futures::try_join!(
        control.open_moves(client, false, None),
        control.open_moves(client, true, None),
        control.old_copies(client),
        link::find(client)
    )?;
    let mut stray = found;
    let open: std::collections::HashSet<&str> =
        out.iter().chain(&inn).map(|m| m.link.as_str()).collect();
    for list in [
        &mut stray.slots,
        &mut stray.publications,
        &mut stray.subscriptions,
    ] {
        list.retain(|n| !open.contains(n.as_str()));
    }
    Ok(Moves {
        out,
        inn,
        copies,
        stray,
    })
}

impl Moves {
    /// For doctor: old copies that are due to be dropped, and the stray replication objects.
    pub fn leftovers(&self) -> (usize, Vec<String>) {
        (
            self.copies.iter().filter(|c| c.due).count(),
            self.stray.names().into_iter().map(str::to_string).collect(),
        )
    }

    /// Whether a leftover was found (status exits 1).
    pub fn leaked(&self) -> bool {
        !self.stray.is_empty()
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        let mut label = "moves:";
        for m in &self.out {
            t.push_str(&format!(
                "{label:<11} {} -> {} ({}, {} since {}, by {}){}\n",
                m.tenant_id,
                m.peer,
                if m.online { "online" } else { "offline" },
                m.phase,
                m.started_at,
                m.actor,
                match m.phase {
                    crate::control::MovePhase::CutOver => format!(
                        ": cut over, not finished: `tenant move {} --to {}` finishes it",
                        m.tenant_id, m.peer
                    ),
                    _ => String::new(),
                }
            ));
            label = "";
        }
        for m in &self.inn {
            t.push_str(&format!(
                "{label:<11} {} <- {} (incoming, {} since {})\n",
                m.tenant_id, m.peer, m.phase, m.started_at
            ));
            label = "";
        }
        let mut label = "old copies:";
        for c in &self.copies {
            let kept = match &c.keep_until {
                Some(until) if c.due => {
                    format!("kept until {until}: due, `tenant move --cleanup` drops it")
                }
                Some(until) => format!("kept until {until}"),
                None => format!("kept until `tenant move --cleanup {}`", c.tenant),
            };
            t.push_str(&format!(
                "{label:<11} {} (tenant {}, moved to {} at {}; {kept})\n",
                c.schema, c.tenant, c.moved_to, c.cut_at
            ));
            label = "";
        }
        if !self.stray.is_empty() {
            let names: Vec<&str> = self.stray.names().into_iter().collect();
            t.push_str(&format!(
                "\nLEFTOVER REPLICATION OBJECTS of no move in progress: {}; a slot keeps WAL on the server until it is dropped: `tenantctl tenant move --cleanup` drops them\n",
                names.join(", ")
            ));
        }
        if !t.is_empty() && !t.starts_with('\n') {
            t.insert(0, '\n');
        }
        t
    }

    pub fn part(&self, part: Part) -> Part {
        let row = |m: &MoveRow, direction: &str| {
            json!({
                "tenant": m.tenant_id, "direction": direction, "peer": m.peer, "phase": m.phase,
                "online": m.online, "started_at": m.started_at, "actor": m.actor,
            })
        };
        part.list(
            "moves",
            self.out
                .iter()
                .map(|m| row(m, "out"))
                .chain(self.inn.iter().map(|m| row(m, "in")))
                .collect(),
        )
        .list(
            "old_copies",
            self.copies
                .iter()
                .map(|c| serde_json::to_value(c).expect("plain data"))
                .collect(),
        )
        .list(
            "leftovers",
            self.stray
                .slots
                .iter()
                .map(|n| json!({"kind": "slot", "name": n}))
                .chain(
                    self.stray
                        .publications
                        .iter()
                        .map(|n| json!({"kind": "publication", "name": n})),
                )
                .chain(
                    self.stray
                        .subscriptions
                        .iter()
                        .map(|n| json!({"kind": "subscription", "name": n})),
                )
                .collect(),
        )
    }
}
