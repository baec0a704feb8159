//! The inference model: loads the file written by [`crate::export`] and predicts with its
//! ternary weights, kept packed at 2 bits in the matrix kernels' panel layout (no fp32 BitLinear
//! weight is ever materialised) and multiplied by the training forward's integer kernels
//! ([`ternary_matmul_dequant`]), with a key/value cache.
//!
//! **Prompts run as one batch.** The positions a call has not cached yet (a whole prompt, then
//! one token per generated token) go through each layer together: each BitLinear is one
//! `m x k` integer product, so a prompt reads every weight once rather than once per token.
//! Every row's arithmetic (norm, quantizer, integer sums, attention over the cached positions)
//! is the same whichever batch it is in, so logits are bit-identical however a sequence is
//! split into calls (a test holds this).
//!
//! **Several sequences run as one batch too.** The model keeps a key/value cache per slot
//! ([`MAX_SLOTS`]); [`InferenceModel::next_token_logits_batch`] stacks the uncached positions of
//! every sequence it is given into one set of rows, so the products read each weight once for all
//! of them, and each row attends only to its own slot's cache. A server decoding several
//! utterances at once then costs little more per step than decoding one (the weights, not the
//! rows, dominate a decode step's memory traffic), and each sequence's logits are the ones it
//! would get alone (a test holds this as well).

use crate::export::{FORMAT, VERSION, packed_row_bytes, unpack_trits};
use crate::kernels::exp::swiglu_forward_best;
use crate::kernels::{PackedTernary, ternary_matmul_dequant};
use crate::layers::rope::RopeTables;
use crate::quant::quantize_activation_row;
use bitnet_framework::model::{InferenceModel, KernelError, ModelConfig};
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// A BitLinear weight `[rows, cols]`, loaded from the file's 2-bit row layout into the matrix
/// kernels' packed panels (2 bits a weight in memory too), and its scale.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    w: PackedTernary,
    scale: f32,
}

impl TernaryMatrix {
    /// Checks and repacks the file's trits (the row layout of [`crate::export`]).
    pub fn new(rows: usize, cols: usize, trits: Vec<u8>, scale: f32) -> Result<Self, KernelError> {
        if rows == 0 || cols == 0 {
            return Err(invalid(format!("empty ternary matrix {rows} x {cols}")));
        }
        if !scale.is_finite() || scale < 0.0 {
            return Err(invalid(format!("invalid ternary scale {scale}")));
        }
        let codes = unpack_trits(&trits, rows, cols)?;
        let w = PackedTernary::pack(&codes, rows, cols).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { w, scale })
    }

    /// `out[i][n] = (sum_k x_q[i][k] * W_q[n][k]) * g / s[i]`: the BitLinear forward of the `m`
    /// quantized rows of `x_q` (scales `s`), on the path [`ternary_matmul_dequant`] picks. The
    /// sums are exact integers, so every path gives the same outputs.
    pub fn forward(
        &self,
        x_q: &[i8],
        m: usize,
        s: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (k, n) = (self.w.in_features(), self.w.out_features());
        let (x_q, s, out) = (&x_q[..m * k], &s[..m], &mut out[..m * n]);
        ternary_matmul_dequant(x_q, m, k, &self.w, s, self.scale, out)
            .map_err(|e| KernelError::Shape(e.to_string()))
    }
}

bitnet_framework::vectorized_fn!(
    /// The LM head for several rows at once: `logits[b][j] = dot(head[j], xn[b])` for the
    /// `logits.len()` rows of `xn` (width `d`), each head row read once for all of them.
    /// Compiled per vector level, as one call (a dispatch per dot cost more than the short dots).
    fn head_logits(head: &[f32], xn: &[f32], d: usize, logits: &mut [Vec<f32>])
        = head_logits_body, test head_logits_at
);

#[inline(always)]
fn head_logits_body(head: &[f32], xn: &[f32], d: usize, logits: &mut [Vec<f32>]) {
    for (j, w) in head.chunks_exact(d).enumerate() {
        for (b, out) in logits.iter_mut().enumerate() {
            out[j] = dot_body(w, &xn[b * d..(b + 1) * d]);
        }
    }
}

/// One query head's attention over the cached positions `0 ..= pos`.
struct Attend<'a> {
    /// The query head, `hd` wide.
    q: &'a [f32],
    /// The slot's keys and values, `[seq_len, d]`; the head's lanes start at `h0`.
    k: &'a [f32],
    v: &'a [f32],
    d: usize,
    h0: usize,
    pos: usize,
    scale: f32,
}

bitnet_framework::vectorized_fn!(
    /// `out = softmax(q . k_u * scale) . v_u` over `u = 0 ..= pos`, with `scores` as scratch;
    /// compiled per vector level as one call.
    fn attend(a: &Attend<'_>, scores: &mut [f32], out: &mut [f32]) = attend_body, test attend_at
);

#[inline(always)]
fn attend_body(a: &Attend<'_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = a.q.len();
    let mut max = f32::NEG_INFINITY;
    for (u, sc) in scores[..=a.pos].iter_mut().enumerate() {
        let k = &a.k[u * a.d + a.h0..u * a.d + a.h0 + hd];
        *sc = dot_body(a.q, k) * a.scale;
        max = max.max(*sc);
    }
    let mut sum = 0.0;
    for sc in &mut scores[..=a.pos] {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    out.fill(0.0);
    for (u, &sc) in scores[..=a.pos].iter().enumerate() {
        let p = sc / sum;
        let v = &a.v[u * a.d + a.h0..u * a.d + a.h0 + hd];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += p * vi;
        }
    }
}

/// `sum_i a[i] * b[i]` in 16 lane-wise partial sums (a serial `sum` of f32 cannot vectorize).
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The most sequences [`PackedInferenceModel`] caches at once (slots of
/// [`InferenceModel::next_token_logits_batch`]). Caches are allocated when a slot is first used
/// (with those of the slots below it, which decoders fill first): `2 * n_layers * seq_len *
/// d_model` floats each.
pub const MAX_SLOTS: usize = 64;

#[derive(Debug)]
struct InferenceBlock {
    attn_norm: Vec<f32>,
    q: TernaryMatrix,
    k: TernaryMatrix,
    v: TernaryMatrix,
    o: TernaryMatrix,
    ffn_norm: Vec<f32>,
    gate: TernaryMatrix,
    up: TernaryMatrix,
    down: TernaryMatrix,
}

/// One slot's key/value cache.
#[derive(Debug)]
struct SlotCache {
    /// Tokens whose keys and values are cached.
    cached: Vec<u32>,
    /// Per block, the rotated keys of the cached positions, `[seq_len, d_model]`.
    k: Vec<Vec<f32>>,
    /// Per block, their values.
    v: Vec<Vec<f32>>,
}

/// A loaded inference model with a key/value cache per slot. Its BitLinear weights stay at 2
/// bits each, as in the file.
#[derive(Debug)]
pub struct PackedInferenceModel {
    config: ModelConfig,
    tok_emb: Vec<f32>,
    blocks: Vec<InferenceBlock>,
    norm: Vec<f32>,
    lm_head: Vec<f32>,
    rope: RopeTables,
    /// The slots' caches, allocated as slots are first used.
    caches: Vec<SlotCache>,
    /// Scratch for the rows of one call (row-major, one row per position), grown as needed.
    s: Scratch,
}

/// Where one row of a call comes from: its slot and position.
#[derive(Debug, Clone, Copy)]
struct RowAt {
    slot: usize,
    pos: usize,
}

#[derive(Debug, Default)]
struct Scratch {
    /// Rows of the current call.
    rows: Vec<RowAt>,
    /// The residual stream, `[rows, d]`.
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: Vec<i8>,
    /// Activation scales of the quantized rows.
    scales: Vec<f32>,
    hq: Vec<i8>,
    q: Vec<f32>,
    /// Keys and values of the rows, before they go to their slots' caches.
    k: Vec<f32>,
    v: Vec<f32>,
    att_out: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `silu(gate) * up`.
    h: Vec<f32>,
    /// Attention scores of one query row.
    scores: Vec<f32>,
}

impl Scratch {
    /// Room for `m` rows of width `d` (hidden width `f`); attention over `seq_len` positions.
    fn reserve(&mut self, m: usize, d: usize, f: usize, seq_len: usize) {
        fn at_least<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
            if v.len() < n {
                v.resize(n, T::default());
            }
        }
        let s = self;
        for v in [&mut s.x, &mut s.xn, &mut s.q, &mut s.k, &mut s.v, &mut s.att_out, &mut s.proj] {
            at_least(v, m * d);
        }
        for v in [&mut s.gate, &mut s.up, &mut s.h] {
            at_least(v, m * f);
        }
        at_least(&mut s.xq, m * d);
        at_least(&mut s.hq, m * f);
        at_least(&mut s.scales, m);
        at_least(&mut s.scores, seq_len);
    }
}

fn invalid(msg: impl Into<String>) -> KernelError {
    KernelError::InvalidWeights(msg.into())
}

fn read_f32(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, KernelError> {
    let t = st.tensor(name).map_err(|_| invalid(format!("missing tensor `{name}`")))?;
    if t.dtype() != Dtype::F32 || t.shape() != shape {
        return Err(invalid(format!(
            "tensor `{name}`: expected F32 {shape:?}, found {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    let v: Vec<f32> =
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(invalid(format!("tensor `{name}` has non-finite values")));
    }
    Ok(v)
}

fn read_ternary(
    st: &SafeTensors<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<TernaryMatrix, KernelError> {
    let tname = format!("{name}.trits");
    let t = st.tensor(&tname).map_err(|_| invalid(format!("missing tensor `{tname}`")))?;
    let shape = [rows, packed_row_bytes(cols)];
    if t.dtype() != Dtype::U8 || t.shape() != shape {
        return Err(invalid(format!(
            "tensor `{tname}`: expected U8 {shape:?}, found {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    let scale = read_f32(st, &format!("{name}.scale"), &[1])?[0];
    TernaryMatrix::new(rows, cols, t.data().to_vec(), scale)
        .map_err(|e| invalid(format!("tensor `{tname}`: {e}")))
}

impl PackedInferenceModel {
    /// Parses an inference file; refuses one written for other dimensions than `config`.
    pub fn load(
        config: &ModelConfig,
        layout: &ParamLayout,
        bytes: &[u8],
    ) -> Result<Self, KernelError> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().as_ref().ok_or_else(|| invalid("no metadata"))?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!("metadata `format` is not `{FORMAT}`")));
        }
        if meta.get("version").map(String::as_str) != Some(VERSION) {
            return Err(invalid(format!("unsupported version {:?}", meta.get("version"))));
        }
        let file_config: ModelConfig = meta
            .get("config")
            .ok_or_else(|| invalid("metadata has no `config`"))
            .and_then(|c| serde_json::from_str(c).map_err(|e| invalid(format!("config: {e}"))))?;
        if file_config != *config {
            return Err(invalid(format!(
                "weights are for {file_config:?}, this kernel is {config:?}"
            )));
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let shape_of = |name: &str| -> Result<Vec<usize>, KernelError> {
            let i = layout.index_of(name).ok_or_else(|| invalid(format!("no tensor `{name}`")))?;
            Ok(layout.tensors()[i].shape.clone())
        };
        let dense =
            |name: &str| -> Result<Vec<f32>, KernelError> { read_f32(&st, name, &shape_of(name)?) };
        let ternary = |name: &str| -> Result<TernaryMatrix, KernelError> {
            let s = shape_of(name)?;
            read_ternary(&st, name, s[0], s[1])
        };
        // Every tensor of the layout must be there with its role's encoding.
        for spec in layout.tensors() {
            let expected = if spec.role == TensorRole::BitLinear {
                format!("{}.trits", spec.name)
            } else {
                spec.name.clone()
            };
            st.tensor(&expected).map_err(|_| invalid(format!("missing tensor `{expected}`")))?;
        }
        let (d, sl) = (config.d_model, config.seq_len);
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let p = format!("blocks.{l}");
            blocks.push(InferenceBlock {
                attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
                q: ternary(&format!("{p}.attn.q_proj.weight"))?,
                k: ternary(&format!("{p}.attn.k_proj.weight"))?,
                v: ternary(&format!("{p}.attn.v_proj.weight"))?,
                o: ternary(&format!("{p}.attn.o_proj.weight"))?,
                ffn_norm: dense(&format!("{p}.ffn_norm.weight"))?,
                gate: ternary(&format!("{p}.ffn.gate_proj.weight"))?,
                up: ternary(&format!("{p}.ffn.up_proj.weight"))?,
                down: ternary(&format!("{p}.ffn.down_proj.weight"))?,
            });
        }
        let mut s = Scratch::default();
        s.reserve(sl, d, config.ffn_hidden, sl);
        Ok(Self {
            tok_emb: dense("tok_emb.weight")?,
            blocks,
            norm: dense("norm.weight")?,
            lm_head: dense("lm_head.weight")?,
            rope: RopeTables::new(sl, config.head_dim(), config.rope_theta),
            caches: Vec::new(),
            s,
            config: config.clone(),
        })
    }

    fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let rs = 1.0 / (ms + eps).sqrt();
        for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
            *o = xi * rs * wi;
        }
    }

    /// Quantizes each `width`-wide row of `x` (the first `m`) into `xq`, its scale into `scales`.
    fn quantize_rows(x: &[f32], width: usize, m: usize, xq: &mut [i8], scales: &mut [f32]) {
        let rows = x.chunks_exact(width).zip(xq.chunks_exact_mut(width));
        for ((row, q), s) in rows.zip(scales.iter_mut()).take(m) {
            *s = quantize_activation_row(row, q);
        }
    }

    /// Runs the rows `s.rows` (tokens `tokens`, one per row) through every block together,
    /// writing their keys and values to their slots' caches at their positions; leaves their
    /// final residuals in the first rows of `x`. Each row attends to its slot's positions up to
    /// its own, so a slot's earlier rows in the same call must come first.
    fn forward_rows(&mut self, tokens: &[u32]) -> Result<(), KernelError> {
        let c = &self.config;
        let (d, hd, nh, f, eps) = (c.d_model, c.head_dim(), c.n_heads, c.ffn_hidden, c.norm_eps);
        let m = tokens.len();
        let s = &mut self.s;
        for (row, &t) in s.x.chunks_exact_mut(d).zip(tokens) {
            let t = t as usize;
            row.copy_from_slice(&self.tok_emb[t * d..(t + 1) * d]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, b) in self.blocks.iter().enumerate() {
            for (o, x) in s.xn.chunks_exact_mut(d).zip(s.x.chunks_exact(d)).take(m) {
                Self::rmsnorm(o, x, &b.attn_norm, eps);
            }
            Self::quantize_rows(&s.xn, d, m, &mut s.xq, &mut s.scales);
            b.q.forward(&s.xq, m, &s.scales, &mut s.q)?;
            b.k.forward(&s.xq, m, &s.scales, &mut s.k)?;
            b.v.forward(&s.xq, m, &s.scales, &mut s.v)?;
            for (i, at) in s.rows.iter().enumerate() {
                let (q, k) = (&mut s.q[i * d..(i + 1) * d], &mut s.k[i * d..(i + 1) * d]);
                for h in 0..nh {
                    self.rope.rotate(&mut q[h * hd..(h + 1) * hd], at.pos);
                    self.rope.rotate(&mut k[h * hd..(h + 1) * hd], at.pos);
                }
                let cache = &mut self.caches[at.slot];
                let dst = at.pos * d..(at.pos + 1) * d;
                cache.k[l][dst.clone()].copy_from_slice(k);
                cache.v[l][dst].copy_from_slice(&s.v[i * d..(i + 1) * d]);
            }
            for (i, at) in s.rows.iter().enumerate() {
                let (pos, cache) = (at.pos, &self.caches[at.slot]);
                let (k_cache, v_cache) = (&cache.k[l], &cache.v[l]);
                for h in 0..nh {
                    let a = Attend {
                        q: &s.q[i * d + h * hd..i * d + (h + 1) * hd],
                        k: k_cache,
                        v: v_cache,
                        d,
                        h0: h * hd,
                        pos,
                        scale,
                    };
                    attend(&a, &mut s.scores, &mut s.att_out[i * d + h * hd..i * d + (h + 1) * hd]);
                }
            }
            Self::quantize_rows(&s.att_out, d, m, &mut s.xq, &mut s.scales);
            b.o.forward(&s.xq, m, &s.scales, &mut s.proj)?;
            for (x, p) in s.x.iter_mut().zip(&s.proj).take(m * d) {
                *x += p;
            }
            for (o, x) in s.xn.chunks_exact_mut(d).zip(s.x.chunks_exact(d)).take(m) {
                Self::rmsnorm(o, x, &b.ffn_norm, eps);
            }
            Self::quantize_rows(&s.xn, d, m, &mut s.xq, &mut s.scales);
            b.gate.forward(&s.xq, m, &s.scales, &mut s.gate)?;
            b.up.forward(&s.xq, m, &s.scales, &mut s.up)?;
            // The training forward's SwiGLU (its vectorized exp, the same on every path).
            swiglu_forward_best(&mut s.h[..m * f], &s.gate[..m * f], &s.up[..m * f]);
            Self::quantize_rows(&s.h, f, m, &mut s.hq, &mut s.scales);
            b.down.forward(&s.hq, m, &s.scales, &mut s.proj)?;
            for (x, p) in s.x.iter_mut().zip(&s.proj).take(m * d) {
                *x += p;
            }
        }
        Ok(())
    }

    /// Checks one sequence of a call: not empty, within the context, every id in the
    /// vocabulary.
    fn check_tokens(&self, tokens: &[u32]) -> Result<(), KernelError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(KernelError::Shape("no tokens to continue".into()));
        }
        if tokens.len() > c.seq_len {
            return Err(KernelError::Shape(format!(
                "{} tokens exceed the model's sequence length {}",
                tokens.len(),
                c.seq_len
            )));
        }
        for (position, &id) in tokens.iter().enumerate() {
            if id as usize >= c.vocab_size {
                return Err(KernelError::TokenOutOfRange { id, position, vocab: c.vocab_size });
            }
        }
        Ok(())
    }

    /// The cache of `slot`, allocated (with any lower slot's not yet allocated) on first use.
    fn slot_cache(&mut self, slot: usize) -> &mut SlotCache {
        let (n, len) = (self.config.n_layers, self.config.seq_len * self.config.d_model);
        while self.caches.len() <= slot {
            self.caches.push(SlotCache {
                cached: Vec::new(),
                k: vec![vec![0.0; len]; n],
                v: vec![vec![0.0; len]; n],
            });
        }
        &mut self.caches[slot]
    }
}

impl InferenceModel for PackedInferenceModel {
    fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError> {
        let mut logits = self.next_token_logits_batch(&[(0, tokens)])?;
        Ok(logits.pop().unwrap_or_default())
    }

    fn slots(&self) -> usize {
        MAX_SLOTS
    }

    fn next_token_logits_batch(
        &mut self,
        sequences: &[(usize, &[u32])],
    ) -> Result<Vec<Vec<f32>>, KernelError> {
        for (i, &(slot, tokens)) in sequences.iter().enumerate() {
            if slot >= MAX_SLOTS {
                return Err(KernelError::Shape(format!(
                    "slot {slot} of sequence {i}: the model caches {MAX_SLOTS} sequences"
                )));
            }
            if sequences[..i].iter().any(|&(other, _)| other == slot) {
                return Err(KernelError::Shape(format!("slot {slot} given twice in one call")));
            }
            self.check_tokens(tokens)?;
        }
        // Each sequence's positions before its first difference from its slot's cache keep
        // their keys and values (causal); the rest become rows of this call, sequence by
        // sequence.
        let (mut rows, mut fresh) = (Vec::new(), Vec::new());
        let mut last_rows = Vec::with_capacity(sequences.len());
        for &(slot, tokens) in sequences {
            let cache = self.slot_cache(slot);
            let common = cache.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
            let start = common.min(tokens.len() - 1);
            cache.cached.truncate(start);
            rows.extend((start..tokens.len()).map(|pos| RowAt { slot, pos }));
            fresh.extend_from_slice(&tokens[start..]);
            last_rows.push(rows.len() - 1);
        }
        let c = &self.config;
        self.s.reserve(rows.len(), c.d_model, c.ffn_hidden, c.seq_len);
        self.s.rows = rows;
        // On an error the caches of these positions may be half written; they stay forgotten
        // (truncated above).
        self.forward_rows(&fresh)?;
        for &(slot, tokens) in sequences {
            let cache = &mut self.caches[slot];
            let start = cache.cached.len();
            cache.cached.extend_from_slice(&tokens[start..]);
        }
        let (d, v, eps) = (self.config.d_model, self.config.vocab_size, self.config.norm_eps);
        let s = &mut self.s;
        for (b, &row) in last_rows.iter().enumerate() {
            let (xn, x) = (&mut s.xn[b * d..(b + 1) * d], &s.x[row * d..(row + 1) * d]);
            Self::rmsnorm(xn, x, &self.norm, eps);
        }
        // The LM head read once for every sequence.
        let n = last_rows.len();
        let mut logits = vec![vec![0.0; v]; n];
        head_logits(&self.lm_head[..v * d], &s.xn[..n * d], d, &mut logits);
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::isa::IsaLevel;
    use proptest::prelude::*;

    proptest! {
        /// Every vector level's copy gives the baseline's bits.
        #[test]
        fn vectorized_copies_equal_the_baseline(
            vals in proptest::collection::vec(-4f32..4.0, 96..400),
            pos in 0usize..5,
            rows in 1usize..4,
        ) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Attention: head width 5 at lanes 3.. of rows of width 12.
            let (d, hd) = (12, 5);
            let kv: Vec<f32> = vals.iter().cycle().take(6 * d).copied().collect();
            let vv: Vec<f32> = kv.iter().rev().copied().collect();
            let a = Attend { q: &vals[..hd], k: &kv, v: &vv, d, h0: 3, pos, scale: 0.7 };
            let (mut sc, mut plain) = (vec![0.0; 6], vec![0.0; hd]);
            attend_body(&a, &mut sc, &mut plain);
            // The head: 3 outputs of width 16 for `rows` rows.
            let head = &vals[..48];
            let xn = &vals[48..48 + rows * 16];
            let mut want = vec![vec![0.0; 3]; rows];
            head_logits_body(head, xn, 16, &mut want);
            for level in IsaLevel::ALL {
                let mut out = vec![0.0; hd];
                if attend_at(level, &a, &mut sc, &mut out).is_some() {
                    prop_assert_eq!(bits(&out), bits(&plain), "{}", level);
                }
                let mut got = vec![vec![0.0; 3]; rows];
                if head_logits_at(level, head, xn, 16, &mut got).is_some() {
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert_eq!(bits(g), bits(w), "{}", level);
                    }
                }
            }
        }
    }
}
