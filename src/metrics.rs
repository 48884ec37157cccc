//! The process's Prometheus metrics: one registry, filled by the layers as they work (the
//! executor's ops, the sync loop's passes, the mount watcher's reads, the sources' readiness,
//! the local-PV discoverer) and rendered by the HTTP endpoint. A leaf: it imports nothing of
//! volumed. Names follow kubelet's where kubelet has the metric; label values are fixed
//! words (op verbs, plugin names, states), never error strings.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeCount {
    pub plugin_name: String,
    /// `desired_state_of_world` or `actual_state_of_world`, as kubelet says.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpDuration {
    pub operation_name: &'static str,
    pub volume_plugin: String,
    /// `success` or `fail-unknown`, as kubelet says.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResult {
    pub op: &'static str,
    /// `done`, `failed` or `stuck`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ClaimLabels {
    pub namespace: String,
    pub persistentvolumeclaim: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalDiskLabels {
    pub storage_class: String,
    /// `discovered` or `skipped`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of the endpoint's paths, or `other`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CleanupLabels {
    /// `done` or `failed`.
    pub result: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub total_volumes: Family<VolumeCount, Gauge>,
    pub operation_duration: Family<OpDuration, Histogram>,
    pub operations: Family<OpResult, Counter>,
    pub stuck_operations: Gauge,
    pub sync_passes: Counter,
    pub sync_pass_duration: Histogram,
    pub mount_table_reads: Counter,
    pub source_ready: Gauge,
    pub last_complete_snapshot: FloatGauge,
    pub capacity_bytes: Family<ClaimLabels, Gauge>,
    pub available_bytes: Family<ClaimLabels, Gauge>,
    pub used_bytes: Family<ClaimLabels, Gauge>,
    pub inodes: Family<ClaimLabels, Gauge>,
    pub inodes_free: Family<ClaimLabels, Gauge>,
    pub inodes_used: Family<ClaimLabels, Gauge>,
    pub local_disks: Family<LocalDiskLabels, Gauge>,
    pub local_cleanups: Family<CleanupLabels, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 16 min.
    Histogram::new(exponential_buckets(0.001, 4.0, 11))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            total_volumes: Family::default(),
            operation_duration: Family::new_with_constructor(seconds_histogram),
            operations: Family::default(),
            stuck_operations: Gauge::default(),
            sync_passes: Counter::default(),
            sync_pass_duration: seconds_histogram(),
            mount_table_reads: Counter::default(),
            source_ready: Gauge::default(),
            last_complete_snapshot: FloatGauge::default(),
            capacity_bytes: Family::default(),
            available_bytes: Family::default(),
            used_bytes: Family::default(),
            inodes: Family::default(),
            inodes_free: Family::default(),
            inodes_used: Family::default(),
            local_disks: Family::default(),
            local_cleanups: Family::default(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "volume_manager_total_volumes",
            "Volumes in the desired and in the actual state of this node, by plugin",
            m.total_volumes.clone(),
        );
        registry.register(
            "storage_operation_duration_seconds",
            "How long volume operations took, by operation, plugin and outcome",
            m.operation_duration.clone(),
        );
        registry.register(
            "volumed_operations",
            "Volume operations finished or found stuck, by op and result",
            m.operations.clone(),
        );
        registry.register(
            "volumed_stuck_operations",
            "Operations running past their deadline now",
            m.stuck_operations.clone(),
        );
        registry.register(
            "volumed_sync_passes",
            "Passes of the sync loop (plan and submit)",
            m.sync_passes.clone(),
        );
        registry.register(
            "volumed_sync_pass_duration_seconds",
            "How long each pass of the sync loop took",
            m.sync_pass_duration.clone(),
        );
        registry.register(
            "volumed_mount_table_reads",
            "Reads of the mount table",
            m.mount_table_reads.clone(),
        );
        registry.register(
            "volumed_source_ready",
            "1 while the desired-state source's last snapshot is complete, else 0",
            m.source_ready.clone(),
        );
        registry.register(
            "volumed_last_complete_snapshot_timestamp_seconds",
            "When the source last delivered a complete snapshot (Unix time)",
            m.last_complete_snapshot.clone(),
        );
        let stats: [(&str, &str, &Family<ClaimLabels, Gauge>); 6] = [
            (
                "kubelet_volume_stats_capacity_bytes",
                "Capacity in bytes of the volume",
                &m.capacity_bytes,
            ),
            (
                "kubelet_volume_stats_available_bytes",
                "Number of available bytes in the volume",
                &m.available_bytes,
            ),
            (
                "kubelet_volume_stats_used_bytes",
                "Number of used bytes in the volume",
                &m.used_bytes,
            ),
            (
                "kubelet_volume_stats_inodes",
                "Maximum number of inodes in the volume",
                &m.inodes,
            ),
            (
                "kubelet_volume_stats_inodes_free",
                "Number of free inodes in the volume",
                &m.inodes_free,
            ),
            (
                "kubelet_volume_stats_inodes_used",
                "Number of used inodes in the volume",
                &m.inodes_used,
            ),
        ];
        for (name, help, family) in stats {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "volumed_local_pv_disks",
            "Entries of the local-PV mount dirs at the last discovery, by class and state",
            m.local_disks.clone(),
        );
        registry.register(
            "volumed_local_pv_cleanups",
            "Cleanups of released local disks, by result",
            m.local_cleanups.clone(),
        );
        registry.register(
            "volumed_http_requests",
            "Requests to the health, metrics and status endpoint, by path",
            m.http_requests.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    /// Records a finished op: its duration under kubelet's name and its result.
    pub fn op_finished(&self, op: &'static str, plugin: String, ok: bool, seconds: f64) {
        let status = if ok { "success" } else { "fail-unknown" };
        self.operation_duration
            .get_or_create(&OpDuration {
                operation_name: op,
                volume_plugin: plugin,
                status,
            })
            .observe(seconds);
        let result = if ok { "done" } else { "failed" };
        self.operations
            .get_or_create(&OpResult { op, result })
            .inc();
    }
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_show_under_kubelets_names_with_fixed_labels() {
        let metrics = Metrics::new();
        metrics.op_finished("set-up", "kubernetes.io/empty-dir".into(), true, 0.002);
        metrics.op_finished("set-up", "kubernetes.io/empty-dir".into(), false, 0.5);
        let text = metrics.render();
        assert!(
            text.contains("storage_operation_duration_seconds_count{operation_name=\"set-up\",volume_plugin=\"kubernetes.io/empty-dir\",status=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("volumed_operations_total{op=\"set-up\",result=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("volumed_stuck_operations 0"), "{text}");
    }
}
