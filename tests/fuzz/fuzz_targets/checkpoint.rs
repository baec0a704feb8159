//! Training checkpoints: `CheckpointFile::from_bytes` (the checks `CheckpointFile::open` runs on
//! a file), then decoding the parameters and optimizer state it vouched for.
//!
//! Mode bit 0: recompute the `checksum` metadata entry first (`checkpoint::reseal`), so
//! mutations of the metadata (layout JSON, step, buffers) reach the checks behind it.
#![no_main]

use bitnet_fuzz::{mode, sample_optimizer, sample_params, scratch_dir, small_layout, write_seeds};
use bitnet_runtime::checkpoint::{self, CheckpointFile, CheckpointMeta};
use bitnet_runtime::data::SourcePosition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let layout = small_layout();
        let params = sample_params(&layout);
        let n = params.len();
        let meta = CheckpointMeta {
            step: 5,
            tokens: 640,
            seed: 42,
            data_position: SourcePosition::default(),
            layout,
            kernel: "bitnet-b158".into(),
            optimizer: "adamw".into(),
            run_config: "preset = \"tiny\"\n".into(),
        };
        let optimizer = sample_optimizer(n);
        let path = scratch_dir().join("seed.ckpt");
        if checkpoint::write(&path, &meta, &params, &optimizer).is_ok()
            && let Ok(bytes) = std::fs::read(&path)
        {
            write_seeds(&[("adamw", [vec![1], bytes].concat())]);
        }
    },
    |data: &[u8]| {
        let Some((mode, rest)) = mode(data) else { return };
        let bytes = if mode & 1 == 1 {
            match checkpoint::reseal(rest) {
                Ok(b) => b,
                Err(_) => return,
            }
        } else {
            rest.to_vec()
        };
        let Ok(file) = CheckpointFile::from_bytes("fuzz.ckpt", bytes) else { return };
        let meta = file.meta().clone();
        let params = file.params(&meta.layout);
        let optimizer = file.optimizer_state();
        let (Ok(params), Ok(optimizer)) = (params, optimizer) else { return };
        assert_eq!(params.len(), meta.layout.total_params());
        // What was read writes back and reads back the same (when the writer accepts it: it
        // refuses empty optimizer buffers, which a reader may see).
        let path = scratch_dir().join("again.ckpt");
        if checkpoint::write(&path, &meta, &params, &optimizer).is_ok() {
            let again = CheckpointFile::open(&path).expect("a written checkpoint opens");
            assert_eq!(again.meta(), &meta);
            let same = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            };
            assert!(same(&again.params(&meta.layout).expect("params"), &params));
            let opt = again.optimizer_state().expect("optimizer state");
            assert_eq!(opt.step, optimizer.step);
            assert_eq!(opt.buffers.len(), optimizer.buffers.len());
        }
    }
);
