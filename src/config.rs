//! Settings resolved from the command line: canonical paths, the node's identity, limits.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::CommonArgs;
use crate::desired::NodeConfig;
use crate::localpv::config::{ConfigFile, ConfigFileError, LocalPvConfig};
use crate::model::host_paths::HostPathPolicy;

pub mod file;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot create root dir {path}: {source}; pick another --root-dir or fix its parent's permissions")]
    RootDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the manifest directory {path} absolute: {source}; pass an absolute --manifests")]
    Manifests {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the host name ({0}); pass --node-name")]
    HostName(nix::errno::Errno),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error("both a manifest directory (--manifests, or manifests in the config file) and a kubeconfig (--kubeconfig, or kubeconfig in the config file) are given: volumed reads one source; drop one")]
    BothSources,
}

pub use self::file::DEFAULT_CONFIG;

#[derive(Clone, Debug)]
pub struct Settings {
    /// The manifest directory; `None`: the Kubernetes API is the source.
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the API source (`None`: inferred).
    pub kubeconfig: Option<PathBuf>,
    /// How long a one-shot command waits for the API's first complete list.
    pub first_list_timeout: Duration,
    pub root_dir: PathBuf,
    pub node: NodeConfig,
    pub max_concurrent_ops: usize,
    pub max_concurrent_formats: usize,
    pub mounter_path: PathBuf,
    /// Deadline of an NFS mount (the helper is killed after it).
    pub mount_timeout: Duration,
    /// Most ops in flight per NFS server (stuck ones included).
    pub max_ops_per_server: usize,
    pub op_timeout: Duration,
    pub resync: Duration,
    /// The local-PV classes, when the config file has any.
    pub local_pv: Option<LocalPvConfig>,
    /// The daemon's health, metrics and status endpoint.
    pub http_addr: std::net::SocketAddr,
}

impl Settings {
    /// Resolves the arguments; `create_root` makes the root dir (mode 0750) when missing.
    pub fn from_args(args: &CommonArgs, create_root: bool) -> Result<Settings, ConfigError> {
        if create_root {
            // mkdir -p -m 0750 <root>
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o750,
            )
            .create(&args.root_dir)
            .map_err(|source| ConfigError::RootDir {
                path: args.root_dir.clone(),
                source,
            })?;
        }
        // The root dir is trusted and resolved once; nothing below it is followed.
        let root_dir = args
            .root_dir
            .canonicalize()
            .unwrap_or_else(|_| args.root_dir.clone());
        let name = match &args.node_name {
            Some(name) => name.clone(),
            None => nix::unistd::gethostname()
                .map_err(ConfigError::HostName)?
                .to_string_lossy()
                .into_owned(),
        };
        let host_path_roots = args
            .host_path_roots
            .iter()
            .map(|root| root.canonicalize().unwrap_or_else(|_| root.clone()))
            .collect();
        // Absolute, as inotify reports the paths of its events; not canonical: a symlinked
        // manifest directory is followed at every read.
        let manifests = match &args.manifests {
            Some(dir) => {
                Some(
                    std::path::absolute(dir).map_err(|source| ConfigError::Manifests {
                        path: dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        // The file's values are the command line's defaults, which clap's conflict check does
        // not see: a file `manifests` and a `--kubeconfig` would quietly mean file mode.
        if manifests.is_some() && args.kubeconfig.is_some() {
            return Err(ConfigError::BothSources);
        }
        Ok(Settings {
            manifests,
            kubeconfig: args.kubeconfig.clone(),
            first_list_timeout: args.first_list_timeout,
            root_dir: root_dir.clone(),
            node: NodeConfig {
                name,
                labels: args.node_labels.clone(),
                host_paths: HostPathPolicy::new(host_path_roots, root_dir.clone()),
                memory_bytes: node_memory(),
            },
            max_concurrent_ops: args.max_concurrent_ops,
            max_concurrent_formats: args.max_concurrent_formats,
            mounter_path: args.mounter_path.clone(),
            mount_timeout: args.mount_timeout,
            max_ops_per_server: args.max_ops_per_server,
            op_timeout: args.op_timeout,
            resync: args.resync,
            local_pv: config_file(args.config.as_deref())?.local_pv,
            http_addr: args.http_addr,
        })
    }
}

/// The config file `--config` names (which must exist), or the default one if it exists; its
/// flag keys are the command line's (`file`).
fn config_file(given: Option<&std::path::Path>) -> Result<ConfigFile, ConfigError> {
    let default = std::path::Path::new(DEFAULT_CONFIG);
    let flags = file::is_settings_key;
    match given {
        Some(path) => Ok(ConfigFile::load(path, &flags)?),
        None if default.exists() => Ok(ConfigFile::load(default, &flags)?),
        None => Ok(ConfigFile::default()),
    }
}

/// This host's memory (MemTotal), the file mode's allocatable memory; the API source uses
/// the Node's `status.allocatable.memory` instead when it has one.
fn node_memory() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok().map(|m| m.mem_total)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn a_relative_manifest_directory_is_made_absolute_as_inotify_reports_it() {
        let cli = Cli::try_parse_from(["volumed", "plan", "--manifests", "some/dir"]).unwrap();
        let Command::Plan(args) = cli.command else {
            panic!("plan parses as plan")
        };
        let settings = Settings::from_args(&args.common, false).unwrap();
        let manifests = settings.manifests.unwrap();
        assert!(manifests.is_absolute(), "{}", manifests.display());
        assert!(manifests.ends_with("some/dir"));
    }
}
