//! The inference model: loads the file written by [`crate::export`] and predicts with its
//! ternary weights (unpacked to one `i8` per weight for integer dot products; no fp32 BitLinear
//! weight is ever materialised), one token at a time with a key/value cache.

use crate::export::{FORMAT, VERSION, packed_row_bytes, unpack_trits};
use crate::kernels::Isa;
use crate::layers::rope::RopeTables;
use crate::quant::quantize_activation_row;
use bitnet_framework::model::{InferenceModel, KernelError, ModelConfig};
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

/// A BitLinear weight `[rows, cols]`: loaded from 2-bit trits (the file's row layout), kept as
/// one `i8` in {-1, 0, 1} per weight so each output is an integer dot product the compiler
/// vectorizes (decoding bit fields per weight cost ~5x more per generated token), and its
/// scale.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    codes: Vec<i8>,
    scale: f32,
}

impl TernaryMatrix {
    /// Checks and unpacks packed trits (the layout of [`crate::export`]).
    pub fn new(rows: usize, cols: usize, trits: Vec<u8>, scale: f32) -> Result<Self, KernelError> {
        if rows == 0 || cols == 0 {
            return Err(KernelError::InvalidWeights(format!(
                "empty ternary matrix {rows} x {cols}"
            )));
        }
        let codes = unpack_trits(&trits, rows, cols)?;
        if !scale.is_finite() || scale < 0.0 {
            return Err(KernelError::InvalidWeights(format!("invalid ternary scale {scale}")));
        }
        Ok(Self { rows, cols, codes, scale })
    }

    /// `out[n] = (sum_k x_q[k] * W_q[n, k]) * g / s`: the BitLinear forward of one quantized row,
    /// on the widest vectors of [`MATVEC_PATHS`] this CPU (and `BITNET_ISA`) allows. The sums
    /// are exact integers, so every path gives the same outputs.
    pub fn matvec(&self, x_q: &[i8], s: f32, out: &mut [f32]) {
        let factor = self.scale / s;
        let x_q = &x_q[..self.cols];
        let (codes, cols, rows) = (&self.codes[..], self.cols, self.rows);
        match Isa::best_among(&MATVEC_PATHS) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: best_among only returns a path this CPU supports (AVX-512 F/BW/VL).
            Isa::Avx512 => unsafe { matvec_avx512(codes, (rows, cols), x_q, factor, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (AVX2 and FMA).
            Isa::Avx2 => unsafe { matvec_avx2(codes, (rows, cols), x_q, factor, out) },
            _ => matvec_rows(codes, (rows, cols), x_q, factor, out),
        }
    }
}

/// Paths of [`TernaryMatrix::matvec`]: the same integer loop compiled for each (aarch64's
/// baseline already has NEON).
const MATVEC_PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// The rows of a ternary matrix-vector product, written so the compiler vectorizes each row's
/// integer dot product (widened to 16 bits, `pmaddwd`-style pair sums).
#[inline(always)]
fn matvec_rows(
    codes: &[i8],
    (rows, cols): (usize, usize),
    x_q: &[i8],
    factor: f32,
    out: &mut [f32],
) {
    for (o, row) in out.iter_mut().zip(codes.chunks_exact(cols)).take(rows) {
        let acc: i32 = row.iter().zip(x_q).map(|(&w, &x)| i32::from(w) * i32::from(x)).sum();
        *o = acc as f32 * factor;
    }
}

/// [`matvec_rows`] compiled for AVX-512 (the baseline x86-64 build only gets SSE2, without
/// sign extension, which made a medium-preset decode ~25 ms per token).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn matvec_avx512(
    codes: &[i8],
    dims: (usize, usize),
    x_q: &[i8],
    factor: f32,
    out: &mut [f32],
) {
    matvec_rows(codes, dims, x_q, factor, out)
}

/// [`matvec_rows`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_avx2(
    codes: &[i8],
    dims: (usize, usize),
    x_q: &[i8],
    factor: f32,
    out: &mut [f32],
) {
    matvec_rows(codes, dims, x_q, factor, out)
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

/// A loaded inference model with its key/value cache. Loaded from packed trits; in memory each
/// BitLinear weight takes one byte (4x the file's 2 bits), still a quarter of fp32.
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
    // Scratch of one position.
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: Vec<i8>,
    hq: Vec<i8>,
    q: Vec<f32>,
    att_out: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
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
            x: vec![0.0; d],
            xn: vec![0.0; d],
            xq: vec![0; d],
            hq: vec![0; f],
            q: vec![0.0; d],
            att_out: vec![0.0; d],
            proj: vec![0.0; d],
            gate: vec![0.0; f],
            up: vec![0.0; f],
            scores: vec![0.0; sl],
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

    /// Runs position `pos` (token `tok`), filling the caches; leaves the final residual in `x`.
    fn step(&mut self, tok: u32, pos: usize) {
        let c = &self.config;
        let (d, hd, nh, eps) = (c.d_model, c.head_dim(), c.n_heads, c.norm_eps);
        let t = tok as usize;
        self.x.copy_from_slice(&self.tok_emb[t * d..(t + 1) * d]);
        let scale = 1.0 / (hd as f32).sqrt();
        for b in &mut self.blocks {
            Self::rmsnorm(&mut self.xn, &self.x, &b.attn_norm, eps);
            let s = quantize_activation_row(&self.xn, &mut self.xq);
            b.q.matvec(&self.xq, s, &mut self.q);
            let kc = &mut b.k_cache[pos * d..(pos + 1) * d];
            b.k.matvec(&self.xq, s, kc);
            b.v.matvec(&self.xq, s, &mut b.v_cache[pos * d..(pos + 1) * d]);
            for h in 0..nh {
                self.rope.rotate(&mut self.q[h * hd..(h + 1) * hd], pos);
                self.rope.rotate(&mut kc[h * hd..(h + 1) * hd], pos);
            }
            for h in 0..nh {
                let qh = &self.q[h * hd..(h + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for u in 0..=pos {
                    let k = &b.k_cache[u * d + h * hd..u * d + (h + 1) * hd];
                    let sc = dot(qh, k) * scale;
                    self.scores[u] = sc;
                    max = max.max(sc);
                }
                let mut sum = 0.0;
                for sc in &mut self.scores[..=pos] {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let out = &mut self.att_out[h * hd..(h + 1) * hd];
                out.fill(0.0);
                for u in 0..=pos {
                    let p = self.scores[u] / sum;
                    let v = &b.v_cache[u * d + h * hd..u * d + (h + 1) * hd];
                    for (o, &vi) in out.iter_mut().zip(v) {
                        *o += p * vi;
                    }
                }
            }
            let s = quantize_activation_row(&self.att_out, &mut self.xq);
            b.o.matvec(&self.xq, s, &mut self.proj);
            for (x, p) in self.x.iter_mut().zip(&self.proj) {
                *x += p;
            }
            Self::rmsnorm(&mut self.xn, &self.x, &b.ffn_norm, eps);
            let s = quantize_activation_row(&self.xn, &mut self.xq);
            b.gate.matvec(&self.xq, s, &mut self.gate);
            b.up.matvec(&self.xq, s, &mut self.up);
            for (g, &u) in self.gate.iter_mut().zip(&self.up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            let s = quantize_activation_row(&self.gate, &mut self.hq);
            b.down.matvec(&self.hq, s, &mut self.proj);
            for (x, p) in self.x.iter_mut().zip(&self.proj) {
                *x += p;
            }
        }
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
        for (pos, &tok) in tokens.iter().enumerate().skip(start) {
            self.step(tok, pos);
            self.cached.push(tok);
        }
        let (d, v) = (self.config.d_model, self.config.vocab_size);
        Self::rmsnorm(&mut self.xn, &self.x, &self.norm, self.config.norm_eps);
        Ok(self.lm_head.chunks_exact(d).take(v).map(|w| dot(w, &self.xn)).collect())
    }
}
