//! BitNet b1.58 ternary weights: the absmean quantizer, base-3 packing, and the inverse the
//! ternary weight codec needs.
//!
//! The quantizer is the kernel's: `g = mean|W|` summed in f64 over 16 lanes ([`absmean`]), then
//! `W_q = clamp(round_half_even(W / (g + 1e-5)), -1, 1)`, with `W ~ W_q * g`. Five trits fit in
//! a byte as `sum (t_i + 1) * 3^i` (1.6 bits per weight; bytes above 242 are invalid).

/// Added to the absmean scale in the quantizer's divisor.
pub const WEIGHT_EPS: f32 = 1e-5;
/// Trits per packed byte.
pub const TRITS_PER_BYTE: usize = 5;
/// Largest valid packed byte (`3^5 - 1`).
pub const MAX_PACKED: u8 = 242;

/// Lanes of the absmean's partial sums: element `i` of each full block of 16 goes to lane
/// `i % 16`, the tail is summed on its own. The kernel's quantizer sums in exactly this order
/// (one AVX-512 register of f32 is two of f64), so the codec, the kernel and every ISA path
/// agree on `g` to the bit; and sixteen independent f64 chains run at memory speed where one
/// sequential chain waits out each addition's latency.
pub const ABSMEAN_LANES: usize = 16;

crate::vectorized_fn!(
    /// The per-tensor absmean `g = mean|W|`, summed in f64 over [`ABSMEAN_LANES`] lanes, reduced
    /// in a fixed order (pairs `(j, j + 8)`, then the tail), divided in f64 and rounded once.
    pub fn absmean(w: &[f32]) -> f32
        = absmean_body, test absmean_at
);

/// [`absmean`]'s body, inlined into its vectorized callers.
#[inline(always)]
fn absmean_body(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    let full = w.len() / ABSMEAN_LANES * ABSMEAN_LANES;
    let mut lanes = [0.0f64; ABSMEAN_LANES];
    for block in w[..full].chunks_exact(ABSMEAN_LANES) {
        for (l, &v) in lanes.iter_mut().zip(block) {
            *l += f64::from(v.abs());
        }
    }
    let tail = w[full..].iter().fold(0.0f64, |a, v| a + f64::from(v.abs()));
    finish_absmean(&lanes, tail, w.len())
}

/// The fixed reduction order of the absmean lanes: pairs `(j, j + 8)`, then `0..8` in order,
/// then the tail; divided by `n` in f64 and rounded once to f32. The kernel's SIMD paths
/// accumulate the lanes in registers and finish with this.
#[inline]
pub fn finish_absmean(lanes: &[f64; ABSMEAN_LANES], tail: f64, n: usize) -> f32 {
    let mut total = 0.0f64;
    for j in 0..ABSMEAN_LANES / 2 {
        total += lanes[j] + lanes[j + ABSMEAN_LANES / 2];
    }
    ((total + tail) / n as f64) as f32
}

/// Quantizes `w` to trits in `{-1, 0, 1}` written to `trits`; returns the scale `g`.
///
/// # Panics
/// If `trits` and `w` differ in length (a caller bug, not an input error).
pub fn quantize(w: &[f32], trits: &mut [i8]) -> f32 {
    assert_eq!(w.len(), trits.len(), "trit buffer must match the tensor");
    let g = absmean(w);
    let div = g + WEIGHT_EPS;
    for (t, &x) in trits.iter_mut().zip(w) {
        *t = trit(x / div);
    }
    g
}

crate::vectorized_fn!(
    /// Quantizes `w` and packs its trits five to a byte, appended to `out` (the weight codec's
    /// encoder); returns the scale `g`. The same bytes as [`quantize`] then [`pack`], a block at a
    /// time (the quantizing loop vectorises on its own; fused with packing it would not).
    pub fn quantize_packed(w: &[f32], out: &mut Vec<u8>) -> f32
        = quantize_packed_body, test quantize_packed_at
);

#[inline(always)]
fn quantize_packed_body(w: &[f32], out: &mut Vec<u8>) -> f32 {
    // A multiple of five, so only the last block can end in a short packed byte.
    const BLOCK: usize = 4095;
    let g = absmean_body(w);
    let div = g + WEIGHT_EPS;
    let mut trits = [0i8; BLOCK];
    out.reserve(packed_len(w.len()));
    for block in w.chunks(BLOCK) {
        let t = &mut trits[..block.len()];
        for (t, &x) in t.iter_mut().zip(block) {
            *t = trit_int(x / div);
        }
        pack(t, out);
    }
    g
}

/// Rounds half to even for values in `[-2^22, 2^22]` (callers clamp first): adding and
/// subtracting `1.5 * 2^23` leaves the nearest integer under the default rounding mode, in two
/// additions that vectorise. Unlike `f32::round_ties_even`, this never becomes a libm call per
/// element on CPUs without SSE4.1 in the target (it was about 2/3 of this codec's encode time).
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// [`round_half_even_small`] as an integer, read from the low bits of the rounded sum: integer
/// operations only, which vectorise where a float-to-int cast does not. `|v|` must be below
/// `2^22`.
#[inline(always)]
pub fn round_half_even_small_i32(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// The trit of `v = W / (g + eps)`: `clamp(round_half_even(v), -1, 1)`. Clamping to `[-2, 2]`
/// first changes nothing after the final clamp and keeps `v` in range for
/// [`round_half_even_small`].
#[inline(always)]
pub fn trit(v: f32) -> i8 {
    round_half_even_small(v.clamp(-2.0, 2.0)).clamp(-1.0, 1.0) as i8
}

/// [`trit`] in integer operations after the rounding (NaN first mapped to 0, as `NaN as i8`
/// is), so a loop of it vectorizes at every width: LLVM turns `trit`'s float-to-`i8` cast into
/// one scalar conversion per element on AVX-512. Equal to [`trit`] for every input (tested).
#[inline(always)]
fn trit_int(v: f32) -> i8 {
    let v = if v.is_nan() { 0.0 } else { v };
    round_half_even_small_i32(v.clamp(-2.0, 2.0)).clamp(-1, 1) as i8
}

/// Bytes needed to pack `n` trits.
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(TRITS_PER_BYTE)
}

/// Packs trits (each in `{-1, 0, 1}`) five to a byte: `sum (t_i + 1) * 3^i`.
#[inline(always)]
pub fn pack(trits: &[i8], out: &mut Vec<u8>) {
    let digit = |t: i8| (t.clamp(-1, 1) + 1) as u8;
    let start = out.len();
    out.resize(start + packed_len(trits.len()), 0);
    let bytes = &mut out[start..];
    let chunks = trits.chunks_exact(TRITS_PER_BYTE);
    let rest = chunks.remainder();
    for (b, c) in bytes.iter_mut().zip(chunks) {
        *b = digit(c[0]) + 3 * digit(c[1]) + 9 * digit(c[2]) + 27 * digit(c[3]) + 81 * digit(c[4]);
    }
    if !rest.is_empty() {
        // A short last chunk packs as if padded with -1 (digit 0) in the high places.
        let last = rest.iter().rev().fold(0u8, |byte, &t| byte * 3 + digit(t));
        if let Some(b) = bytes.last_mut() {
            *b = last;
        }
    }
}

const fn unpack_table() -> [[i8; TRITS_PER_BYTE]; 243] {
    let mut table = [[0i8; TRITS_PER_BYTE]; 243];
    let mut b = 0;
    while b < 243 {
        let mut v = b;
        let mut i = 0;
        while i < TRITS_PER_BYTE {
            table[b][i] = (v % 3) as i8 - 1;
            v /= 3;
            i += 1;
        }
        b += 1;
    }
    table
}

static UNPACK: [[i8; TRITS_PER_BYTE]; 243] = unpack_table();

/// Unpacks `out.len()` trits from `packed`. Refuses a wrong length, a byte above 242, or
/// padding in the last byte that a packer would not have written.
pub fn unpack(packed: &[u8], out: &mut [i8]) -> Result<(), String> {
    if packed.len() != packed_len(out.len()) {
        return Err(format!(
            "{} packed bytes for {} trits, expected {}",
            packed.len(),
            out.len(),
            packed_len(out.len())
        ));
    }
    // One branch-free pass for the range check (it vectorises), then fixed-size copies.
    if let Some(&byte) = packed.iter().max().filter(|&&b| b > MAX_PACKED) {
        return Err(format!("packed byte {byte} is not 5 trits (max {MAX_PACKED})"));
    }
    let mut chunks = out.chunks_exact_mut(TRITS_PER_BYTE);
    for (chunk, &byte) in (&mut chunks).zip(packed) {
        chunk.copy_from_slice(&UNPACK[usize::from(byte)]);
    }
    let rest = chunks.into_remainder();
    if let (false, Some(&byte)) = (rest.is_empty(), packed.last()) {
        let trits = &UNPACK[usize::from(byte)];
        rest.copy_from_slice(&trits[..rest.len()]);
        if trits[rest.len()..].iter().any(|&t| t != -1) {
            return Err("non-canonical padding in the last packed byte".into());
        }
    }
    Ok(())
}

crate::vectorized_fn!(
    /// Latent weights the quantizer maps back to exactly `trits` with scale `g`.
    ///
    /// Every non-zero trit becomes `t * v` with `v ~ g * n / nnz` rounded down to f32, so
    /// `|W| / (g + eps) >= 1/2` there. Rounding `v` can leave up to `nnz` ulps of `v` of
    /// `sum |W| = g * n` behind (in a tensor of millions of weights, more than half a scale), so
    /// the first non-zero trits, as many as that leaves whole ulps, take `v`'s next float instead.
    /// What is left then, under one ulp of `v`, goes into one zero-trit element (far too small to
    /// leave zero), or, when every trit is non-zero, into the last element; of the few candidate
    /// values for it, the first whose [`absmean`] is exactly `g` is taken. Returns `false` if `g`
    /// is not finite and non-negative, the sizes differ, or no weights with absmean `g` quantize
    /// to `trits` (the quantizer divides by `g + eps`, so a scale far below `eps` with many
    /// non-zero trits, or a zero scale with any, is a pair no encoder writes); the result is
    /// checked against the quantizer, so whatever it accepts, encoding it again gives the same
    /// trits and scale.
    ///
    /// The check costs one pass: every element but the adjusted one is `0`, `±v` or `±v'` (`v'`
    /// the next float), so the quantizer's verdict on them is its verdict on `v` and `v'` (it is
    /// odd: `trit(-x) = -trit(x)`), and only the adjusted element and the absmean are checked on
    /// their own.
    pub fn dequantize_latent(trits: &[i8], g: f32, out: &mut [f32]) -> bool
        = dequantize_latent_body, test dequantize_latent_at
);

/// Trits per count of [`dequantize_latent`]'s first pass, which finds where the magnitudes
/// rounded up end without a second walk over the tensor.
const COUNT_BLOCK: usize = 4096;

#[inline(always)]
fn dequantize_latent_body(trits: &[i8], g: f32, out: &mut [f32]) -> bool {
    if !g.is_finite() || g < 0.0 || trits.len() != out.len() {
        return false;
    }
    let n = trits.len();
    // Plain loops: a closure handed to an iterator adaptor need not be inlined into the
    // vectorized copies, and then runs at the baseline's width.
    let mut counts = Vec::with_capacity(n.div_ceil(COUNT_BLOCK));
    let mut nnz = 0usize;
    for block in trits.chunks(COUNT_BLOCK) {
        let mut c = 0u32;
        for &t in block {
            c += u32::from(t != 0);
        }
        counts.push(c as usize);
        nnz += c as usize;
    }
    if nnz == 0 {
        out.fill(0.0);
        return true;
    }
    if g == 0.0 {
        return false;
    }
    let target = f64::from(g) * n as f64;
    let v = magnitude_within(target, nnz);
    let div = g + WEIGHT_EPS;
    let is_one = |m: f32| m.is_finite() && trit(m / div) == 1 && trit(-m / div) == -1;
    if !is_one(v) {
        return false;
    }
    // The first `bumped` non-zero trits (those before `split`) take `up`.
    let up = v.next_up();
    let ulp = f64::from(up) - f64::from(v);
    let left = (target - nnz as f64 * f64::from(v)).max(0.0);
    let bumped = ((left / ulp).floor() as usize).min(nnz);
    if bumped > 0 && !is_one(up) {
        return false;
    }
    let split = prefix_with_nonzeros(trits, &counts, bumped);
    for (o, &t) in out[..split].iter_mut().zip(&trits[..split]) {
        *o = f32::from(t) * up;
    }
    for (o, &t) in out[split..].iter_mut().zip(&trits[split..]) {
        *o = f32::from(t) * v;
    }
    let total = nnz as f64 * f64::from(v) + bumped as f64 * ulp;
    // The element that takes what is left of `g * n`, and the candidates for its magnitude:
    // the ideal remainder and its neighbours (the f64 sums round), or nothing at all.
    let (at, rest) = match trits.iter().position(|&t| t == 0) {
        Some(i) => (i, total),
        None => (n - 1, total - f64::from(out[n - 1].abs())),
    };
    let ideal = (target - rest) as f32;
    let sign = f32::from(trits[at]);
    let candidates = [ideal, ideal.next_down(), ideal.next_up()];
    let zero_trit = trits[at] == 0;
    for magnitude in candidates.into_iter().chain(zero_trit.then_some(0.0)) {
        let magnitude = if zero_trit { magnitude.max(0.0) } else { magnitude };
        if !magnitude.is_finite() || (zero_trit && magnitude >= 0.25 * g) {
            continue;
        }
        let w = if zero_trit { magnitude } else { sign * magnitude };
        if trit(w / div) != trits[at] {
            continue;
        }
        out[at] = w;
        if absmean_body(out) == g {
            return true;
        }
    }
    false
}

/// `target / nnz` rounded to f32, one float lower if `nnz` times it passes `target`: the
/// magnitude of [`dequantize_latent`]'s non-zero weights before the rounded-up ones.
#[inline(always)]
fn magnitude_within(target: f64, nnz: usize) -> f32 {
    let v = (target / nnz as f64) as f32;
    if nnz as f64 * f64::from(v) > target { v.next_down() } else { v }
}

/// The length of the shortest prefix of `trits` holding `k` non-zero trits (at most the count),
/// from the per-[`COUNT_BLOCK`] counts of non-zeros.
#[inline(always)]
fn prefix_with_nonzeros(trits: &[i8], counts: &[usize], k: usize) -> usize {
    if k == 0 {
        return 0;
    }
    let mut seen = 0;
    for (b, &c) in counts.iter().enumerate() {
        if seen + c < k {
            seen += c;
            continue;
        }
        let start = b * COUNT_BLOCK;
        for (i, &t) in trits[start..].iter().enumerate() {
            seen += usize::from(t != 0);
            if seen == k {
                return start + i + 1;
            }
        }
    }
    trits.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fast_trit_matches_round_ties_even() {
        let reference = |v: f32| v.round_ties_even().clamp(-1.0, 1.0) as i8;
        let mut cases =
            vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, 1e30, -1e30];
        cases.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 3.0e-39]);
        cases.extend((-4000..=4000).map(|i| i as f32 / 1000.0));
        for v in cases {
            assert_eq!(trit(v), reference(v), "{v}");
            assert_eq!(trit_int(v), reference(v), "{v}");
        }
    }

    /// Found by fuzzing (`weight_blob`): a scale far below the quantizer's epsilon cannot be the
    /// absmean of weights whose trits are all non-zero, so it is refused rather than decoded to
    /// latent weights that quantize to zeros.
    #[test]
    fn a_scale_no_weights_could_have_is_refused() {
        let mut out = [0.0f32; 8];
        for g in [3.9e-39f32, 1e-7, 4e-6, 0.0] {
            assert!(!dequantize_latent(&[1, -1, 1, 1, -1, 1, 1, 1], g, &mut out), "scale {g}");
        }
        // A small scale is valid when the non-zero trits are few enough: one weight of 6e-6
        // among 100 zeros has absmean 6e-8 and trit 1.
        let mut w = vec![0.0f32; 100];
        w[3] = 6e-6;
        let mut t = vec![0i8; 100];
        let g = quantize(&w, &mut t);
        assert_eq!(t[3], 1);
        let mut latent = vec![0.0f32; 100];
        assert!(dequantize_latent(&t, g, &mut latent));
        let mut t2 = vec![0i8; 100];
        assert_eq!(quantize(&latent, &mut t2), g);
        assert_eq!(t2, t);
    }

    /// The worst rounding `g * n / nnz` can leave in a tensor of `n` weights with `nnz` non-zero
    /// trits: scans scales up from `from` for one whose per-weight magnitude `v` (rounded down to
    /// f32, as the decoder rounds it) leaves more than `at_least * g` of `g * n` behind.
    fn scale_leaving_behind(n: usize, nnz: usize, from: f32, at_least: f64) -> f32 {
        let mut g = from;
        loop {
            let target = f64::from(g) * n as f64;
            let v = magnitude_within(target, nnz);
            if target - nnz as f64 * f64::from(v) > at_least * f64::from(g) {
                return g;
            }
            g = g.next_up();
        }
    }

    /// Found by the large config's run (`blocks.11.ffn.gate_proj.weight`, 2.4M weights, after 928
    /// versions): rounding `v ~ g * n / nnz` to f32 leaves up to `nnz` ulps of `v` of `g * n`
    /// behind, in a tensor of millions of weights more than a zero-trit element can take (it
    /// must stay under half a scale), and the decoder refused the coordinator's own download.
    /// Such scales decode, and the latent weights quantize back to the same trits and scale.
    #[test]
    fn large_tensors_decode_whatever_the_rounding_leaves() {
        let check = |trits: &[i8], g: f32| {
            let mut latent = vec![0.0f32; trits.len()];
            assert!(dequantize_latent(trits, g, &mut latent), "scale {g} of {} trits", trits.len());
            let mut back = vec![0i8; trits.len()];
            assert_eq!(quantize(&latent, &mut back).to_bits(), g.to_bits());
            assert!(back == trits, "the trits come back");
        };
        // Every eighth trit zero: the leftover goes into a zero-trit element.
        let n = 1 << 22;
        let trit_at = |i: usize| match (i % 8, i % 3) {
            (0, _) => 0,
            (_, 0) => -1,
            _ => 1,
        };
        let trits: Vec<i8> = (0..n).map(trit_at).collect();
        let nnz = trits.iter().filter(|&&t| t != 0).count();
        check(&trits, scale_leaving_behind(n, nnz, 0.0123, 0.3));
        // One zero trit in the whole tensor: about half a scale left behind once more, which
        // the last non-zero element could not take either (it must stay under 1.5 scales).
        let mut trits: Vec<i8> = (0..n).map(|i| if i % 3 == 0 { -1 } else { 1 }).collect();
        trits[n / 2] = 0;
        check(&trits, scale_leaving_behind(n, n - 1, 0.0123, 0.3));
    }

    proptest! {
        /// Every vectorized copy (AVX2, AVX-512 where this CPU has them) gives the baseline's
        /// bits: the absmean, the packed trits and scale, and the latent weights.
        #[test]
        fn vectorized_copies_equal_the_baseline(
            w in prop::collection::vec(
                prop_oneof![-3.0f32..3.0, -1e-6f32..1e-6, Just(0.0)],
                0..300,
            ),
        ) {
            let mut packed = Vec::new();
            let g = quantize_packed_body(&w, &mut packed);
            let mut trits = vec![0i8; w.len()];
            quantize(&w, &mut trits);
            let mut latent = vec![0.0f32; w.len()];
            let ok = dequantize_latent_body(&trits, g, &mut latent);
            for level in crate::isa::IsaLevel::ALL {
                let Some(a) = absmean_at(level, &w) else { continue };
                prop_assert_eq!(a.to_bits(), absmean_body(&w).to_bits(), "{}", level);
                let mut p = Vec::new();
                let gl = quantize_packed_at(level, &w, &mut p).expect("supported");
                prop_assert_eq!((gl.to_bits(), &p), (g.to_bits(), &packed), "{}", level);
                let mut l = vec![0.0f32; w.len()];
                let okl = dequantize_latent_at(level, &trits, g, &mut l).expect("supported");
                prop_assert_eq!(okl, ok, "{}", level);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&l), bits(&latent), "{}", level);
            }
        }

        #[test]
        fn integer_rounding_matches_round_ties_even(v in -4_194_303.0f32..4_194_303.0) {
            prop_assert_eq!(round_half_even_small_i32(v), v.round_ties_even() as i32);
            let half = (v as i32) as f32 + 0.5;
            prop_assert_eq!(round_half_even_small_i32(half), half.round_ties_even() as i32);
        }
    }

    #[test]
    fn quantizer_matches_the_formula() {
        let w = [0.2f32, -0.4, 0.6, -0.8, 0.0, 0.1];
        let mut t = [0i8; 6];
        let g = quantize(&w, &mut t);
        assert!((g - 0.35).abs() < 1e-6);
        assert_eq!(t, [1, -1, 1, -1, 0, 0]);
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips(trits in prop::collection::vec(-1i8..=1, 0..64)) {
            let mut packed = Vec::new();
            pack(&trits, &mut packed);
            prop_assert_eq!(packed.len(), packed_len(trits.len()));
            let mut back = vec![0i8; trits.len()];
            prop_assert_eq!(unpack(&packed, &mut back), Ok(()));
            prop_assert_eq!(back, trits);
        }

        #[test]
        fn unpack_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..16), n in 0usize..80) {
            let mut out = vec![0i8; n];
            if unpack(&bytes, &mut out).is_ok() {
                prop_assert!(out.iter().all(|t| (-1..=1).contains(t)));
            }
        }

        #[test]
        fn quantize_packed_is_quantize_then_pack(w in prop::collection::vec(-2.0f32..2.0, 0..80)) {
            let mut t = vec![0i8; w.len()];
            let g = quantize(&w, &mut t);
            let mut packed = vec![7u8];
            pack(&t, &mut packed);
            let mut fused = vec![7u8];
            prop_assert_eq!(quantize_packed(&w, &mut fused), g);
            prop_assert_eq!(fused, packed);
        }

        /// The lane-split sum is the sequential one up to rounding: the means agree to a few
        /// ulps of f32 (exactly, in all but rare ties).
        #[test]
        fn absmean_is_the_mean_magnitude(w in prop::collection::vec(-1e3f32..1e3, 1..200)) {
            let exact = w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64;
            let g = f64::from(absmean(&w));
            prop_assert!((g - exact).abs() <= exact * 1e-6, "{} vs {}", g, exact);
        }

        /// Soundness of the one-pass check: whatever `(trits, g)` pair is accepted, the latent
        /// weights quantize back to exactly that pair, checked element by element.
        #[test]
        fn accepted_pairs_requantize_exactly(
            trits in prop::collection::vec(-1i8..=1, 1..120),
            g in prop_oneof![0.0f32..2.0, 0.0f32..1e-5, Just(1e-38f32), 1e30f32..3e38],
        ) {
            let mut latent = vec![0.0f32; trits.len()];
            if dequantize_latent(&trits, g, &mut latent) && trits.iter().any(|&t| t != 0) {
                let mut back = vec![0i8; trits.len()];
                prop_assert_eq!(quantize(&latent, &mut back), g);
                prop_assert_eq!(back, trits);
            }
        }

        #[test]
        fn dequantized_latent_requantizes_to_the_same_weights(
            w in prop_oneof![
                prop::collection::vec(-2.0f32..2.0, 1..300),
                // Every weight far from zero: every trit non-zero (the last element adjusts).
                prop::collection::vec(prop_oneof![0.9f32..1.1, -1.1f32..-0.9], 1..300),
                prop::collection::vec(-1e-6f32..1e-6, 1..300),
            ],
        ) {
            let mut t = vec![0i8; w.len()];
            let g = quantize(&w, &mut t);
            let mut latent = vec![0.0f32; w.len()];
            prop_assert!(dequantize_latent(&t, g, &mut latent));
            let mut t2 = vec![0i8; w.len()];
            let g2 = quantize(&latent, &mut t2);
            prop_assert_eq!(&t2, &t);
            if t.iter().any(|&x| x != 0) {
                prop_assert_eq!(g2, g);
            }
        }
    }
}
