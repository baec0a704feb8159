//! Dynamic plugins: the example library is built, loaded and used; a mismatched one is refused.

use bitnet_framework::codec::GradientCodec;
use bitnet_framework::registry::{Registry, Slot};
use bitnet_framework::staleness::{StalenessDecision, StalenessPolicy};
use bitnet_framework::tensor::{ParamLayout, TensorRole, TensorSpec};
use bitnet_runtime::dynamic::{self, DynamicError};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Builds both example libraries once per test run, with the tests' own profile and target
/// directory (cargo has released its build lock by the time tests run).
fn libraries() -> &'static (PathBuf, PathBuf) {
    static LIBS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    LIBS.get_or_init(|| {
        let dir = bitnet_tests::build_workspace_artifact(&[
            "-p",
            "bitnet-dynamic-example",
            "-p",
            "bitnet-dynamic-mismatch",
        ]);
        let lib = |name: &str| {
            dir.join(format!(
                "{}{name}{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ))
        };
        (lib("bitnet_dynamic_example"), lib("bitnet_dynamic_mismatch"))
    })
}

fn layout() -> ParamLayout {
    ParamLayout::new(vec![
        TensorSpec { name: "w".into(), shape: vec![3, 4], role: TensorRole::BitLinear },
        TensorSpec { name: "g".into(), shape: vec![4], role: TensorRole::Norm },
    ])
    .expect("layout")
}

#[test]
fn example_dynamic_plugin_is_loaded_and_works() {
    let (example, _) = libraries();
    let mut registry = bitnet_plugins::registry().expect("registry");
    let added = dynamic::load(&mut registry, example).expect("example plugin loads");
    assert_eq!(added, vec!["codec/bf16".to_string()]);
    let decl = registry.get(Slot::GradientCodec, "bf16").expect("registered");
    assert_eq!(decl.origin, example.display().to_string());

    let layout = layout();
    let ctx = bitnet_framework::BuildContext::new(bitnet_tests::tiny_model(16))
        .with_layout(layout.clone());
    let mut codec = registry
        .build::<dyn GradientCodec>("bf16", &toml::Table::new(), &ctx)
        .expect("build codec from the library");
    let update: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.5).collect();
    let bytes = codec.encode(&layout, &update).expect("encode");
    assert_eq!(codec.decode(&layout, &bytes).expect("decode"), update, "exact in bf16");
    let mut corrupt = bytes.clone();
    corrupt[12] ^= 1;
    assert!(codec.decode(&layout, &corrupt).is_err(), "corruption detected");

    // Loading the same library again is refused as a duplicate registration.
    let again = dynamic::load(&mut registry, example).expect_err("duplicate");
    assert!(matches!(again, DynamicError::Registry { .. }), "{again}");
}

#[test]
fn mismatched_dynamic_plugin_is_refused() {
    let (_, mismatch) = libraries();
    let mut registry = Registry::empty();
    let err = dynamic::load(&mut registry, mismatch).expect_err("must be refused");
    match &err {
        DynamicError::Mismatch { what, found, .. } => {
            assert_eq!(*what, "framework version");
            assert_eq!(found, "0.0.0-mismatch");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("rebuild the plugin"), "{err}");
    assert_eq!(registry.names(Slot::GradientCodec), Vec::<String>::new());
}

#[test]
fn missing_library_and_non_plugin_are_clear_errors() {
    let mut registry = Registry::empty();
    let err = dynamic::load(&mut registry, std::path::Path::new("/nonexistent/libnothing.so"))
        .expect_err("missing");
    assert!(matches!(err, DynamicError::Open { .. }), "{err}");

    // A real shared library that is not a bitnet plugin.
    let libm = std::path::Path::new("/lib/x86_64-linux-gnu/libm.so.6");
    if libm.exists() {
        let err = dynamic::load(&mut registry, libm).expect_err("not a plugin");
        assert!(matches!(err, DynamicError::NoEntryPoint { .. }), "{err}");
    }
}

/// A plugin library built with `toml/preserve_order`, which this test binary is not: its
/// `toml::Table` has another layout. ABI version 1 handed it the host's tables and crashed
/// (`memory allocation of 853113467818545 bytes failed`); now options and defaults cross as
/// TOML text, so it loads, reads its options and works.
#[test]
fn plugin_built_with_other_dependency_features_loads_and_works() {
    let dir = bitnet_tests::build_workspace_artifact(&[
        "-p",
        "bitnet-dynamic-features",
        "--features",
        "bitnet-dynamic-features/preserve-order",
    ]);
    let lib = dir.join(format!(
        "{}bitnet_dynamic_features{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let mut registry = Registry::empty();
    let added = dynamic::load(&mut registry, &lib).expect("loads despite other toml features");
    assert_eq!(added, vec!["staleness/scaled".to_string()]);

    let decl = registry.get(Slot::StalenessPolicy, "scaled").expect("registered");
    let defaults = decl.default_config();
    assert_eq!(defaults.get("factor").and_then(toml::Value::as_float), Some(0.5));
    assert_eq!(defaults.get("max_staleness").and_then(toml::Value::as_integer), Some(3));

    let ctx = bitnet_framework::BuildContext::new(bitnet_tests::tiny_model(16));
    let options: toml::Table = toml::from_str("max_staleness = 2\nfactor = 0.25").expect("toml");
    let policy = registry
        .build::<dyn StalenessPolicy>("scaled", &options, &ctx)
        .expect("build from the library");
    assert_eq!(policy.decide(1), StalenessDecision::Accept { scale: 0.25 });
    assert!(matches!(policy.decide(3), StalenessDecision::Reject { .. }));

    // The library's own deserialiser still refuses unknown keys and its own bad values.
    let typo: toml::Table = toml::from_str("factr = 0.25").expect("toml");
    let err = registry.build::<dyn StalenessPolicy>("scaled", &typo, &ctx).err().expect("typo");
    assert!(err.to_string().contains("factr"), "{err}");
    let bad: toml::Table = toml::from_str("factor = 2.0").expect("toml");
    let err = registry.build::<dyn StalenessPolicy>("scaled", &bad, &ctx).err().expect("range");
    assert!(err.to_string().contains("factor must be in (0, 1]"), "{err}");
}
