//! Causal scaled dot-product attention over head-major `[B, H, T, hd]` tensors, forward and
//! backward, parallel over (batch, head) with rayon.
//!
//! At the model's shapes (`T = 128`, `hd = 32`) every product is tiny (`k = 32` or `k <= T`),
//! so they are register tiles written here, not calls to a GEMM (whose packing and dispatch
//! cost more than the work): `rows <= 8` by two 16-lane vectors of
//! `c[r][j] = sum_p a[r][p] * b[p][j]`, `a` read by broadcasts at any strides (so `P^T` and
//! `dS^T` need no transpose), `b` by contiguous rows (so `K` and `V` are transposed once per
//! head for `Q K^T` and `dO V^T`). See `attention_rows` for the passes and their scalar twins.
//!
//! Per (batch, head), by blocks of 8 query rows, with the head's buffers in a per-thread
//! scratch that stays in L2:
//! - forward: scores `S = Q K^T` (only the keys up to the block's diagonal, rounded up to 16),
//!   softmax (masked entries exact zeros; each row's `(max, 1 / sum)` recorded), `O = P V`
//!   over those keys;
//! - backward: the same scores and probabilities, recomputed from the recorded statistics
//!   through the same code (so bit-identical to the forward's), `dP = dO V^T` and
//!   `dS = P * (dP - rowsum(P * dP)) / sqrt(hd)` while the rows are in L1, `dQ = dS K`; then
//!   `dV = P^T dO` and `dK = dS^T Q` by key blocks, each over the queries at or after it.
//!
//! On the SIMD path with `T <= 128`, the scores (and `dP`) of two rows at a time stay in
//! registers through the softmax (and `dS`). Both passes also write the probabilities to the
//! caller's `T x T` buffer (streaming stores: nothing reads them back here), so the two can be
//! compared; the score gradients never leave the per-thread scratch.
//!
//! Paths: [`Isa::Avx512`], [`Isa::Avx2`] (8 x 8 register tiles, the row passes unfused),
//! [`Isa::Neon`] (aarch64, 8 x 8 register tiles, the row passes unfused) and [`Isa::Scalar`],
//! bit-identical (a property test holds them so).

use super::attention_rows::{
    MR, Stats, TileOperands, finish_stores, probability_rows, row_blocks, score_gradient_rows,
    store_rows, tile_row, transpose_into,
};
use super::{GemmError, Isa, check_isa, check_len, checked_area};
use rayon::prelude::*;

/// Paths of the attention passes.
pub const ATTENTION_PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// Per-thread buffers of a (batch, head): the transposed keys and values (`hd x T`), the
/// probabilities and the score gradients (`T x T`; a row block of probabilities in forward).
/// Reused from head to head, they stay in L2.
#[derive(Default)]
struct HeadScratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    p: Vec<f32>,
    ds: Vec<f32>,
}

/// The `h`-th head (`block` floats) of a head-major tensor.
fn head_of(x: &[f32], h: usize, block: usize) -> &[f32] {
    &x[h * block..(h + 1) * block]
}

/// Asks for `x` to be brought into L2 (SIMD path only; a hint, nothing is read).
fn prefetch(isa: Isa, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        super::x86_attention::prefetch_l2(x);
    }
    let _ = (isa, x);
}

/// The next head's inputs, prefetched a part per row block while this head computes (a burst
/// of prefetches at the start of the head stalls on the full miss queue).
struct NextHead<'a> {
    isa: Isa,
    inputs: [&'a [f32]; 4],
}

impl<'a> NextHead<'a> {
    /// The head after `h` of each of `inputs` (`block` floats per head; none after the last).
    fn new(isa: Isa, inputs: &[&'a [f32]], h: usize, block: usize) -> Self {
        let mut next: [&[f32]; 4] = [&[]; 4];
        for (n, x) in next.iter_mut().zip(inputs) {
            *n = x.get((h + 1) * block..(h + 2) * block).unwrap_or_default();
        }
        Self { isa, inputs: next }
    }

    /// Prefetches part `i` of `parts` of every input.
    fn part(&self, i: usize, parts: usize) {
        for x in self.inputs {
            let (from, to) = (x.len() * i / parts, x.len() * (i + 1) / parts);
            prefetch(self.isa, &x[from..to]);
        }
    }
}

/// Forward of one (batch, head): `out`, its probabilities `p_out` (`T x T`) and `stats`.
fn forward_head(
    isa: Isa,
    (out, p_out, stats): (&mut [f32], &mut [f32], &mut [f32]),
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
    (scratch, next): (&mut HeadScratch, &NextHead),
) {
    prefetch(isa, out);
    transpose_into(isa, &mut scratch.kt, k, (t_len, hd));
    scratch.p.resize(MR * t_len, 0.0);
    for (r0, r1) in row_blocks(t_len) {
        next.part(r0 / MR, t_len.div_ceil(MR));
        let rows = &mut scratch.p[..(r1 - r0) * t_len];
        let st = Stats::Record(&mut stats[2 * r0..2 * r1]);
        probability_rows(isa, rows, (q, &scratch.kt), (r0, r1), (t_len, hd), st);
        // O = P V over the keys 0..r1 (after each row's diagonal, exact zeros).
        let pv = TileOperands { a: rows, a_rs: t_len, a_cs: 1, b: v, ldb: hd, depth: r1 };
        tile_row(isa, &mut out[r0 * hd..], hd, (r1 - r0, hd), pv);
        store_rows(isa, &mut p_out[r0 * t_len..r1 * t_len], rows);
    }
    finish_stores(isa);
}

/// Backward of one (batch, head): `dq`, `dk`, `dv` and the recomputed probabilities `p_out`.
fn backward_head(
    isa: Isa,
    (dq, dk, dv, p_out): (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    (dout, stats): (&[f32], &[f32]),
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
    (scratch, next): (&mut HeadScratch, &NextHead),
) {
    for x in [&*dq, &*dk, &*dv] {
        prefetch(isa, x);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let HeadScratch { kt, vt, p, ds } = scratch;
    transpose_into(isa, kt, k, (t_len, hd));
    transpose_into(isa, vt, v, (t_len, hd));
    p.resize(t_len * t_len, 0.0);
    ds.resize(t_len * t_len, 0.0);
    for (r0, r1) in row_blocks(t_len) {
        next.part(r0 / MR, t_len.div_ceil(MR));
        let rows = r0 * t_len..r1 * t_len;
        let st = Stats::Replay(&stats[2 * r0..2 * r1]);
        probability_rows(isa, &mut p[rows.clone()], (q, kt), (r0, r1), (t_len, hd), st);
        store_rows(isa, &mut p_out[rows.clone()], &p[rows.clone()]);
        // dP = dO V^T, then dS row by row while in L1; row t is live on 0..=t.
        let (dsr, pr) = (&mut ds[rows.clone()], &p[rows]);
        score_gradient_rows(isa, (dsr, pr), (dout, vt), (r0, r1), (t_len, hd), scale);
        // dQ = dS K over the keys 0..r1.
        let dsk =
            TileOperands { a: &ds[r0 * t_len..], a_rs: t_len, a_cs: 1, b: k, ldb: hd, depth: r1 };
        tile_row(isa, &mut dq[r0 * hd..], hd, (r1 - r0, hd), dsk);
    }
    // dV = P^T dO and dK = dS^T Q: key block (c0, c1) sums over the queries c0..T only.
    for (c0, c1) in row_blocks(t_len) {
        let depth = t_len - c0;
        let shape = (c1 - c0, hd);
        let a = &p[c0 * t_len + c0..];
        let pt = TileOperands { a, a_rs: 1, a_cs: t_len, b: &dout[c0 * hd..], ldb: hd, depth };
        tile_row(isa, &mut dv[c0 * hd..], hd, shape, pt);
        let a = &ds[c0 * t_len + c0..];
        let dst = TileOperands { a, a_rs: 1, a_cs: t_len, b: &q[c0 * hd..], ldb: hd, depth };
        tile_row(isa, &mut dk[c0 * hd..], hd, shape, dst);
    }
    finish_stores(isa);
}

/// Checks the buffers of the `q.len() / (t_len * hd)` (batch, head) pairs.
fn check_shape(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
    head_sized: &[(&'static str, usize)],
    square: &[(&'static str, usize)],
    stats: usize,
) -> Result<(), GemmError> {
    if t_len == 0 || hd == 0 {
        return Err(GemmError::Shape(format!("attention: T = {t_len}, hd = {hd} must be > 0")));
    }
    let block = checked_area("attention head", t_len, hd)?;
    let tt = checked_area("attention scores", t_len, t_len)?;
    let heads = q.len() / block;
    let n = heads * block;
    check_len("queries", n, q.len())?;
    check_len("keys", n, k.len())?;
    check_len("values", n, v.len())?;
    for &(what, got) in head_sized {
        check_len(what, n, got)?;
    }
    let scores = checked_area("attention scores", heads, tt)?;
    for &(what, got) in square {
        check_len(what, scores, got)?;
    }
    check_len("softmax statistics", heads * 2 * t_len, stats)
}

/// Forward: `out = softmax(q k^T / sqrt(hd) + causal mask) v` for every (batch, head) of the
/// head-major `[B, H, T, hd]` tensors `q`, `k`, `v`. Writes each row's softmax statistics
/// `(max, 1 / sum)` to `stats` (`B*H*T*2`) and the probabilities to `p_scratch` (`B*H*T*T`,
/// zero above the diagonal). Best path of this CPU.
pub fn attention_forward(
    out: &mut [f32],
    p_scratch: &mut [f32],
    stats: &mut [f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) -> Result<(), GemmError> {
    let isa = Isa::best_among(&ATTENTION_PATHS);
    attention_forward_with(isa, out, p_scratch, stats, qkv, shape)
}

/// [`attention_forward`] on the given path.
pub fn attention_forward_with(
    isa: Isa,
    out: &mut [f32],
    p_scratch: &mut [f32],
    stats: &mut [f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) -> Result<(), GemmError> {
    check_isa("attention_forward", isa, &ATTENTION_PATHS)?;
    let square = [("probabilities", p_scratch.len())];
    check_shape(qkv, shape, &[("output", out.len())], &square, stats.len())?;
    forward_dispatch(isa, out, p_scratch, stats, qkv, shape);
    Ok(())
}

/// [`attention_forward`] on the best path, for callers whose shapes agree by construction.
///
/// # Panics
/// If the buffer lengths disagree with the shape.
pub(crate) fn attention_forward_best(
    out: &mut [f32],
    p_scratch: &mut [f32],
    stats: &mut [f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) {
    if let Err(e) = attention_forward(out, p_scratch, stats, qkv, shape) {
        panic!("attention forward: {e}");
    }
}

fn forward_dispatch(
    isa: Isa,
    out: &mut [f32],
    p_scratch: &mut [f32],
    stats: &mut [f32],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
) {
    let block = t_len * hd;
    out.par_chunks_mut(block)
        .zip(p_scratch.par_chunks_mut(t_len * t_len))
        .zip(stats.par_chunks_mut(2 * t_len))
        .enumerate()
        .for_each_init(HeadScratch::default, |scratch, (h, ((o, p), st))| {
            let next = NextHead::new(isa, &[q, k, v], h, block);
            let head = |x| head_of(x, h, block);
            let qkv = (head(q), head(k), head(v));
            forward_head(isa, (o, p, st), qkv, (t_len, hd), (scratch, &next));
        });
}

/// Backward of [`attention_forward`]: overwrites `dq`, `dk`, `dv` from `dout`, recomputing the
/// probabilities from `q`, `k` and `stats` (bit-identical to the forward's, written again to
/// `p_scratch`). Best path of this CPU.
pub fn attention_backward(
    grads: (&mut [f32], &mut [f32], &mut [f32]),
    p_scratch: &mut [f32],
    dout: &[f32],
    stats: &[f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) -> Result<(), GemmError> {
    let isa = Isa::best_among(&ATTENTION_PATHS);
    attention_backward_with(isa, grads, p_scratch, dout, stats, qkv, shape)
}

/// [`attention_backward`] on the given path.
pub fn attention_backward_with(
    isa: Isa,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    p_scratch: &mut [f32],
    dout: &[f32],
    stats: &[f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) -> Result<(), GemmError> {
    check_isa("attention_backward", isa, &ATTENTION_PATHS)?;
    let head_sized = [
        ("output gradient", dout.len()),
        ("query gradient", dq.len()),
        ("key gradient", dk.len()),
        ("value gradient", dv.len()),
    ];
    let square = [("probabilities", p_scratch.len())];
    check_shape(qkv, shape, &head_sized, &square, stats.len())?;
    backward_dispatch(isa, (dq, dk, dv, p_scratch), dout, stats, qkv, shape);
    Ok(())
}

/// [`attention_backward`] on the best path, for callers whose shapes agree by construction.
///
/// # Panics
/// If the buffer lengths disagree with the shape.
pub(crate) fn attention_backward_best(
    grads: (&mut [f32], &mut [f32], &mut [f32]),
    p_scratch: &mut [f32],
    dout: &[f32],
    stats: &[f32],
    qkv: (&[f32], &[f32], &[f32]),
    shape: (usize, usize),
) {
    if let Err(e) = attention_backward(grads, p_scratch, dout, stats, qkv, shape) {
        panic!("attention backward: {e}");
    }
}

fn backward_dispatch(
    isa: Isa,
    (dq, dk, dv, p_scratch): (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    dout: &[f32],
    stats: &[f32],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
) {
    let block = t_len * hd;
    dq.par_chunks_mut(block)
        .zip(dk.par_chunks_mut(block))
        .zip(dv.par_chunks_mut(block))
        .zip(p_scratch.par_chunks_mut(t_len * t_len))
        .zip(stats.par_chunks(2 * t_len))
        .enumerate()
        .for_each_init(HeadScratch::default, |scratch, (h, ((((dq, dk), dv), p), st))| {
            let next = NextHead::new(isa, &[q, k, v, dout], h, block);
            let head = |x| head_of(x, h, block);
            let grads = (dq, dk, dv, p);
            let qkv = (head(q), head(k), head(v));
            backward_head(isa, grads, (head(dout), st), qkv, (t_len, hd), (scratch, &next));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every output of forward and backward on one path.
    fn run(isa: Isa, bh: usize, (t, hd): (usize, usize), x: &[Vec<f32>; 4]) -> Vec<Vec<f32>> {
        let n = bh * t * hd;
        let (q, k, v, dout) = (&x[0][..], &x[1][..], &x[2][..], &x[3][..]);
        let (mut o, mut a, mut st) =
            (vec![0.0; n], vec![f32::NAN; bh * t * t], vec![0.0; bh * t * 2]);
        attention_forward_with(isa, &mut o, &mut a, &mut st, (q, k, v), (t, hd)).expect("forward");
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut p = vec![f32::NAN; bh * t * t];
        let grads = (&mut dq[..], &mut dk[..], &mut dv[..]);
        attention_backward_with(isa, grads, &mut p, dout, &st, (q, k, v), (t, hd))
            .expect("backward");
        assert!(a.iter().zip(&p).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa:?}: P recomputed");
        vec![o, a, st, dq, dk, dv]
    }

    fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(prop_oneof![8 => -2.0f32..2.0, 1 => -30.0f32..30.0], len)
    }

    fn case() -> impl Strategy<Value = (usize, usize, usize, [Vec<f32>; 4])> {
        (1usize..3, 1usize..45, prop_oneof![1usize..40, Just(16), Just(32), Just(48)])
            .prop_flat_map(|(bh, t, hd)| {
                let n = bh * t * hd;
                (Just(bh), Just(t), Just(hd), [values(n), values(n), values(n), values(n)])
            })
    }

    proptest! {
        /// Every path gives the scalar twin's outputs bit for bit, over ragged shapes (T not a
        /// multiple of the tile, hd not a multiple of 16).
        #[test]
        fn paths_are_bit_identical((bh, t, hd, x) in case()) {
            let want = run(Isa::Scalar, bh, (t, hd), &x);
            for isa in Isa::available_among(&ATTENTION_PATHS) {
                let got = run(isa, bh, (t, hd), &x);
                for (which, (g, w)) in got.iter().zip(&want).enumerate() {
                    for (i, (a, b)) in g.iter().zip(w).enumerate() {
                        let msg = format!("{isa:?} output {which} at {i}: {a} vs {b}");
                        prop_assert!(a.to_bits() == b.to_bits(), "{}", msg);
                    }
                }
            }
        }
    }

    /// The model's shapes (`T = 128`: rows in registers on the SIMD path) and longer rows
    /// (`T > 128`: row passes over memory), on every path, bit for bit.
    #[test]
    fn paths_agree_at_the_model_shape_and_beyond() {
        for (bh, t, hd) in [(2, 128, 32), (1, 32, 8), (1, 150, 32), (1, 137, 20)] {
            let n = bh * t * hd;
            let x = [1, 2, 3, 4].map(|s| crate::testutil::pseudo_random(n, s, 1.5));
            let want = run(Isa::Scalar, bh, (t, hd), &x);
            for isa in Isa::available_among(&ATTENTION_PATHS) {
                for (which, (g, w)) in run(isa, bh, (t, hd), &x).iter().zip(&want).enumerate() {
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} T = {t}, hd = {hd}: output {which}");
                }
            }
        }
    }

    #[test]
    fn shape_errors() {
        let x = vec![0.0; 24];
        let (mut o, mut p, mut st) = (vec![0.0; 24], vec![0.0; 2 * 9], vec![0.0; 2 * 6]);
        let ok = attention_forward(&mut o, &mut p, &mut st, (&x, &x, &x), (3, 4));
        assert_eq!(ok, Ok(()));
        assert!(attention_forward(&mut o, &mut p, &mut st, (&x, &x, &x), (3, 0)).is_err());
        assert!(attention_forward(&mut o, &mut p[1..], &mut st, (&x, &x, &x), (3, 4)).is_err());
        assert!(attention_forward(&mut o, &mut p, &mut st, (&x, &x[1..], &x), (3, 4)).is_err());
    }
}
