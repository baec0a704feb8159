//! Registry behaviour: unknown names, duplicates, option validation.

use bitnet_framework::registry::{BuildError, PluginDecl, Registry, RegistryError, Slot};

#[test]
fn unknown_plugin_names_slot_and_lists_existing() {
    let registry = bitnet_plugins::registry().expect("registry");
    let err = registry.get(Slot::GradientCodec, "zstd-magic").expect_err("unknown");
    match &err {
        BuildError::UnknownPlugin { slot, name, available } => {
            assert_eq!(*slot, Slot::GradientCodec);
            assert_eq!(name, "zstd-magic");
            assert_eq!(available, &registry.names(Slot::GradientCodec));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("slot `codec`"), "{err}");
}

#[test]
fn builtin_registry_has_no_duplicates_and_sorted_names() {
    let registry = bitnet_plugins::registry().expect("no duplicate built-ins");
    for slot in Slot::ALL {
        let names = registry.names(slot);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{slot}");
    }
}

#[test]
fn duplicate_registration_is_refused() {
    let mut registry = Registry::empty();
    let mut added = 0;
    for decl in bitnet_framework::inventory::iter::<PluginDecl> {
        registry.add(*decl).expect("first add");
        let again = registry.add(decl.with_origin("copy"));
        assert!(
            matches!(again, Err(RegistryError::Duplicate { ref name, .. }) if name == decl.name),
            "{again:?}"
        );
        added += 1;
    }
    assert!(added > 0 || Registry::builtin().is_ok());
}
