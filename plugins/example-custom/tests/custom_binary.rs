//! The template's own `bitnet` binary works as the shipped one does, with its plugin added.

use std::process::Command;

#[test]
fn the_custom_binary_lists_its_own_plugin_beside_the_built_ins() {
    let out = Command::new(env!("CARGO_BIN_EXE_my-bitnet"))
        .args(["plugins", "--defaults"])
        .output()
        .expect("run my-bitnet");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let staleness = text.split("staleness:").nth(1).expect("a staleness section");
    assert!(staleness.contains("halving"), "{text}");
    assert!(staleness.contains("max_staleness = 4"), "its defaults are shown: {text}");
    // The built-ins are all still there.
    for builtin in ["bitnet-b158", "adamw", "int8-ef", "inverse-linear", "sqlite", "http"] {
        assert!(text.contains(builtin), "{builtin} missing: {text}");
    }
}

#[test]
fn the_custom_binary_runs_a_config_that_names_its_plugin() {
    let dir = std::env::temp_dir().join(format!("bitnet-custom-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_my-bitnet"))
        .args(["run", "--dry-run", "--set", "staleness.type=halving"])
        .args(["--set", "staleness.max_staleness=2", "--set"])
        .arg(format!("run.dir={}", dir.display()))
        .output()
        .expect("run my-bitnet");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("halving"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_my-bitnet"))
        .args(["run", "--dry-run", "--set", "staleness.type=halving"])
        .args(["--set", "staleness.max_stale=2"])
        .output()
        .expect("run my-bitnet");
    assert!(!out.status.success(), "an unknown option of the plugin is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_stale"));
}
