//! Update payloads (`POST /gradient` bodies): the shared framing (`wire::parse`, `wire::open`)
//! and the "fp32" and "int8" decoders over a fixed small layout.
//!
//! Mode bit 0: recompute the trailing CRC32 first (`wire::reseal`), so mutations reach the
//! checks behind the checksum.
#![no_main]

use bitnet_codec_fp32::Fp32Codec;
use bitnet_codec_int8::Int8Codec;
use bitnet_framework::codec::{GradientCodec, wire};
use bitnet_fuzz::{mode, sample_params, small_layout, write_seeds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let layout = small_layout();
        let params = sample_params(&layout);
        let with_mode = |m: u8, b: Vec<u8>| [vec![m], b].concat();
        let fp32 = Fp32Codec.encode(&layout, &params).expect("fp32 encodes");
        let mut per_tensor = Int8Codec::PER_TENSOR;
        let int8 = per_tensor.encode(&layout, &params).expect("int8 encodes");
        let int8_block = Int8Codec { block: 16 }.encode(&layout, &params).expect("int8 encodes");
        write_seeds(&[
            ("fp32", with_mode(0, fp32)),
            ("int8", with_mode(1, int8)),
            ("int8-block", with_mode(1, int8_block)),
        ]);
    },
    |data: &[u8]| {
        let Some((mode, rest)) = mode(data) else { return };
        let mut bytes = rest.to_vec();
        if mode & 1 == 1 {
            wire::reseal(&mut bytes);
        }
        let layout = small_layout();

        if let Ok(frame) = wire::parse(&bytes) {
            // A parsed frame accounts for every byte of the payload.
            let lens: Vec<usize> = frame.sections.iter().map(|s| s.len()).collect();
            assert_eq!(frame.numels.len(), lens.len());
            assert_eq!(wire::payload_len(frame.codec_id, &lens), bytes.len());
        }

        if let Ok(update) = Fp32Codec.decode(&layout, &bytes) {
            assert_eq!(update.len(), layout.total_params());
            assert!(update.iter().all(|v| v.is_finite()));
            // fp32 is lossless and its framing canonical: re-encoding gives the same bytes.
            let again = Fp32Codec.encode(&layout, &update).expect("a decoded update re-encodes");
            assert_eq!(again, bytes);
        }

        for codec in [Int8Codec::PER_TENSOR, Int8Codec { block: 16 }] {
            if let Ok(update) = codec.decode(&layout, &bytes) {
                assert_eq!(update.len(), layout.total_params());
                assert!(update.iter().all(|v| v.is_finite()));
                let mut encoder = Int8Codec::PER_TENSOR;
                let again = encoder.encode(&layout, &update).expect("re-encodes");
                let back = codec.decode(&layout, &again).expect("own payload decodes");
                assert!(back.iter().all(|v| v.is_finite()));
            }
        }
    }
);
