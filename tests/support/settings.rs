//! Settings for the fake-host test runs: node `node-a`, host paths under `base`, short
//! deadlines. Each test binary picks its source (a manifest dir or a kubeconfig).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use volumed::config::Settings;
use volumed::desired::NodeConfig;
use volumed::model::host_paths::HostPathPolicy;

pub fn test_settings(
    base: &Path,
    manifests: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
) -> Settings {
    Settings {
        manifests,
        kubeconfig,
        first_list_timeout: Duration::from_secs(60),
        root_dir: base.join("root"),
        node: NodeConfig {
            name: "node-a".into(),
            labels: Default::default(),
            memory_bytes: Some(8 << 30),
            host_paths: HostPathPolicy::new(vec![base.to_path_buf()], base.join("root")),
        },
        max_concurrent_ops: 4,
        max_concurrent_formats: 1,
        mounter_path: "mount".into(),
        mount_timeout: Duration::from_secs(5),
        max_ops_per_server: 2,
        op_timeout: Duration::from_secs(5),
        resync: Duration::from_secs(60),
        local_pv: None,
        // Any free port: test daemons run side by side.
        http_addr: "127.0.0.1:0".parse().unwrap(),
    }
}
