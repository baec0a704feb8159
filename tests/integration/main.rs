//! The workspace's one integration test binary; each module covers one area.

mod configs;
mod presets;
mod registry;
