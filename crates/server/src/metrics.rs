//! Prometheus metrics (`/metrics`, text exposition format 0.0.4). Names of the specification are
//! kept exactly: `backup_duration_seconds`, `backup_size_bytes`, `backup_success_total`,
//! `backup_failure_total`, labelled by job and VM. Dashboard: `deploy/grafana/vbm.json`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-VM series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobVm {
    /// Job name.
    pub job: String,
    /// VM name.
    pub vm: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// Every metric vbm exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    duration: Family<JobVm, GaugeF>,
    size: Family<JobVm, Gauge>,
    success: Family<JobVm, Counter>,
    failure: Family<JobVm, Counter>,
    bytes_read: Family<JobVm, Counter>,
    bytes_written: Family<JobVm, Counter>,
    last_success: Family<JobVm, Gauge>,
    overdue: Family<JobVm, Gauge>,
    repo_used: Gauge,
    repo_free: Gauge,
    running_jobs: Gauge,
    running_backups: Gauge,
    leftover_snapshots: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            duration: Family::default(),
            size: Family::default(),
            success: Family::default(),
            failure: Family::default(),
            bytes_read: Family::default(),
            bytes_written: Family::default(),
            last_success: Family::default(),
            overdue: Family::default(),
            repo_used: Gauge::default(),
            repo_free: Gauge::default(),
            running_jobs: Gauge::default(),
            running_backups: Gauge::default(),
            leftover_snapshots: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "backup_duration_seconds",
            "Duration of the last backup of a VM",
            m.duration.clone(),
        );
        registry.register(
            "backup_size_bytes",
            "Logical size of the last backup of a VM",
            m.size.clone(),
        );
        registry.register("backup_success", "Successful VM backups", m.success.clone());
        registry.register("backup_failure", "Failed VM backups", m.failure.clone());
        registry.register(
            "backup_read_bytes",
            "Bytes read from vCenter datastores by backups",
            m.bytes_read.clone(),
        );
        registry.register(
            "backup_written_bytes",
            "Bytes newly written to the repository by backups",
            m.bytes_written.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup of a VM",
            m.last_success.clone(),
        );
        registry.register(
            "vbm_backup_overdue",
            "1 when a VM its job protects has no successful backup within the job's RPO (R3)",
            m.overdue.clone(),
        );
        registry.register(
            "repository_used_bytes",
            "Bytes used by the backup repository",
            m.repo_used.clone(),
        );
        registry.register(
            "repository_free_bytes",
            "Free bytes on the repository's file system",
            m.repo_free.clone(),
        );
        registry.register(
            "vbm_running_jobs",
            "Backup runs in progress",
            m.running_jobs.clone(),
        );
        registry.register(
            "vbm_running_backups",
            "VM backups in progress",
            m.running_backups.clone(),
        );
        registry.register(
            "vbm_leftover_snapshots",
            "vbm-* snapshots the last sweep found on VMs and could not remove or does not own",
            m.leftover_snapshots.clone(),
        );
        Self { registry, ..m }
    }

    /// A VM backup starts: its counters exist from now on, at zero, so that Prometheus'
    /// `increase()` sees the first failure (a series born at 1 has no increase).
    pub fn backup_started(&self, labels: &JobVm) {
        self.touch_counters(labels);
    }

    fn touch_counters(&self, labels: &JobVm) {
        drop(self.success.get_or_create(labels));
        drop(self.failure.get_or_create(labels));
        drop(self.bytes_read.get_or_create(labels));
        drop(self.bytes_written.get_or_create(labels));
    }

    /// A VM backup succeeded.
    pub fn backup_succeeded(
        &self,
        labels: &JobVm,
        seconds: f64,
        size: u64,
        read: u64,
        written: u64,
        finished_unix: i64,
    ) {
        self.duration.get_or_create(labels).set(seconds);
        self.size
            .get_or_create(labels)
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.success.get_or_create(labels).inc();
        self.bytes_read.get_or_create(labels).inc_by(read);
        self.bytes_written.get_or_create(labels).inc_by(written);
        self.last_success.get_or_create(labels).set(finished_unix);
    }

    /// A VM backup failed.
    pub fn backup_failed(&self, labels: &JobVm) {
        self.failure.get_or_create(labels).inc();
    }

    /// Seeds the last-success time after a restart (from the catalog).
    pub fn seed_last_success(&self, labels: &JobVm, finished_unix: i64) {
        self.touch_counters(labels);
        self.last_success.get_or_create(labels).set(finished_unix);
    }

    /// Replaces the overdue flags of every protected VM (computed from the catalog and run
    /// history at each scrape, so they survive restarts and VMs that stopped being protected
    /// disappear).
    pub fn set_overdue(&self, values: Vec<(JobVm, bool)>) {
        self.overdue.clear();
        for (labels, overdue) in values {
            self.overdue.get_or_create(&labels).set(i64::from(overdue));
        }
    }

    /// Repository usage.
    pub fn set_repository(&self, used: u64, free: u64) {
        self.repo_used.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.repo_free.set(i64::try_from(free).unwrap_or(i64::MAX));
    }

    /// A run started (+1) or ended (-1).
    pub fn running_jobs(&self, delta: i64) {
        self.running_jobs.inc_by(delta);
    }

    /// `vbm-*` snapshots left after the last snapshot sweep.
    pub fn set_leftover_snapshots(&self, count: u64) {
        self.leftover_snapshots
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A VM backup started (+1) or ended (-1).
    pub fn running_backups(&self, delta: i64) {
        self.running_backups.inc_by(delta);
    }

    /// The exposition text, Prometheus format 0.0.4. prometheus-client writes OpenMetrics
    /// family names (`# TYPE backup_success counter` over `backup_success_total` samples); the
    /// 0.0.4 format and promtool want the sample name in HELP/TYPE, so counters are renamed.
    #[must_use]
    pub fn render(&self) -> String {
        let mut raw = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut raw, &self.registry).is_err() {
            return String::new();
        }
        let counters: Vec<&str> = raw
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(raw.len() + 64);
        for line in raw.lines() {
            let renamed = counters.iter().find_map(|name| {
                for prefix in ["# HELP ", "# TYPE "] {
                    if let Some(rest) = line.strip_prefix(prefix)
                        && let Some(tail) = rest.strip_prefix(name)
                        && tail.starts_with(' ')
                    {
                        return Some(format!("{prefix}{name}_total{tail}"));
                    }
                }
                None
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_exist_at_zero_before_the_first_failure() {
        let m = Metrics::new();
        let l = JobVm {
            job: "nightly".into(),
            vm: "web01".into(),
        };
        m.backup_started(&l);
        let text = m.render();
        assert!(
            text.contains("backup_failure_total{job=\"nightly\",vm=\"web01\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE backup_failure_total counter"),
            "{text}"
        );
        m.backup_failed(&l);
        assert!(
            m.render()
                .contains("backup_failure_total{job=\"nightly\",vm=\"web01\"} 1")
        );
    }

    #[test]
    fn spec_names_are_exported() {
        let m = Metrics::new();
        let l = JobVm {
            job: "nightly".into(),
            vm: "web \"01\"\n".into(),
        };
        m.backup_succeeded(&l, 12.5, 1000, 500, 100, 1_700_000_000);
        m.backup_failed(&l);
        let text = m.render();
        for name in [
            "backup_duration_seconds{",
            "backup_size_bytes{",
            "backup_success_total{",
            "backup_failure_total{",
            "backup_read_bytes_total{",
            "backup_last_success_timestamp_seconds{",
            "repository_used_bytes ",
            "vbm_running_jobs ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        // Label values are escaped: one sample per line.
        assert!(text.contains(r#"vm="web \"01\"\n""#), "{text}");
        // With samples in every family, promtool (when installed) must accept it too.
        if let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
