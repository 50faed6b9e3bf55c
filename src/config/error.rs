//! What is wrong with a config file, as `FILE:LINE: KEY: message` lines.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The I/O error is part of the message and
    /// deliberately not a `source`, so an error chain does not print it twice;
    /// match on the variant to see its kind (e.g. `NotFound`).
    #[error("{}: cannot read: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The file was read but is not a valid config; every problem found, in
    /// line order, one per line of the message.
    #[error("{}", IssueLines { path, issues })]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The problems found, in line order; empty for [`ConfigError::Read`].
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }

    /// A top-level `key` of the file at `path` that this host cannot honour
    /// (found only once the manager runs: its unit's settings). Points at
    /// the key's line, or line 1 when the key is left at its default.
    pub fn host(path: &Path, key: &str, message: String) -> ConfigError {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let line = text
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map_or(1, |i| i + 1);
        ConfigError::Invalid {
            path: path.to_owned(),
            issues: vec![ConfigIssue {
                line,
                key: Some(key.to_owned()),
                message,
            }],
        }
    }

    /// The file as the caller named it.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }
}

/// One problem at one place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigIssue {
    /// 1-based line of the offending key or value (for a missing key, the
    /// header of the table that should hold it).
    pub line: usize,
    /// Dotted key path (`workers.resize.min`, `workers.a.command[1]`); `None`
    /// for problems of the file as a whole, such as TOML syntax errors.
    pub key: Option<String>,
    /// What is wrong, and where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    /// `LINE: KEY: message`; [`ConfigError`] puts `FILE:` in front.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.line, self.message),
            None => write!(f, "{}: {}", self.line, self.message),
        }
    }
}

struct IssueLines<'a> {
    path: &'a Path,
    issues: &'a [ConfigIssue],
}

impl fmt::Display for IssueLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{issue}", self.path.display())?;
        }
        Ok(())
    }
}
