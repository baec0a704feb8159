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

use crate::export::{FORMAT, VERSION, packed_row_bytes, unpack_trits};
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

/// `sum_i a[i] * b[i]` in 16 lane-wise partial sums (a serial `sum` of f32 cannot vectorize).
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
    /// Rotated keys and values of the cached positions, `[seq_len, d_model]`.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// A loaded inference model with its key/value cache. Its BitLinear weights stay at 2 bits
/// each, as in the file.
#[derive(Debug)]
pub struct PackedInferenceModel {
    config: ModelConfig,
    tok_emb: Vec<f32>,
    blocks: Vec<InferenceBlock>,
    norm: Vec<f32>,
    lm_head: Vec<f32>,
    rope: RopeTables,
    /// Tokens whose keys and values are in the cache.
    cached: Vec<u32>,
    /// Scratch for up to `seq_len` positions at once (row-major, one row per position).
    s: Scratch,
}

#[derive(Debug)]
struct Scratch {
    /// The residual stream, `[seq_len, d]`.
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: Vec<i8>,
    /// Activation scales of the quantized rows.
    scales: Vec<f32>,
    hq: Vec<i8>,
    q: Vec<f32>,
    att_out: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Attention scores of one query row.
    scores: Vec<f32>,
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
                k_cache: vec![0.0; sl * d],
                v_cache: vec![0.0; sl * d],
            });
        }
        let f = config.ffn_hidden;
        Ok(Self {
            tok_emb: dense("tok_emb.weight")?,
            blocks,
            norm: dense("norm.weight")?,
            lm_head: dense("lm_head.weight")?,
            rope: RopeTables::new(sl, config.head_dim(), config.rope_theta),
            cached: Vec::new(),
            s: Scratch {
                x: vec![0.0; sl * d],
                xn: vec![0.0; sl * d],
                xq: vec![0; sl * d],
                scales: vec![0.0; sl],
                hq: vec![0; sl * f],
                q: vec![0.0; sl * d],
                att_out: vec![0.0; sl * d],
                proj: vec![0.0; sl * d],
                gate: vec![0.0; sl * f],
                up: vec![0.0; sl * f],
                scores: vec![0.0; sl],
            },
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

    /// Runs the positions `start .. start + tokens.len()` (their tokens) through every block
    /// together, filling the caches; leaves their final residuals in the first rows of `x`.
    fn forward_rows(&mut self, tokens: &[u32], start: usize) -> Result<(), KernelError> {
        let c = &self.config;
        let (d, hd, nh, f, eps) = (c.d_model, c.head_dim(), c.n_heads, c.ffn_hidden, c.norm_eps);
        let m = tokens.len();
        let s = &mut self.s;
        for (row, &t) in s.x.chunks_exact_mut(d).zip(tokens) {
            let t = t as usize;
            row.copy_from_slice(&self.tok_emb[t * d..(t + 1) * d]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let cache = start * d..(start + m) * d;
        for b in &mut self.blocks {
            for (o, x) in s.xn.chunks_exact_mut(d).zip(s.x.chunks_exact(d)).take(m) {
                Self::rmsnorm(o, x, &b.attn_norm, eps);
            }
            Self::quantize_rows(&s.xn, d, m, &mut s.xq, &mut s.scales);
            b.q.forward(&s.xq, m, &s.scales, &mut s.q)?;
            b.k.forward(&s.xq, m, &s.scales, &mut b.k_cache[cache.clone()])?;
            b.v.forward(&s.xq, m, &s.scales, &mut b.v_cache[cache.clone()])?;
            for i in 0..m {
                let pos = start + i;
                let (q, k) = (&mut s.q[i * d..(i + 1) * d], &mut b.k_cache[pos * d..(pos + 1) * d]);
                for h in 0..nh {
                    self.rope.rotate(&mut q[h * hd..(h + 1) * hd], pos);
                    self.rope.rotate(&mut k[h * hd..(h + 1) * hd], pos);
                }
            }
            for i in 0..m {
                let pos = start + i;
                for h in 0..nh {
                    let qh = &s.q[i * d + h * hd..i * d + (h + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for u in 0..=pos {
                        let k = &b.k_cache[u * d + h * hd..u * d + (h + 1) * hd];
                        let sc = dot(qh, k) * scale;
                        s.scores[u] = sc;
                        max = max.max(sc);
                    }
                    let mut sum = 0.0;
                    for sc in &mut s.scores[..=pos] {
                        *sc = (*sc - max).exp();
                        sum += *sc;
                    }
                    let out = &mut s.att_out[i * d + h * hd..i * d + (h + 1) * hd];
                    out.fill(0.0);
                    for u in 0..=pos {
                        let p = s.scores[u] / sum;
                        let v = &b.v_cache[u * d + h * hd..u * d + (h + 1) * hd];
                        for (o, &vi) in out.iter_mut().zip(v) {
                            *o += p * vi;
                        }
                    }
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
            for (g, &u) in s.gate.iter_mut().zip(&s.up).take(m * f) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            Self::quantize_rows(&s.gate, f, m, &mut s.hq, &mut s.scales);
            b.down.forward(&s.hq, m, &s.scales, &mut s.proj)?;
            for (x, p) in s.x.iter_mut().zip(&s.proj).take(m * d) {
                *x += p;
            }
        }
        Ok(())
    }
}

impl InferenceModel for PackedInferenceModel {
    fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError> {
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
        // Positions before the first difference keep their cached keys and values (causal).
        let common = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        let start = common.min(tokens.len() - 1);
        self.cached.truncate(start);
        let fresh = &tokens[start..];
        if let Err(e) = self.forward_rows(fresh, start) {
            // The caches of these positions may be half written: forget them.
            self.cached.truncate(start);
            return Err(e);
        }
        self.cached.extend_from_slice(fresh);
        let (d, v) = (self.config.d_model, self.config.vocab_size);
        let last = (fresh.len() - 1) * d..fresh.len() * d;
        let s = &mut self.s;
        Self::rmsnorm(&mut s.xn[..d], &s.x[last], &self.norm, self.config.norm_eps);
        let xn = &s.xn[..d];
        Ok(self.lm_head.chunks_exact(d).take(v).map(|w| dot(w, xn)).collect())
    }
}
