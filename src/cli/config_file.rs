//! The configuration file k3s users reach for: `/etc/bramble/config.yaml` whose keys are
//! the command's long flags without the dashes (`node-label: [a=b]`, `disable-agent: true`),
//! then every `config.yaml.d/*.yaml` beside it in name order, a later file replacing a key
//! and `key+:` appending to a list. Flags given on the command line win, and so do flags
//! set through their environment variable (`BRAMBLE_TOKEN`).
//!
//! The files become arguments placed before the command line's own, so clap checks the
//! values exactly as it checks flags, with the same messages.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;
use serde_yaml::Value;

/// Where the file is looked for when neither `--config` nor `$BRAMBLE_CONFIG_FILE` says.
pub const DEFAULT_PATH: &str = "/etc/bramble/config.yaml";

/// What is wrong with a configuration file, said so that the fix is plain.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not YAML: {1}")]
    Yaml(PathBuf, #[source] serde_yaml::Error),
    #[error("{0}: the file must be a mapping of flag names to values, such as `node-label: [role=edge]`")]
    NotMapping(PathBuf),
    #[error(
        "{0}: `{1}` is not a flag of `bramble {2}` (keys are the long flags without their dashes; see `bramble {2} --help`)"
    )]
    UnknownKey(PathBuf, String, String),
    #[error("{0}: `{1}` takes {2}")]
    BadValue(PathBuf, String, &'static str),
}

/// One flag's value from the files, and the file it came from last (for messages).
struct Setting {
    key: String,
    value: Value,
    from: PathBuf,
}

/// The command line with the configuration files' settings put in front of its own flags.
/// Only commands with a `--config` flag read files; others are returned unchanged.
pub fn with_config(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    let Some(name) = args.get(1).and_then(|a| a.to_str()).map(str::to_string) else { return Ok(args) };
    let Some(command) = cli.find_subcommand(&name) else { return Ok(args) };
    if !command.get_arguments().any(|a| a.get_long() == Some("config")) {
        return Ok(args);
    }
    let given: Vec<String> = args[2..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let (path, explicit) = match flag_value(&given, "config", Some('c')) {
        Some(p) => (PathBuf::from(p), true),
        None => match std::env::var_os("BRAMBLE_CONFIG_FILE").filter(|p| !p.is_empty()) {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        },
    };
    let settings = read_all(&path, explicit)?;
    let mut out: Vec<OsString> = args[..2].to_vec();
    for s in settings {
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(s.key.as_str()) && s.key != "config")
        else {
            return Err(ConfigError::UnknownKey(s.from, s.key, name));
        };
        let on_command_line =
            flag_value(&given, &s.key, arg.get_short()).is_some() || given.iter().any(|g| g == &format!("--{}", s.key));
        let from_env = arg.get_env().is_some_and(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if on_command_line || from_env {
            continue;
        }
        let flag = format!("--{}", s.key);
        match (arg.get_action(), &s.value) {
            (ArgAction::SetTrue, Value::Bool(true)) => out.push(flag.into()),
            (ArgAction::SetTrue, Value::Bool(false)) => {}
            (ArgAction::SetTrue, _) => return Err(ConfigError::BadValue(s.from, s.key, "true or false")),
            (ArgAction::Append, Value::Sequence(items)) => {
                for item in items {
                    let v = scalar(item).ok_or_else(|| {
                        ConfigError::BadValue(s.from.clone(), s.key.clone(), "a list of plain values")
                    })?;
                    out.push(flag.clone().into());
                    out.push(v.into());
                }
            }
            (_, Value::Sequence(_)) => return Err(ConfigError::BadValue(s.from, s.key, "one value, not a list")),
            (_, v) => {
                let v =
                    scalar(v).ok_or_else(|| ConfigError::BadValue(s.from.clone(), s.key.clone(), "a plain value"))?;
                out.push(flag.into());
                out.push(v.into());
            }
        }
    }
    out.extend(args.into_iter().skip(2));
    Ok(out)
}

/// The value of `--long V`, `--long=V` or `-s V` on the command line.
fn flag_value(args: &[String], long: &str, short: Option<char>) -> Option<String> {
    let eq = format!("--{long}=");
    let dashed = format!("--{long}");
    let short = short.map(|c| format!("-{c}"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_string());
        }
        if *a == dashed || short.as_ref() == Some(a) {
            return it.next().cloned().or(Some(String::new()));
        }
        if let Some(s) = &short
            && let Some(v) = a.strip_prefix(s.as_str())
            && !v.is_empty()
        {
            return Some(v.trim_start_matches('=').to_string());
        }
    }
    None
}

/// A YAML scalar as the text a flag takes.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The settings of `path` and its drop-ins merged in order (a missing default file is no
/// file; a missing file someone named is an error).
fn read_all(path: &Path, explicit: bool) -> Result<Vec<Setting>, ConfigError> {
    let mut files = Vec::new();
    match std::fs::metadata(path) {
        Ok(_) => files.push(path.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
        Err(e) => return Err(ConfigError::Read(path.to_path_buf(), e)),
    }
    let mut dropins = PathBuf::from(path).into_os_string();
    dropins.push(".d");
    let dropins = PathBuf::from(dropins);
    match std::fs::read_dir(&dropins) {
        Ok(entries) => {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ConfigError::Read(dropins, e)),
    }
    let mut settings: Vec<Setting> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Read(file.clone(), e))?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Yaml(file.clone(), e))?;
        let map = match doc {
            Value::Mapping(m) => m,
            // An empty file (or one of comments only) sets nothing.
            Value::Null => continue,
            _ => return Err(ConfigError::NotMapping(file)),
        };
        for (k, value) in map {
            let Some(key) = k.as_str() else { return Err(ConfigError::NotMapping(file)) };
            let (key, append) = match key.strip_suffix('+') {
                Some(k) => (k.to_string(), true),
                None => (key.to_string(), false),
            };
            match settings.iter_mut().find(|s| s.key == key) {
                Some(s) if append => {
                    let mut items = match std::mem::take(&mut s.value) {
                        Value::Sequence(items) => items,
                        Value::Null => Vec::new(),
                        one => vec![one],
                    };
                    match value {
                        Value::Sequence(more) => items.extend(more),
                        one => items.push(one),
                    }
                    s.value = Value::Sequence(items);
                    s.from = file.clone();
                }
                Some(s) => {
                    s.value = value;
                    s.from = file.clone();
                }
                None => settings.push(Setting { key, value, from: file.clone() }),
            }
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cli() -> Command {
        Command::new("bramble").subcommand(
            Command::new("server")
                .arg(Arg::new("config").long("config").short('c'))
                .arg(Arg::new("data-dir").long("data-dir").short('d'))
                .arg(Arg::new("node-label").long("node-label").action(ArgAction::Append))
                .arg(Arg::new("disable-agent").long("disable-agent").action(ArgAction::SetTrue))
                .arg(Arg::new("token").long("token").env("BRAMBLE_TEST_CONFIG_TOKEN_UNSET"))
                .arg(Arg::new("max-watches").long("max-watches")),
        )
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0); // best effort: a temp directory
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("bramble-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d); // a leftover from an earlier run, if any
        std::fs::create_dir_all(d.join("config.yaml.d")).unwrap();
        Dir(d)
    }

    fn run(args: &[&str]) -> Result<Vec<String>, ConfigError> {
        let args = args.iter().map(OsString::from).collect();
        with_config(args, &cli()).map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn files_become_flags_and_the_command_line_wins() {
        let d = dir("merge");
        let cfg = d.0.join("config.yaml");
        std::fs::write(&cfg, "data-dir: /srv/b\nnode-label: [a=1]\ndisable-agent: true\nmax-watches: 50\n").unwrap();
        std::fs::write(d.0.join("config.yaml.d/10-more.yaml"), "node-label+: [b=2]\nmax-watches: 60\n").unwrap();
        std::fs::write(d.0.join("config.yaml.d/20-off.yaml"), "disable-agent: false\n# only a comment\n").unwrap();
        std::fs::write(d.0.join("config.yaml.d/README"), "not yaml: [").unwrap();
        let c = cfg.to_str().unwrap();
        let out = run(&["bramble", "server", "--config", c, "-d", "/mine"]).unwrap();
        assert_eq!(
            out,
            [
                "bramble",
                "server",
                "--node-label",
                "a=1",
                "--node-label",
                "b=2",
                "--max-watches",
                "60",
                "--config",
                c,
                "-d",
                "/mine"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_are_refused_with_the_file() {
        let d = dir("bad");
        let cfg = d.0.join("config.yaml");
        let c = cfg.to_str().unwrap();
        std::fs::write(&cfg, "data_dir: /x\n").unwrap();
        let e = run(&["bramble", "server", "--config", c]).unwrap_err().to_string();
        assert!(e.contains("`data_dir` is not a flag of `bramble server`") && e.contains(c), "{e}");
        std::fs::write(&cfg, "data-dir: [a, b]\n").unwrap();
        assert!(run(&["bramble", "server", "--config", c]).unwrap_err().to_string().contains("one value"));
        std::fs::write(&cfg, "disable-agent: yes please\n").unwrap();
        assert!(run(&["bramble", "server", "--config", c]).unwrap_err().to_string().contains("true or false"));
        std::fs::write(&cfg, "- a\n- b\n").unwrap();
        assert!(run(&["bramble", "server", "--config", c]).unwrap_err().to_string().contains("mapping"));
        std::fs::write(&cfg, "config: /elsewhere\n").unwrap();
        assert!(run(&["bramble", "server", "--config", c]).is_err(), "a file cannot name another file");
        let missing = d.0.join("nope.yaml");
        let e = run(&["bramble", "server", "--config", missing.to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("nope.yaml"), "{e}");
    }

    #[test]
    fn other_commands_are_left_alone() {
        assert_eq!(run(&["bramble", "kubectl", "get", "pods"]).unwrap(), ["bramble", "kubectl", "get", "pods"]);
        assert_eq!(run(&["bramble"]).unwrap(), ["bramble"]);
    }

    #[test]
    fn flags_are_found_in_every_spelling() {
        let a: Vec<String> = ["--data-dir=/a", "-c", "/f", "-d/b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flag_value(&a, "data-dir", Some('d')).as_deref(), Some("/a"));
        assert_eq!(flag_value(&a, "config", Some('c')).as_deref(), Some("/f"));
        assert_eq!(flag_value(&a[3..], "data-dir", Some('d')).as_deref(), Some("/b"));
        assert_eq!(flag_value(&a, "token", None), None);
    }
}
