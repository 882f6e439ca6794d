//! `status --metrics`: the fleet's state as Prometheus metrics, for a cron feeding the
//! node_exporter textfile collector, so that an alert can say "tenants behind the latest
//! version for 2 hours". Per cluster, never per tenant. Names: docs/metrics.md.

use prometheus::{GaugeVec, Opts, Registry};

use super::metrics::must;

/// One cluster's state, as `status` reads it.
#[derive(Default)]
pub struct ClusterState {
    pub cluster: String,
    /// Whether the cluster answered (the rest is empty when it did not).
    pub up: bool,
    /// Active tenants per version (None: nothing applied).
    pub by_version: Vec<(Option<i32>, usize)>,
    /// Active tenants not at the latest version.
    pub pending: usize,
    pub drifted: usize,
    /// Pooled schemas, and those at the latest version (ready to be taken).
    pub pool: usize,
    pub pool_ready: usize,
    /// Per command, when its last successful run finished (Unix seconds).
    pub last_success: Vec<(String, f64)>,
}

impl ClusterState {
    /// A cluster that answered (`up`) or not, with nothing counted yet.
    pub fn empty(cluster: &str, up: bool) -> ClusterState {
        ClusterState {
            cluster: cluster.to_string(),
            up,
            ..ClusterState::default()
        }
    }
}

/// The text exposition of the fleet's state; `latest`: the newest migration on disk.
pub fn text(latest: Option<i32>, clusters: &[ClusterState]) -> String {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = must(GaugeVec::new(Opts::new(name, help), labels));
        must(registry.register(Box::new(g.clone())));
        g
    };
    let up = gauge(
        "tenantctl_cluster_up",
        "Whether the cluster answered (1) or not (0).",
        &["cluster"],
    );
    let latest_g = gauge(
        "tenantctl_latest_version",
        "The newest migration version on disk (0: none).",
        &[],
    );
    let tenants = gauge(
        "tenantctl_tenants",
        "Active tenants per version (version \"none\": nothing applied).",
        &["cluster", "version"],
    );
    let pending = gauge(
        "tenantctl_tenants_pending",
        "Active tenants not at the latest version.",
        &["cluster"],
    );
    let drifted = gauge(
        "tenantctl_tenants_drifted",
        "Active tenants whose history disagrees with the files.",
        &["cluster"],
    );
    let pool = gauge(
        "tenantctl_pool_schemas",
        "Pooled (pre-created) schemas.",
        &["cluster"],
    );
    let ready = gauge(
        "tenantctl_pool_ready_schemas",
        "Pooled schemas at the latest version, ready to be taken.",
        &["cluster"],
    );
    let success = gauge(
        "tenantctl_last_success_timestamp_seconds",
        "When the last successful run of the command finished (Unix time).",
        &["cluster", "command"],
    );
    latest_g
        .with_label_values(&[] as &[&str])
        .set(f64::from(latest.unwrap_or(0)));
    for c in clusters {
        let name = c.cluster.as_str();
        up.with_label_values(&[name])
            .set(if c.up { 1.0 } else { 0.0 });
        if !c.up {
            continue;
        }
        for (v, n) in &c.by_version {
            let v = v.map_or("none".to_string(), |v| v.to_string());
            tenants.with_label_values(&[name, &v]).set(*n as f64);
        }
        pending.with_label_values(&[name]).set(c.pending as f64);
        drifted.with_label_values(&[name]).set(c.drifted as f64);
        pool.with_label_values(&[name]).set(c.pool as f64);
        ready.with_label_values(&[name]).set(c.pool_ready as f64);
        for (command, at) in &c.last_success {
            success.with_label_values(&[name, command]).set(*at);
        }
    }
    super::metrics::exposition(&registry.gather())
}
