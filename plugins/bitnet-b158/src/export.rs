//! The inference weight file: safetensors with BitLinear weights as packed trits plus one scale,
//! everything else fp32.
//!
//! Format (`format = "bitnet-b158-inference"`, `version = "1"` in the safetensors metadata, with
//! the model dimensions as JSON under `config`):
//! - every non-BitLinear tensor of the layout under its own name, `F32`, its own shape;
//! - every BitLinear weight `W` (`[out, in]`) as `NAME.trits` (`U8`, `[out, ceil(in / 4)]`) and
//!   `NAME.scale` (`F32`, `[1]`, the absmean `g`). Row `n` packs `W_q[n, k]` into byte `k / 4`,
//!   bits `2 * (k % 4)`: code `0` = 0, `1` = +1, `2` = -1; code `3` and the padding bits of a
//!   row's last byte being non-zero are invalid.
//!
//! The file is a storage format independent of the kernels' in-memory panel layout; loading
//! repacks it.

use crate::quant::quantize_weights;
use bitnet_framework::model::{KernelError, ModelConfig};
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "bitnet-b158-inference";
/// Value of the `version` metadata key.
pub const VERSION: &str = "1";

/// Bytes per packed row of `cols` trits.
pub fn packed_row_bytes(cols: usize) -> usize {
    cols.div_ceil(4)
}

/// Packs ternary values (`{-1, 0, 1}`, row-major `[rows, cols]`) into the file's trit layout.
pub fn pack_trits(q: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let rb = packed_row_bytes(cols);
    let mut out = vec![0u8; rows * rb];
    for (r, row) in q.chunks(cols).enumerate().take(rows) {
        for (k, &v) in row.iter().enumerate() {
            let code = match v {
                1 => 1u8,
                -1 => 2u8,
                _ => 0u8,
            };
            out[r * rb + k / 4] |= code << (2 * (k % 4));
        }
    }
    out
}

/// Unpacks the file's trit layout into `{-1, 0, 1}` values; refuses invalid codes and non-zero
/// padding.
pub fn unpack_trits(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>, KernelError> {
    let rb = packed_row_bytes(cols);
    if bytes.len() != rows * rb {
        return Err(KernelError::InvalidWeights(format!(
            "packed trits: expected {} bytes for {rows} x {cols}, got {}",
            rows * rb,
            bytes.len()
        )));
    }
    let mut out = vec![0i8; rows * cols];
    for r in 0..rows {
        for j in 0..rb {
            let byte = bytes[r * rb + j];
            for s in 0..4 {
                let k = j * 4 + s;
                let code = (byte >> (2 * s)) & 3;
                if k >= cols {
                    if code != 0 {
                        return Err(KernelError::InvalidWeights(format!(
                            "packed trits: non-zero padding in row {r}"
                        )));
                    }
                    continue;
                }
                out[r * cols + k] = match code {
                    0 => 0,
                    1 => 1,
                    2 => -1,
                    _ => {
                        return Err(KernelError::InvalidWeights(format!(
                            "packed trits: invalid code 3 at row {r}, column {k}"
                        )));
                    }
                };
            }
        }
    }
    Ok(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialises the inference weights of `params` (laid out by `layout`) for `config`.
pub fn export_inference(
    config: &ModelConfig,
    layout: &ParamLayout,
    params: &[f32],
) -> Result<Vec<u8>, KernelError> {
    if params.len() != layout.total_params() {
        return Err(KernelError::Shape(format!(
            "parameter arena has {} values, the layout {}",
            params.len(),
            layout.total_params()
        )));
    }
    // (name, dtype, shape, bytes)
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (spec, range) in layout.iter() {
        let w = &params[range];
        if spec.role == TensorRole::BitLinear {
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            let mut q = vec![0i8; w.len()];
            let g = quantize_weights(w, &mut q);
            entries.push((
                format!("{}.trits", spec.name),
                Dtype::U8,
                vec![rows, packed_row_bytes(cols)],
                pack_trits(&q, rows, cols),
            ));
            entries.push((format!("{}.scale", spec.name), Dtype::F32, vec![1], f32_bytes(&[g])));
        } else {
            entries.push((spec.name.clone(), Dtype::F32, spec.shape.clone(), f32_bytes(w)));
        }
    }
    let mut views = Vec::with_capacity(entries.len());
    for (name, dtype, shape, bytes) in &entries {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| KernelError::Other(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let config_json =
        serde_json::to_string(config).map_err(|e| KernelError::Other(e.to_string()))?;
    let metadata: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        ("config".to_string(), config_json),
    ]
    .into_iter()
    .collect();
    let mut bytes = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| KernelError::Other(e.to_string()))?;
    // Same model, same bytes: exports can be compared and cached by hash.
    bitnet_container::canonicalise_header(&mut bytes)
        .map_err(|e| KernelError::Other(e.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn trits_round_trip(rows in 1usize..5, cols in 1usize..19, seed in any::<u64>()) {
            let q: Vec<i8> = (0..rows * cols)
                .map(|i| ((seed.wrapping_mul(i as u64 + 7) >> 17) % 3) as i8 - 1)
                .collect();
            let packed = pack_trits(&q, rows, cols);
            prop_assert_eq!(packed.len(), rows * packed_row_bytes(cols));
            prop_assert_eq!(unpack_trits(&packed, rows, cols).expect("valid"), q);
        }

        #[test]
        fn unpack_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40), rows in 0usize..6, cols in 0usize..20) {
            let _ = unpack_trits(&bytes, rows, cols);
        }
    }

    #[test]
    fn invalid_codes_and_padding_are_refused() {
        assert!(unpack_trits(&[0b11], 1, 4).is_err());
        assert!(unpack_trits(&[0b0100], 1, 1).is_err());
        assert_eq!(unpack_trits(&[0b1001], 1, 2).expect("valid"), vec![1, -1]);
    }
}
