//! The workspace's one integration test binary; each module covers one area.

mod chaos;
mod configs;
mod console;
mod data;
mod dist_http;
mod dist_process;
mod distributed;
mod dry_run;
mod dynamic;
mod fleet_runs;
mod http_hardening;
mod presets;
mod presigned;
mod registry;
mod replicas;
mod scaled;
mod serve;
mod trainer;
mod trust;
