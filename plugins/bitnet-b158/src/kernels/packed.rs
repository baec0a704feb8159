//! Ternary weights at 2 bits each, in the panel layout of the matrix kernels.
//!
//! A weight `w` in `{-1, 0, 1}` is stored as the code `w + 1` in `{0, 1, 2}` (3 never occurs).
//! The `out_features x in_features` matrix (row `n` holds the weights of output `n`) is cut into
//! panels of [`PANEL`] = 64 outputs; the inputs are cut into groups of [`GROUP`] = 4, the last one
//! padded. Panel-major, then group-major, each (panel, group) holds 64 packed bytes that unpack
//! into the 256-byte tile `tile[c * 4 + kk]` = code of output `c` of the panel at input
//! `4 * group + kk`: four 64-byte vectors, vector `v` for outputs `16 v .. 16 v + 16`, which is
//! exactly what one `vpdpbusd` consumes (a 32-bit lane per output, 4 inputs per lane).
//!
//! Inside a vector, unpacked byte `j` (0..64) lives in packed byte `16 v + j % 16` at bit
//! `2 * (j / 16)`: broadcasting the 16 packed bytes to the four 128-bit lanes, shifting lane `t`
//! right by `2 t` and masking with 3 unpacks a vector in three instructions.
//!
//! Padding (outputs past `out_features`, inputs past `in_features`) holds the code of 0.

use super::{GemmError, checked_area};

/// Output features per panel.
pub const PANEL: usize = 64;
/// Input features per group (one 32-bit dot-product lane).
pub const GROUP: usize = 4;
/// Packed bytes per (panel, group).
pub const PACKED_GROUP_BYTES: usize = PANEL * GROUP / 4;
/// Unpacked bytes per (panel, group).
pub const TILE_BYTES: usize = PANEL * GROUP;

/// The code of a zero weight (used for padding).
pub(crate) const ZERO_CODE: u8 = 1;

/// A ternary matrix packed at 2 bits per weight; see the module docs for the layout.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedTernary {
    out_features: usize,
    in_features: usize,
    groups: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedTernary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedTernary")
            .field("out_features", &self.out_features)
            .field("in_features", &self.in_features)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Where the code of weight `(n, k)` lives: (byte index, bit shift).
#[inline(always)]
fn locate(groups: usize, n: usize, k: usize) -> (usize, u32) {
    let (panel, c) = (n / PANEL, n % PANEL);
    let (g, kk) = (k / GROUP, k % GROUP);
    let (v, j) = (c / 16, (c % 16) * GROUP + kk);
    ((panel * groups + g) * PACKED_GROUP_BYTES + v * 16 + j % 16, 2 * (j / 16) as u32)
}

impl PackedTernary {
    /// Packed size in bytes of an `out_features x in_features` matrix.
    pub fn packed_len(out_features: usize, in_features: usize) -> Result<usize, GemmError> {
        let panels = out_features.div_ceil(PANEL);
        let groups = in_features.div_ceil(GROUP);
        checked_area("packed ternary", panels, groups)
            .and_then(|pg| checked_area("packed ternary", pg, PACKED_GROUP_BYTES))
    }

    fn zeroed(out_features: usize, in_features: usize) -> Result<Self, GemmError> {
        let len = Self::packed_len(out_features, in_features)?;
        // Every 2-bit field holds the zero code 1: 0b01010101.
        Ok(Self {
            out_features,
            in_features,
            groups: in_features.div_ceil(GROUP),
            data: vec![0x55; len],
        })
    }

    /// Packs the row-major `out_features x in_features` ternary matrix `w_q` (row `n` = weights
    /// of output `n`, as in `y = x . W^T`). Fails on a wrong length or a value outside
    /// `{-1, 0, 1}`.
    pub fn pack(w_q: &[i8], out_features: usize, in_features: usize) -> Result<Self, GemmError> {
        let mut p = Self::zeroed(out_features, in_features)?;
        p.repack(w_q)?;
        Ok(p)
    }

    /// Packs the transpose of the row-major `out_features x in_features` matrix `w_q`: the result
    /// has `in_features` outputs and `out_features` inputs, so
    /// [`super::ternary::ternary_matmul`] with it computes `dX = dY . W_q`.
    pub fn pack_transposed(
        w_q: &[i8],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, GemmError> {
        let mut p = Self::zeroed(in_features, out_features)?;
        p.repack_transposed(w_q)?;
        Ok(p)
    }

    /// Packs new values of the same shape into this matrix, reusing its buffer (no allocation):
    /// `w_q` is row-major `out_features x in_features`. Panels are packed in parallel on the
    /// current rayon pool. On error the contents are unspecified (but still valid ternary).
    pub fn repack(&mut self, w_q: &[i8]) -> Result<(), GemmError> {
        let (n_out, n_in) = (self.out_features, self.in_features);
        super::check_len("ternary weights", checked_area("weights", n_out, n_in)?, w_q.len())?;
        self.fill(|n, k| n * n_in + k, w_q, false)
    }

    /// [`PackedTernary::repack`] for a matrix built by [`PackedTernary::pack_transposed`]: `w_q`
    /// is the row-major `in_features x out_features` matrix of this one's transpose.
    pub fn repack_transposed(&mut self, w_q: &[i8]) -> Result<(), GemmError> {
        let (n_out, n_in) = (self.out_features, self.in_features);
        super::check_len("ternary weights", checked_area("weights", n_out, n_in)?, w_q.len())?;
        self.fill(|n, k| k * n_out + n, w_q, true)
    }

    /// Writes every packed byte from `w_q[index(n, k)]` (padding gets the zero code), one panel
    /// per task; the caller checked that `index` stays inside `w_q` for in-range `(n, k)`.
    /// `transposed` says which of the two index maps `index` is (for the SIMD fast path).
    fn fill(
        &mut self,
        index: impl Fn(usize, usize) -> usize + Sync,
        w_q: &[i8],
        transposed: bool,
    ) -> Result<(), GemmError> {
        use rayon::prelude::*;
        let (n_out, n_in, groups) = (self.out_features, self.in_features, self.groups);
        let panel_len = groups * PACKED_GROUP_BYTES;
        if panel_len == 0 {
            return Ok(());
        }
        let fast = fast_pack_available() && w_q.len() < i32::MAX as usize;
        self.data.par_chunks_mut(panel_len).enumerate().try_for_each(|(panel, dst)| {
            #[cfg(target_arch = "x86_64")]
            let full = n_in / GROUP;
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: AVX-512 F/BW/VL detected; `dst` is this panel's `groups * 64` bytes,
                // `w_q` holds `n_out * n_in` weights indexed as `index` does (checked by the
                // callers) and fits i32 offsets.
                let done = unsafe {
                    if transposed {
                        super::x86_ternary::pack_panel_transposed_avx512(
                            w_q, n_out, n_in, panel, dst,
                        )
                    } else {
                        super::x86_ternary::pack_panel_avx512(w_q, n_out, n_in, panel, dst)
                    }
                };
                // `done` groups are packed; a value out of range makes the scalar pass below
                // redo the panel and report it.
                if let Some(groups_done) = done {
                    return fill_groups(
                        panel,
                        dst,
                        groups_done.min(full),
                        &index,
                        w_q,
                        n_out,
                        n_in,
                    );
                }
            }
            let _ = (fast, transposed);
            fill_groups(panel, dst, 0, &index, w_q, n_out, n_in)
        })
    }

    /// Number of outputs (rows of `W`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Number of inputs (columns of `W`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of 64-output panels.
    pub fn panels(&self) -> usize {
        self.out_features.div_ceil(PANEL)
    }

    /// Number of 4-input groups (the last one padded).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The weight `W[n][k]`, or `None` out of range.
    pub fn get(&self, n: usize, k: usize) -> Option<i8> {
        if n >= self.out_features || k >= self.in_features {
            return None;
        }
        let (byte, shift) = locate(self.groups, n, k);
        Some(((self.data[byte] >> shift) & 3) as i8 - 1)
    }

    /// The row-major `out_features x in_features` ternary matrix.
    pub fn unpack(&self) -> Vec<i8> {
        let mut w = Vec::with_capacity(self.out_features * self.in_features);
        for n in 0..self.out_features {
            for k in 0..self.in_features {
                let (byte, shift) = locate(self.groups, n, k);
                w.push(((self.data[byte] >> shift) & 3) as i8 - 1);
            }
        }
        w
    }

    /// The packed bytes (the layout of the module docs); [`PackedTernary::from_bytes`] reads
    /// them back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Reads packed bytes written by [`PackedTernary::as_bytes`], checking the length, that no
    /// code is 3 and that all padding holds the zero code (so the form is canonical).
    pub fn from_bytes(
        out_features: usize,
        in_features: usize,
        bytes: &[u8],
    ) -> Result<Self, GemmError> {
        let expected = Self::packed_len(out_features, in_features)?;
        if bytes.len() != expected {
            return Err(GemmError::InvalidPacked(format!(
                "{out_features} x {in_features} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        if let Some(i) = bytes.iter().position(|&b| b & (b >> 1) & 0x55 != 0) {
            return Err(GemmError::InvalidPacked(format!("byte {i} holds the unused code 3")));
        }
        let p = Self {
            out_features,
            in_features,
            groups: in_features.div_ceil(GROUP),
            data: bytes.to_vec(),
        };
        let padded_out = p.panels() * PANEL;
        let padded_in = p.groups * GROUP;
        for n in 0..padded_out {
            let k_start = if n < out_features { in_features } else { 0 };
            for k in k_start..padded_in {
                let (byte, shift) = locate(p.groups, n, k);
                if (p.data[byte] >> shift) & 3 != ZERO_CODE {
                    return Err(GemmError::InvalidPacked(format!(
                        "padding at output {n}, input {k} is not zero"
                    )));
                }
            }
        }
        Ok(p)
    }

    /// The packed bytes, to be rewritten in place in the same layout (the fused
    /// quantize-and-pack of [`super::weight_pack`]); the writer keeps every code below 3 and
    /// the padding at the zero code.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The packed bytes of a whole panel (`groups * 64` bytes).
    #[inline]
    pub(crate) fn packed_panel(&self, panel: usize) -> &[u8] {
        let len = self.groups * PACKED_GROUP_BYTES;
        &self.data[panel * len..(panel + 1) * len]
    }
}

/// Whether the AVX-512 packing path can run on this CPU.
fn fast_pack_available() -> bool {
    super::Isa::Avx512.is_available()
}

/// Packs groups `from..` of one panel with scalar code (the reference the SIMD path matches).
fn fill_groups(
    panel: usize,
    dst: &mut [u8],
    from: usize,
    index: &impl Fn(usize, usize) -> usize,
    w_q: &[i8],
    n_out: usize,
    n_in: usize,
) -> Result<(), GemmError> {
    for (g, group) in dst.chunks_exact_mut(PACKED_GROUP_BYTES).enumerate().skip(from) {
        for (b, byte) in group.iter_mut().enumerate() {
            let (v, i) = (b / 16, b % 16);
            let mut packed = 0u8;
            for t in 0..4 {
                let j = i + 16 * t;
                let (n, k) = (panel * PANEL + v * 16 + j / GROUP, g * GROUP + j % GROUP);
                let code = if n < n_out && k < n_in {
                    let at = index(n, k);
                    let w = w_q[at];
                    if !(-1..=1).contains(&w) {
                        return Err(GemmError::NotTernary { index: at, value: w });
                    }
                    (w + 1) as u8
                } else {
                    ZERO_CODE
                };
                packed |= code << (2 * t);
            }
            *byte = packed;
        }
    }
    Ok(())
}

/// Unpacks the codes of one panel into `tiles` (`groups * 256` bytes), portable version.
pub(crate) fn unpack_panel_scalar(packed: &[u8], tiles: &mut [u8]) {
    for (src, dst) in
        packed.chunks_exact(PACKED_GROUP_BYTES).zip(tiles.chunks_exact_mut(TILE_BYTES))
    {
        for v in 0..4 {
            for j in 0..64 {
                dst[v * 64 + j] = (src[v * 16 + j % 16] >> (2 * (j / 16))) & 3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ternary(len: usize) -> impl Strategy<Value = Vec<i8>> {
        prop::collection::vec(-1i8..=1, len)
    }

    #[test]
    fn rejects_non_ternary_and_bad_lengths() {
        assert_eq!(
            PackedTernary::pack(&[0, 2, 0, 0], 2, 2),
            Err(GemmError::NotTernary { index: 1, value: 2 })
        );
        assert!(PackedTernary::pack(&[0, 0, 0], 2, 2).is_err());
        assert!(PackedTernary::from_bytes(2, 2, &[0x55; 3]).is_err());
        let mut bytes =
            PackedTernary::pack(&[1, -1, 0, 1], 2, 2).expect("pack").as_bytes().to_vec();
        bytes[63] = 0; // padding output, code -1
        assert!(PackedTernary::from_bytes(2, 2, &bytes).is_err());
        bytes[63] = 0xFF;
        assert!(PackedTernary::from_bytes(2, 2, &bytes).is_err());
    }

    #[test]
    fn out_of_range_values_are_reported_on_every_path() {
        let (n, k) = (130, 12);
        for bad_at in [0, 5, 64 * 12 + 7, n * k - 1] {
            let mut w = vec![1i8; n * k];
            w[bad_at] = -3;
            let want = Err(GemmError::NotTernary { index: bad_at, value: -3 });
            assert_eq!(PackedTernary::pack(&w, n, k), want);
            assert_eq!(PackedTernary::pack_transposed(&w, n, k), want);
            assert_eq!(PackedTernary::pack_transposed(&w, k, n), want);
        }
    }

    /// The portable packing alone (the SIMD path is used whenever the CPU has it).
    fn pack_scalar(w: &[i8], n_out: usize, n_in: usize, transposed: bool) -> PackedTernary {
        let (o, i) = if transposed { (n_in, n_out) } else { (n_out, n_in) };
        let mut p = PackedTernary::zeroed(o, i).expect("zeroed");
        let len = p.groups * PACKED_GROUP_BYTES;
        for (panel, dst) in p.data.chunks_mut(len.max(1)).enumerate() {
            let index = |a: usize, b: usize| if transposed { b * o + a } else { a * i + b };
            fill_groups(panel, dst, 0, &index, w, o, i).expect("ternary");
        }
        p
    }

    #[test]
    fn size_is_two_bits_per_weight_when_aligned() {
        let p = PackedTernary::pack(&vec![1; 128 * 256], 128, 256).expect("pack");
        assert_eq!(p.as_bytes().len(), 128 * 256 / 4);
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(out in 1usize..140, inp in 1usize..20, seed in ternary(140 * 20)) {
            let w: Vec<i8> = seed[..out * inp].to_vec();
            let p = PackedTernary::pack(&w, out, inp).expect("pack");
            prop_assert_eq!(p.unpack(), w.clone());
            for (i, &v) in w.iter().enumerate() {
                prop_assert_eq!(p.get(i / inp, i % inp), Some(v));
            }
            let back = PackedTernary::from_bytes(out, inp, p.as_bytes()).expect("canonical bytes");
            prop_assert_eq!(&back, &p);
            prop_assert_eq!(&pack_scalar(&w, out, inp, false), &p);
            let mut t = PackedTernary::pack_transposed(&w, out, inp).expect("pack");
            prop_assert_eq!(&pack_scalar(&w, out, inp, true), &t);
            // Repacking reuses the buffer and gives what a fresh packing gives.
            let mut again = PackedTernary::pack(&vec![1; out * inp], out, inp).expect("pack");
            again.repack(&w).expect("repack");
            prop_assert_eq!(&again, &p);
            let flipped: Vec<i8> = w.iter().map(|v| -v).collect();
            t.repack_transposed(&flipped).expect("repack");
            t.repack_transposed(&w).expect("repack");
            for n in 0..out {
                for k in 0..inp {
                    prop_assert_eq!(t.get(k, n), Some(w[n * inp + k]));
                }
            }
        }

        #[test]
        fn from_bytes_never_panics_and_accepts_only_canonical(
            out in 0usize..70, inp in 0usize..9, bytes in prop::collection::vec(any::<u8>(), 0..700),
        ) {
            if let Ok(p) = PackedTernary::from_bytes(out, inp, &bytes) {
                let again = PackedTernary::pack(&p.unpack(), out, inp).expect("pack");
                prop_assert_eq!(again.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn from_bytes_rejects_or_round_trips_mutations(
            out in 1usize..70, inp in 1usize..9, seed in ternary(70 * 9),
            at in any::<prop::sample::Index>(), value in any::<u8>(),
        ) {
            let p = PackedTernary::pack(&seed[..out * inp], out, inp).expect("pack");
            let mut bytes = p.as_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = value;
            if let Ok(q) = PackedTernary::from_bytes(out, inp, &bytes) {
                prop_assert_eq!(q.as_bytes(), &bytes[..]);
                let again = PackedTernary::pack(&q.unpack(), out, inp).expect("pack");
                prop_assert_eq!(again, q);
            }
        }

        #[test]
        fn scalar_unpack_matches_get(out in 1usize..130, inp in 1usize..13, seed in ternary(130 * 13)) {
            let w: Vec<i8> = seed[..out * inp].to_vec();
            let p = PackedTernary::pack(&w, out, inp).expect("pack");
            let mut tiles = vec![0u8; p.groups() * TILE_BYTES];
            for panel in 0..p.panels() {
                unpack_panel_scalar(p.packed_panel(panel), &mut tiles);
                for g in 0..p.groups() {
                    for c in 0..PANEL {
                        for kk in 0..GROUP {
                            let (n, k) = (panel * PANEL + c, g * GROUP + kk);
                            let want = p.get(n, k).map_or(ZERO_CODE, |v| (v + 1) as u8);
                            prop_assert_eq!(tiles[g * TILE_BYTES + c * GROUP + kk], want);
                        }
                    }
                }
            }
        }
    }
}
