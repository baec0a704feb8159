//! Weight downloads and snapshots' container: the safetensors blob (`read_blob`,
//! `container_info`, `open_container`) and the "fp32" and "ternary" weight codecs.
#![no_main]

use bitnet_container::{container_info, read_blob, write_blob};
use bitnet_framework::weights::WeightCodec;
use bitnet_fuzz::{sample_params, small_layout, write_seeds};
use bitnet_weight_codecs::{Fp32Weights, TernaryWeights};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let layout = small_layout();
        let params = sample_params(&layout);
        write_seeds(&[
            ("fp32", write_blob(&layout, 7, &params).expect("fp32 blob")),
            ("ternary", TernaryWeights.encode(&layout, 7, &params).expect("ternary blob")),
        ]);
    },
    |bytes: &[u8]| {
        let layout = small_layout();
        let _ = container_info(bytes);

        if let Ok(w) = read_blob(&layout, bytes) {
            assert_eq!(w.params.len(), layout.total_params());
            assert!(w.params.iter().all(|v| v.is_finite()));
            let again = write_blob(&layout, w.version, &w.params).expect("decoded blob re-encodes");
            assert_eq!(read_blob(&layout, &again).as_ref(), Ok(&w));
        }
        if let Ok(w) = Fp32Weights.decode(&layout, bytes) {
            assert_eq!(w.params.len(), layout.total_params());
        }
        if let Ok(w) = TernaryWeights.decode(&layout, bytes) {
            assert_eq!(w.params.len(), layout.total_params());
            assert!(w.params.iter().all(|v| v.is_finite()));
            // The decoder promises latent weights that quantize back to the same trits and
            // scale: encoding what it returned and decoding again changes nothing.
            let again = TernaryWeights.encode(&layout, w.version, &w.params).expect("re-encodes");
            assert_eq!(TernaryWeights.decode(&layout, &again).as_ref(), Ok(&w));
        }
    }
);
