//! `int8 x packed ternary` matrix products: `Y[m][n] = sum_k X_q[m][k] * W[n][k]`.
//!
//! This is the BitLinear forward (`X_q` the per-token int8 activations, `W` the ternary weights)
//! and, with the transposed packing ([`PackedTernary::pack_transposed`]), the SwitchBack-style
//! input gradient `dX = dY_q . W_q` (`dY` quantised per row to int8; `W_q` is exactly ternary so
//! only `dY` is rounded).
//!
//! Paths: [`Isa::Avx512Amx`] (`tdpbsud` on AMX tiles, 32 x 32 register blocks, see
//! `x86_amx.rs`), [`Isa::Avx512Vnni`] (`vpdpbusd`, 6 x 64 register tile), [`Isa::Avx2Vnni`] (the
//! 256-bit `vpdpbusd` of AVX-VNNI, 2 x 32 tile), [`Isa::Avx2`] (`vpmaddubsw` + `vpmaddwd`, 2 x 32
//! tile), on aarch64 [`Isa::NeonDot`] (`sdot`, 4 x 16 tile) and [`Isa::Neon`]
//! (`smlal` + `sadalp`, 2 x 8 tile), and [`Isa::Scalar`]. All give bit-identical integer results; the
//! dequantising variants compute `y = (acc as f32) * (w_scale / row_scale[m])` on every path, so
//! they are bit-identical too.
//!
//! How: `vpdpbusd` multiplies unsigned by signed bytes, so the weights enter as their codes
//! `w + 1` in `{0, 1, 2}` and the activations as signed bytes (broadcast 4 at a time); the row sum
//! of the activations is subtracted at the end: `sum x (w + 1) - sum x = sum x w`. Each task
//! unpacks one 64-output panel of 2-bit codes into an aligned int8 buffer (three instructions per
//! 64 codes, amortised over all rows of the task) and sweeps the register-blocked micro-kernel
//! down its rows. Tasks split the rows (or, for few rows, the panels) on the current rayon pool.

use super::packed::{GROUP, PANEL, TILE_BYTES, unpack_panel_scalar};
use super::{GemmError, Isa, PackedTernary, check_isa, check_len, checked_area};
use rayon::prelude::*;
use std::cell::RefCell;

/// Paths of the ternary products.
pub const TERNARY_PATHS: [Isa; 7] = [
    Isa::Scalar,
    Isa::Avx2,
    Isa::Avx2Vnni,
    Isa::Avx512Vnni,
    Isa::Avx512Amx,
    Isa::Neon,
    Isa::NeonDot,
];

/// Products of fewer multiply-adds than this run as one task on the calling thread: waking the
/// pool costs more than they take (a decode step's `1 x 512 x 2048` product is ~1M).
#[cfg(not(test))]
const SERIAL_MACS: usize = 1 << 22;
/// The unit tests split every product (each has at least one multiply-add), so their small
/// shapes exercise the parallel tasks.
#[cfg(test)]
const SERIAL_MACS: usize = 1;

/// Below this many rows the automatic choice takes AVX-512 VNNI over AMX: an AMX tile holds 16
/// rows, so a decode step's single row would pay for sixteen.
const AMX_MIN_ROWS: usize = 16;

/// The path [`ternary_matmul`] and its dequantising twins take for `m` rows: the best this CPU
/// (and `BITNET_ISA`) allows, except AMX for fewer rows than a tile holds.
fn auto_path(m: usize) -> Isa {
    match Isa::best_among(&TERNARY_PATHS) {
        Isa::Avx512Amx if m < AMX_MIN_ROWS => Isa::Avx512Vnni,
        isa => isa,
    }
}

/// Largest reduction length: keeps `sum x (w + 1)` (at most `256 k` in magnitude) inside i32.
pub const MAX_K: usize = 1 << 23;

/// `out[m][n] = sum_k x_q[m][k] * W[n][k]` for the row-major `m x k` int8 matrix `x_q` and the
/// packed ternary `W` (`w.in_features() == k`); `out` is row-major `m x w.out_features()`.
/// Runs the best path of this CPU on the current rayon pool ([`auto_path`]).
pub fn ternary_matmul(
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    out: &mut [i32],
) -> Result<(), GemmError> {
    ternary_matmul_with(auto_path(m), x_q, m, k, w, out)
}

/// [`ternary_matmul`] on the given path.
pub fn ternary_matmul_with(
    isa: Isa,
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    out: &mut [i32],
) -> Result<(), GemmError> {
    check_isa("ternary_matmul", isa, &TERNARY_PATHS)?;
    check_shapes(x_q, m, k, w, out.len())?;
    drive(isa, x_q, m, k, w, Sink::I32(SendPtr(out.as_mut_ptr())), &[]);
    Ok(())
}

/// The dequantising product `out[m][n] = (acc[m][n] as f32) * (w_scale / row_scales[m])`, with
/// `acc` the integer product of [`ternary_matmul`]: the BitLinear output `y = acc * g / s` for
/// activation scales `s` (from the absmax quantizer) and weight scale `g` (the absmean).
#[allow(clippy::too_many_arguments)]
pub fn ternary_matmul_dequant(
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    row_scales: &[f32],
    w_scale: f32,
    out: &mut [f32],
) -> Result<(), GemmError> {
    let isa = auto_path(m);
    ternary_matmul_dequant_with(isa, x_q, m, k, w, row_scales, w_scale, out)
}

/// [`ternary_matmul_dequant`] on the given path.
#[allow(clippy::too_many_arguments)]
pub fn ternary_matmul_dequant_with(
    isa: Isa,
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    row_scales: &[f32],
    w_scale: f32,
    out: &mut [f32],
) -> Result<(), GemmError> {
    check_isa("ternary_matmul_dequant", isa, &TERNARY_PATHS)?;
    check_shapes(x_q, m, k, w, out.len())?;
    check_len("row scales", m, row_scales.len())?;
    drive(isa, x_q, m, k, w, Sink::F32(SendPtr(out.as_mut_ptr()), w_scale), row_scales);
    Ok(())
}

/// [`ternary_matmul_dequant`] adding into `out` instead of overwriting it:
/// `out[m][n] += (acc[m][n] as f32) * (w_scale / row_scales[m])` (for input gradients that sum
/// over several consumers of one input).
#[allow(clippy::too_many_arguments)]
pub fn ternary_matmul_dequant_add(
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    row_scales: &[f32],
    w_scale: f32,
    out: &mut [f32],
) -> Result<(), GemmError> {
    let isa = auto_path(m);
    ternary_matmul_dequant_add_with(isa, x_q, m, k, w, row_scales, w_scale, out)
}

/// [`ternary_matmul_dequant_add`] on the given path.
#[allow(clippy::too_many_arguments)]
pub fn ternary_matmul_dequant_add_with(
    isa: Isa,
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    row_scales: &[f32],
    w_scale: f32,
    out: &mut [f32],
) -> Result<(), GemmError> {
    check_isa("ternary_matmul_dequant_add", isa, &TERNARY_PATHS)?;
    check_shapes(x_q, m, k, w, out.len())?;
    check_len("row scales", m, row_scales.len())?;
    drive(isa, x_q, m, k, w, Sink::F32Add(SendPtr(out.as_mut_ptr()), w_scale), row_scales);
    Ok(())
}

fn check_shapes(
    x_q: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    out_len: usize,
) -> Result<(), GemmError> {
    if w.in_features() != k {
        return Err(GemmError::Shape(format!(
            "activations have {k} columns but the weights {} inputs",
            w.in_features()
        )));
    }
    if k > MAX_K {
        return Err(GemmError::TooLarge(format!("reduction length {k} exceeds {MAX_K}")));
    }
    check_len("int8 activations", checked_area("activations", m, k)?, x_q.len())?;
    check_len("product", checked_area("product", m, w.out_features())?, out_len)
}

/// A raw output pointer shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: the pointer is only dereferenced by tasks writing pairwise disjoint elements of one
// live `&mut` slice borrowed for the whole parallel section (see `drive`).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; no two tasks access the same element.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Where a micro-kernel writes its tile.
#[derive(Clone, Copy)]
pub(crate) enum Sink {
    /// Row-major i32 output.
    I32(SendPtr<i32>),
    /// Row-major f32 output: `acc as f32 * (w_scale / row_scale)`, with the weight scale here
    /// and the row scales in the tile.
    F32(SendPtr<f32>, f32),
    /// As [`Sink::F32`], added to the output.
    F32Add(SendPtr<f32>, f32),
}

/// One micro-kernel call: a tile of `rows` rows from `row0` and the columns `col0 .. col0 +
/// cols` of one panel.
pub(crate) struct Tile<'a> {
    /// Unpacked codes of the panel, `groups * 256` bytes, 64-byte aligned.
    pub tiles: &'a [u8],
    /// The whole activation matrix, row-major `m x k`.
    pub x: &'a [i8],
    pub k: usize,
    pub row0: usize,
    pub rows: usize,
    /// Row sums of `x` for rows `row0 ..`.
    pub rowsums: &'a [i32],
    /// Activation scales of rows `row0 ..` (empty for the i32 sink).
    pub row_scales: &'a [f32],
    pub col0: usize,
    pub cols: usize,
    /// Row stride of the output.
    pub n: usize,
    pub sink: Sink,
}

/// 64-byte aligned storage for unpacked panels.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

#[derive(Default)]
struct Scratch {
    lines: Vec<Line>,
    rowsums: Vec<i32>,
}

thread_local! {
    /// Per-thread buffers, grown on demand and reused across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Rows per micro-kernel tile of a path.
fn tile_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512Vnni => 6,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Amx => super::x86_amx::GROUP,
        Isa::Avx2 | Isa::Avx2Vnni | Isa::Neon => 2,
        _ => 4,
    }
}

/// Most register tiles of rows a task multiplies with the panels' codes unpacked in registers
/// (AVX-512 VNNI). One tile is every decode step of one sequence; three cover the batched decode
/// steps of `bitnet serve` below the 16 rows where AMX takes over: a medium model with 8
/// concurrent clients served 71.7 / 71.6 utterances/s at one tile, 77.0 / 74.8 at three (Intel
/// Xeon, 2026-12-06).
const IN_REGISTER_TILES: usize = 3;

fn drive(
    isa: Isa,
    x: &[i8],
    m: usize,
    k: usize,
    w: &PackedTernary,
    sink: Sink,
    row_scales: &[f32],
) {
    let n = w.out_features();
    let panels = w.panels();
    if m == 0 || n == 0 {
        return;
    }
    let mr = tile_rows(isa);
    let small = m.saturating_mul(n).saturating_mul(k) < SERIAL_MACS;
    let threads = if small { 1 } else { rayon::current_num_threads().max(1) };
    let row_blocks = m.div_ceil(mr);
    // Splitting rows makes every task unpack every panel; worth it once each task has many rows.
    let (row_tasks, panel_tasks) = if threads == 1 {
        (1, 1)
    } else if row_blocks >= 8 * threads || panels < threads {
        (threads.min(row_blocks), 1)
    } else {
        (1, threads.min(panels))
    };
    let rows_per_task = row_blocks.div_ceil(row_tasks) * mr;
    let panels_per_task = panels.div_ceil(panel_tasks);
    let task = |t: usize| {
        let (rt, pt) = (t / panel_tasks, t % panel_tasks);
        let rows = (rt * rows_per_task).min(m)..((rt + 1) * rows_per_task).min(m);
        let panel_range =
            (pt * panels_per_task).min(panels)..((pt + 1) * panels_per_task).min(panels);
        if rows.is_empty() || panel_range.is_empty() {
            return;
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let Scratch { lines, rowsums } = &mut *scratch;
            // The AMX path reads whole 16-group chunks of the panel.
            let need = w.groups().next_multiple_of(16) * TILE_BYTES / 64;
            if lines.len() < need {
                lines.resize(need, Line([0; 64]));
            }
            // SAFETY: `Line` is `repr(C)` over `[u8; 64]` with no padding, so `need` lines are
            // exactly `64 * need` initialised bytes; the borrow of `lines` outlives the slice.
            let tiles: &mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), need * 64) };
            rowsums.clear();
            let xr = &x[rows.start * k..rows.end * k];
            rowsums.extend(xr.chunks_exact(k.max(1)).map(|row| row_sum(isa, row)));
            rowsums.resize(rows.len(), 0);
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512Amx {
                let scales =
                    if row_scales.is_empty() { &[][..] } else { &row_scales[rows.clone()] };
                let sums = (&rowsums[..], scales);
                super::x86_amx::ternary_task(x, k, rows, w, panel_range, tiles, sums, sink);
                return;
            }
            // A task of a few tiles of rows reads each panel a few times: AVX-512 VNNI then
            // unpacks the codes in registers, once per tile, instead of once through the buffer.
            let in_registers = isa == Isa::Avx512Vnni && rows.len() <= IN_REGISTER_TILES * mr;
            for panel in panel_range {
                let codes: &[u8] = if in_registers {
                    w.packed_panel(panel)
                } else {
                    unpack_panel(isa, w.packed_panel(panel), tiles);
                    tiles
                };
                let col0 = panel * PANEL;
                let cols = (n - col0).min(PANEL);
                let mut r = rows.start;
                while r < rows.end {
                    let take = (rows.end - r).min(mr);
                    let local = r - rows.start;
                    let tile = Tile {
                        tiles: codes,
                        x,
                        k,
                        row0: r,
                        rows: take,
                        rowsums: &rowsums[local..local + take],
                        row_scales: if row_scales.is_empty() {
                            &[]
                        } else {
                            &row_scales[r..r + take]
                        },
                        col0,
                        cols,
                        n,
                        sink,
                    };
                    if in_registers {
                        packed_micro_kernel(&tile);
                    } else {
                        micro_kernel(isa, &tile);
                    }
                    r += take;
                }
            }
        });
    };
    let tasks = row_tasks * panel_tasks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// The sum of one row of int8 activations (what the unsigned-offset products subtract).
fn row_sum(isa: Isa, row: &[i8]) -> i32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the driver only runs a path check_isa accepted (VNNI implies F/BW).
        Isa::Avx512Vnni | Isa::Avx512Amx => unsafe { super::x86_ternary::row_sum_avx512(row) },
        _ => row_sum_scalar(row),
    }
}

/// The 4 activations of the partial last group of a row (from input `GROUP * full`), zero
/// padded, as one little-endian 32-bit lane.
#[inline(always)]
pub(crate) fn tail_group(row: &[i8], full: usize) -> i32 {
    let mut b = [0u8; 4];
    for (d, &s) in b.iter_mut().zip(&row[full * GROUP..]) {
        *d = s as u8;
    }
    i32::from_le_bytes(b)
}

/// [`row_sum`] element by element: the scalar twin.
pub(crate) fn row_sum_scalar(row: &[i8]) -> i32 {
    row.iter().map(|&v| i32::from(v)).sum()
}

fn unpack_panel(isa: Isa, packed: &[u8], tiles: &mut [u8]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the driver only runs a path check_isa accepted; `tiles` holds at least
        // `groups * 256` bytes for the `groups * 64` packed bytes.
        Isa::Avx512Vnni => unsafe { super::x86_ternary::unpack_panel_avx512(packed, tiles) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        Isa::Avx2 | Isa::Avx2Vnni => unsafe {
            super::x86_ternary::unpack_panel_avx2(packed, tiles)
        },
        _ => unpack_panel_scalar(packed, tiles),
    }
}

/// The micro-kernel on a panel still packed (`t.tiles` holds its `ceil(k / 4) * 64` bytes);
/// only AVX-512 VNNI has one, and the driver calls it only there.
fn packed_micro_kernel(t: &Tile<'_>) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the driver calls this only on the AVX-512 VNNI path check_isa verified, with `t`
    // in bounds as for `micro_kernel` (rows <= 6) and the panel's packed bytes.
    unsafe {
        super::x86_ternary::kernel_vnni::<true>(t)
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no packed micro-kernel off x86-64: {} rows", t.rows);
}

fn micro_kernel(isa: Isa, t: &Tile<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX-512 VNNI; the driver built `t` in bounds (rows <= 6,
        // cols <= 64, rows and columns inside the output and activations).
        Isa::Avx512Vnni => unsafe { super::x86_ternary::kernel_vnni::<false>(t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2; `t` is in bounds with rows <= 2.
        Isa::Avx2 => unsafe { super::x86_ternary::kernel_avx2(t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2 and AVX-VNNI; `t` is in bounds with rows <= 2.
        Isa::Avx2Vnni => unsafe { super::x86_ternary::kernel_avx_vnni(t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON and dotprod; `t` is in bounds with rows <= 4.
        Isa::NeonDot => unsafe { super::neon_ternary::kernel_neon_dot(t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON; `t` is in bounds with rows <= 2.
        Isa::Neon => unsafe { super::neon_ternary::kernel_neon(t) },
        _ => kernel_scalar(t),
    }
}

/// Scalar micro-kernel (the twin of the SIMD ones): same codes, same row-sum correction.
fn kernel_scalar(t: &Tile<'_>) {
    for r in 0..t.rows {
        let xrow = &t.x[(t.row0 + r) * t.k..(t.row0 + r + 1) * t.k];
        for c in 0..t.cols {
            let mut acc = 0i32;
            for (kk, &xv) in xrow.iter().enumerate() {
                let code = t.tiles[kk / GROUP * TILE_BYTES + c * GROUP + kk % GROUP];
                acc += i32::from(xv) * i32::from(code);
            }
            let v = acc - t.rowsums[r];
            let at = (t.row0 + r) * t.n + t.col0 + c;
            // SAFETY: `at` indexes row `row0 + r < m` and column `col0 + c < n` of the m x n
            // output; this task is the only writer of that element.
            unsafe {
                match t.sink {
                    Sink::I32(p) => *p.0.add(at) = v,
                    Sink::F32(p, g) => *p.0.add(at) = v as f32 * (g / t.row_scales[r]),
                    Sink::F32Add(p, g) => *p.0.add(at) += v as f32 * (g / t.row_scales[r]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pool;
    use proptest::prelude::*;

    fn reference(x: &[i8], m: usize, k: usize, w: &[i8], n: usize) -> Vec<i32> {
        let mut y = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] =
                    (0..k).map(|l| i32::from(x[i * k + l]) * i32::from(w[j * k + l])).sum();
            }
        }
        y
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        let (m, k, n) = (7, 1031, 70);
        let x: Vec<i8> = (0..m * k).map(|i| if i % 3 == 0 { -128 } else { 127 }).collect();
        let w: Vec<i8> = (0..n * k).map(|i| [-1, 1, 1, -1, 0][i % 5]).collect();
        let want = reference(&x, m, k, &w, n);
        let p = PackedTernary::pack(&w, n, k).expect("pack");
        for isa in Isa::available_among(&TERNARY_PATHS) {
            let mut got = vec![0; m * n];
            ternary_matmul_with(isa, &x, m, k, &p, &mut got).expect("matmul");
            assert_eq!(got, want, "{isa:?}");
        }
    }

    #[test]
    fn shape_errors() {
        let p = PackedTernary::pack(&[1, 0, -1, 1, 0, 0], 2, 3).expect("pack");
        let mut out = vec![0; 4];
        assert!(ternary_matmul(&[0; 6], 2, 3, &p, &mut out).is_ok());
        assert!(ternary_matmul(&[0; 6], 3, 2, &p, &mut out).is_err());
        assert!(ternary_matmul(&[0; 5], 2, 3, &p, &mut out).is_err());
        assert!(ternary_matmul(&[0; 6], 2, 3, &p, &mut out[..3]).is_err());
        let mut f = vec![0.0; 4];
        assert!(ternary_matmul_dequant(&[0; 6], 2, 3, &p, &[1.0], 1.0, &mut f).is_err());
    }

    #[test]
    fn transposed_packing_gives_the_input_gradient() {
        let (m, n, k) = (5, 9, 70);
        let w: Vec<i8> = (0..n * k).map(|i| [0, 1, -1][(i * 7) % 3]).collect();
        let dy: Vec<i8> = (0..m * n).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
        let wt = PackedTernary::pack_transposed(&w, n, k).expect("pack");
        let mut dx = vec![0; m * k];
        ternary_matmul(&dy, m, n, &wt, &mut dx).expect("matmul");
        for i in 0..m {
            for j in 0..k {
                let want: i32 =
                    (0..n).map(|l| i32::from(dy[i * n + l]) * i32::from(w[l * k + j])).sum();
                assert_eq!(dx[i * k + j], want);
            }
        }
    }

    fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<i8>, Vec<i8>, Vec<f32>)> {
        // Small shapes, and several 32-row groups of the AMX path (row tasks on 3 threads).
        let rows = prop_oneof![3 => 1usize..40, 1 => 60usize..200];
        (rows, 1usize..140, 1usize..150).prop_flat_map(|(m, k, n)| {
            (
                Just(m),
                Just(k),
                Just(n),
                prop::collection::vec(any::<i8>(), m * k),
                prop::collection::vec(-1i8..=1, n * k),
                prop::collection::vec(1e-3f32..1e3, m),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        /// Row sums on every path equal the scalar sum (rows of any length, extreme codes).
        fn row_sums_match_the_scalar_twin(row in prop::collection::vec(any::<i8>(), 0..300)) {
            let want = row_sum_scalar(&row);
            prop_assert_eq!(want, row.iter().map(|&v| i64::from(v)).sum::<i64>() as i32);
            for isa in Isa::available_among(&TERNARY_PATHS) {
                prop_assert_eq!(row_sum(isa, &row), want, "{:?}", isa);
            }
            let extreme = vec![i8::MIN; row.len()];
            for isa in Isa::available_among(&TERNARY_PATHS) {
                prop_assert_eq!(row_sum(isa, &extreme), -128 * row.len() as i32, "{:?}", isa);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_path_equals_the_reference((m, k, n, x, w, s) in case(), threads in 1usize..4) {
            let want = reference(&x, m, k, &w, n);
            let p = PackedTernary::pack(&w, n, k).expect("pack");
            let mut want_f = vec![0.0f32; m * n];
            ternary_matmul_dequant_with(Isa::Scalar, &x, m, k, &p, &s, 0.37, &mut want_f)
                .expect("scalar");
            for isa in Isa::available_among(&TERNARY_PATHS) {
                let mut got = vec![i32::MIN; m * n];
                pool(threads).install(|| ternary_matmul_with(isa, &x, m, k, &p, &mut got))
                    .expect("matmul");
                prop_assert_eq!(&got, &want, "{:?}", isa);
                let mut got_f = vec![f32::NAN; m * n];
                pool(threads)
                    .install(|| ternary_matmul_dequant_with(isa, &x, m, k, &p, &s, 0.37, &mut got_f))
                    .expect("dequant");
                for (i, (a, b)) in got_f.iter().zip(&want_f).enumerate() {
                    prop_assert_eq!(a.to_bits(), b.to_bits(), "{:?} at {}", isa, i);
                    prop_assert_eq!(*a, want[i] as f32 * (0.37 / s[i / n]));
                }
                let base: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut sum = base.clone();
                pool(threads)
                    .install(|| ternary_matmul_dequant_add_with(isa, &x, m, k, &p, &s, 0.37, &mut sum))
                    .expect("dequant add");
                for i in 0..m * n {
                    prop_assert_eq!(sum[i].to_bits(), (base[i] + want_f[i]).to_bits(), "{:?}", isa);
                }
            }
        }
    }
}
