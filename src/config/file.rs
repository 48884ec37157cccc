//! One config for every flag: the config file's top-level keys are the long flags (`root_dir`
//! for `--root-dir`), and they become the command line's defaults, so a flag wins over its
//! environment variable, which wins over the file, which wins over the built-in default. Each
//! value is checked by the flag's own parser, and an error names the key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::cli::Cli;

/// Read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/volumed/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{0}")]
    CommandLine(#[from] clap::Error),
}

/// Flags that are not settings: how a command runs, or which file to read.
const NOT_SETTINGS: [&str; 6] = ["config", "once", "help", "version", "output", "wide"];

/// Where each effective value came from, by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

/// The config file's flag keys, as strings a flag would be given.
#[derive(Clone, Debug, Default)]
pub struct FileDefaults {
    pub path: Option<PathBuf>,
    pub values: BTreeMap<String, Vec<String>>,
}

/// Every settings key (long flag, `-` as `_`) of any subcommand or global, with an example
/// of the subcommand that has it.
fn settings_keys() -> BTreeMap<String, clap::Arg> {
    let command = Cli::command();
    let mut keys = BTreeMap::new();
    let globals = command.get_arguments().cloned().collect::<Vec<_>>();
    let subs = command
        .get_subcommands()
        .flat_map(|s| s.get_arguments().cloned().collect::<Vec<_>>());
    for arg in globals.into_iter().chain(subs) {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) {
            continue;
        }
        keys.insert(long.replace('-', "_"), arg);
    }
    keys
}

/// Whether `key` is a settings key (a long flag) rather than a section.
pub fn is_settings_key(key: &str) -> bool {
    settings_keys().contains_key(key)
}

/// The flag keys of the config file at `path` (the rest of the file, `[local_pv]`, is read
/// by `localpv::config`), each checked by its flag's parser.
pub fn load(path: &Path) -> Result<FileDefaults, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |key: &str, message: String| FileError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid("(syntax)", e.message().to_string()))?;
    let keys = settings_keys();
    let mut values = BTreeMap::new();
    for (key, value) in &table {
        if key == "local_pv" {
            continue;
        }
        let Some(arg) = keys.get(key) else {
            return Err(invalid(
                key,
                "unknown key: the keys are the long flags (root_dir for --root-dir) and [local_pv]"
                    .into(),
            ));
        };
        let strings = as_flag_values(value).map_err(|why| invalid(key, why))?;
        let many = matches!(arg.get_action(), clap::ArgAction::Append);
        if strings.len() != 1 && !many {
            return Err(invalid(
                key,
                format!("takes one value, not {}", strings.len()),
            ));
        }
        // The flag's own parser judges the value, as if it were given on the command line.
        let long = arg.get_long().unwrap_or_default().to_string();
        let alone = clap::Command::new("volumed").no_binary_name(true).arg(
            clap::Arg::new("value")
                .long(long.clone())
                .value_parser(arg.get_value_parser().clone())
                .action(clap::ArgAction::Append),
        );
        for one in &strings {
            alone
                .clone()
                .try_get_matches_from([format!("--{long}"), one.clone()])
                .map_err(|e| invalid(key, first_line(&e.to_string())))?;
        }
        values.insert(key.clone(), strings);
    }
    Ok(FileDefaults {
        path: Some(path.to_path_buf()),
        values,
    })
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

/// A TOML value as what a flag would be given: a table of labels as `k=v,...`, a list as
/// one value each.
fn as_flag_values(value: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("{} is not a value a flag takes", other.type_str())),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        toml::Value::Table(pairs) => {
            let labels: Result<Vec<String>, String> = pairs
                .iter()
                .map(|(k, v)| one(v).map(|v| format!("{k}={v}")))
                .collect();
            Ok(vec![labels?.join(",")])
        }
        other => Ok(vec![one(other)?]),
    }
}

/// The config file the command line points at: `--config` (or `VOLUMED_CONFIG`) when given,
/// else the default one when it exists.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let cli = Cli::try_parse_from(args).ok()?;
    let given = cli.command.common().and_then(|c| c.config.clone());
    given.or_else(|| {
        let default = Path::new(DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    })
}

/// One effective setting: its values as a flag would take them, and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub values: Vec<String>,
    pub source: Source,
}

/// Parses `args` with the file's values as defaults. Returns the command line and each
/// settings value with where it came from.
pub fn parse_with(
    args: &[OsString],
    file: &FileDefaults,
) -> Result<(Cli, BTreeMap<String, Effective>), FileError> {
    let mut command = Cli::command();
    for (key, values) in &file.values {
        let long = key.replace('_', "-");
        let apply = |arg: clap::Arg| -> clap::Arg {
            if arg.get_long() == Some(long.as_str()) {
                arg.default_values(values.iter().map(|v| clap::builder::OsStr::from(v.clone())))
            } else {
                arg
            }
        };
        command = command.mut_args(apply);
        let subs: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for sub in subs {
            command = command.mut_subcommand(sub, |s| s.mut_args(apply));
        }
    }
    let matches = command.try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let keys = settings_keys();
    let by_id: BTreeMap<String, (&String, &clap::Arg)> = keys
        .iter()
        .map(|(key, arg)| (arg.get_id().as_str().to_string(), (key, arg)))
        .collect();
    let mut sources = BTreeMap::new();
    let mut note = |m: &ArgMatches| {
        for id in m.ids() {
            let Some((key, arg)) = by_id.get(id.as_str()) else {
                continue;
            };
            let Some(source) = m.value_source(id.as_str()) else {
                continue;
            };
            let from = match source {
                ValueSource::CommandLine => Source::Flag,
                ValueSource::EnvVariable => Source::Env(
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ if file.values.contains_key(*key) => {
                    Source::File(file.path.clone().unwrap_or_default())
                }
                _ => Source::Default,
            };
            let values = m
                .get_raw(id.as_str())
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            sources.insert(
                (*key).clone(),
                Effective {
                    values,
                    source: from,
                },
            );
        }
    };
    note(&matches);
    let sub = matches.subcommand().map(|(_, sub)| sub);
    if let Some(sub) = sub {
        note(sub);
    }
    // The settings this command takes and nothing set: shown as not set.
    for (id, (key, _)) in &by_id {
        let defined =
            matches.try_get_raw(id).is_ok() || sub.is_some_and(|s| s.try_get_raw(id).is_ok());
        if defined && !sources.contains_key(*key) {
            let unset = Effective {
                values: Vec::new(),
                source: Source::Default,
            };
            sources.insert((*key).clone(), unset);
        }
    }
    Ok((cli, sources))
}
