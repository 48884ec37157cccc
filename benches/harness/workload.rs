//! The benchmark's workload and its two baselines: N pods, each with one Memory emptyDir and
//! one pre-bound local PV, written as one manifest file per pod; the syscall floor (exactly
//! the mkdirs and mount(2) calls those volumes need) and exec-based mounting (one `mount`
//! process per mount, as kubelet's mount-utils and most CSI node plugins mount).

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub const NODE: &str = "bench-node";

/// Where everything of one workload lives; all of it on the harness's own tmpfs.
#[derive(Clone, Debug)]
pub struct Workload {
    pub root: PathBuf,
    pub manifests: PathBuf,
    pub disks: PathBuf,
}

impl Workload {
    pub fn new(base: &Path) -> Workload {
        Workload {
            root: base.join("root"),
            manifests: base.join("manifests"),
            disks: base.join("disks"),
        }
    }

    pub fn uid(i: usize) -> String {
        format!("00000000-0000-4000-8000-{i:012x}")
    }

    pub fn pv(i: usize) -> String {
        format!("bench-pv-{i}")
    }

    pub fn file(&self, i: usize) -> PathBuf {
        self.manifests.join(format!("pod-{i:06}.yaml"))
    }

    fn pod_volumes(&self, i: usize) -> PathBuf {
        self.root.join("pods").join(Self::uid(i)).join("volumes")
    }

    /// The two mount points pod `i` gets: its emptyDir and its local PV.
    pub fn targets(&self, i: usize) -> [PathBuf; 2] {
        let volumes = self.pod_volumes(i);
        [
            volumes.join("kubernetes.io~empty-dir/cache"),
            volumes.join("kubernetes.io~local-volume").join(Self::pv(i)),
        ]
    }

    pub fn disk(&self, i: usize) -> PathBuf {
        self.disks.join(Self::pv(i))
    }

    /// Pod `i`'s manifest: a PV pinned to this node and pre-bound to its claim, the claim
    /// naming it, and the pod.
    pub fn manifest(&self, i: usize) -> String {
        let (pv, uid, disk) = (Self::pv(i), Self::uid(i), self.disk(i));
        format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local-bench
  claimRef: {{namespace: bench, name: data-{i}}}
  local: {{path: {disk}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: [{NODE}]}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data-{i}, namespace: bench}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local-bench
  volumeName: {pv}
  resources:
    requests: {{storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: pod-{i}, namespace: bench, uid: {uid}}}
spec:
  nodeName: {NODE}
  containers:
  - {{name: app, image: busybox}}
  volumes:
  - name: cache
    emptyDir: {{medium: Memory}}
  - name: data
    persistentVolumeClaim: {{claimName: data-{i}}}
",
            disk = disk.display()
        )
    }

    /// The directories and manifests of pods `range`, plus a pod on another node so the
    /// directory is never empty (an empty one tears nothing down).
    pub fn create(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.manifests)?;
        std::fs::create_dir_all(&self.root)?;
        std::fs::write(
            self.manifests.join("elsewhere.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: bench}\nspec:\n  nodeName: other-node\n  containers:\n  - {name: app, image: busybox}\n",
        )?;
        for i in range {
            std::fs::create_dir_all(self.disk(i))?;
            std::fs::write(self.file(i), self.manifest(i))?;
        }
        Ok(())
    }

    /// Writes pod `i`'s manifest beside the others under a hidden name (volumed skips those)
    /// and returns it, ready to be renamed into place.
    pub fn stage(&self, i: usize) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(self.disk(i))?;
        let hidden = self.manifests.join(format!(".pod-{i:06}.yaml.tmp"));
        std::fs::write(&hidden, self.manifest(i))?;
        Ok(hidden)
    }
}

fn errno<'a>(what: &str, path: &'a Path) -> impl Fn(nix::errno::Errno) -> std::io::Error + 'a {
    let what = what.to_string();
    move |e| std::io::Error::other(format!("{what} {}: {e}", path.display()))
}

/// The syscall floor for pods `range`: the mkdirs, then per pod a tmpfs mount, a bind and the
/// bind's rslave propagation, as volumed does them.
pub fn floor_mount(w: &Workload, range: std::ops::Range<usize>) -> std::io::Result<()> {
    for i in range {
        let [cache, data] = w.targets(i);
        std::fs::create_dir_all(&cache)?;
        std::fs::create_dir_all(&data)?;
        mount(
            Some("tmpfs"),
            &cache,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0777"),
        )
        .map_err(errno("tmpfs on", &cache))?;
        mount(
            Some(&w.disk(i)),
            &data,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno("bind on", &data))?;
        mount(
            None::<&str>,
            &data,
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(errno("rslave on", &data))?;
    }
    Ok(())
}

/// The floor's teardown: unmount both volumes and remove the pod's directories.
pub fn floor_unmount(w: &Workload, range: std::ops::Range<usize>) -> std::io::Result<()> {
    for i in range {
        let [cache, data] = w.targets(i);
        for target in [&cache, &data] {
            umount2(target, MntFlags::empty()).map_err(errno("unmounting", target))?;
            std::fs::remove_dir(target)?;
        }
        let volumes = cache.parent().and_then(Path::parent).expect("pod path");
        std::fs::remove_dir(cache.parent().expect("plugin dir"))?;
        std::fs::remove_dir(data.parent().expect("plugin dir"))?;
        std::fs::remove_dir(volumes)?;
        std::fs::remove_dir(volumes.parent().expect("pod dir"))?;
    }
    Ok(())
}

/// Exec-based mounting: the same mkdirs, and one `mount` process per mount.
pub fn exec_mount(w: &Workload, range: std::ops::Range<usize>) -> std::io::Result<()> {
    let run = |args: &[&std::ffi::OsStr]| -> std::io::Result<()> {
        let status = Command::new("mount").args(args).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("mount {args:?}: {status}")))
        }
    };
    for i in range {
        let [cache, data] = w.targets(i);
        std::fs::create_dir_all(&cache)?;
        std::fs::create_dir_all(&data)?;
        run(&[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "-o".as_ref(),
            "mode=0777".as_ref(),
            "tmpfs".as_ref(),
            cache.as_os_str(),
        ])?;
        let disk = w.disk(i);
        run(&[
            "--bind".as_ref(),
            "--make-rslave".as_ref(),
            disk.as_os_str(),
            data.as_os_str(),
        ])?;
    }
    Ok(())
}

/// Whether `path` is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT); false when absent.
pub fn is_mount_root(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(stx) => {
            let known = stx.stx_attributes_mask;
            let attrs = stx.stx_attributes;
            assert!(
                known.contains(StatxAttributes::MOUNT_ROOT),
                "this kernel's statx does not report mount roots"
            );
            attrs.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(_) => false,
    }
}

/// Unrelated mounts: `count` binds of one directory under `base`, made as the harness's own.
pub fn unrelated_mounts(base: &Path, range: std::ops::Range<usize>) -> std::io::Result<()> {
    let source = base.join("source");
    std::fs::create_dir_all(&source)?;
    for i in range {
        let target = base.join(format!("m{i}"));
        std::fs::create_dir_all(&target)?;
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno("bind on", &target))?;
    }
    Ok(())
}

pub fn remove_unrelated(base: &Path, range: std::ops::Range<usize>) -> std::io::Result<()> {
    for i in range {
        let target = base.join(format!("m{i}"));
        umount2(&target, MntFlags::empty()).map_err(errno("unmounting", &target))?;
    }
    Ok(())
}
