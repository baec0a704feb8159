//! `bitnet run --dry-run` of every shipped config: every slot resolves, options validate, the
//! model builds.

use bitnet_runtime::config::{ConfigSources, load};
use bitnet_runtime::run;

#[test]
fn every_shipped_config_passes_dry_run() {
    let registry = bitnet_plugins::registry().expect("registry");
    let mut failures = Vec::new();
    for path in bitnet_tests::all_configs() {
        let mut loaded =
            load(&ConfigSources { file: Some(path.clone()), env: false, overrides: vec![] })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Shipped configs name files relative to the repository root, where the README runs
        // them; tests run in `tests/`.
        let root = bitnet_tests::workspace_root();
        for file in &mut loaded.config.data.extra_train {
            *file = root.join(&*file);
        }
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

/// `bitnet run --dry-run` of TruckMate medium as first shipped (one batch of 8 x 128 per task,
/// two workers per round, no task cap) over 1,530,947 tokens: about 748 optimizer steps against
/// the 2000 its config names, which it warns about; small and medium as shipped take the steps
/// they name and are not warned about.
#[test]
fn dry_run_warns_when_the_schedule_takes_far_fewer_steps_than_named() {
    let root = bitnet_tests::workspace_root();
    let dry_run = |config: &str, set: &[&str]| {
        let mut cmd = std::process::Command::new(bitnet_tests::procs::bitnet_bin());
        cmd.current_dir(&root).args(["run", "--dry-run", config]);
        for s in set {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run bitnet");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The budget stands in for the epoch, so the test does not need the tokenized corpus.
    let first_shipped = [
        "train.token_budget=1530947",
        "train.batch_size=8",
        "train.steps=2000",
        "coordinator.max_task_tokens=0",
        "coordinator.schedule_unit_tokens=0",
    ];
    let (stdout, stderr) = dry_run("configs/truckmate-medium.toml", &first_shipped);
    assert!(stdout.contains("1024 tokens per task") && stdout.contains("about 748"), "{stdout}");
    assert!(stderr.contains("warning: this run takes about 748 optimizer steps"), "{stderr}");
    assert!(stderr.contains("far fewer than the 2000"), "{stderr}");
    let (stdout, stderr) = dry_run("configs/truckmate-small.toml", &[]);
    assert!(stdout.contains("440 tokens per task") && stdout.contains("about 2000"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (stdout, stderr) = dry_run("configs/truckmate-medium.toml", &[]);
    assert!(stdout.contains("880 tokens per task") && stdout.contains("about 2400"), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Medium as shipped: each round splits one batch of 16 x 128 between the two workers, and the
/// schedule's 2400 steps are the steps the run takes.
#[test]
fn the_medium_plan_splits_one_batch_per_round() {
    let path = bitnet_tests::workspace_root().join("configs/truckmate-medium.toml");
    let loaded = load(&ConfigSources { file: Some(path), env: false, overrides: vec![] })
        .expect("medium loads");
    let budget = loaded.config.train.token_budget;
    let plan = bitnet_runtime::coordinator::local_plan(&loaded.config, budget).expect("async-sgd");
    assert_eq!((plan.task_tokens, plan.tasks_per_step, plan.steps), (880, 2, 2400));
    assert!(plan.warning().is_none(), "{:?}", plan.warning());
}
