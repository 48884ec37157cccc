//! `volumed check-config`: the effective settings and where each came from, after the config
//! file was checked (its flag keys, and its `[local_pv]` section).

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::cli::CheckConfigArgs;
use crate::config::file::{Effective, Source};
use crate::config::Settings;

pub fn check_config(
    args: CheckConfigArgs,
    settings: &BTreeMap<String, Effective>,
) -> anyhow::Result<ExitCode> {
    // Reads and checks the whole file, [local_pv] included.
    let resolved = Settings::from_args(&args.common, false)?;
    let mut out = String::new();
    for (key, effective) in settings {
        let value = match effective.values.as_slice() {
            [] => {
                out.push_str(&format!("# {key} is not set\n"));
                continue;
            }
            [one] => toml_string(one),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|v| toml_string(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let from = match &effective.source {
            Source::Flag => "flag".to_string(),
            Source::Env(name) => format!("env {name}"),
            Source::File(path) => format!("file {}", path.display()),
            Source::Default => "default".to_string(),
        };
        out.push_str(&format!("{key} = {value}  # {from}\n"));
    }
    let classes = resolved.local_pv.map_or(0, |c| c.classes.len());
    out.push_str(&format!("# local_pv: {classes} class(es)\n"));
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
