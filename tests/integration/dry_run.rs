//! `bitnet run --dry-run` of every shipped config: every slot resolves, options validate, the
//! model builds.

use bitnet_runtime::config::{ConfigSources, load};
use bitnet_runtime::run;

#[test]
fn every_shipped_config_passes_dry_run() {
    let registry = bitnet_plugins::registry().expect("registry");
    let mut failures = Vec::new();
    for path in bitnet_tests::all_configs() {
        let loaded =
            load(&ConfigSources { file: Some(path.clone()), env: false, overrides: vec![] })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match run::plan(&loaded.config, &registry) {
            Ok(plan) => assert!(plan.parameters > 0, "{}", path.display()),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dry_run_reports_every_problem_at_once() {
    let registry = bitnet_plugins::registry().expect("registry");
    let loaded = load(&ConfigSources {
        file: None,
        env: false,
        overrides: vec!["codec.type=no-such-codec".into(), "staleness.type=no-such-policy".into()],
    })
    .expect("defaults load");
    let err = run::plan(&loaded.config, &registry).expect_err("two unknown plugins");
    let text = err.to_string();
    assert!(text.contains("no-such-codec") && text.contains("no-such-policy"), "{text}");
    assert!(text.contains("slot `codec`") && text.contains("slot `staleness`"), "{text}");
}

#[test]
fn dry_run_reports_problems_of_every_kind_with_where_each_key_was_set() {
    let registry = bitnet_plugins::registry().expect("registry");
    let dir = bitnet_tests::temp_dir();
    let file = dir.path().join("two-problems.toml");
    std::fs::write(&file, "[codec]\ntype = \"no-such-codec\"\n").expect("write config");
    let loaded = load(&ConfigSources {
        file: Some(file.clone()),
        env: false,
        overrides: vec!["coordinator.max_attempts=0".into(), "optimizer.nope=1".into()],
    })
    .expect("loads");
    let err = run::plan_loaded(&loaded, &registry).expect_err("three problems");
    let text = err.to_string();
    assert_eq!(err.0.len(), 3, "{text}");
    // The unknown plugin comes from the file, the other two from --set.
    let codec = err.0.iter().find(|p| p.key == "codec").expect("codec problem");
    assert!(codec.message.contains("no-such-codec"), "{text}");
    let source = codec.source.as_deref().unwrap_or_default();
    assert!(source.contains("two-problems.toml"), "{text}");
    let attempts = err.0.iter().find(|p| p.key == "coordinator.max_attempts").expect("attempts");
    assert!(attempts.message.contains("must be positive"), "{text}");
    assert!(attempts.source.is_some(), "{text}");
    let optimizer = err.0.iter().find(|p| p.key == "optimizer").expect("optimizer problem");
    assert!(optimizer.message.contains("nope"), "{text}");
}

#[test]
fn dry_run_refuses_bad_values_with_every_key_at_once() {
    let registry = bitnet_plugins::registry().expect("registry");
    let dir = bitnet_tests::temp_dir();
    let cert = dir.path().join("no-such-cert.pem").display().to_string();
    let loaded = load(&ConfigSources {
        file: None,
        env: false,
        overrides: vec![
            "optimizer.lr=-1".into(),
            "train.batch_size=0".into(),
            "transport.bind=notanaddr".into(),
            format!("transport.tls_cert_file={cert:?}"),
            format!("transport.tls_key_file={cert:?}"),
        ],
    })
    .expect("loads");
    let err = run::plan_loaded(&loaded, &registry).expect_err("four bad values");
    let text = err.to_string();
    for key in [
        "optimizer.lr",
        "train.batch_size",
        "transport.bind",
        "transport.tls_cert_file",
        "transport.tls_key_file",
    ] {
        let p = err.0.iter().find(|p| p.key == key).unwrap_or_else(|| panic!("{key}: {text}"));
        assert!(p.source.as_deref().unwrap_or_default().contains("--set"), "{text}");
    }
    assert!(text.contains("lr must be positive, got -1"), "{text}");
    assert!(text.contains("notanaddr"), "{text}");
}

#[test]
fn bitnet_run_dry_run_refuses_a_directory_and_bad_values() {
    use bitnet_tests::procs::bitnet_bin;
    let dir = bitnet_tests::temp_dir();
    let out = std::process::Command::new(bitnet_bin())
        .args(["run", "--dry-run", "--no-env"])
        .arg(dir.path())
        .output()
        .expect("run bitnet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a directory is no config: {stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
    let out = std::process::Command::new(bitnet_bin())
        .args(["run", "--dry-run", "--no-env", "--set", "optimizer.lr=-1"])
        .args(["--set", "train.batch_size=0", "--set", "transport.bind=notanaddr"])
        .output()
        .expect("run bitnet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    for key in ["optimizer.lr", "train.batch_size", "transport.bind"] {
        assert!(stderr.contains(&format!("[{key}]")), "{key}: {stderr}");
    }
}
