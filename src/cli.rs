//! Command-line interface: `run [--once]`, `plan`, `status`, `devices`, `discover`, `release` and
//! `check-config`, all over the same settings (each also a config-file key and a VOLUMED_* variable).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "volumed",
    version,
    about = "Per-host volume daemon: makes this host's mounts match what the pods on it need"
)]
pub struct Cli {
    /// Log filter, e.g. info, debug, volumed=debug (RUST_LOG also works). kube-rs is quiet by
    /// default: volumed logs each API failure once, with what it does about it.
    #[arg(
        long,
        global = true,
        default_value = "info,kube_client=off,kube_runtime=error",
        env = "VOLUMED_LOG"
    )]
    pub log: String,
    /// Log lines as text (for people; colored on a terminal) or as JSON objects, one per line
    /// (for log collectors), each with its span's fields (op, pod, volume).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VOLUMED_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Reconcile the host: as a daemon, or once with --once (exit 0 when every volume is in
    /// place, 1 when not, 2 when it could not run, e.g. another volumed holds the root dir).
    Run(RunArgs),
    /// Print what `run --once` would do, changing nothing: the ops, each set-up's expected
    /// outcome (a format is marked), and on stderr every volume that cannot be set up, with
    /// why and its manifest's file:line. Exit 0: everything can be done; 1: something cannot;
    /// 2: the command itself failed.
    Plan(ReadArgs),
    /// One row per pod volume: pod, volume, kind, path, state (mounted, not-ready, pending,
    /// failed, unmanaged, tearing-down, kept) and reason. Exit 0; 1 when the desired state is
    /// incomplete (its errors on stderr); 2 when the command failed.
    Status(ReadArgs),
    /// The host's block devices, as lsblk shows them (or as JSON).
    Devices(DevicesArgs),
    /// With --once: the PersistentVolumes the local disks under each configured class's
    /// mount_dir become (see --config), as YAML or JSON, changing nothing; entries that are
    /// skipped go to stderr with why. Exit 0; 2 when it cannot run (no classes configured).
    Discover(DiscoverArgs),
    /// File mode: make a PersistentVolume released from a deleted claim available to claims
    /// again, its data untouched (a Retain volume, or one volumed does not clean). Refused for
    /// a volume still bound (its claim, or a pod naming it, in the manifests), one not released
    /// yet, mounted or being cleaned, a local disk `run` cleans itself, and while the manifests
    /// have errors. Exit 0: released; 1: refused (why on stderr, nothing changed); 2: the
    /// command failed.
    Release(ReleaseArgs),
    /// Print the effective settings, one `key = value` line each with where it came from (a
    /// flag, the environment, the config file, or the default), after checking the config
    /// file: every key known, every value valid. Exit 0; 2 with the bad key named.
    CheckConfig(CheckConfigArgs),
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The PersistentVolume's name.
    pub pv: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Command {
    /// The settings a subcommand takes, when it takes them.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Run(a) => Some(&a.common),
            Command::Plan(a) | Command::Status(a) => Some(&a.common),
            Command::Discover(a) => Some(&a.common),
            Command::Release(a) => Some(&a.common),
            Command::CheckConfig(a) => Some(&a.common),
            Command::Devices(_) => None,
        }
    }
}

#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// Look once and print (required: the daemon, `volumed run`, discovers continuously).
    #[arg(long)]
    pub once: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = PvOutput::Yaml)]
    pub output: PvOutput,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvOutput {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Do one complete reconcile, then exit: 0 when every desired volume is in place.
    #[arg(long)]
    pub once: bool,
    /// Start even when the root dir is not on a shared mount or a local-PV mount_dir receives
    /// no host mounts (by default that is refused, with what to change).
    #[arg(long, env = "VOLUMED_SKIP_PROPAGATION_CHECK")]
    pub skip_propagation_check: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Show whole paths in tables (by default they are relative to the root dir).
    #[arg(long, short)]
    pub wide: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The config file (TOML): local-PV classes under [local_pv]. Default:
    /// /etc/volumed/config.toml when it exists.
    #[arg(long, value_name = "FILE", env = "VOLUMED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of YAML/JSON manifests (Pod, PersistentVolumeClaim, PersistentVolume,
    /// StorageClass). Without it, volumed watches the Kubernetes API instead.
    #[arg(long, value_name = "DIR", env = "VOLUMED_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the API source; default: in-cluster config, or $KUBECONFIG, or ~/.kube/config.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "manifests",
        env = "VOLUMED_KUBECONFIG"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// How long `run --once`, `plan` and `status` wait for the API's first complete list
    /// before giving up (changing nothing).
    #[arg(long, value_parser = at_least_a_second, default_value = "60s", conflicts_with = "manifests", env = "VOLUMED_FIRST_LIST_TIMEOUT")]
    pub first_list_timeout: Duration,
    /// Where pod volume directories, global mounts and volumed's state live.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/volumed",
        env = "VOLUMED_ROOT_DIR"
    )]
    pub root_dir: PathBuf,
    /// This node's name; pods with another spec.nodeName are not ours. Default: the host name.
    #[arg(long, env = "VOLUMED_NODE_NAME")]
    pub node_name: Option<String>,
    /// Extra node labels for PV node affinity, as k=v,k2=v2.
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels, default_value = "", env = "VOLUMED_NODE_LABELS")]
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// hostPath and local volume paths must lie under one of these (repeatable).
    #[arg(
        long = "host-path-root",
        value_name = "DIR",
        default_value = "/",
        env = "VOLUMED_HOST_PATH_ROOTS",
        value_delimiter = ','
    )]
    pub host_path_roots: Vec<PathBuf>,
    /// Most ops running at once.
    #[arg(long, default_value_t = 8, env = "VOLUMED_MAX_CONCURRENT_OPS")]
    pub max_concurrent_ops: usize,
    /// Most mkfs runs at once.
    #[arg(long, default_value_t = 2, env = "VOLUMED_MAX_CONCURRENT_FORMATS")]
    pub max_concurrent_formats: usize,
    /// The mount helper for NFS volumes, as kubelet's mounter path.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "mount",
        env = "VOLUMED_MOUNTER_PATH"
    )]
    pub mounter_path: PathBuf,
    /// How long an NFS mount may take before its helper is killed.
    #[arg(long, value_parser = at_least_a_second, default_value = "2m", env = "VOLUMED_MOUNT_TIMEOUT")]
    pub mount_timeout: Duration,
    /// Most ops in flight per NFS server, stuck ones included, so one dead server cannot
    /// hold every worker.
    #[arg(long, default_value_t = 2, env = "VOLUMED_MAX_OPS_PER_SERVER")]
    pub max_ops_per_server: usize,
    /// How long any other op (stat, unmount, directory work) may run before its volume is
    /// reported stuck; an NFS unmount then escalates to umount -f and a lazy detach.
    #[arg(long, value_parser = at_least_a_second, default_value = "30s", env = "VOLUMED_OP_TIMEOUT")]
    pub op_timeout: Duration,
    /// Safety re-read of the mount table and manifests when nothing reported a change.
    #[arg(long, value_parser = at_least_a_second, default_value = "60s", env = "VOLUMED_RESYNC")]
    pub resync: Duration,
    /// Where `run` serves /healthz, /readyz, /metrics and /status (GET only), and where
    /// `status` asks a running daemon. Port 0 takes a free port; the daemon writes the address
    /// it got to <root>/state/http.addr, which `status` reads.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9810",
        env = "VOLUMED_HTTP_ADDR"
    )]
    pub http_addr: std::net::SocketAddr,
}

/// A duration of one second or more (shorter timers would spin).
fn at_least_a_second(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text} is too short; use 1s or more"));
    }
    Ok(duration)
}

fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_parse_as_comma_separated_pairs() {
        let labels = parse_labels("zone=a, disk=ssd").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["disk"], "ssd");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
