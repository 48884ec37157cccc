//! Validation of mount options taken from objects (a PV's `mountOptions`): each must be one
//! plain option, so none can smuggle in another option or an argument.

/// Why a mount option was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mount option {option:?} is refused: {why}; fix the PersistentVolume's mountOptions")]
pub struct MountOptionError {
    pub option: String,
    pub why: &'static str,
}

/// Accepts options such as `noatime`, `data=ordered`, `nfsvers=4.1`, `context=system_u:object_r:x`.
pub fn check_mount_options(options: &[String]) -> Result<(), MountOptionError> {
    let mut seen = std::collections::BTreeSet::new();
    for option in options {
        let fail = |why| {
            Err(MountOptionError {
                option: option.clone(),
                why,
            })
        };
        let name = option.split('=').next().unwrap_or_default();
        if option.is_empty() || name.is_empty() {
            return fail("it is empty");
        }
        if option.starts_with('-') {
            return fail("it starts with '-', which a mount helper would read as a flag");
        }
        if option.contains(',') {
            return fail(
                "it contains ',', which would add another option; list options separately",
            );
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:=/+@-".contains(c);
        if !option.chars().all(allowed) {
            return fail("it contains a character outside letters, digits and _.:=/+@-");
        }
        if !seen.insert(name) {
            return fail("it is given twice");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_options_pass_and_injection_attempts_are_refused() {
        assert_eq!(
            check_mount_options(&options(&[
                "noatime",
                "data=ordered",
                "nfsvers=4.1",
                "context=system_u:object_r:x_t:s0"
            ])),
            Ok(())
        );
        for bad in ["", "ro,exec", "-o", "a b", "x;rm", "=x", "noatime\n"] {
            assert!(check_mount_options(&options(&[bad])).is_err(), "{bad:?}");
        }
        assert!(check_mount_options(&options(&["noatime", "noatime"])).is_err());
        assert!(check_mount_options(&options(&["data=ordered", "data=journal"])).is_err());
    }
}

/// NFS mount options volumed passes to the mount helper (nfs(5)); anything else is refused
/// rather than handed to a program running as root. Left out on purpose: `bg`/`fg` (a
/// backgrounded mount.nfs escapes every deadline and reports success with nothing mounted)
/// and `addr`/`mounthost` (they send the mount to another host than the volume names).
const NFS_OPTIONS: &[&str] = &[
    "vers",
    "nfsvers",
    "minorversion",
    "proto",
    "port",
    "mountport",
    "mountproto",
    "mountvers",
    "timeo",
    "retrans",
    "retry",
    "hard",
    "soft",
    "softerr",
    "intr",
    "nointr",
    "rsize",
    "wsize",
    "bsize",
    "ac",
    "noac",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "lookupcache",
    "sec",
    "lock",
    "nolock",
    "local_lock",
    "tcp",
    "udp",
    "rdma",
    "cto",
    "nocto",
    "acl",
    "noacl",
    "rdirplus",
    "nordirplus",
    "sharecache",
    "nosharecache",
    "resvport",
    "noresvport",
    "fsc",
    "nofsc",
    "nconnect",
    "max_connect",
    "clientaddr",
    "namlen",
    "ro",
    "rw",
    "noatime",
    "atime",
    "nodiratime",
    "relatime",
    "strictatime",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "sync",
    "async",
    "xprtsec",
    "trunkdiscovery",
    "notrunkdiscovery",
    "posix",
    "noposix",
];

/// `check_mount_options` plus: every option must be a known NFS option (nfs(5)).
pub fn check_nfs_options(options: &[String]) -> Result<(), MountOptionError> {
    check_mount_options(options)?;
    for option in options {
        let name = option.split('=').next().unwrap_or_default();
        if !NFS_OPTIONS.contains(&name) {
            return Err(MountOptionError {
                option: option.clone(),
                why: "it is not an NFS mount option volumed knows (see nfs(5))",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod nfs_tests {
    use super::*;

    #[test]
    fn nfs_options_are_checked_against_nfs5() {
        let ok: Vec<String> = ["nfsvers=4.1", "hard", "timeo=600", "sec=krb5p", "noatime"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(check_nfs_options(&ok), Ok(()));
        for bad in [
            "nfsvers=4,exec",
            "hard soft",
            "-fsomething",
            "helper=/bin/sh",
            "uid=0",
            "",
            "sec=sys sec=krb5",
            "bg",
            "fg",
            "addr=10.0.0.9",
            "mounthost=evil",
        ] {
            let err = check_nfs_options(&[bad.to_string()]).expect_err(bad);
            assert_eq!(err.option, bad);
        }
        let twice: Vec<String> = ["timeo=1", "timeo=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(check_nfs_options(&twice).unwrap_err().why.contains("twice"));
    }
}
