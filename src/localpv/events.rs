//! Events on local PVs (a disk gone, a disk back, a cleanup that failed), beside the log: each
//! piece of news is sent once, and again only when it changes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::shared::lock;

pub const DISK_GONE: &str = "LocalDiskGone";
pub const DISK_BACK: &str = "LocalDiskBack";
pub const CLEANUP_FAILED: &str = "VolumeCleanupFailed";

pub struct PvEvents {
    client: Client,
    reporter: Reporter,
    /// The last message sent for each PV and reason.
    told: Mutex<BTreeMap<(String, &'static str), String>>,
}

impl PvEvents {
    pub fn new(client: Client, node_name: &str) -> PvEvents {
        PvEvents {
            client,
            reporter: Reporter {
                controller: "volumed".into(),
                instance: Some(node_name.to_string()),
            },
            told: Mutex::default(),
        }
    }

    /// Records `message` on the PV unless it was the last one sent for this reason.
    pub async fn tell(&self, pv: &PersistentVolume, reason: &'static str, message: String) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let key = (name.clone(), reason);
        if lock(&self.told).get(&key) == Some(&message) {
            return;
        }
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolume".into()),
            name: Some(name.clone()),
            uid: pv.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: if reason == DISK_BACK {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: reason.into(),
            note: Some(message.clone()),
            action: if reason == CLEANUP_FAILED {
                "Clean"
            } else {
                "Discover"
            }
            .into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                lock(&self.told).insert(key, message);
            }
            Err(err) => {
                tracing::warn!(pv = name, reason, %err, "cannot record an Event on a local PV; the log has the same news")
            }
        }
    }

    /// Forgets what was told for this PV and reason, so the same news later is sent again.
    pub fn forget(&self, pv: &str, reason: &'static str) {
        lock(&self.told).remove(&(pv.to_string(), reason));
    }
}
