//! The bf16 product of [`super::bf16_tiles`] and the ternary product of [`super::ternary`] on
//! Intel AMX tiles ([`Isa::Avx512Amx`]).
//!
//! One `tdpbf16ps` multiplies a 16-row x 16-pair tile of `A` by a 16-pair x 16-column tile of
//! `B` into a 16 x 16 fp32 tile of `C`: 8,192 multiply-adds in one instruction, about 16 times
//! the rate of AVX-512 BF16 per core. The driver keeps the blocking of the AVX-512 path (an
//! `A` block of at most [`MC`] rows by [`KC`] pairs, packed by the same callbacks, against every
//! 64-column panel of the packed `B`), then re-lays the block out for the tiles: groups of
//! [`GROUP`] rows, each as [`KC`]`/16` chunks of 32 rows x 16 pairs (two 1-KiB `A` tiles, rows
//! zero-padded). `B` needs no repacking: a panel (`[pair][64]` lanes) read with a 256-byte row
//! stride is exactly the tile layout (`[pair][16 columns][2 bf16]`), 16 columns at a time; a
//! depth block that is not a multiple of 16 pairs has its last chunk copied to a zero-padded
//! tile first, so no tile reads past the panel. Each register block is 32 x 32 outputs (four
//! `C` tiles, two `A` and two `B` tiles: all eight tile registers), loaded from and stored
//! to `C` in place where the block is whole, through a 32 x 32 scratch at the edges.
//!
//! Numerics: each `tdpbf16ps` lane adds the two products of a pair to the fp32 accumulator
//! with round-to-nearest-even, flushing denormal inputs and results, as `vdpbf16ps` does; the
//! pair's two additions may be ordered or fused differently, which stays within the bound
//! `m * 2^-23` of the magnitude sum that the tests hold every path to.
//!
//! Tile state: each task loads the tile configuration on entry and releases the tiles on exit
//! (`tilerelease`), and runs no parallel work in between, so no other task interleaves on its
//! thread. The OS permission is requested once per process by
//! [`bitnet_framework::isa::amx_usable`], which [`Isa::Avx512Amx`]'s detection calls.

use super::bf16_tiles::{KC, MC};
use super::{Isa, for_each_row_band};
use std::arch::asm;
use std::cell::RefCell;

/// Rows of a register block: two `A` tiles.
pub(crate) const GROUP: usize = 32;
/// Pairs per tile (16 pairs = 32 bf16 = one 64-byte tile row).
const CHUNK: usize = 16;
/// Columns of a `B` panel (the packed layout of [`super::bf16`]).
const NR: usize = super::bf16::NR;

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tiles 0-7 all 16 rows of 64 bytes.
const FULL: TileConfig = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        colsb[t] = 64;
        rows[t] = 16;
        t += 1;
    }
    TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows }
};

thread_local! {
    /// The ternary product's zero-padded copy of the running task's activations.
    static PADDED: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
    /// The running task's `A` block as the AVX-512 packers write it (`[tile][pair][6]`), then
    /// in the tile layout, and the zero-padded tail chunk of a `B` panel half.
    static SCRATCH: RefCell<(Vec<u32>, Vec<u32>, Vec<u32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Loads the tile configuration for the calling task; the tiles are released when the guard
/// drops. The task must run no parallel work while it holds the guard.
pub(crate) struct Tiles;

impl Tiles {
    /// # Safety
    /// The CPU must have AMX-TILE and the process the OS's permission ([`Isa::Avx512Amx`] is
    /// available).
    pub(crate) unsafe fn configure() -> Tiles {
        // SAFETY: the caller guarantees AMX; FULL is a valid palette-1 configuration, 64-byte
        // aligned.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) &FULL as *const TileConfig, options(nostack)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: only constructed by `configure`, on a CPU with AMX.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A 32 x 32 block of accumulators (tiles 0-3: rows 0-15 then 16-31, columns 0-15 then
/// 16-31) in memory: `stride` bytes between rows, 4-byte elements.
#[derive(Clone, Copy)]
struct Accumulators {
    ptr: *mut u8,
    stride: usize,
}

impl Accumulators {
    /// The four tiles' first elements.
    fn corners(self) -> [*mut u8; 4] {
        let below = self.ptr.wrapping_add(16 * self.stride);
        [self.ptr, self.ptr.wrapping_add(64), below, below.wrapping_add(64)]
    }

    /// Zeroes tiles 0-3.
    ///
    /// # Safety
    /// Tiles configured.
    unsafe fn zero() {
        // SAFETY: the caller configured the tiles; no memory is touched.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
    }

    /// Loads tiles 0-3 from the block.
    ///
    /// # Safety
    /// Tiles configured; the block's 32 rows of 128 bytes readable.
    unsafe fn load(self) {
        let [c0, c1, c2, c3] = self.corners();
        // SAFETY: forwarded.
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) self.stride, options(nostack, readonly),
            );
        }
    }

    /// Stores tiles 0-3 to the block.
    ///
    /// # Safety
    /// Tiles configured; the block's 32 rows of 128 bytes writable and not aliased.
    unsafe fn store(self) {
        let [c0, c1, c2, c3] = self.corners();
        // SAFETY: forwarded.
        unsafe {
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) self.stride, options(nostack),
            );
        }
    }
}

/// The `B` operand of a register block: the chunks' 16 pair rows at `stride` bytes apart (the
/// first 16 columns at `ptr`, the next 16 at `ptr + 16 lanes`), and an optional last chunk
/// copied out zero-padded (16 rows of 32 lanes, 128-byte stride).
#[derive(Clone, Copy)]
struct BPanel {
    ptr: *const u32,
    stride: usize,
    tail: Option<*const u32>,
}

/// `C[32 x 32] (+)= A . B` on the tiles: `a` holds `chunks` chunks of 32 rows x 16 pairs (1,024
/// lanes each, the first 16 rows then the next 16), `b` the chunks as [`BPanel`] says; `c` is
/// read first when `load_c`.
///
/// # Safety
/// Tiles configured by [`Tiles::configure`]; every pointer valid for the reads and writes
/// above.
#[inline]
unsafe fn block(a: *const u32, b: BPanel, chunks: usize, c: Accumulators, load_c: bool) {
    // SAFETY: forwarded from this function's contract; the tile registers are used by nothing
    // else in the program.
    unsafe {
        if load_c {
            c.load();
        } else {
            Accumulators::zero();
        }
        let full = if b.tail.is_some() { chunks - 1 } else { chunks };
        for q in 0..chunks {
            let a0 = a.add(q * GROUP * CHUNK);
            let a1 = a0.add(16 * CHUNK);
            let (b0, stride) = match b.tail {
                Some(t) if q == full => (t, 2 * CHUNK * 4),
                _ => (b.ptr.byte_add(q * CHUNK * b.stride), b.stride),
            };
            let b1 = b0.add(16);
            asm!(
                "tileloadd tmm4, [{a0} + {as_}*1]",
                "tileloadd tmm5, [{a1} + {as_}*1]",
                "tileloadd tmm6, [{b0} + {bs}*1]",
                "tileloadd tmm7, [{b1} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, as_ = in(reg) CHUNK * 4,
                b0 = in(reg) b0, b1 = in(reg) b1, bs = in(reg) stride,
                options(nostack, readonly),
            );
        }
        c.store();
    }
}

/// Re-lays an `A` block packed `[tile][pair][6]` (`mn` rows, `pc` pairs) out as
/// [`GROUP`]-row groups of 16-pair chunks (`[group][chunk][32 rows][16]`), zero-padded.
fn to_tile_layout(six: &[u32], mn: usize, pc: usize, out: &mut Vec<u32>) {
    use super::bf16::MR;
    let chunks = pc.div_ceil(CHUNK);
    let groups = mn.div_ceil(GROUP);
    out.clear();
    out.resize(groups * chunks * GROUP * CHUNK, 0);
    for r in 0..mn {
        let (g, rr) = (r / GROUP, r % GROUP);
        let src = &six[(r / MR) * pc * MR + r % MR..];
        for p in 0..pc {
            let (q, pp) = (p / CHUNK, p % CHUNK);
            out[((g * chunks + q) * GROUP + rr) * CHUNK + pp] = src[p * MR];
        }
    }
}

/// [`super::bf16_tiles::run_blocked`] on the AMX tiles; the same contract.
pub(crate) fn run_blocked_amx(
    c: &mut [f32],
    (rows, cols, pairs): (usize, usize, usize),
    b: &[u32],
    accumulate: bool,
    tasks_per_thread: usize,
    pack_a: impl Fn(usize, usize, usize, usize, &mut [u32]) + Sync,
) {
    debug_assert_eq!(c.len(), rows * cols);
    assert_eq!(b.len(), cols.div_ceil(NR) * pairs * NR, "packed B");
    assert!(Isa::Avx512Amx.is_available(), "the AMX path runs only where AMX is usable");
    if rows == 0 || cols == 0 || pairs == 0 {
        return;
    }
    let panels = cols.div_ceil(NR);
    let task = |out: &mut [f32], j0: usize| {
        let rn = out.len() / cols;
        SCRATCH.with(|cell| {
            let (six, tiles, tail) = &mut *cell.borrow_mut();
            six.resize(MC * KC, 0);
            tail.clear();
            tail.resize(CHUNK * 2 * CHUNK, 0);
            let mut edge = [0f32; GROUP * GROUP];
            // SAFETY: the assert above: this CPU has AMX and the process its permission.
            let _tiles = unsafe { Tiles::configure() };
            for m0 in (0..rn).step_by(MC) {
                let mn = (rn - m0).min(MC);
                for p0 in (0..pairs).step_by(KC) {
                    let pc = (pairs - p0).min(KC);
                    let len = mn.div_ceil(super::bf16::MR) * pc * super::bf16::MR;
                    pack_a(j0 + m0, mn, p0, pc, &mut six[..len]);
                    to_tile_layout(&six[..len], mn, pc, tiles);
                    let chunks = pc.div_ceil(CHUNK);
                    let load_c = accumulate || p0 > 0;
                    for panel in 0..panels {
                        for half in 0..NR / GROUP {
                            let l0 = panel * NR + half * GROUP;
                            if l0 >= cols {
                                break;
                            }
                            let width = (cols - l0).min(GROUP);
                            let bstart = panel * pairs * NR + p0 * NR + half * GROUP;
                            let whole = pc / CHUNK;
                            let tail_ptr = (pc % CHUNK != 0).then(|| {
                                tail.fill(0);
                                for p in whole * CHUNK..pc {
                                    let src = &b[bstart + p * NR..bstart + p * NR + GROUP];
                                    let at = (p - whole * CHUNK) * GROUP;
                                    tail[at..at + GROUP].copy_from_slice(src);
                                }
                                tail.as_ptr()
                            });
                            // Whole chunks read rows p0 .. p0 + 16 * whole of the panel, and
                            // 32 lanes from `bstart` in each: inside `b`.
                            let bp = BPanel {
                                ptr: b[bstart..].as_ptr(),
                                stride: NR * 4,
                                tail: tail_ptr,
                            };
                            for g in 0..mn.div_ceil(GROUP) {
                                let r0 = m0 + g * GROUP;
                                let take = (mn - g * GROUP).min(GROUP);
                                let ap = tiles[g * chunks * GROUP * CHUNK..].as_ptr();
                                if take == GROUP && width == GROUP {
                                    let cp = out[r0 * cols + l0..].as_mut_ptr();
                                    let c = Accumulators { ptr: cp.cast(), stride: cols * 4 };
                                    // SAFETY: tiles configured; `a` holds `chunks` chunks of
                                    // this group, `b` and the tail as described above, and
                                    // the 32 x 32 block at `cp` (row stride `cols`) lies in
                                    // `out` (rows r0 .. r0 + 32 < rn, columns l0 .. l0 + 32
                                    // <= cols).
                                    unsafe { block(ap, bp, chunks, c, load_c) };
                                } else {
                                    for r in 0..GROUP {
                                        let dst = &mut edge[r * GROUP..(r + 1) * GROUP];
                                        if load_c && r < take {
                                            let row = &out[(r0 + r) * cols + l0..][..width];
                                            dst[..width].copy_from_slice(row);
                                            dst[width..].fill(0.0);
                                        } else {
                                            dst.fill(0.0);
                                        }
                                    }
                                    let cp = edge.as_mut_ptr();
                                    let c = Accumulators { ptr: cp.cast(), stride: GROUP * 4 };
                                    // SAFETY: as above, with `c` the 32 x 32 scratch.
                                    unsafe { block(ap, bp, chunks, c, true) };
                                    for r in 0..take {
                                        out[(r0 + r) * cols + l0..][..width]
                                            .copy_from_slice(&edge[r * GROUP..r * GROUP + width]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    };
    for_each_row_band(c, cols, GROUP, tasks_per_thread, task);
}

/// One panel of the ternary product ([`super::ternary`]) for a task's rows, on the tiles.
struct TernaryPanel<'a> {
    /// The panel's unpacked codes (`[group][64 outputs][4]`, see `packed.rs`): at least
    /// `kpad / 4 * 256` bytes (rows past the weights' groups may hold anything: the
    /// activations there are zero).
    tiles: &'a [u8],
    /// The task's activations, `rows` rows rounded up to [`GROUP`], `kpad` bytes each, zero
    /// past `k` and past the last row.
    a: &'a [i8],
    /// Row length of `a`, a multiple of 64.
    kpad: usize,
    /// Output row of `a`'s first row.
    row0: usize,
    rows: usize,
    /// Row sums of the activations (the codes are `w + 1`; see `ternary.rs`).
    rowsums: &'a [i32],
    /// Activation scales of the rows (empty for the i32 sink).
    row_scales: &'a [f32],
    col0: usize,
    cols: usize,
    /// Row stride of the output.
    n: usize,
    sink: super::ternary::Sink,
}

/// `tdpbsud` (signed activations times unsigned codes) over one panel, 32 rows x 32 outputs
/// per register block, then the row-sum correction and the sink, as the other paths do.
///
/// # Safety
/// Tiles configured ([`Tiles::configure`]); `t` in bounds as its fields describe: `a` holds
/// `rows.div_ceil(32) * 32 * kpad` bytes, `tiles` at least `kpad / 4 * 256`, `cols <= 64`,
/// and the output rectangle (rows `row0 ..`, columns `col0 .. col0 + cols`) lies inside the
/// live output, written by this task only.
unsafe fn ternary_panel(t: &TernaryPanel<'_>) {
    assert!(t.kpad.is_multiple_of(64) && t.a.len() >= t.rows.div_ceil(GROUP) * GROUP * t.kpad);
    assert!(t.tiles.len() >= t.kpad / 4 * 256 && t.cols <= NR, "ternary panel out of bounds");
    let mut acc = [0i32; GROUP * GROUP];
    let chunks = t.kpad / 64;
    for g in 0..t.rows.div_ceil(GROUP) {
        let take = (t.rows - g * GROUP).min(GROUP);
        for half in 0..NR / GROUP {
            let c0 = half * GROUP;
            if c0 >= t.cols {
                break;
            }
            let width = (t.cols - c0).min(GROUP);
            // SAFETY: A rows g * 32 .. g * 32 + 32 (64 bytes per chunk, `kpad` apart) and B
            // groups 16 q .. 16 q + 16 (256 bytes apart, 64 bytes at column offset
            // 4 * (c0 + 16 j)) are inside `a` and `tiles` (asserted above); `acc` takes four
            // 16 x 16 i32 tiles at a 128-byte stride.
            unsafe {
                Accumulators::zero();
                for q in 0..chunks {
                    let a0 = t.a.as_ptr().add(g * GROUP * t.kpad + q * 64);
                    let a1 = a0.add(16 * t.kpad);
                    let b0 = t.tiles.as_ptr().add(q * 16 * 256 + 4 * c0);
                    let b1 = b0.add(64);
                    asm!(
                        "tileloadd tmm4, [{a0} + {as_}*1]",
                        "tileloadd tmm5, [{a1} + {as_}*1]",
                        "tileloadd tmm6, [{b0} + {bs}*1]",
                        "tileloadd tmm7, [{b1} + {bs}*1]",
                        "tdpbsud tmm0, tmm4, tmm6",
                        "tdpbsud tmm1, tmm4, tmm7",
                        "tdpbsud tmm2, tmm5, tmm6",
                        "tdpbsud tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, as_ = in(reg) t.kpad,
                        b0 = in(reg) b0, b1 = in(reg) b1, bs = in(reg) 256usize,
                        options(nostack, readonly),
                    );
                }
                Accumulators { ptr: acc.as_mut_ptr().cast(), stride: GROUP * 4 }.store();
            }
            for r in 0..take {
                let local = g * GROUP + r;
                let at = (t.row0 + local) * t.n + t.col0 + c0;
                let f = if t.row_scales.is_empty() { 0.0 } else { t.row_scales[local] };
                // SAFETY: `acc` row r holds 32 lanes; row `row0 + local`, columns `col0 + c0 ..
                // + width` are inside the output rectangle this task alone writes (the
                // contract); AVX-512 F is part of the AMX path's level.
                unsafe {
                    epilogue(
                        &acc[r * GROUP..r * GROUP + GROUP],
                        t.rowsums[local],
                        f,
                        width,
                        at,
                        t.sink,
                    )
                };
            }
        }
    }
}

/// Writes one row of a register block: `acc - sum` as i32, or `(acc - sum) as f32 * (w / s)`
/// stored or added, for the first `width` of 32 lanes at output index `at`; the same
/// operations, in the same order, as the scalar twin, so the same bits.
///
/// # Safety
/// AVX-512 F; the `width` outputs from `at` are valid for writes and not aliased.
#[target_feature(enable = "avx512f")]
unsafe fn epilogue(
    acc: &[i32],
    sum: i32,
    row_scale: f32,
    width: usize,
    at: usize,
    sink: super::ternary::Sink,
) {
    use super::ternary::Sink;
    use std::arch::x86_64::*;
    let sum = _mm512_set1_epi32(sum);
    for h in 0..2 {
        let n = width.saturating_sub(16 * h).min(16);
        if n == 0 {
            break;
        }
        let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
        // SAFETY: `acc` holds 32 lanes (lanes 16 h .. 16 h + 16); the masked accesses touch
        // only the `n` outputs the contract makes valid.
        unsafe {
            let v = _mm512_sub_epi32(_mm512_loadu_si512(acc.as_ptr().add(16 * h).cast()), sum);
            match sink {
                Sink::I32(p) => _mm512_mask_storeu_epi32(p.0.add(at + 16 * h), mask, v),
                Sink::F32(p, w) => {
                    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(w / row_scale));
                    _mm512_mask_storeu_ps(p.0.add(at + 16 * h), mask, y);
                }
                Sink::F32Add(p, w) => {
                    let dst = p.0.add(at + 16 * h);
                    let y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(w / row_scale));
                    let old = _mm512_maskz_loadu_ps(mask, dst);
                    _mm512_mask_storeu_ps(dst, mask, _mm512_add_ps(old, y));
                }
            }
        }
    }
}

/// One task of the ternary product on the tiles: the task's rows of `x` (`m x k`, row-major)
/// against the weights' panels in `panels`, each unpacked into `tiles` (which holds at least
/// `w.groups()` rounded up to 16 groups), the row sums and scales of those rows, the sink as
/// [`super::ternary`]'s driver gives them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ternary_task(
    x: &[i8],
    k: usize,
    rows: std::ops::Range<usize>,
    w: &super::PackedTernary,
    panels: std::ops::Range<usize>,
    tiles: &mut [u8],
    (rowsums, row_scales): (&[i32], &[f32]),
    sink: super::ternary::Sink,
) {
    use super::packed::PANEL;
    assert!(Isa::Avx512Amx.is_available(), "the AMX path runs only where AMX is usable");
    assert!(tiles.len() >= w.groups().next_multiple_of(16) * 256, "unpacked panel buffer");
    let n = w.out_features();
    let kpad = k.next_multiple_of(64);
    PADDED.with(|cell| {
        let padded = &mut *cell.borrow_mut();
        padded.clear();
        padded.resize(rows.len().next_multiple_of(GROUP) * kpad, 0);
        let xr = &x[rows.start * k..rows.end * k];
        for (dst, row) in padded.chunks_exact_mut(kpad).zip(xr.chunks_exact(k.max(1))) {
            dst[..k].copy_from_slice(row);
        }
        // SAFETY: asserted above; the task runs no parallel work while it holds the tiles.
        let _tiles = unsafe { Tiles::configure() };
        for panel in panels {
            // SAFETY: the AMX path implies AVX-512 F and BW; `tiles` holds the panel's
            // `groups * 256` bytes (asserted above).
            unsafe { super::x86_ternary::unpack_panel_avx512(w.packed_panel(panel), tiles) };
            let col0 = panel * PANEL;
            let panel = TernaryPanel {
                tiles,
                a: padded,
                kpad,
                row0: rows.start,
                rows: rows.len(),
                rowsums,
                row_scales,
                col0,
                cols: (n - col0).min(PANEL),
                n,
                sink,
            };
            // SAFETY: tiles configured above; `padded` holds the task's rows rounded up to 32
            // at `kpad` bytes, `tiles` at least `kpad / 4 * 256` bytes, and the output
            // rectangle is this task's alone (the driver's contract).
            unsafe { ternary_panel(&panel) };
        }
    });
}
