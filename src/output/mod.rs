//! What the commands print, in one place: data (tables, JSON) for stdout, and for stderr the
//! problems and what cannot be done. Paths are shown relative to the root dir unless `wide`.

pub mod devices;
pub mod localpv;
pub mod table;

use std::path::Path;

use self::table::render;
use crate::app::inspect::{Cannot, PlanReport};
use crate::desired::DesiredState;
use crate::executor::preview::Preview;
use crate::model::op::Op;
use crate::model::{self, Plugin};
use crate::reconcile::status::{StatusRow, VolumeState};
use crate::sync_loop::Report;

/// A command's output: what goes to stdout and what to stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    pub stderr: String,
}

/// How a path below the root dir is shown: relative to it, or whole when `wide`.
pub struct Paths<'a> {
    pub root: &'a Path,
    pub wide: bool,
}

impl Paths<'_> {
    fn show(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(rel) if !self.wide => rel.display().to_string(),
            _ => path.display().to_string(),
        }
    }
}

/// `volumed plan` as a table: the ops on stdout, each set-up's expected outcome in DETAIL;
/// what cannot be done and the problems on stderr.
pub fn plan_table(paths: &Paths, report: &PlanReport) -> Printed {
    let rows: Vec<[String; 4]> = report
        .ops
        .iter()
        .map(|planned| op_row(paths, &planned.op, planned.preview.as_ref()))
        .collect();
    let stdout = if rows.is_empty() && report.can_do_everything() {
        "nothing to do: the host matches the desired state\n".to_string()
    } else if rows.is_empty() {
        "nothing to do now (see below for what cannot be done)\n".to_string()
    } else {
        render(&["OP", "POD", "PATH", "DETAIL"], &rows)
    };
    Printed {
        stdout,
        stderr: cannot(&report.cannot()) + &problems(&report.desired),
    }
}

/// `volumed plan -o json`: the desired state, the ops with their expected outcome, what cannot
/// be done, and whether everything can.
pub fn plan_json(report: &PlanReport) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::json!({
        "desired": &report.desired,
        "ops": &report.ops,
        "cannot": report.cannot(),
        "canDoEverything": report.can_do_everything(),
    }))
}

fn op_row(paths: &Paths, op: &Op, preview: Option<&Preview>) -> [String; 4] {
    let global = |pv_name: &str| {
        paths.show(&model::global_mount_path(
            paths.root,
            &Plugin::LocalVolume,
            pv_name,
        ))
    };
    match op {
        Op::SetUp { volume } => {
            let detail = match (preview, &volume.spec) {
                (Some(Preview::Formats { device, fs_type }), _) => {
                    format!("format {fs_type} {}: blank, then mount", device.display())
                }
                (Some(Preview::Fails { .. }), _) => "will fail (see below)".to_string(),
                (_, spec) => spec.describe(),
            };
            [
                op.verb().into(),
                volume.pod.to_string(),
                paths.show(&volume.key.path(paths.root)),
                detail,
            ]
        }
        Op::Unmount { key, nested, .. } => [
            op.verb().into(),
            key.pod_uid.clone(),
            paths.show(&nested.clone().unwrap_or_else(|| key.path(paths.root))),
            String::new(),
        ],
        Op::RemoveVolumeDir { key, .. } => [
            op.verb().into(),
            key.pod_uid.clone(),
            paths.show(&key.path(paths.root)),
            String::new(),
        ],
        Op::RemovePodDir { pod_uid } => [
            op.verb().into(),
            pod_uid.clone(),
            paths.show(&model::pod_dir(paths.root, pod_uid)),
            String::new(),
        ],
        Op::ClaimPodDir { pod } => [
            op.verb().into(),
            pod.to_string(),
            paths.show(&model::pod_dir(paths.root, &pod.uid)),
            "record its owner".into(),
        ],
        Op::UnmountGlobal { pv_name } | Op::RemoveGlobalDir { pv_name } => [
            op.verb().into(),
            "-".into(),
            global(pv_name),
            format!("PersistentVolume {pv_name}"),
        ],
    }
}

/// One line per volume that cannot be set up, with where its pod was defined.
fn cannot(list: &[Cannot]) -> String {
    let mut out = String::new();
    for c in list {
        let origin = c
            .origin
            .as_ref()
            .map_or(String::new(), |o| format!(" ({o})"));
        out.push_str(&format!(
            "cannot set up {} volume {}{origin}: {}\n",
            c.pod, c.volume, c.reason
        ));
    }
    out
}

/// `volumed status` as a table; an empty one says so. REASON says why a volume is not
/// mounted; a mounted memory-backed emptyDir shows what sized it.
pub fn status_table(paths: &Paths, rows: &[StatusRow], desired: &DesiredState) -> Printed {
    let stdout = if rows.is_empty() && desired.complete {
        "no volumes: no pod of this node has a volume, and none is left on the host\n".to_string()
    } else if rows.is_empty() {
        "no volumes on the host; what the pods want is not known (see below)\n".to_string()
    } else {
        rows_table(paths, rows)
    };
    Printed {
        stdout,
        stderr: problems(desired),
    }
}

/// Status rows as an aligned table.
pub fn rows_table(paths: &Paths, rows: &[StatusRow]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let state = serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let reason = if r.state == VolumeState::Mounted && r.detail.starts_with("tmpfs") {
                r.detail.clone()
            } else {
                r.reason.clone()
            };
            let path = if r.path == "-" {
                r.path.clone()
            } else {
                paths.show(Path::new(&r.path))
            };
            [
                r.pod.clone(),
                r.volume.clone(),
                r.kind.clone(),
                path,
                state,
                reason,
            ]
        })
        .collect();
    render(
        &["POD", "VOLUME", "KIND", "PATH", "STATE", "REASON"],
        &cells,
    )
}

/// The desired state's warnings and problems, for stderr.
pub fn problems(desired: &DesiredState) -> String {
    let mut out = String::new();
    for warning in &desired.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for problem in &desired.problems {
        out.push_str(&format!("error: {problem}\n"));
    }
    if !desired.complete {
        out.push_str("the desired state is incomplete: nothing is torn down until the errors above are fixed\n");
    }
    out
}

/// What `run --once` prints at the end: on stdout a line when everything is in place; on
/// stderr, when not, the volumes that are not and the other failures.
pub fn once_summary(paths: &Paths, report: &Report) -> Printed {
    let in_place = report
        .rows
        .iter()
        .filter(|r| r.state == VolumeState::Mounted)
        .count();
    if report.converged() {
        return Printed {
            stdout: format!(
                "volumed: {in_place} volume(s) of {} pod(s) in place\n",
                report.desired.pods.len()
            ),
            stderr: problems(&report.desired),
        };
    }
    let bad: Vec<StatusRow> = report
        .rows
        .iter()
        .filter(|r| !matches!(r.state, VolumeState::Mounted | VolumeState::Unmanaged))
        .cloned()
        .collect();
    let mut stderr = format!(
        "volumed: not converged ({in_place} volume(s) in place)\n{}{}",
        rows_table(paths, &bad),
        problems(&report.desired)
    );
    for (subject, error) in &report.other_failures {
        stderr.push_str(&format!("{subject}: {error}\n"));
    }
    Printed {
        stdout: String::new(),
        stderr,
    }
}
