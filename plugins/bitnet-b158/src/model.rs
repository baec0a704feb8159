//! The whole decoder: parameter index, activation workspace, forward and backward passes.
//!
//! One parameter arena and one gradient arena (owned by the caller, laid out by
//! [`crate::layout::model_layout`]); every activation the backward pass needs lives in a
//! [`Workspace`] that is allocated once per batch shape and reused step after step.

use crate::kernel::{HeadGrad, Precision, WeightGrad};
use crate::kernels::PackedTernary;
use crate::kernels::bf16::grad_weight_bf16;
use crate::kernels::bf16_gemm::{StridedBf16, StridedF32, gemm_bf16};
use crate::kernels::i8_grad::grad_weight_i8;
use crate::kernels::quant::quantize_activations_absmax;
use crate::kernels::ternary::{ternary_matmul_dequant, ternary_matmul_dequant_add};
use crate::kernels::weight_pack::quantize_pack_weights;
use crate::layers::attention::{attention_backward, attention_forward};
use crate::layers::bitlinear::{
    ActQuant, QuantMode, bitlinear_backward, bitlinear_forward, ternary_weights_into,
};
use crate::layers::embedding::{embedding_backward, embedding_forward};
use crate::layers::loss::{Grad, cross_entropy};
use crate::layers::rmsnorm::{rmsnorm_backward, rmsnorm_forward, rmsnorm_forward_quantize};
use crate::layers::rope::{RopeTables, merge_heads, split_heads};
use crate::layers::swiglu::{swiglu_backward_in_place, swiglu_forward_quantize};
use crate::matmul::{Threads, matmul_ab, matmul_abt, matmul_atb};
use bitnet_framework::model::{IGNORE_INDEX, KernelError, ModelConfig, TokenBatch};
use bitnet_framework::tensor::ParamLayout;
use rayon::prelude::*;
use std::ops::Range;

/// Sizes of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub rows: usize,
    pub d: usize,
    pub heads: usize,
    pub hd: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub layers: usize,
}

impl Dims {
    pub(crate) fn new(c: &ModelConfig, batch: usize, seq: usize) -> Self {
        Self {
            batch,
            seq,
            rows: batch * seq,
            d: c.d_model,
            heads: c.n_heads,
            hd: c.head_dim(),
            ffn: c.ffn_hidden,
            vocab: c.vocab_size,
            layers: c.n_layers,
        }
    }
}

/// Arena ranges of one block's tensors.
#[derive(Debug, Clone)]
pub(crate) struct BlockRanges {
    pub attn_norm: Range<usize>,
    pub q: Range<usize>,
    pub k: Range<usize>,
    pub v: Range<usize>,
    pub o: Range<usize>,
    pub ffn_norm: Range<usize>,
    pub gate: Range<usize>,
    pub up: Range<usize>,
    pub down: Range<usize>,
}

/// Arena ranges of every tensor, looked up by name in the layout.
#[derive(Debug, Clone)]
pub(crate) struct ParamIndex {
    pub emb: Range<usize>,
    pub blocks: Vec<BlockRanges>,
    pub norm: Range<usize>,
    pub head: Range<usize>,
}

impl ParamIndex {
    pub(crate) fn new(layout: &ParamLayout, n_layers: usize) -> Result<Self, KernelError> {
        let get = |name: String| {
            layout.index_of(&name).map(|i| layout.range(i)).ok_or_else(|| {
                KernelError::Other(format!("parameter layout has no tensor `{name}`"))
            })
        };
        let mut blocks = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let p = format!("blocks.{l}");
            blocks.push(BlockRanges {
                attn_norm: get(format!("{p}.attn_norm.weight"))?,
                q: get(format!("{p}.attn.q_proj.weight"))?,
                k: get(format!("{p}.attn.k_proj.weight"))?,
                v: get(format!("{p}.attn.v_proj.weight"))?,
                o: get(format!("{p}.attn.o_proj.weight"))?,
                ffn_norm: get(format!("{p}.ffn_norm.weight"))?,
                gate: get(format!("{p}.ffn.gate_proj.weight"))?,
                up: get(format!("{p}.ffn.up_proj.weight"))?,
                down: get(format!("{p}.ffn.down_proj.weight"))?,
            });
        }
        Ok(Self {
            emb: get("tok_emb.weight".into())?,
            blocks,
            norm: get("norm.weight".into())?,
            head: get("lm_head.weight".into())?,
        })
    }
}

/// What one block keeps from forward for backward.
#[derive(Debug)]
struct BlockActs {
    rstd1: Vec<f32>,
    /// Quantized attention-norm output (input of q, k, v).
    a_attn: ActQuant,
    /// Rotated queries and keys, and values, head-major `[B, H, T, hd]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Softmax statistics `(max, 1 / sum)` of every attention row, `[B, H, T, 2]` (the
    /// probabilities are recomputed in backward instead of kept: `T/2` times less memory).
    att_stats: Vec<f32>,
    /// Quantized attention output (input of o).
    a_o: ActQuant,
    /// Residual stream after attention.
    x2: Vec<f32>,
    rstd2: Vec<f32>,
    /// Quantized FFN-norm output (input of gate and up).
    a_ffn: ActQuant,
    /// Gate and up projections `[rows, ffn]` (their gradients in place during backward).
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Quantized SwiGLU output (input of down).
    a_h: ActQuant,
}

impl BlockActs {
    fn new(d: &Dims, mode: QuantMode) -> Self {
        let (m, dm, f) = (d.rows, d.d, d.ffn);
        Self {
            rstd1: vec![0.0; m],
            a_attn: ActQuant::new(m, dm, mode),
            q: vec![0.0; m * dm],
            k: vec![0.0; m * dm],
            v: vec![0.0; m * dm],
            att_stats: vec![0.0; d.batch * d.heads * d.seq * 2],
            a_o: ActQuant::new(m, dm, mode),
            x2: vec![0.0; m * dm],
            rstd2: vec![0.0; m],
            a_ffn: ActQuant::new(m, dm, mode),
            gate: vec![0.0; m * f],
            up: vec![0.0; m * f],
            a_h: ActQuant::new(m, f, mode),
        }
    }
}

/// Every activation and scratch buffer of one batch shape.
#[derive(Debug)]
pub(crate) struct Workspace {
    dims: Dims,
    mode: QuantMode,
    /// Residual stream entering each block, plus the output of the last one.
    resid: Vec<Vec<f32>>,
    blocks: Vec<BlockActs>,
    rstd_f: Vec<f32>,
    xn_f: Vec<f32>,
    /// Logits, then their gradient in place (fp32 precision).
    logits: Vec<f32>,
    /// Mixed precision with the bf16 head backward: the logits' gradient in bf16 (sized on the
    /// first pass with gradients).
    dlogits16: Vec<u16>,
    /// Mixed precision with the int8 head weight gradient: the final normalized activations
    /// per token, int8 (sized on first use).
    xn_codes: Vec<i8>,
    xn_scales: Vec<f32>,
    // Scratch.
    xn: Vec<f32>,
    tmp: Vec<f32>,
    heads: Vec<f32>,
    hbuf: Vec<f32>,
    xdeq: Vec<f32>,
    wdeq: Vec<f32>,
    dres: Vec<f32>,
    dxn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    att_p: Vec<f32>,
    /// Mixed precision: the step's packed ternary weights and the quantized output gradient.
    packed: PackedWeights,
    dy_codes: Vec<i8>,
    dy_scales: Vec<f32>,
}

impl Workspace {
    pub(crate) fn new(dims: Dims, mode: QuantMode) -> Self {
        let (m, d, f) = (dims.rows, dims.d, dims.ffn);
        let md = m * d;
        Self {
            dims,
            mode,
            resid: (0..=dims.layers).map(|_| vec![0.0; md]).collect(),
            blocks: (0..dims.layers).map(|_| BlockActs::new(&dims, mode)).collect(),
            rstd_f: vec![0.0; m],
            xn_f: vec![0.0; md],
            logits: vec![0.0; m * dims.vocab],
            dlogits16: Vec::new(),
            xn_codes: Vec::new(),
            xn_scales: Vec::new(),
            xn: vec![0.0; md],
            tmp: vec![0.0; md],
            heads: vec![0.0; md],
            hbuf: vec![0.0; m * f],
            xdeq: vec![0.0; m * d.max(f)],
            wdeq: vec![0.0; d * d.max(f)],
            dres: vec![0.0; md],
            dxn: vec![0.0; md],
            dq: vec![0.0; md],
            dk: vec![0.0; md],
            dv: vec![0.0; md],
            att_p: vec![0.0; dims.batch * dims.heads * dims.seq * dims.seq],
            packed: PackedWeights::default(),
            dy_codes: Vec::new(),
            dy_scales: Vec::new(),
        }
    }

    /// Logits of the last forward (their fp32 gradient after a forward with gradients, except
    /// with the bf16 head backward of mixed precision: scratch then, the gradient being in
    /// `dlogits16`).
    pub(crate) fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub(crate) fn fits(&self, dims: &Dims, mode: QuantMode) -> bool {
        self.dims == *dims && self.mode == mode
    }
}

/// Everything a pass needs besides buffers.
#[derive(Clone, Copy)]
pub(crate) struct PassContext<'a> {
    pub dims: Dims,
    pub index: &'a ParamIndex,
    pub rope: &'a RopeTables,
    pub mode: QuantMode,
    pub threads: Threads,
    pub eps: f32,
    pub precision: Precision,
    pub weight_grad: WeightGrad,
    pub head_grad: HeadGrad,
}

impl PassContext<'_> {
    /// Whether BitLinear products run on the packed ternary kernels.
    fn packed(&self) -> bool {
        self.precision == Precision::Mixed && self.mode == QuantMode::Ternary
    }
}

fn add_into(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(4096).zip(a.par_chunks(4096)).zip(b.par_chunks(4096)).for_each(
        |((o, a), b)| {
            for ((oi, ai), bi) in o.iter_mut().zip(a).zip(b) {
                *oi = ai + bi;
            }
        },
    );
}

/// Checks a batch against the model; returns its dimensions.
pub(crate) fn check_batch(c: &ModelConfig, batch: &TokenBatch<'_>) -> Result<Dims, KernelError> {
    let (b, t) = (batch.batch, batch.seq_len);
    if b == 0 || t == 0 {
        return Err(KernelError::Shape(format!("empty batch ({b} x {t})")));
    }
    if t > c.seq_len {
        return Err(KernelError::Shape(format!(
            "sequence length {t} exceeds the model's {}",
            c.seq_len
        )));
    }
    let n = b.checked_mul(t).ok_or_else(|| KernelError::Shape("batch too large".into()))?;
    if batch.inputs.len() != n || batch.targets.len() != n {
        return Err(KernelError::Shape(format!(
            "batch {b} x {t} needs {n} inputs and targets, got {} and {}",
            batch.inputs.len(),
            batch.targets.len()
        )));
    }
    let vocab = c.vocab_size;
    for (position, &id) in batch.inputs.iter().enumerate() {
        if id as usize >= vocab {
            return Err(KernelError::TokenOutOfRange { id, position, vocab });
        }
    }
    for (position, &id) in batch.targets.iter().enumerate() {
        if id != IGNORE_INDEX && id as usize >= vocab {
            return Err(KernelError::TokenOutOfRange { id, position, vocab });
        }
    }
    Ok(Dims::new(c, b, t))
}

/// BitLinear tensors per block, in [`BlockRanges::linear`] order.
const LINEARS: usize = 7;
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

impl BlockRanges {
    /// The BitLinear tensors: q, k, v, o, gate, up, down.
    fn linear(&self) -> [&Range<usize>; LINEARS] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
}

/// The ternary weights of every BitLinear tensor for one step, packed for the int8 kernels:
/// `forward[i]` is `W_q` (for `y = x . W_q^T`), `transposed[i]` is `W_q^T` (for
/// `dX = dY . W_q`), `gammas[i]` the absmean scale; `i = block * 7 + [q, k, v, o, gate, up, down]`.
#[derive(Debug, Default)]
pub(crate) struct PackedWeights {
    forward: Vec<PackedTernary>,
    transposed: Vec<PackedTernary>,
    gammas: Vec<f32>,
}

fn gemm_error(e: crate::kernels::GemmError) -> KernelError {
    KernelError::Other(format!("ternary kernel: {e}"))
}

/// Quantizes and packs every BitLinear weight (in parallel over tensors, and within a tensor
/// over its 64-output panels), each weight read once by the fused kernel. The packed matrices
/// are kept from step to step: after the first step, packing fills the existing buffers.
fn pack_weights(
    cx: &PassContext<'_>,
    p: &[f32],
    with_transposed: bool,
    out: &mut PackedWeights,
) -> Result<(), KernelError> {
    let Dims { d, ffn: f, .. } = cx.dims;
    let shapes = [(d, d), (d, d), (d, d), (d, d), (f, d), (f, d), (d, f)];
    let jobs = cx.index.blocks.len() * LINEARS;
    let fresh = out.forward.len() != jobs
        || out
            .forward
            .iter()
            .zip(shapes.iter().cycle())
            .any(|(pw, &(n, k))| pw.out_features() != n || pw.in_features() != k);
    if fresh {
        out.transposed.clear();
        out.forward = shapes
            .iter()
            .cycle()
            .take(jobs)
            .map(|&(n, k)| PackedTernary::pack(&vec![0i8; n * k], n, k))
            .collect::<Result<_, _>>()
            .map_err(gemm_error)?;
    }
    if with_transposed && out.transposed.len() != jobs {
        out.transposed = shapes
            .iter()
            .cycle()
            .take(jobs)
            .map(|&(n, k)| PackedTernary::pack_transposed(&vec![0i8; n * k], n, k))
            .collect::<Result<_, _>>()
            .map_err(gemm_error)?;
    }
    out.gammas.resize(jobs, 0.0);
    let ranges: Vec<&Range<usize>> = cx.index.blocks.iter().flat_map(|b| b.linear()).collect();
    let transposed: Vec<Option<&mut PackedTernary>> = if with_transposed {
        out.transposed.iter_mut().map(Some).collect()
    } else {
        (0..jobs).map(|_| None).collect()
    };
    ranges
        .into_par_iter()
        .zip(out.forward.par_iter_mut())
        .zip(transposed.into_par_iter())
        .zip(out.gammas.par_iter_mut())
        .try_for_each(|(((range, fwd), tr), gamma)| {
            *gamma = quantize_pack_weights(&p[range.clone()], fwd, tr).map_err(gemm_error)?;
            Ok(())
        })
}

/// `y = BitLinear(x)` for the BitLinear tensor `which` (index into [`PackedWeights`]) with
/// weights `w`: the packed int8 kernel, or fp32 products on `xdeq` (the dequantized input,
/// filled by the caller in that case) and the dequantized weights.
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    cx: &PassContext<'_>,
    y: &mut [f32],
    a: &ActQuant,
    xdeq: &[f32],
    w: &[f32],
    wdeq: &mut [f32],
    packed: &PackedWeights,
    which: usize,
    (m, n, k): (usize, usize, usize),
) -> Result<(), KernelError> {
    if cx.packed() {
        let (pw, g) = (&packed.forward[which], packed.gammas[which]);
        ternary_matmul_dequant(&a.codes, m, k, pw, &a.scales, g, y).map_err(gemm_error)
    } else {
        let wdeq = &mut wdeq[..n * k];
        ternary_weights_into(wdeq, w, cx.mode);
        bitlinear_forward(y, xdeq, wdeq, (m, n, k), cx.threads);
        Ok(())
    }
}

/// Scratch of [`linear_backward`].
struct LinearScratch<'a> {
    wdeq: &'a mut [f32],
    dy_codes: &'a mut [i8],
    dy_scales: &'a mut [f32],
}

/// Straight-through backward of BitLinear `which` with input `a`: `dw = dy^T . Q_a(x)` and
/// `dx (+)= dy . Q_w(W)`. In fp32, both on the dequantized operands (`xdeq`, filled by the
/// caller). In mixed precision, `dw` straight from the int8 codes (`1 / s` folded into `dy`)
/// with int8 products and block scales or bf16 products ([`WeightGrad`]), fp32 sums; and `dx`
/// as SwitchBack does it: `dy` quantized per row to int8 (absmax), times the exactly ternary
/// `W_q` on the int8 kernel, rescaled.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    cx: &PassContext<'_>,
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    (a, xdeq): (&ActQuant, &[f32]),
    w: &[f32],
    s: LinearScratch<'_>,
    packed: &PackedWeights,
    which: usize,
    (m, n, k): (usize, usize, usize),
    accumulate_dx: bool,
) -> Result<(), KernelError> {
    if cx.packed() {
        match cx.weight_grad {
            WeightGrad::Int8 => grad_weight_i8(dy, m, n, &a.codes, &a.scales, k, dw, false),
            WeightGrad::Bf16 => grad_weight_bf16(dy, m, n, &a.codes, &a.scales, k, dw, false),
        }
        .map_err(gemm_error)?;
        let (codes, scales) = (&mut s.dy_codes[..m * n], &mut s.dy_scales[..m]);
        quantize_activations_absmax(dy, n, codes, scales).map_err(gemm_error)?;
        let (pt, g) = (&packed.transposed[which], packed.gammas[which]);
        if accumulate_dx {
            ternary_matmul_dequant_add(codes, m, n, pt, scales, g, dx).map_err(gemm_error)
        } else {
            ternary_matmul_dequant(codes, m, n, pt, scales, g, dx).map_err(gemm_error)
        }
    } else {
        let wdeq = &mut s.wdeq[..n * k];
        ternary_weights_into(wdeq, w, cx.mode);
        bitlinear_backward(dx, dw, dy, xdeq, wdeq, (m, n, k), accumulate_dx, cx.threads);
        Ok(())
    }
}

/// Forward pass; when `with_grad`, leaves the gradient of the mean loss in `ws.logits` (fp32) or
/// `ws.dlogits16` (mixed precision).
pub(crate) fn forward(
    cx: PassContext<'_>,
    p: &[f32],
    inputs: &[u32],
    targets: &[u32],
    ws: &mut Workspace,
    with_grad: bool,
) -> Result<f32, KernelError> {
    let Dims { rows: m, d, ffn: f, vocab, seq: t, heads: h, hd, .. } = cx.dims;
    let th = cx.threads;
    let shape = (t, h, hd);
    let packed = cx.packed();
    if packed {
        pack_weights(&cx, p, with_grad, &mut ws.packed)?;
        if with_grad && ws.dy_codes.is_empty() {
            ws.dy_codes = vec![0; m * d.max(f)];
            ws.dy_scales = vec![0.0; m];
        }
    }
    embedding_forward(&mut ws.resid[0], &p[cx.index.emb.clone()], inputs, d);
    for (l, br) in cx.index.blocks.iter().enumerate() {
        let (done, rest) = ws.resid.split_at_mut(l + 1);
        let (x, out) = (&done[l], &mut rest[0]);
        let la = &mut ws.blocks[l];
        let base = l * LINEARS;
        // Attention.
        let w = &p[br.attn_norm.clone()];
        rmsnorm_forward_quantize(&mut ws.xn, &mut la.rstd1, x, w, cx.eps, &mut la.a_attn);
        let xdeq = &mut ws.xdeq[..m * d];
        if !packed {
            la.a_attn.dequantize_into(xdeq);
        }
        for (which, dst, rotate) in
            [(Q, &mut la.q, true), (K, &mut la.k, true), (V, &mut la.v, false)]
        {
            let w = &p[br.linear()[which].clone()];
            let dims = (m, d, d);
            linear_forward(
                &cx,
                &mut ws.tmp,
                &la.a_attn,
                xdeq,
                w,
                &mut ws.wdeq,
                &ws.packed,
                base + which,
                dims,
            )?;
            split_heads(dst, &ws.tmp, shape, rotate.then_some(cx.rope));
        }
        attention_forward(
            &mut ws.heads,
            &mut ws.att_p,
            &mut la.att_stats,
            (&la.q, &la.k, &la.v),
            (t, hd),
        );
        merge_heads(&mut ws.tmp, &ws.heads, shape, None);
        la.a_o.quantize(&ws.tmp);
        if !packed {
            la.a_o.dequantize_into(xdeq);
        }
        let w = &p[br.o.clone()];
        linear_forward(
            &cx,
            &mut ws.tmp,
            &la.a_o,
            xdeq,
            w,
            &mut ws.wdeq,
            &ws.packed,
            base + O,
            (m, d, d),
        )?;
        add_into(&mut la.x2, x, &ws.tmp);
        // Feed-forward.
        let w = &p[br.ffn_norm.clone()];
        rmsnorm_forward_quantize(&mut ws.xn, &mut la.rstd2, &la.x2, w, cx.eps, &mut la.a_ffn);
        if !packed {
            la.a_ffn.dequantize_into(xdeq);
        }
        let (wg, wu) = (&p[br.gate.clone()], &p[br.up.clone()]);
        linear_forward(
            &cx,
            &mut la.gate,
            &la.a_ffn,
            xdeq,
            wg,
            &mut ws.wdeq,
            &ws.packed,
            base + GATE,
            (m, f, d),
        )?;
        linear_forward(
            &cx,
            &mut la.up,
            &la.a_ffn,
            xdeq,
            wu,
            &mut ws.wdeq,
            &ws.packed,
            base + UP,
            (m, f, d),
        )?;
        swiglu_forward_quantize(&mut ws.hbuf, &la.gate, &la.up, &mut la.a_h);
        let hdeq = &mut ws.xdeq[..m * f];
        if !packed {
            la.a_h.dequantize_into(hdeq);
        }
        let w = &p[br.down.clone()];
        linear_forward(
            &cx,
            &mut ws.tmp,
            &la.a_h,
            hdeq,
            w,
            &mut ws.wdeq,
            &ws.packed,
            base + DOWN,
            (m, d, f),
        )?;
        add_into(out, &la.x2, &ws.tmp);
    }
    let last = &ws.resid[cx.dims.layers];
    rmsnorm_forward(&mut ws.xn_f, &mut ws.rstd_f, last, &p[cx.index.norm.clone()], cx.eps);
    let head = &p[cx.index.head.clone()];
    if packed {
        // Mixed precision: bf16 products, fp32 sums, like the head's backward. Each logit is
        // within about 2^-7 of sum_l |xn[i][l] * W[v][l]| of fp32's (see `bf16_gemm`); with the
        // normalized `xn` that moves the loss by about 1e-4 relative (the parity tests hold the
        // whole pass within 2e-2 of fp32 and the mixed loss curve on fp32's).
        let xn = StridedF32::width_major(&ws.xn_f, d);
        let w = StridedF32::width_major(head, d);
        gemm_bf16(&mut ws.logits, (m, vocab, d), xn, w, false).map_err(gemm_error)?;
    } else {
        matmul_abt(&mut ws.logits, &ws.xn_f, head, (m, vocab, d), false, th);
    }
    let grad = match (with_grad, packed) {
        (false, _) => Grad::None,
        // Mixed precision: the bf16 head backward reads the gradient in bf16 only; the int8
        // weight gradient quantizes it from fp32 in blocks.
        (true, true) if cx.head_grad == HeadGrad::Bf16 => {
            ws.dlogits16.resize(m * vocab, 0);
            Grad::Bf16(&mut ws.dlogits16)
        }
        (true, true) => Grad::F32,
        (true, false) => Grad::F32,
    };
    Ok(cross_entropy(&mut ws.logits, targets, vocab, grad).0)
}

/// Backward pass after [`forward`] with gradients; overwrites every tensor of `g`.
pub(crate) fn backward(
    cx: PassContext<'_>,
    p: &[f32],
    inputs: &[u32],
    ws: &mut Workspace,
    g: &mut [f32],
) -> Result<(), KernelError> {
    let Dims { rows: m, d, ffn: f, vocab, seq: t, heads: h, hd, .. } = cx.dims;
    let th = cx.threads;
    let shape = (t, h, hd);
    let ix = cx.index;
    // Head and final norm.
    let head = &p[ix.head.clone()];
    if cx.packed() && cx.head_grad == HeadGrad::Int8 {
        // The gradient is in `ws.logits` (fp32). dxn[i][l] = sum_v dlogits[i][v] * W[v][l] on
        // bf16 products; dW[v][l] = sum_i dlogits[i][v] * xn[i][l] on int8 products, `xn`
        // quantized per token by absmax.
        let dlogits = StridedF32::width_major(&ws.logits, vocab);
        let w = StridedF32::depth_major(head, d);
        gemm_bf16(&mut ws.dxn, (m, d, vocab), dlogits, w, false).map_err(gemm_error)?;
        ws.xn_codes.resize(m * d, 0);
        ws.xn_scales.resize(m, 0.0);
        quantize_activations_absmax(&ws.xn_f, d, &mut ws.xn_codes, &mut ws.xn_scales)
            .map_err(gemm_error)?;
        let (xq, xs) = (&ws.xn_codes, &ws.xn_scales);
        grad_weight_i8(&ws.logits, m, vocab, xq, xs, d, &mut g[ix.head.clone()], false)
            .map_err(gemm_error)?;
    } else if cx.packed() {
        // dxn[i][l] = sum_v dlogits[i][v] * W[v][l]; dW[v][l] = sum_i dlogits[i][v] * xn[i][l].
        let dlogits = StridedBf16::width_major(&ws.dlogits16, vocab);
        let w = StridedF32::depth_major(head, d);
        gemm_bf16(&mut ws.dxn, (m, d, vocab), dlogits, w, false).map_err(gemm_error)?;
        let dlogits = StridedBf16::depth_major(&ws.dlogits16, vocab);
        let xn = StridedF32::depth_major(&ws.xn_f, d);
        gemm_bf16(&mut g[ix.head.clone()], (vocab, d, m), dlogits, xn, false)
            .map_err(gemm_error)?;
    } else {
        matmul_ab(&mut ws.dxn, &ws.logits, head, (m, d, vocab), false, th);
        matmul_atb(&mut g[ix.head.clone()], &ws.logits, &ws.xn_f, (vocab, d, m), false, th);
    }
    rmsnorm_backward(
        &mut ws.dres,
        &mut g[ix.norm.clone()],
        &ws.dxn,
        &ws.resid[cx.dims.layers],
        &ws.rstd_f,
        &p[ix.norm.clone()],
        false,
    );
    macro_rules! scratch {
        () => {
            LinearScratch {
                wdeq: &mut ws.wdeq,
                dy_codes: &mut ws.dy_codes,
                dy_scales: &mut ws.dy_scales,
            }
        };
    }
    for (l, br) in ix.blocks.iter().enumerate().rev() {
        let la = &mut ws.blocks[l];
        let base = l * LINEARS;
        // Feed-forward: out = x2 + down(swiglu(gate(xn2), up(xn2))); ws.dres is d out.
        let packed = cx.packed();
        let hdeq = &mut ws.xdeq[..m * f];
        if !packed {
            la.a_h.dequantize_into(hdeq);
        }
        let (w, dw) = (&p[br.down.clone()], &mut g[br.down.clone()]);
        linear_backward(
            &cx,
            &mut ws.hbuf,
            dw,
            &ws.dres,
            (&la.a_h, hdeq),
            w,
            scratch!(),
            &ws.packed,
            base + DOWN,
            (m, d, f),
            false,
        )?;
        swiglu_backward_in_place(&mut la.gate, &mut la.up, &ws.hbuf);
        let xdeq = &mut ws.xdeq[..m * d];
        if !packed {
            la.a_ffn.dequantize_into(xdeq);
        }
        let (w, dw) = (&p[br.gate.clone()], &mut g[br.gate.clone()]);
        linear_backward(
            &cx,
            &mut ws.dxn,
            dw,
            &la.gate,
            (&la.a_ffn, xdeq),
            w,
            scratch!(),
            &ws.packed,
            base + GATE,
            (m, f, d),
            false,
        )?;
        let (w, dw) = (&p[br.up.clone()], &mut g[br.up.clone()]);
        linear_backward(
            &cx,
            &mut ws.dxn,
            dw,
            &la.up,
            (&la.a_ffn, xdeq),
            w,
            scratch!(),
            &ws.packed,
            base + UP,
            (m, f, d),
            true,
        )?;
        rmsnorm_backward(
            &mut ws.dres,
            &mut g[br.ffn_norm.clone()],
            &ws.dxn,
            &la.x2,
            &la.rstd2,
            &p[br.ffn_norm.clone()],
            true,
        );
        // Attention: x2 = x + o(attn(q(xn1), k(xn1), v(xn1))); ws.dres is d x2.
        if !packed {
            la.a_o.dequantize_into(xdeq);
        }
        let (w, dw) = (&p[br.o.clone()], &mut g[br.o.clone()]);
        linear_backward(
            &cx,
            &mut ws.tmp,
            dw,
            &ws.dres,
            (&la.a_o, xdeq),
            w,
            scratch!(),
            &ws.packed,
            base + O,
            (m, d, d),
            false,
        )?;
        split_heads(&mut ws.heads, &ws.tmp, shape, None);
        attention_backward(
            (&mut ws.dq, &mut ws.dk, &mut ws.dv),
            &mut ws.att_p,
            &ws.heads,
            &la.att_stats,
            (&la.q, &la.k, &la.v),
            (t, hd),
        );
        if !packed {
            la.a_attn.dequantize_into(xdeq);
        }
        for (which, dh, rotate) in [(Q, &ws.dq, true), (K, &ws.dk, true), (V, &ws.dv, false)] {
            merge_heads(&mut ws.tmp, dh, shape, rotate.then_some(cx.rope));
            let range = br.linear()[which].clone();
            let (w, dw) = (&p[range.clone()], &mut g[range]);
            linear_backward(
                &cx,
                &mut ws.dxn,
                dw,
                &ws.tmp,
                (&la.a_attn, xdeq),
                w,
                scratch!(),
                &ws.packed,
                base + which,
                (m, d, d),
                which != Q,
            )?;
        }
        rmsnorm_backward(
            &mut ws.dres,
            &mut g[br.attn_norm.clone()],
            &ws.dxn,
            &ws.resid[l],
            &la.rstd1,
            &p[br.attn_norm.clone()],
            true,
        );
    }
    embedding_backward(&mut g[ix.emb.clone()], &ws.dres, inputs, d);
    Ok(())
}
