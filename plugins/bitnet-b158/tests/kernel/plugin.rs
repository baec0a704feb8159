//! The kernel through the plugin registry, as runs build it.

use bitnet_framework::context::BuildContext;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::registry::{BuildError, Registry};

fn options(text: &str) -> toml::Table {
    text.parse().expect("toml")
}

/// Whether `BITNET_ISA` names a level this CPU runs (unset or `auto` always does). When it
/// does not, every build must be refused naming what the CPU lacks, which is checked instead.
fn env_cap_refused(registry: &Registry, ctx: &BuildContext) -> bool {
    let Err(e) = bitnet_framework::isa::resolve(Default::default(), "test") else {
        return false;
    };
    let err = registry
        .build::<dyn ModelKernel>("bitnet-b158", &options("threads = 1"), ctx)
        .map(|_| ())
        .expect_err("an unusable BITNET_ISA is refused");
    assert!(matches!(err, BuildError::Failed { .. }), "{err}");
    assert!(
        err.to_string().contains("BITNET_ISA") && e.to_string().contains("BITNET_ISA"),
        "{err}"
    );
    true
}

#[test]
fn registered_as_bitnet_b158_with_its_options() {
    // Referencing the crate keeps its registration linked.
    let _ = bitnet_b158::BitNetB158Config::default();
    let registry = Registry::builtin().expect("registry");
    let ctx = BuildContext::new(crate::common::tiny_config());
    if env_cap_refused(&registry, &ctx) {
        return;
    }
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

/// The `isa` option: a known level is accepted by serde, an unknown one is refused as an
/// invalid option, and a level this CPU lacks is refused at build time naming what it lacks.
/// (Only `auto` is built successfully here: a lower cap would apply to the whole test process.)
#[test]
fn the_isa_option_caps_the_kernels_and_refuses_what_the_cpu_lacks() {
    use bitnet_framework::isa::IsaLevel;
    let _ = bitnet_b158::BitNetB158Config::default();
    let registry = Registry::builtin().expect("registry");
    let ctx = BuildContext::new(crate::common::tiny_config());
    if env_cap_refused(&registry, &ctx) {
        return;
    }
    registry
        .build::<dyn ModelKernel>("bitnet-b158", &options("threads = 1\nisa = \"auto\""), &ctx)
        .expect("auto builds");
    let err = registry
        .build::<dyn ModelKernel>("bitnet-b158", &options("isa = \"sse9\""), &ctx)
        .map(|_| ())
        .expect_err("unknown isa");
    assert!(matches!(err, BuildError::InvalidOptions { .. }), "{err}");
    for level in IsaLevel::ALL.into_iter().filter(|l| !l.is_supported()) {
        let text = format!("threads = 1\nisa = \"{}\"", level.name());
        let err = registry
            .build::<dyn ModelKernel>("bitnet-b158", &options(&text), &ctx)
            .map(|_| ())
            .expect_err("a level this CPU lacks");
        let msg = err.to_string();
        assert!(matches!(err, BuildError::Failed { .. }), "{msg}");
        for feature in level.missing_features() {
            assert!(msg.contains(feature), "{msg}");
        }
    }
}
