//! Facade over every built-in plugin crate.
//!
//! `inventory` registrations live in statics of each plugin crate; a crate the binary never
//! references can be dropped by the linker with its registrations (inventory#50). Depending on
//! this crate and calling [`link`] references every built-in, so all of them are registered.

use bitnet_framework::registry::{PluginConfig, Registry, RegistryError};

/// References every built-in plugin crate so the linker keeps their registrations.
#[inline(never)]
pub fn link() {
    // One use of a public item per crate is enough to keep its object files.
    std::hint::black_box(bitnet_b158::layout::model_layout as *const ());
    std::hint::black_box(
        <bitnet_runtime::coordinator::memory::MemoryStoreConfig as PluginConfig>::build
            as *const (),
    );
    std::hint::black_box(
        <bitnet_store_sqlite::SqliteStoreConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(
        <bitnet_store_postgres::PostgresStoreConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(
        <bitnet_transport_inproc::InProcConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(<bitnet_transport_http::HttpConfig as PluginConfig>::build as *const ());
    std::hint::black_box(<bitnet_b158::BitNetB158Config as PluginConfig>::build as *const ());
    std::hint::black_box(<bitnet_codec_fp32::Fp32Config as PluginConfig>::build as *const ());
    std::hint::black_box(<bitnet_codec_int8::Int8EfConfig as PluginConfig>::build as *const ());
    std::hint::black_box(
        <bitnet_staleness::InverseLinearConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(<bitnet_weights_fs::FsStoreConfig as PluginConfig>::build as *const ());
    std::hint::black_box(<bitnet_weights_s3::S3StoreConfig as PluginConfig>::build as *const ());
    std::hint::black_box(
        <bitnet_weight_codecs::TernaryWeightsConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(bitnet_optim::AdamW::new as *const ());
    std::hint::black_box(
        <bitnet_tokenizer_word::WordLevelConfig as PluginConfig>::build as *const (),
    );
    std::hint::black_box(<bitnet_tokenizer_bpe::BpeConfig as PluginConfig>::build as *const ());
}

/// The registry of every built-in plugin.
pub fn registry() -> Result<Registry, RegistryError> {
    link();
    Registry::builtin()
}
