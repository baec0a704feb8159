//! The presets' parameter counts at the reference vocabulary.

use bitnet_runtime::config::{ConfigSources, load};

fn params_of(preset: &str) -> usize {
    let loaded = load(&ConfigSources {
        file: None,
        env: false,
        overrides: vec![format!("preset={preset}"), "model.vocab_size=5174".into()],
    })
    .expect("preset loads");
    bitnet_b158::layout::model_layout(&loaded.config.model).expect("layout").total_params()
}

#[test]
fn small_preset_has_6_845_696_parameters() {
    assert_eq!(params_of("small"), 6_845_696);
}

#[test]
fn medium_preset_has_55_642_624_parameters() {
    assert_eq!(params_of("medium"), 55_642_624);
}

#[test]
fn large_preset_has_121_212_672_parameters() {
    assert_eq!(params_of("large"), 121_212_672);
}
