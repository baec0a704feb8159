//! Gradient codecs "int8" and "int8-ef".
//!
//! Each tensor is sent as absmax int8: f32 scales `s = max|g| / 127` and `round(g / s)` as
//! int8 (values in -127..=127, round half to even), about a quarter of fp32's bytes, with an
//! error of at most `s / 2` per value. By default one scale covers the whole tensor; the
//! `block` option gives every run of `block` values its own scale (4 bytes per block), so
//! values far below the tensor's largest (the rows of rare tokens in the embedding and LM head)
//! keep their resolution. "int8-ef" wraps the same codec in
//! [`ErrorFeedback`](bitnet_framework::codec::ErrorFeedback), so what each worker loses to
//! rounding is carried into its next update; both read and write the same payloads.
//!
//! Section of a tensor of `n` values (wire version 2): `block` as a little-endian u32 (0 = the
//! whole tensor), the scales (one, or `ceil(n / block)`) as little-endian f32, the `n` int8
//! values.

use bitnet_framework::codec::{CodecError, ErrorFeedback, GradientCodec, wire};
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::weights::ternary::{round_half_even_small, round_half_even_small_i32};

/// Refuses an update whose length is not the layout's (finiteness is checked while encoding).
fn check_size(layout: &ParamLayout, update: &[f32]) -> Result<(), CodecError> {
    if update.len() != layout.total_params() {
        return Err(CodecError::UpdateSize {
            expected: layout.total_params(),
            found: update.len(),
        });
    }
    Ok(())
}
use bitnet_framework::{BuildContext, Slot, register_plugin};
use serde::{Deserialize, Serialize};

/// Wire id of both codecs (error feedback does not change the payload).
pub const WIRE_ID: &str = "int8";
/// Version of this codec's section format (2: the block size and per-block scales).
pub const WIRE_VERSION: u16 = 2;
/// One-step tolerance: `|decoded - g| <= TOLERANCE * max|g|` per tensor (per block with
/// `block`, which only tightens it).
pub const TOLERANCE: f32 = 0.5 / 127.0;

/// The absmax int8 codec, without error feedback. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Int8Codec {
    /// Values per scale (0 = one scale per tensor).
    pub block: u32,
}

impl Int8Codec {
    /// One scale per tensor.
    pub const PER_TENSOR: Self = Self { block: 0 };

    /// Smallest `block` a config may ask for: below it the scales cost more than they save
    /// (at 16, 10 bits per value; at 1, 40, more than fp32).
    pub const MIN_BLOCK: u32 = 16;

    /// The codec a config's `block` asks for, refused (naming the key) when it is below
    /// [`Self::MIN_BLOCK`] and not 0.
    fn from_config(name: &str, block: u32) -> Result<Self, BuildError> {
        if block != 0 && block < Self::MIN_BLOCK {
            return Err(BuildError::failed(
                Slot::GradientCodec,
                name,
                format!(
                    "codec.block = {block}: use 0 (one scale per tensor) or at least {}",
                    Self::MIN_BLOCK
                ),
            ));
        }
        Ok(Self { block })
    }

    /// Values per scale for a tensor of `numel` values.
    fn chunk(block: u32, numel: usize) -> usize {
        match block {
            0 => numel.max(1),
            b => b as usize,
        }
    }

    /// Bytes of a tensor's section.
    fn section_len(block: u32, numel: usize) -> usize {
        4 + 4 * numel.div_ceil(Self::chunk(block, numel)).max(1) + numel
    }
}

/// Lanes of the one-pass loops below: independent per-lane accumulators let the compiler keep
/// them in vector registers (a single running maximum is a serial dependency it cannot split).
const LANES: usize = 16;

/// The largest `|v|` of `values`, or `None` when one of them is not finite, in one pass.
#[inline(always)]
fn absmax_finite(values: &[f32]) -> Option<f32> {
    let mut max = [0.0f32; LANES];
    let mut bad = [false; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let a = c[i].abs();
            max[i] = if a > max[i] { a } else { max[i] };
            bad[i] |= !a.is_finite();
        }
    }
    let mut m = max.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    let mut any_bad = bad.iter().any(|&b| b);
    for v in rest {
        let a = v.abs();
        m = if a > m { a } else { m };
        any_bad |= !a.is_finite();
    }
    (!any_bad).then_some(m)
}

/// `round_half_even(v * inv)` clamped to -127..=127, the codec's quantization of one value.
/// The integer rounding trick vectorises where a float-to-int cast does not; it needs a finite
/// `inv` (a subnormal maximum makes it infinite: then the float way, [`quantize_slow`]).
#[inline(always)]
fn quantize(v: f32, inv: f32) -> i32 {
    round_half_even_small_i32(v * inv).clamp(-127, 127)
}

/// [`quantize`] for any `inv`, infinite included (`0 * inf` is NaN, which rounds to 0).
#[inline(always)]
fn quantize_slow(v: f32, inv: f32) -> i32 {
    i32::from(round_half_even_small(v * inv).clamp(-127.0, 127.0) as i8)
}

/// A block's scale (`max|v| / 127`, written to `scale_out`) and its inverse `127 / max`
/// (`None` for an all-zero block, whose zeroed values already say everything). Refuses a
/// non-finite value with `Err(())`: the caller names the tensor.
#[inline(always)]
fn block_scale(values: &[f32], scale_out: &mut [u8]) -> Result<Option<(f32, f32)>, ()> {
    let max = absmax_finite(values).ok_or(())?;
    let scale = max / 127.0;
    scale_out.copy_from_slice(&scale.to_le_bytes());
    Ok((max != 0.0).then(|| (scale, 127.0 / max)))
}

bitnet_framework::vectorized_fn!(
    /// Writes the section of `values` (length [`Int8Codec::section_len`]): per block, one pass
    /// for the absmax (and finiteness), one to quantize.
    fn encode_tensor(name: &str, values: &[f32], block: u32, out: &mut [u8])
        -> Result<(), CodecError> = encode_tensor_body, test encode_tensor_at
);

#[inline(always)]
fn encode_tensor_body(
    name: &str,
    values: &[f32],
    block: u32,
    out: &mut [u8],
) -> Result<(), CodecError> {
    for (range, q, sb) in blocks(values.len(), block, out) {
        let vals = &values[range];
        let Some((_, inv)) =
            block_scale(vals, sb).map_err(|()| CodecError::NonFinite(name.into()))?
        else {
            continue;
        };
        if inv.is_finite() {
            for (o, v) in q.iter_mut().zip(vals) {
                *o = quantize(*v, inv) as u8;
            }
        } else {
            for (o, v) in q.iter_mut().zip(vals) {
                *o = quantize_slow(*v, inv) as u8;
            }
        }
    }
    Ok(())
}

bitnet_framework::vectorized_fn!(
    /// [`encode_tensor`], and replaces each value with `value - decoded` in the quantizing pass,
    /// computed exactly as the decoder computes `decoded` (`f32::from(q) * scale`), so the
    /// result is bit-identical to encoding, decoding and subtracting.
    fn encode_tensor_keep_error(name: &str, values: &mut [f32], block: u32, out: &mut [u8])
        -> Result<(), CodecError> = encode_tensor_keep_error_body, test encode_tensor_keep_error_at
);

#[inline(always)]
fn encode_tensor_keep_error_body(
    name: &str,
    values: &mut [f32],
    block: u32,
    out: &mut [u8],
) -> Result<(), CodecError> {
    for (range, q, sb) in blocks(values.len(), block, out) {
        let vals = &mut values[range];
        let Some((scale, inv)) =
            block_scale(vals, sb).map_err(|()| CodecError::NonFinite(name.into()))?
        else {
            continue;
        };
        if inv.is_finite() {
            for (o, v) in q.iter_mut().zip(vals) {
                let r = quantize(*v, inv);
                *o = r as u8;
                *v -= r as f32 * scale;
            }
        } else {
            for (o, v) in q.iter_mut().zip(vals) {
                let r = quantize_slow(*v, inv);
                *o = r as u8;
                *v -= r as f32 * scale;
            }
        }
    }
    Ok(())
}

/// Writes a section's block size; yields `(value range, int8 bytes, scale bytes)` per block.
/// An iterator, not a callback: the callers' loops must be inlined into their vectorized copies,
/// which LLVM need not do for a closure.
#[inline(always)]
fn blocks(
    numel: usize,
    block: u32,
    out: &mut [u8],
) -> impl Iterator<Item = (std::ops::Range<usize>, &mut [u8], &mut [u8])> {
    let chunk = Int8Codec::chunk(block, numel);
    let scales = numel.div_ceil(chunk).max(1);
    let (head, rest) = out.split_at_mut(4);
    head.copy_from_slice(&block.to_le_bytes());
    let (scale_bytes, body) = rest.split_at_mut(4 * scales);
    body.chunks_mut(chunk).zip(scale_bytes.chunks_exact_mut(4)).enumerate().map(
        move |(i, (q, sb))| {
            let start = i * chunk;
            (start..start + q.len(), q, sb)
        },
    )
}

bitnet_framework::vectorized_fn!(
    /// Checks every section and dequantizes it (vectorized: see the macro).
    fn decode_sections(layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError>
        = decode_sections_body, test decode_sections_at
);

#[inline(always)]
fn decode_sections_body(layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
    let sections = wire::open(bytes, WIRE_ID, WIRE_VERSION, layout)?;
    let mut out = vec![0.0f32; layout.total_params()];
    for ((spec, range), section) in layout.iter().zip(sections) {
        let numel = spec.numel();
        let malformed =
            |what: String| CodecError::Malformed(format!("tensor `{}`: {what}", spec.name));
        let Some(head) = section.first_chunk::<4>() else {
            return Err(malformed(format!("{} bytes, too short for a block size", section.len())));
        };
        let block = u32::from_le_bytes(*head);
        let want = Int8Codec::section_len(block, numel);
        if section.len() != want {
            return Err(malformed(format!(
                "{} bytes where block size {block} and {numel} int8 values take {want}",
                section.len()
            )));
        }
        let chunk = Int8Codec::chunk(block, numel);
        let scales = numel.div_ceil(chunk).max(1);
        let (scale_bytes, values) = section[4..].split_at(4 * scales);
        if values.contains(&0x80) {
            return Err(malformed("holds -128, outside the codec's -127..=127".into()));
        }
        for ((o, q), sb) in
            out[range].chunks_mut(chunk).zip(values.chunks(chunk)).zip(scale_bytes.chunks_exact(4))
        {
            let scale = f32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
            if !(scale * 127.0).is_finite() {
                return Err(CodecError::NonFinite(spec.name.clone()));
            }
            if scale < 0.0 {
                return Err(malformed(format!("negative scale {scale}")));
            }
            for (o, &b) in o.iter_mut().zip(q) {
                *o = f32::from(b as i8) * scale;
            }
        }
    }
    Ok(out)
}

impl GradientCodec for Int8Codec {
    fn wire_id(&self) -> &str {
        WIRE_ID
    }

    fn wire_version(&self) -> u16 {
        WIRE_VERSION
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        check_size(layout, update)?;
        let block = self.block;
        self.seal(layout, |i, out| {
            let values = &update[layout.range(i)];
            encode_tensor(&layout.tensors()[i].name, values, block, out)
        })
    }

    fn encode_keep_error(
        &mut self,
        layout: &ParamLayout,
        values: &mut [f32],
    ) -> Result<Vec<u8>, CodecError> {
        check_size(layout, values)?;
        let block = self.block;
        self.seal(layout, |i, out| {
            let (name, values) = (&layout.tensors()[i].name, &mut values[layout.range(i)]);
            encode_tensor_keep_error(name, values, block, out)
        })
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        decode_sections(layout, bytes)
    }

    fn max_encoded_len(&self, layout: &ParamLayout) -> Option<usize> {
        let lens: Vec<usize> = layout
            .tensors()
            .iter()
            // The decoder accepts any block size the sender chose; blocks of one value (a
            // scale per value) make the longest section.
            .map(|t| Self::section_len(0, t.numel()).max(Self::section_len(1, t.numel())))
            .collect();
        Some(wire::payload_len(WIRE_ID, &lens))
    }
}

impl Int8Codec {
    /// A payload of one section per tensor, each written by `fill(tensor index, section)`.
    fn seal(
        &self,
        layout: &ParamLayout,
        fill: impl FnMut(usize, &mut [u8]) -> Result<(), CodecError>,
    ) -> Result<Vec<u8>, CodecError> {
        let lens: Vec<usize> =
            layout.tensors().iter().map(|t| Self::section_len(self.block, t.numel())).collect();
        wire::seal(WIRE_ID, WIRE_VERSION, layout, &lens, fill)
    }
}

/// Options of "int8".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Int8Config {
    /// Values per scale; 0 (the default) = one scale per tensor.
    pub block: u32,
}

impl PluginConfig for Int8Config {
    type Component = dyn GradientCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(Int8Codec::from_config("int8", self.block)?))
    }
}

/// Options of "int8-ef".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Int8EfConfig {
    /// Values per scale; 0 (the default) = one scale per tensor.
    pub block: u32,
}

impl PluginConfig for Int8EfConfig {
    type Component = dyn GradientCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(ErrorFeedback::new(Int8Codec::from_config("int8-ef", self.block)?)))
    }
}

register_plugin!(
    Int8Config,
    "int8",
    "Absmax int8 updates (one scale per tensor, or per `block` values), no error feedback."
);
register_plugin!(
    Int8EfConfig,
    "int8-ef",
    "Absmax int8 updates (one scale per tensor, or per `block` values) with a per-worker \
     error-feedback residual."
);

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::isa::IsaLevel;
    use bitnet_framework::tensor::{TensorRole, TensorSpec};

    fn layout(n: usize) -> ParamLayout {
        ParamLayout::new(vec![TensorSpec {
            name: "w".into(),
            shape: vec![n],
            role: TensorRole::BitLinear,
        }])
        .expect("layout")
    }

    #[test]
    fn scale_is_absmax_over_127_and_values_round_half_even() {
        // max = 127 so the scale is 1 and values are rounded as they are.
        let update = [127.0f32, -0.5, 0.5, 1.5, 2.5, -127.0, 0.0];
        let l = layout(update.len());
        let bytes = Int8Codec::default().encode(&l, &update).expect("encode");
        let decoded = Int8Codec::PER_TENSOR.decode(&l, &bytes).expect("decode");
        assert_eq!(decoded, vec![127.0, -0.0, 0.0, 2.0, 2.0, -127.0, 0.0]);
        assert_eq!(bytes.len(), wire::payload_len(WIRE_ID, &[8 + update.len()]));
    }

    #[test]
    fn blocks_keep_the_resolution_of_small_values() {
        // One large value in the first block: per tensor, the second block's values are all
        // below half a step and vanish; with blocks of 3 they get their own scale.
        let update = [100.0f32, 1.0, -2.0, 0.003, -0.002, 0.001, 0.0005];
        let l = layout(update.len());
        let mut per_tensor = Int8Codec::PER_TENSOR;
        let bytes = per_tensor.encode(&l, &update).expect("encode");
        let decoded = per_tensor.decode(&l, &bytes);
        assert_eq!(&decoded.expect("decode")[3..], &[0.0; 4]);
        let mut blocked = Int8Codec { block: 3 };
        let bytes = blocked.encode(&l, &update).expect("encode");
        // Block size, 3 scales, 7 values.
        assert_eq!(bytes.len(), wire::payload_len(WIRE_ID, &[4 + 3 * 4 + 7]));
        let decoded = blocked.decode(&l, &bytes).expect("decode");
        for (block, (got, want)) in decoded.chunks(3).zip(update.chunks(3)).enumerate() {
            let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= TOLERANCE * max * 1.0001, "block {block}: {g} vs {w}");
            }
        }
        assert!(decoded[3] > 0.0 && decoded[6] > 0.0, "{decoded:?}");
        // The block size travels in the payload: any decoder reads it.
        assert_eq!(Int8Codec::PER_TENSOR.decode(&l, &bytes), Ok(decoded));
    }

    #[test]
    fn configs_refuse_blocks_too_small_to_pay_off() {
        let ctx = BuildContext::new(bitnet_framework::model::ModelConfig::default());
        for (block, ok) in [(0u32, true), (1, false), (15, false), (16, true), (256, true)] {
            let plain = Int8Config { block }.build(&ctx);
            let ef = Int8EfConfig { block }.build(&ctx);
            assert_eq!((plain.is_ok(), ef.is_ok()), (ok, ok), "block {block}");
            if let Err(e) = ef {
                assert!(e.to_string().contains("codec.block"), "{e}");
            }
        }
    }

    #[test]
    fn a_section_disagreeing_with_its_block_size_is_refused() {
        let l = layout(7);
        let bytes = Int8Codec { block: 3 }.encode(&l, &[1.0; 7]).expect("encode");
        // The section (block size, 3 scales, 7 values) sits before the 4-byte checksum.
        let block_at = wire::payload_len(WIRE_ID, &[23]) - 4 - 23;
        for bad in [0u32, 2, 4, 7, u32::MAX] {
            let mut b = bytes.clone();
            b[block_at..block_at + 4].copy_from_slice(&bad.to_le_bytes());
            wire::reseal(&mut b);
            let err = Int8Codec::PER_TENSOR.decode(&l, &b).expect_err("wrong block size");
            assert!(err.to_string().contains("block size"), "{bad}: {err}");
        }
    }

    #[test]
    fn all_zero_tensor_round_trips() {
        let l = layout(5);
        let bytes = Int8Codec::default().encode(&l, &[0.0; 5]).expect("encode");
        assert_eq!(Int8Codec::PER_TENSOR.decode(&l, &bytes), Ok(vec![0.0; 5]));
    }

    #[test]
    fn crafted_scales_and_values_are_refused() {
        let l = layout(3);
        let good = Int8Codec::default().encode(&l, &[1.0, 2.0, 3.0]).expect("encode");
        // The section (block size, the scale, 3 values) sits before the 4-byte checksum.
        let scale_at = wire::payload_len(WIRE_ID, &[11]) - 4 - 11 + 4;
        for (bad_scale, want_nonfinite) in
            [(f32::NAN, true), (f32::INFINITY, true), (f32::MAX, true), (-1.0, false)]
        {
            let mut bytes = good.clone();
            bytes[scale_at..scale_at + 4].copy_from_slice(&bad_scale.to_le_bytes());
            wire::reseal(&mut bytes);
            let err = Int8Codec::PER_TENSOR.decode(&l, &bytes).expect_err("bad scale");
            assert_eq!(matches!(err, CodecError::NonFinite(_)), want_nonfinite, "{err}");
        }
        let mut bytes = good;
        bytes[scale_at + 4] = 0x80;
        wire::reseal(&mut bytes);
        assert!(matches!(Int8Codec::PER_TENSOR.decode(&l, &bytes), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn plain_and_error_feedback_share_the_wire_format() {
        let l = layout(4);
        let update = [0.1f32, -0.2, 0.3, 0.001];
        let mut ef = ErrorFeedback::new(Int8Codec::PER_TENSOR);
        let bytes = ef.encode(&l, &update).expect("encode");
        assert_eq!(Int8Codec::PER_TENSOR.decode(&l, &bytes), ef.decode(&l, &bytes));
    }

    #[test]
    fn error_feedback_recovers_values_below_resolution() {
        // 0.001 is far below half a step (1 / 254): plain int8 sends 0 every time, error
        // feedback sends a 1-step value every few calls.
        let l = layout(2);
        let update = [1.0f32, 0.001];
        let mut ef = ErrorFeedback::new(Int8Codec::PER_TENSOR);
        let mut plain_sum = 0.0f32;
        let mut ef_sum = 0.0f32;
        for _ in 0..1000 {
            let p = Int8Codec::default().encode(&l, &update).expect("encode");
            plain_sum += Int8Codec::PER_TENSOR.decode(&l, &p).expect("decode")[1];
            let e = ef.encode(&l, &update).expect("encode");
            ef_sum += ef.decode(&l, &e).expect("decode")[1];
        }
        assert_eq!(plain_sum, 0.0);
        assert!((ef_sum - 1.0).abs() <= 1.0 / 127.0, "{ef_sum}");
        assert!((ef.residual()[1] - (1.0 - ef_sum)).abs() < 1e-4);
    }

    /// Int8 through the trait's default `encode_keep_error` (encode, decode, subtract).
    struct ViaDecode(Int8Codec);

    impl GradientCodec for ViaDecode {
        fn wire_id(&self) -> &str {
            WIRE_ID
        }
        fn wire_version(&self) -> u16 {
            WIRE_VERSION
        }
        fn encode(&mut self, l: &ParamLayout, u: &[f32]) -> Result<Vec<u8>, CodecError> {
            self.0.encode(l, u)
        }
        fn decode(&self, l: &ParamLayout, b: &[u8]) -> Result<Vec<f32>, CodecError> {
            self.0.decode(l, b)
        }
    }

    proptest::proptest! {
        /// The AVX2 and AVX-512 copies (where this CPU has them) write the baseline's bytes and
        /// residuals and decode to its values.
        #[test]
        fn vectorized_copies_equal_the_baseline(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    -1e3f32..1e3,
                    -1e-30f32..1e-30,
                    proptest::strategy::Just(0.0)
                ],
                1..300,
            ),
            block in proptest::prop_oneof![proptest::strategy::Just(0u32), 1u32..40],
        ) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let len = Int8Codec::section_len(block, values.len());
            let (mut plain, mut kept) = (vec![0u8; len], vec![0u8; len]);
            encode_tensor_body("t", &values, block, &mut plain).expect("encode");
            let mut residual = values.clone();
            encode_tensor_keep_error_body("t", &mut residual, block, &mut kept).expect("keep");
            let l = layout(values.len());
            let payload = Int8Codec { block }.encode(&l, &values).expect("payload");
            let decoded = decode_sections_body(&l, &payload).expect("decode");
            for level in IsaLevel::ALL {
                let mut p = vec![0u8; len];
                let Some(r) = encode_tensor_at(level, "t", &values, block, &mut p) else {
                    continue;
                };
                r.expect("encode");
                proptest::prop_assert_eq!(&p, &plain, "{}", level);
                let (mut k, mut res) = (vec![0u8; len], values.clone());
                encode_tensor_keep_error_at(level, "t", &mut res, block, &mut k)
                    .expect("supported")
                    .expect("keep");
                proptest::prop_assert_eq!(&k, &kept, "{}", level);
                proptest::prop_assert_eq!(bits(&res), bits(&residual), "{}", level);
                let d = decode_sections_at(level, &l, &payload).expect("supported").expect("d");
                proptest::prop_assert_eq!(bits(&d), bits(&decoded), "{}", level);
            }
        }

        #[test]
        fn one_pass_error_is_bit_identical_to_encode_decode_subtract(
            values in proptest::collection::vec(-1e3f32..1e3, 1..300),
            split in 0usize..300,
            block in proptest::prop_oneof![proptest::strategy::Just(0u32), 1u32..40],
        ) {
            let split = split.min(values.len());
            let specs = [("a", split), ("b", values.len() - split)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| TensorSpec { name: name.into(), shape: vec![n], role: TensorRole::BitLinear })
                .collect();
            let l = ParamLayout::new(specs).expect("layout");
            let (mut fast, mut slow) = (values.clone(), values.clone());
            let mut codec = Int8Codec { block };
            let a = codec.encode_keep_error(&l, &mut fast).expect("one pass");
            let b = ViaDecode(codec).encode_keep_error(&l, &mut slow).expect("default");
            proptest::prop_assert_eq!(a, b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&fast), bits(&slow));
        }
    }

    #[test]
    fn one_pass_error_feedback_refuses_non_finite_and_keeps_the_residual() {
        let l = layout(2);
        let mut ef = ErrorFeedback::new(Int8Codec::PER_TENSOR);
        ef.encode(&l, &[1.0, 0.001]).expect("encode");
        let before = ef.residual().to_vec();
        assert!(ef.encode(&l, &[f32::NAN, 0.0]).is_err());
        assert_eq!(ef.residual(), &before[..], "a refused update carries nothing over");
    }

    mod plain {
        use super::super::*;
        use bitnet_framework::codec::conformance::Tolerance;

        bitnet_framework::codec_conformance_tests!(
            || Box::new(Int8Codec::PER_TENSOR) as Box<dyn GradientCodec>,
            Tolerance::RelativeToTensorMax(TOLERANCE)
        );
    }

    mod blocked_with_error_feedback {
        use super::super::*;
        use bitnet_framework::codec::conformance::{Tolerance, error_feedback_converges};

        fn make() -> Box<dyn GradientCodec> {
            Box::new(ErrorFeedback::new(Int8Codec { block: 5 }))
        }

        bitnet_framework::codec_conformance_tests!(make, Tolerance::RelativeToTensorMax(TOLERANCE));

        #[test]
        fn conformance_error_feedback_converges() {
            error_feedback_converges(&make, Tolerance::RelativeToTensorMax(TOLERANCE));
        }
    }

    mod with_error_feedback {
        use super::super::*;
        use bitnet_framework::codec::conformance::{Tolerance, error_feedback_converges};

        bitnet_framework::codec_conformance_tests!(
            || Box::new(ErrorFeedback::new(Int8Codec::PER_TENSOR)) as Box<dyn GradientCodec>,
            Tolerance::RelativeToTensorMax(TOLERANCE)
        );

        #[test]
        fn conformance_error_feedback_converges() {
            error_feedback_converges(
                &|| Box::new(ErrorFeedback::new(Int8Codec::PER_TENSOR)) as Box<dyn GradientCodec>,
                Tolerance::RelativeToTensorMax(TOLERANCE),
            );
        }
    }
}
