//! Operator accounts of the console and the admin API: names and argon2 hashes of their
//! passwords in `RUN_DIR/operators.json`, written owner-only. `bitnet admin add|remove|list`
//! edits the file; a running coordinator reads it at every login, so changes apply at once.

use crate::auth::{hash_secret, verify_secret};
use bitnet_framework::protocol::now_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the operators file in a run directory.
pub const OPERATORS_FILE: &str = "operators.json";
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Errors reading or editing the operators file.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not an operators file.
    #[error("{path}: not an operators file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A name or password was refused.
    #[error("{0}")]
    Invalid(String),
}

/// One operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// PHC-format argon2id hash of the password.
    pub password_hash: String,
    /// When added, ms since the epoch.
    pub created_ms: u64,
}

/// The operators of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operators {
    /// By name.
    pub operators: BTreeMap<String, Operator>,
}

/// The operators file of the run directory `run_dir`.
pub fn operators_path(run_dir: &Path) -> PathBuf {
    run_dir.join(OPERATORS_FILE)
}

/// Whether `name` is 1 to 64 characters of `A-Z a-z 0-9 . _ -` (operator names and the key
/// ids the console makes: safe in URLs, file names and shell scripts).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks an operator name (see [`is_plain_name`]).
pub fn check_name(name: &str) -> Result<(), OperatorError> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(OperatorError::Invalid(format!(
            "operator name `{name}`: use 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`"
        )))
    }
}

impl Operators {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self, OperatorError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OperatorError::Malformed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(OperatorError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Writes the list to `path`, owner-only, replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), OperatorError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| OperatorError::Invalid(format!("encoding the operators: {e}")))?;
        bitnet_framework::files::write_private(path, &json)
            .map_err(|source| OperatorError::Io { path: path.to_path_buf(), source })
    }

    /// Adds (or, with `replace`, re-sets the password of) operator `name`.
    pub fn add(&mut self, name: &str, password: &str, replace: bool) -> Result<(), OperatorError> {
        check_name(name)?;
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(OperatorError::Invalid(format!(
                "the password is too short: at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if self.operators.contains_key(name) && !replace {
            return Err(OperatorError::Invalid(format!(
                "operator `{name}` exists; pass --replace to set a new password"
            )));
        }
        let password_hash = hash_secret(password).map_err(OperatorError::Invalid)?;
        self.operators.insert(name.to_string(), Operator { password_hash, created_ms: now_ms() });
        Ok(())
    }

    /// Removes operator `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), OperatorError> {
        self.operators
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| OperatorError::Invalid(format!("no operator `{name}`")))
    }

    /// Whether `password` is `name`'s. An unknown name is checked against a decoy hash, so
    /// it costs the same argon2 work.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.operators.get(name) {
            Some(op) => verify_secret(password, &op.password_hash),
            None => {
                let _ = crate::auth::decoy_hash().map(|h| verify_secret(password, h));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_add_verify_remove_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("dir");
        let path = operators_path(dir.path());
        let mut ops = Operators::load(&path).expect("missing is empty");
        assert!(ops.operators.is_empty());
        ops.add("alice", "correct horse battery", false).expect("add");
        assert!(ops.add("alice", "another long password", false).is_err(), "no silent replace");
        assert!(ops.add("bob", "short", false).is_err(), "short password refused");
        assert!(ops.add("a b", "a long enough password", false).is_err(), "bad name refused");
        ops.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "owner-only");
        }
        let ops = Operators::load(&path).expect("load");
        assert!(ops.verify("alice", "correct horse battery"));
        assert!(!ops.verify("alice", "wrong horse battery"));
        assert!(!ops.verify("nobody", "correct horse battery"));
        let mut ops = ops;
        ops.remove("alice").expect("remove");
        assert!(ops.remove("alice").is_err());
        std::fs::write(&path, b"{\"nope\": 1}").expect("write");
        assert!(matches!(Operators::load(&path), Err(OperatorError::Malformed { .. })));
    }
}
