//! Shared harness of the workspace integration tests: paths, temporary run directories, tiny
//! model configs.

use std::path::{Path, PathBuf};

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Every run config under `configs/`, sorted.
pub fn all_configs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace_root().join("configs"), &mut out);
    out.sort();
    out
}

/// A temporary directory that is removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("bitnet-test-").tempdir().expect("create temp dir")
}

/// The tiny model used by tests: seconds on one core.
pub fn tiny_model(vocab_size: usize) -> bitnet_framework::model::ModelConfig {
    bitnet_framework::model::ModelConfig {
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        ffn_hidden: 64,
        seq_len: 32,
        vocab_size,
        ..Default::default()
    }
}
