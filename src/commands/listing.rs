//! A listing of tenants (`status --json`, `tenant list`), read as a stream twice in one
//! snapshot: the command's first pass measures what it says about the listing (the summary,
//! counts, column widths) and [`super::clusters::finish`]'s second prints it row by row. No
//! pass holds the rows, so the memory stays flat at any fleet size, and both passes see the
//! same registry (a `REPEATABLE READ` read-only transaction), so the counts printed agree
//! with the rows printed while tenants are created or dropped meanwhile.

use futures::StreamExt as _;
use serde_json::Value;
use tokio_postgres::Client;

use crate::control::{Control, TenantRow};
use crate::db::Session;

/// How the second pass prints each row.
pub enum Render {
    /// As an object of the document's list `key` (see `report::json::framed`).
    Json(&'static str, Box<dyn Fn(&TenantRow) -> Value>),
    /// As a line of text (with its newline).
    Lines(Box<dyn Fn(&TenantRow) -> String>),
}

pub struct Listing {
    client: Client,
    control: Control,
    /// The control schema exists: without it, nothing is registered.
    exists: bool,
    ids: Option<Vec<String>>,
    failed_only: bool,
    keep: Box<dyn Fn(&TenantRow) -> bool>,
    render: Option<Render>,
}

impl Listing {
    /// The registry's rows (the given ids, or all; with `failed_only`, those whose last change
    /// failed) that `keep` keeps, in a snapshot taken now. Takes the session's connection.
    /// `exists`: the control schema is there (the caller has asked already).
    pub async fn open(
        (session, exists): (Session<'_>, bool),
        ids: Option<&[String]>,
        failed_only: bool,
        keep: impl Fn(&TenantRow) -> bool + 'static,
    ) -> anyhow::Result<Listing> {
        let Session {
            client, control, ..
        } = session;
        client
            .batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| anyhow::anyhow!("starting the snapshot the listing reads: {e}"))?;
        Ok(Listing {
            client,
            control,
            exists,
            ids: ids.map(<[String]>::to_vec),
            failed_only,
            keep: Box::new(keep),
            render: None,
        })
    }

    /// The connection, inside the listing's snapshot (for reads that go with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One pass over the rows, in id order; `f` returns false to stop early (a closed pipe).
    pub async fn each(&self, mut f: impl FnMut(&TenantRow) -> bool) -> anyhow::Result<()> {
        if !self.exists {
            return Ok(());
        }
        let rows = self
            .control
            .tenant_stream(&self.client, self.ids.as_deref(), self.failed_only)
            .await?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row?;
            if (self.keep)(&row) && !f(&row) {
                break;
            }
        }
        Ok(())
    }

    /// How the second pass prints the rows.
    pub fn render(mut self, render: Render) -> Listing {
        self.render = Some(render);
        self
    }

    /// The document's list this listing fills, when it prints JSON.
    pub fn json_key(&self) -> Option<&'static str> {
        match &self.render {
            Some(Render::Json(key, _)) => Some(key),
            _ => None,
        }
    }

    /// A row as printed: its object, or its line.
    pub fn json(&self, row: &TenantRow) -> Value {
        match &self.render {
            Some(Render::Json(_, f)) => f(row),
            _ => Value::Null,
        }
    }

    pub fn line(&self, row: &TenantRow) -> String {
        match &self.render {
            Some(Render::Lines(f)) => f(row),
            _ => String::new(),
        }
    }
}
