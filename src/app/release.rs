//! `volumed release PV` (file mode): gathers what says whether a released volume may be made
//! available (the manifests, the cleanup journal, the mount table, discovery), lets the pure
//! `binding_store::release` decide, and records the answer under the binding record's lock.

use anyhow::Context;

use super::inspect::discover_now;
use super::wiring::{ensure_manifest_dir, file_source};
use crate::config::Settings;
use crate::desired::binding_store::{release as release_in, BindingStore, ReleaseCheck};
use crate::desired::resolve::{consumed_claims, our_pods};
use crate::host::Mounter;
use crate::localpv::cleaner::read_journal;
use crate::localpv::cleanup::releases;
use crate::localpv::discover::is_local_pv_name;
use crate::model::mountinfo::PodMounts;

/// What a release did: the volume and the claim it was bound to.
pub struct Released {
    pub pv: String,
    pub claim: String,
}

/// Why a release was not made.
pub enum NotReleased {
    /// Refused, with why; nothing changed.
    Refused(String),
    /// It could not be decided (an unreadable record, a manifest error, ...).
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for NotReleased {
    fn from(err: E) -> Self {
        NotReleased::Failed(err.into())
    }
}

pub async fn release(
    settings: &Settings,
    pv: &str,
    mounter: &std::sync::Arc<dyn Mounter>,
) -> Result<Released, NotReleased> {
    let Some(dir) = &settings.manifests else {
        return Err(NotReleased::Failed(anyhow::anyhow!("`volumed release` is for file mode (--manifests DIR): in API mode a Released PV is the cluster's, made available with kubectl (delete it, or remove its claimRef)")));
    };
    ensure_manifest_dir(settings)?;
    let source = file_source(settings, dir, false, mounter);
    let manifests = crate::desired::manifest::load_dir(dir);
    if let Some(err) = manifests.errors.iter().chain(&manifests.refused).next() {
        return Err(NotReleased::Refused(format!("the manifests have errors, and a claim in a broken file may still hold {pv}: fix them first ({err})")));
    }
    let claims = manifests.claims.keys().cloned().collect();
    let named_by_pods = consumed_claims(&our_pods(&manifests, &source.node));
    let journal = read_journal(&settings.root_dir).map_err(anyhow::Error::msg)?;
    let table = mounter.mount_table()?;
    let mounts = PodMounts::index(&table, &settings.root_dir);
    let mounted_at = mounts
        .volumes
        .iter()
        .filter(|(key, _)| key.name == pv)
        .map(|(_, entries)| entries)
        .chain(mounts.globals.get(pv))
        .find_map(|entries| entries.first().map(|e| e.mount_point.clone()));
    // Whether `volumed run` would clean it, were it released with policy Delete: by its name
    // alone (its disk may be unmounted for a moment), or as discovery finds it now.
    let local_disk = is_local_pv_name(pv)
        || match &settings.local_pv {
            Some(config) if !config.classes.is_empty() => {
                let found = discover_now(settings, mounter.as_ref())
                    .await
                    .context("cannot look at the local disks")?;
                let released: Vec<_> = found
                    .volumes
                    .into_iter()
                    .filter(|v| v.metadata.name.as_deref() == Some(pv))
                    .map(|mut v| {
                        v.status.get_or_insert_with(Default::default).phase =
                            Some("Released".into());
                        if let Some(spec) = v.spec.as_mut() {
                            spec.persistent_volume_reclaim_policy = Some("Delete".into());
                        }
                        v
                    })
                    .collect();
                !releases(&settings.node.name, config, &released)
                    .0
                    .is_empty()
            }
            _ => false,
        };
    let check = ReleaseCheck {
        claims: &claims,
        named_by_pods: &named_by_pods,
        cleaning: journal.cleaning.contains_key(pv),
        local_disk,
        mounted_at,
    };
    let store = BindingStore::new(&settings.root_dir);
    let decided = store.update(|recorded| match release_in(recorded, pv, &check) {
        Ok(claim) => (true, Ok(claim)),
        Err(why) => (false, Err(why)),
    })?;
    match decided {
        Ok(claim) => Ok(Released {
            pv: pv.to_string(),
            claim,
        }),
        Err(why) => Err(NotReleased::Refused(why.to_string())),
    }
}
