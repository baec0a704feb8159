//! `bitnet run --dry-run` of every shipped config: every slot resolves, options validate, the
//! model builds.

use bitnet_framework::config::{ConfigSources, load};
use bitnet_framework::run;

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
