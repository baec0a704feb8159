//! Coordinator snapshots (`decode_snapshot`): the weights, optimizer state and task ledger of one
//! version.
//!
//! Mode bit 0: recompute the trailing SHA-256 first, so mutations reach the checks behind it.
#![no_main]

use bitnet_framework::optim::OptimizerState;
use bitnet_fuzz::{mode, sample_optimizer, sample_params, small_layout, write_seeds};
use bitnet_runtime::coordinator::blob::{LedgerEntry, decode_snapshot, encode_snapshot};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(
    init: {
        let layout = small_layout();
        let params = sample_params(&layout);
        let n = params.len();
        let optimizer = sample_optimizer(n);
        let ledger = [LedgerEntry { task_id: 3, tokens: 128 }, LedgerEntry { task_id: 1, tokens: 64 }];
        let full = encode_snapshot(9, &layout.fingerprint(), &params, &optimizer, &ledger);
        let empty =
            encode_snapshot(1, &layout.fingerprint(), &params, &OptimizerState::default(), &[]);
        write_seeds(&[("adamw", [vec![1], full].concat()), ("sgd", [vec![1], empty].concat())]);
    },
    |data: &[u8]| {
        let Some((mode, rest)) = mode(data) else { return };
        let mut bytes = rest.to_vec();
        if mode & 1 == 1 && bytes.len() >= 32 {
            let end = bytes.len() - 32;
            let digest = Sha256::digest(&bytes[..end]);
            bytes[end..].copy_from_slice(&digest);
        }
        let layout = small_layout();
        let fingerprint = layout.fingerprint();
        if let Ok(s) = decode_snapshot(&bytes, &fingerprint, layout.total_params()) {
            assert_eq!(s.params.len(), layout.total_params());
            let again =
                encode_snapshot(s.version, &fingerprint, &s.params, &s.optimizer, &s.ledger);
            assert_eq!(decode_snapshot(&again, &fingerprint, layout.total_params()), Ok(s));
        }
    }
);
