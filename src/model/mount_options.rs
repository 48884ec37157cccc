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
