//! Lane masks shared by the AVX-512 kernels.

use std::arch::x86_64::__mmask16;

/// The mask of the first `min(rest, 16)` lanes of a 16-lane vector.
#[inline(always)]
pub(crate) fn mask_of(rest: usize) -> __mmask16 {
    if rest >= 16 { 0xFFFF } else { (1u16 << rest) - 1 }
}
