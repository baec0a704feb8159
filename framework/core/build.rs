//! Records what a dynamic plugin must agree on with the binary that loads it: the compiler
//! version, and a hash of this crate's sources, version and target (`BITNET_FRAMEWORK_BUILD`).
//! Two framework builds with the same hash define every framework type the same way, so the
//! framework types that cross a library boundary have one layout on both sides.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown rustc".into());
    println!("cargo:rustc-env=BITNET_RUSTC_VERSION={version}");

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.sort();
    let mut hash = Sha256::new();
    for key in ["CARGO_PKG_VERSION", "TARGET"] {
        hash.update(std::env::var(key).unwrap_or_default().as_bytes());
        hash.update([0]);
    }
    hash.update(version.as_bytes());
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(file).unwrap_or_default());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=BITNET_FRAMEWORK_BUILD={hex}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
