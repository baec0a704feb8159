//! `Range` request headers of weight downloads (`range::parse`).
//!
//! Input: 8 bytes of body length (little-endian), then the header value.
#![no_main]

use bitnet_fuzz::write_seeds;
use bitnet_transport_http::range::{RangeReply, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let with_len = |len: u64, h: &str| [len.to_le_bytes().to_vec(), h.as_bytes().to_vec()].concat();
        write_seeds(&[
            ("span", with_len(1000, "bytes=2-40")),
            ("open", with_len(1000, "bytes=900-")),
            ("suffix", with_len(1000, "bytes=-30")),
            ("multi", with_len(10, "bytes=0-1,4-5")),
        ]);
    },
    |data: &[u8]| {
        let Some((len, header)) = data.split_first_chunk::<8>() else { return };
        let len = u64::from_le_bytes(*len);
        let Ok(header) = std::str::from_utf8(header) else { return };
        match parse(Some(header), len) {
            RangeReply::Partial { start, end } => assert!(start <= end && end < len),
            RangeReply::Full | RangeReply::Unsatisfiable => {}
        }
    }
);
