//! A run's Prometheus metrics, gathered from the engine's events and written at the end:
//! `--metrics-file` (text exposition, temp file + rename: the node_exporter textfile
//! collector's convention for batch jobs) and `--pushgateway` (the CI convention). Labels
//! are the command and the cluster, never the tenant: 10,000 series per run would hurt the
//! user's Prometheus. Names and units: docs/metrics.md.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
};

use crate::engine::events::Event;

/// Per-tenant duration buckets, 1 ms to 10 min.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 180.0, 600.0,
];

/// Every metric of the run (of every cluster), labelled by command and cluster.
pub struct Metrics {
    registry: Registry,
    tenant_seconds: HistogramVec,
    tenants: GaugeVec,
    applied: IntCounterVec,
    retries: IntCounterVec,
    slow: IntCounterVec,
    run_seconds: GaugeVec,
    exit_code: GaugeVec,
    finished: GaugeVec,
    succeeded: GaugeVec,
    /// (command, cluster) of each run seen, for the Pushgateway's grouping.
    groups: Mutex<Vec<(String, String)>>,
}

/// A metric definition's result: they are fixed, so an error is a bug.
pub(crate) fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are fixed and valid")
}

/// The text exposition (format 0.0.4) of these families.
pub(crate) fn exposition(families: &[prometheus::proto::MetricFamily]) -> String {
    let mut out = Vec::new();
    must(prometheus::TextEncoder::new().encode(families, &mut out));
    String::from_utf8(out).expect("the exposition is UTF-8")
}

/// Writes `text` to `path` through a temporary file beside it and a rename, so that a
/// collector never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
        anyhow::anyhow!(
            "--metrics-file {}: cannot write in {} ({e}); give a path in a folder that exists",
            path.display(),
            dir.display()
        )
    })?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("--metrics-file {}: {}", path.display(), e.error))?;
    Ok(())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let labels = &["command", "cluster"];
        let gauge = |name: &str, help: &str, extra: &[&str]| {
            let all: Vec<&str> = labels.iter().chain(extra).copied().collect();
            let g = must(GaugeVec::new(Opts::new(name, help), &all));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let tenant_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "tenantctl_tenant_duration_seconds",
                "Time each tenant's transaction took in the run, retries included.",
            )
            .buckets(BUCKETS.to_vec()),
            &["command", "cluster", "result"],
        ));
        must(registry.register(Box::new(tenant_seconds.clone())));
        Arc::new(Metrics {
            tenant_seconds,
            tenants: gauge(
                "tenantctl_run_tenants",
                "Tenants of the run by result, as the run ledger counts them.",
                &["result"],
            ),
            applied: counter(
                "tenantctl_migrations_applied_total",
                "Migrations applied (or reverted) by the run, over its tenants.",
            ),
            retries: counter(
                "tenantctl_retries_total",
                "Tenant attempts retried after a lock timeout or a lost connection.",
            ),
            slow: counter(
                "tenantctl_slow_tenants_total",
                "Tenants still running after --slow-after.",
            ),
            run_seconds: gauge(
                "tenantctl_run_duration_seconds",
                "How long the run took.",
                &[],
            ),
            exit_code: gauge(
                "tenantctl_run_exit_code",
                "The run's exit code on this cluster (0: success).",
                &[],
            ),
            finished: gauge(
                "tenantctl_run_last_finished_timestamp_seconds",
                "When the run finished (Unix time).",
                &[],
            ),
            succeeded: gauge(
                "tenantctl_run_last_success_timestamp_seconds",
                "When the run finished, if it succeeded (Unix time).",
                &[],
            ),
            registry,
            groups: Mutex::new(Vec::new()),
        })
    }

    /// A cluster's collector.
    pub fn for_cluster(self: &Arc<Metrics>, cluster: &str) -> ClusterMetrics {
        ClusterMetrics {
            metrics: self.clone(),
            cluster: cluster.to_string(),
            command: Mutex::new(String::new()),
        }
    }

    /// Whether any run was seen (nothing to write otherwise).
    pub fn is_empty(&self) -> bool {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The text exposition (format 0.0.4).
    pub fn text(&self) -> String {
        exposition(&self.registry.gather())
    }

    /// Writes the exposition to `path` atomically ([`write_atomically`]).
    pub fn write_file(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, &self.text())
    }

    /// Pushes the metrics to a Pushgateway, one group per command and cluster (PUT: the
    /// group's metrics are replaced by this run's). Err: what went wrong, for a warning.
    pub fn push(&self, url: &str) -> Result<(), String> {
        let groups = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        for (command, cluster) in groups {
            let body = self.group_text(&command, &cluster);
            let target = format!(
                "{}/metrics/job/tenantctl/command/{}/cluster/{}",
                url.trim_end_matches('/'),
                percent_encoding::utf8_percent_encode(&command, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(&cluster, percent_encoding::NON_ALPHANUMERIC),
            );
            let shown = crate::redact::scrub(&target);
            match agent
                .put(&target)
                .header("Content-Type", "text/plain; version=0.0.4")
                .send(body.as_bytes())
            {
                Ok(r) if r.status().is_success() => {}
                Ok(mut r) => {
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    return Err(format!("{shown}: HTTP {} {}", r.status(), text.trim()));
                }
                Err(e) => return Err(format!("{shown}: {e}")),
            }
        }
        Ok(())
    }

    /// The exposition of one command and cluster's series only, without those labels (the
    /// Pushgateway puts the grouping labels on every series).
    fn group_text(&self, command: &str, cluster: &str) -> String {
        let mut families = self.registry.gather();
        for family in &mut families {
            let metrics: Vec<_> = family
                .take_metric()
                .into_iter()
                .filter(|m| {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                    };
                    label("command").as_deref() == Some(command)
                        && label("cluster").as_deref() == Some(cluster)
                })
                .map(|mut m| {
                    let kept: Vec<_> = m
                        .take_label()
                        .into_iter()
                        .filter(|l| l.name() != "command" && l.name() != "cluster")
                        .collect();
                    m.set_label(kept);
                    m
                })
                .collect();
            family.set_metric(metrics);
        }
        families.retain(|f| !f.get_metric().is_empty());
        exposition(&families)
    }
}

/// One cluster's collector: the command comes from the run's start.
pub struct ClusterMetrics {
    metrics: Arc<Metrics>,
    cluster: String,
    command: Mutex<String>,
}

impl ClusterMetrics {
    pub fn event(&self, event: &Event<'_>) {
        let m = &self.metrics;
        if let Event::RunStarted { command, .. } = event {
            let command = command.to_string();
            let mut groups = m.groups.lock().unwrap_or_else(|e| e.into_inner());
            let group = (command.clone(), self.cluster.clone());
            if !groups.contains(&group) {
                groups.push(group);
            }
            *self.command.lock().unwrap_or_else(|e| e.into_inner()) = command;
            return;
        }
        // Held while the event is counted: no copy of the command per tenant.
        let command = self.command.lock().unwrap_or_else(|e| e.into_inner());
        let labels = [command.as_str(), self.cluster.as_str()];
        match event {
            Event::SchemaSucceeded {
                applied, elapsed, ..
            } => {
                m.tenant_seconds
                    .with_label_values(&[labels[0], labels[1], "done"])
                    .observe(elapsed.as_secs_f64());
                m.applied
                    .with_label_values(&labels)
                    .inc_by(applied.count as u64);
            }
            Event::SchemaFailed { elapsed, .. } => m
                .tenant_seconds
                .with_label_values(&[labels[0], labels[1], "failed"])
                .observe(elapsed.as_secs_f64()),
            Event::Retrying { .. } => m.retries.with_label_values(&labels).inc(),
            Event::Slow { .. } => m.slow.with_label_values(&labels).inc(),
            Event::RunEnded {
                counts,
                exit_code,
                elapsed,
                state,
                ..
            } => {
                for (result, n) in counts.by_result() {
                    m.tenants
                        .with_label_values(&[labels[0], labels[1], result.as_str()])
                        .set(n as f64);
                }
                // Every series of the run exists, at zero if nothing happened.
                m.applied.with_label_values(&labels);
                m.retries.with_label_values(&labels);
                m.slow.with_label_values(&labels);
                m.run_seconds
                    .with_label_values(&labels)
                    .set(elapsed.as_secs_f64());
                m.exit_code
                    .with_label_values(&labels)
                    .set(*exit_code as f64);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                m.finished.with_label_values(&labels).set(now);
                if *state == crate::control::RunState::Succeeded {
                    m.succeeded.with_label_values(&labels).set(now);
                }
            }
            _ => {}
        }
    }
}
