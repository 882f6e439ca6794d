//! The fleet's tenants summarised by version: what plain `status` prints, computed by the
//! server, or built one row at a time from a listing read as a stream.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{failed, Control, TenantRow, TenantState};

/// The fleet's active tenants summarised: what plain `status` prints, computed by the server
/// so that it costs the same at 50,000 tenants as at 1,000.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Tenants per version (None = nothing applied), highest first.
    pub by_version: Vec<(Option<i32>, usize)>,
    /// The first tenants (by id) not at the given version, with their version.
    pub behind: Vec<(String, Option<i32>)>,
    /// Per drift problem: how many tenants, and the first of them (by id).
    pub drifted: Vec<(String, usize, Vec<String>)>,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.by_version.iter().map(|(_, n)| n).sum()
    }

    pub fn at(&self, version: Option<i32>) -> usize {
        self.by_version
            .iter()
            .find(|(v, _)| *v == version)
            .map_or(0, |(_, n)| *n)
    }

    pub fn drifted_count(&self) -> usize {
        self.drifted.iter().map(|(_, n, _)| n).sum()
    }
}

/// A [`Summary`] built one row at a time (ordered by id), so that a listing read as a
/// stream is summarised without being held.
pub struct Summing {
    latest: Option<i32>,
    listed: usize,
    by_version: BTreeMap<Reverse<Option<i32>>, usize>,
    behind: Vec<(String, Option<i32>)>,
    drifted: BTreeMap<String, (usize, Vec<String>)>,
}

impl Summing {
    pub fn new(latest: Option<i32>, listed: usize) -> Summing {
        Summing {
            latest,
            listed,
            by_version: BTreeMap::new(),
            behind: Vec::new(),
            drifted: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, r: &TenantRow) {
        *self.by_version.entry(Reverse(r.version)).or_insert(0) += 1;
        if r.version != self.latest && self.behind.len() < self.listed {
            self.behind.push((r.tenant.id().to_string(), r.version));
        }
        if let Some(d) = &r.drift {
            let e = self.drifted.entry(d.clone()).or_default();
            e.0 += 1;
            if e.1.len() < self.listed {
                e.1.push(r.tenant.id().to_string());
            }
        }
    }

    pub fn done(self) -> Summary {
        Summary {
            by_version: self.by_version.into_iter().map(|(v, n)| (v.0, n)).collect(),
            behind: self.behind,
            drifted: self
                .drifted
                .into_iter()
                .map(|(d, (n, ids))| (d, n, ids))
                .collect(),
        }
    }
}

impl Control {
    /// The active tenants summarised by the server: counts per version and drift problems
    /// in one pass over the registry, then (only when some are) the first `listed` not at
    /// `latest`, by id through the primary key (it stops at the `listed`th).
    pub async fn summary(
        &self,
        client: &Client,
        latest: Option<i32>,
        listed: usize,
    ) -> anyhow::Result<Summary> {
        let t = self.table("tenants");
        let active = TenantState::Active.literal();
        let sql = format!(
            "SELECT version, drift, count(*)::int8, \
                    (array_agg(id ORDER BY id) FILTER (WHERE drift IS NOT NULL))[1:$1] \
             FROM {t} WHERE state = {active} GROUP BY version, drift"
        );
        let listed_sql = listed as i64;
        let rows = client
            .query_typed(&sql, &[(&listed_sql, Type::INT8)])
            .await
            .map_err(|e| failed("summarising the tenant registry", &e))?;
        let mut by_version = BTreeMap::<Reverse<Option<i32>>, usize>::new();
        let mut drifted = BTreeMap::<String, (usize, Vec<String>)>::new();
        for r in &rows {
            let version: Option<i32> = r.get(0);
            let n = r.get::<_, i64>(2) as usize;
            *by_version.entry(Reverse(version)).or_insert(0) += n;
            if let Some(d) = r.get::<_, Option<String>>(1) {
                let e = drifted.entry(d).or_default();
                e.0 += n;
                e.1.extend(r.get::<_, Option<Vec<String>>>(3).unwrap_or_default());
            }
        }
        let mut s = Summary {
            by_version: by_version.into_iter().map(|(v, n)| (v.0, n)).collect(),
            behind: Vec::new(),
            drifted: drifted
                .into_iter()
                .map(|(d, (n, mut ids))| {
                    ids.sort();
                    ids.truncate(listed);
                    (d, n, ids)
                })
                .collect(),
        };
        if s.total() > s.at(latest) {
            let sql = format!(
                "SELECT id, version FROM {t} WHERE state = {active} AND version IS DISTINCT FROM $1 \
                 ORDER BY id LIMIT $2"
            );
            let rows = client
                .query_typed(&sql, &[(&latest, Type::INT4), (&listed_sql, Type::INT8)])
                .await
                .map_err(|e| failed("listing the tenants behind", &e))?;
            s.behind = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        Ok(s)
    }
}

impl Control {
    /// When each command last finished a run that succeeded (Unix seconds), from the ledger.
    pub async fn last_successes(&self, client: &Client) -> anyhow::Result<Vec<(String, f64)>> {
        let sql = format!(
            "SELECT command, extract(epoch FROM max(finished_at))::float8 FROM {} \
             WHERE state = {} AND finished_at IS NOT NULL GROUP BY command ORDER BY command",
            self.table("runs"),
            super::RunState::Succeeded.literal()
        );
        let rows = client
            .query_typed(&sql, &[])
            .await
            .map_err(|e| failed("reading the last successful runs", &e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
