//! Single-mount news from the kernel, for the mount watcher (`actual::watch`): fanotify's mount
//! events on this mount namespace (`FAN_MNT_ATTACH`/`FAN_MNT_DETACH`, Linux 6.14+) name each
//! mount attached or detached, and `statmount(2)`/`listmount(2)` (6.8+) read one mount, or
//! list them all, without reading the whole of `/proc/self/mountinfo`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use linux_raw_sys::general as uapi;
use nix::libc;

use super::HostError;
use crate::model::mountinfo::{MountEntry, Propagation};

// From <linux/fanotify.h> of Linux 6.14; the libc crate does not have them yet.
const FAN_REPORT_MNT: libc::c_uint = 0x0000_4000;
const FAN_MARK_MNTNS: libc::c_uint = 0x0000_0110;
const FAN_MNT_ATTACH: u64 = 0x0100_0000;
const FAN_MNT_DETACH: u64 = 0x0200_0000;
const FAN_EVENT_INFO_TYPE_MNT: u8 = 7;
/// `listmount(2)`'s "the whole namespace".
const LSMT_ROOT: u64 = u64::MAX;
/// `mnt_id_req` as Linux 6.8 defined it (no namespace fields).
const MNT_ID_REQ_SIZE_VER0: u32 = 24;

/// A mount's kernel-wide, never reused id (`statmount`'s `mnt_id`, not mountinfo's).
pub type MountId = u64;

/// What one read of the event queue said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub attached: Vec<MountId>,
    pub detached: Vec<MountId>,
    /// The queue overflowed: events were lost, and only a full listing is sure.
    pub lost: bool,
}

/// fanotify mount events for the mount namespace this process is in.
pub struct MountEvents {
    fd: OwnedFd,
}

impl MountEvents {
    /// Starts listening; an error when the kernel has no mount events (before 6.14) or this
    /// process may not have them (they need CAP_SYS_ADMIN in the namespace's owner).
    pub fn open() -> Result<MountEvents, HostError> {
        let fail = |what: &str| {
            let err = std::io::Error::last_os_error();
            HostError::MountTable(format!("{what}: {err}"))
        };
        // SAFETY: plain integer arguments; the result is a new descriptor or -1.
        let raw = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | FAN_REPORT_MNT,
                (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if raw < 0 {
            return Err(fail("fanotify_init(FAN_REPORT_MNT)"));
        }
        // SAFETY: `raw` is a descriptor fanotify_init just gave us, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ns = std::fs::File::open("/proc/self/ns/mnt")
            .map_err(|e| HostError::MountTable(format!("/proc/self/ns/mnt: {e}")))?;
        // SAFETY: both descriptors are open; a null path with FAN_MARK_MNTNS marks `ns` itself.
        let marked = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD | FAN_MARK_MNTNS,
                FAN_MNT_ATTACH | FAN_MNT_DETACH,
                ns.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if marked < 0 {
            return Err(fail("fanotify_mark(FAN_MARK_MNTNS)"));
        }
        Ok(MountEvents { fd })
    }

    /// Readable (poll POLLIN) when events are queued.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Everything queued now; never blocks. A mount moved is both detached and attached.
    pub fn drain(&self) -> Result<Changes, HostError> {
        let mut changes = Changes::default();
        let mut buf = vec![0u64; 4096 / 8];
        loop {
            // SAFETY: reads into a buffer of the length given, which we own.
            let len =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            if len < 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(changes),
                    Some(libc::EINTR) => continue,
                    _ => Err(HostError::MountTable(format!(
                        "reading mount events: {err}"
                    ))),
                };
            }
            // SAFETY: the kernel filled `len` bytes of `buf`; viewed as bytes for parsing.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len as usize) };
            parse_events(bytes, &mut changes);
        }
    }
}

/// Sorts a buffer of fanotify events into `changes`.
fn parse_events(mut bytes: &[u8], changes: &mut Changes) {
    let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
    while bytes.len() >= meta_len {
        // SAFETY: at least one metadata struct's worth of bytes; read unaligned.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let event_len = (meta.event_len as usize).clamp(meta_len, bytes.len());
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            changes.lost = true;
        }
        let mut info = &bytes[meta.metadata_len as usize..event_len];
        let mut mount = None;
        while info.len() >= 4 {
            let (kind, len) = (info[0], u16::from_ne_bytes([info[2], info[3]]) as usize);
            if len < 4 || len > info.len() {
                break;
            }
            // struct fanotify_event_info_mnt: the header, padding to 8, then the u64 id.
            if kind == FAN_EVENT_INFO_TYPE_MNT && len >= 16 {
                let id: [u8; 8] = info[8..16].try_into().expect("eight bytes");
                mount = Some(u64::from_ne_bytes(id));
            }
            info = &info[len..];
        }
        if let Some(id) = mount {
            if meta.mask & FAN_MNT_DETACH != 0 {
                changes.detached.push(id);
            }
            if meta.mask & FAN_MNT_ATTACH != 0 {
                changes.attached.push(id);
            }
        }
        bytes = &bytes[event_len..];
    }
}

/// The ids of every mount in this namespace (`listmount(2)`), in id order.
pub fn list_mounts() -> Result<Vec<MountId>, HostError> {
    let mut ids = Vec::new();
    let mut chunk = vec![0u64; 4096];
    loop {
        let req = uapi::mnt_id_req {
            size: MNT_ID_REQ_SIZE_VER0,
            spare: 0,
            mnt_id: LSMT_ROOT,
            // Continue after the last id seen.
            param: ids.last().copied().unwrap_or(0),
            mnt_ns_id: 0,
        };
        // SAFETY: a valid request and an id buffer of the length given.
        let n = unsafe {
            libc::syscall(
                uapi::__NR_listmount as libc::c_long,
                &req as *const uapi::mnt_id_req,
                chunk.as_mut_ptr(),
                chunk.len(),
                0u32,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return Err(HostError::MountTable(format!("listmount: {err}")));
        }
        ids.extend_from_slice(&chunk[..n as usize]);
        if (n as usize) < chunk.len() {
            return Ok(ids);
        }
    }
}

/// The mount `path` lies on (links followed), read with one statx and one statmount instead
/// of a whole table; `None` when this kernel has no unique mount ids (before 6.8).
pub fn mount_holding(path: &Path) -> Result<Option<MountEntry>, HostError> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let unique = StatxFlags::from_bits_retain(uapi::STATX_MNT_ID_UNIQUE);
    let found = statx(CWD, path, AtFlags::empty(), unique)
        .map_err(|e| HostError::MountTable(format!("statx of {}: {e}", path.display())))?;
    if found.stx_mask & unique.bits() == 0 {
        return Ok(None);
    }
    Ok(stat_mount(found.stx_mnt_id, |_| true)?.and_then(|(_, entry)| entry))
}

/// One mount by id (`statmount(2)`): where it is, first, and all of it only when `wanted`
/// says so of that path (most mounts are of no interest, and the path alone is cheaper).
/// `None` when it is gone.
pub fn stat_mount(
    id: MountId,
    wanted: impl Fn(&Path) -> bool,
) -> Result<Option<(PathBuf, Option<MountEntry>)>, HostError> {
    let Some(point) = statmount(id, uapi::STATMOUNT_MNT_POINT)? else {
        return Ok(None);
    };
    let mount_point = PathBuf::from(point.string(point.header.mnt_point));
    if !wanted(&mount_point) {
        return Ok(Some((mount_point, None)));
    }
    let mask = uapi::STATMOUNT_SB_BASIC
        | uapi::STATMOUNT_MNT_BASIC
        | uapi::STATMOUNT_MNT_ROOT
        | uapi::STATMOUNT_MNT_POINT
        | uapi::STATMOUNT_FS_TYPE
        | uapi::STATMOUNT_FS_SUBTYPE
        | uapi::STATMOUNT_SB_SOURCE
        | uapi::STATMOUNT_MNT_OPTS;
    let Some(full) = statmount(id, mask)? else {
        return Ok(None);
    };
    let h = &full.header;
    let has = |bit: u32| h.mask & u64::from(bit) != 0;
    let mut fs_type = full.string(h.fs_type);
    if has(uapi::STATMOUNT_FS_SUBTYPE) && !full.string(h.fs_subtype).is_empty() {
        fs_type = format!("{fs_type}.{}", full.string(h.fs_subtype));
    }
    let source = has(uapi::STATMOUNT_SB_SOURCE).then(|| full.string(h.sb_source));
    let options = if has(uapi::STATMOUNT_MNT_OPTS) {
        full.string(h.mnt_opts)
    } else {
        String::new()
    };
    let super_options: BTreeMap<String, Option<String>> = options
        .split(',')
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o.to_string(), None),
        })
        .collect();
    let entry = MountEntry {
        mount_id: h.mnt_id_old as i32,
        parent_id: h.mnt_parent_id_old as i32,
        device: format!("{}:{}", h.sb_dev_major, h.sb_dev_minor),
        root: full.string(h.mnt_root),
        mount_point: PathBuf::from(full.string(h.mnt_point)),
        fs_type,
        source,
        read_only: h.mnt_attr & u64::from(uapi::MOUNT_ATTR_RDONLY) != 0,
        super_options,
        propagation: Propagation {
            shared: h.mnt_propagation & u64::from(uapi::MS_SHARED) != 0,
            receives: h.mnt_master != 0,
        },
    };
    Ok(Some((mount_point, Some(entry))))
}

/// A statmount answer: the fixed header and the strings after it.
struct Answer {
    header: uapi::statmount,
    strings: Vec<u8>,
}

impl Answer {
    fn string(&self, offset: u32) -> String {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        String::from_utf8_lossy(&tail[..end]).into_owned()
    }
}

fn statmount(id: MountId, mask: u32) -> Result<Option<Answer>, HostError> {
    let header_len = std::mem::size_of::<uapi::statmount>();
    let mut words = 1024usize;
    loop {
        let mut buf = vec![0u64; words];
        let req = uapi::mnt_id_req {
            size: MNT_ID_REQ_SIZE_VER0,
            spare: 0,
            mnt_id: id,
            param: u64::from(mask),
            mnt_ns_id: 0,
        };
        // SAFETY: a valid request and a buffer of the length given (u64-aligned, as the
        // kernel's struct statmount needs).
        let rc = unsafe {
            libc::syscall(
                uapi::__NR_statmount as libc::c_long,
                &req as *const uapi::mnt_id_req,
                buf.as_mut_ptr(),
                words * 8,
                0u32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOENT) => return Ok(None),
                Some(libc::EOVERFLOW) if words < 1 << 20 => {
                    words *= 4;
                    continue;
                }
                _ => {
                    return Err(HostError::MountTable(format!(
                        "statmount of mount {id}: {err}"
                    )))
                }
            }
        }
        // SAFETY: the kernel wrote a struct statmount at the start of `buf`, which is
        // aligned and at least that long.
        let header: uapi::statmount = unsafe { std::ptr::read(buf.as_ptr().cast()) };
        // SAFETY: `buf` is `words * 8` bytes; viewed as bytes to copy the strings out.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), words * 8) };
        let end = (header.size as usize).clamp(header_len, bytes.len());
        return Ok(Some(Answer {
            header,
            strings: bytes[header_len..end].to_vec(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u64, id: u64) -> Vec<u8> {
        let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
        let mut out = vec![0u8; meta_len];
        out.extend_from_slice(&[FAN_EVENT_INFO_TYPE_MNT, 0, 16, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&id.to_ne_bytes());
        let meta = libc::fanotify_event_metadata {
            event_len: out.len() as u32,
            vers: 3,
            reserved: 0,
            metadata_len: meta_len as u16,
            mask,
            fd: -1,
            pid: 0,
        };
        // SAFETY: writes one metadata struct into the space kept for it.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), meta) };
        out
    }

    #[test]
    fn events_name_the_mounts_attached_detached_and_moved() {
        let mut bytes = event(FAN_MNT_ATTACH, 7);
        bytes.extend(event(FAN_MNT_DETACH, 8));
        bytes.extend(event(FAN_MNT_ATTACH | FAN_MNT_DETACH, 9));
        let mut changes = Changes::default();
        parse_events(&bytes, &mut changes);
        assert_eq!(changes.attached, [7, 9]);
        assert_eq!(changes.detached, [8, 9]);
        assert!(!changes.lost);
        let overflow = libc::fanotify_event_metadata {
            event_len: std::mem::size_of::<libc::fanotify_event_metadata>() as u32,
            vers: 3,
            reserved: 0,
            metadata_len: std::mem::size_of::<libc::fanotify_event_metadata>() as u16,
            mask: libc::FAN_Q_OVERFLOW,
            fd: -1,
            pid: 0,
        };
        let mut bytes = vec![0u8; overflow.event_len as usize];
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), overflow) };
        parse_events(&bytes, &mut changes);
        assert!(changes.lost);
    }
}
