//! The kernel through the plugin registry, as runs build it.

use bitnet_framework::context::BuildContext;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::registry::{BuildError, Registry};

fn options(text: &str) -> toml::Table {
    text.parse().expect("toml")
}

#[test]
fn registered_as_bitnet_b158_with_its_options() {
    // Referencing the crate keeps its registration linked.
    let _ = bitnet_b158::BitNetB158Config::default();
    let registry = Registry::builtin().expect("registry");
    let ctx = BuildContext::new(crate::common::tiny_config());
    let kernel: Box<dyn ModelKernel> = registry
        .build("bitnet-b158", &options("threads = 1\nprecision = \"fp32\""), &ctx)
        .expect("build");
    assert_eq!(kernel.config(), &crate::common::tiny_config());
    let err = registry
        .build::<dyn ModelKernel>("bitnet-b158", &options("thread = 1"), &ctx)
        .map(|_| ())
        .expect_err("unknown key");
    assert!(matches!(err, BuildError::InvalidOptions { .. }), "{err}");
    let err = registry
        .build::<dyn ModelKernel>("bitnet-b158", &options("precision = \"fp64\""), &ctx)
        .map(|_| ())
        .expect_err("unknown precision");
    assert!(matches!(err, BuildError::InvalidOptions { .. }), "{err}");
}
