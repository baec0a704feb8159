//! Every shipped config loads through the layering.

use bitnet_runtime::config::{ConfigSources, load};

#[test]
fn every_shipped_config_loads() {
    let configs = bitnet_tests::all_configs();
    assert!(configs.len() >= 9, "expected the three truckmate configs and the experiments");
    for path in configs {
        let loaded =
            load(&ConfigSources { file: Some(path.clone()), env: false, overrides: vec![] })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!loaded.config.name.is_empty(), "{}", path.display());
    }
}
