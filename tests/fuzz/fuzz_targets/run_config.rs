//! Run configurations (`config::load`): a TOML run file layered over the defaults and a preset,
//! then `--set key=value` overrides, with every check `load` runs.
//!
//! Input: the TOML file, then optionally a NUL byte and override lines (one `key=value` each).
//! A configuration that loads, written back as TOML and loaded again, is the same.
#![no_main]

use bitnet_fuzz::{scratch_dir, write_seeds};
use bitnet_runtime::config::{ConfigSources, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let tiny = "preset = \"tiny\"\n[train]\nbatch_size = 4\nsteps = 10\n[model]\nseq_len = 64\n";
        let mut with_sets = tiny.as_bytes().to_vec();
        with_sets.extend_from_slice(b"\0train.steps=5\nname=hello world");
        write_seeds(&[
            ("tiny", tiny.as_bytes().to_vec()),
            ("sets", with_sets),
            ("small", b"preset = \"small\"\n[codec]\ntype = \"int8\"\n".to_vec()),
        ]);
    },
    |bytes: &[u8]| {
        let (file, sets) = match bytes.iter().position(|&b| b == 0) {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (bytes, &[][..]),
        };
        let overrides: Vec<String> =
            String::from_utf8_lossy(sets).lines().map(str::to_string).collect();
        let path = scratch_dir().join("run.toml");
        if std::fs::write(&path, file).is_err() {
            return;
        }
        let sources = ConfigSources { file: Some(path.clone()), env: false, overrides };
        let Ok(loaded) = load(&sources) else { return };
        let _ = loaded.provenance();
        let Ok(text) = toml::to_string(&loaded.config) else { return };
        if std::fs::write(&path, text).is_err() {
            return;
        }
        let sources = ConfigSources { file: Some(path), env: false, overrides: Vec::new() };
        let again = load(&sources).expect("a loaded configuration, written back, loads");
        assert_eq!(again.config, loaded.config);
    }
);
