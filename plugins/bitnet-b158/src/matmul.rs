//! The fp32 matrix products of the model, behind one small interface so the backend (the `gemm`
//! crate with its AVX-512 path today) can be swapped in one place.
//!
//! All matrices are dense and row-major. Every function overwrites `c` unless `accumulate` is
//! set, in which case the product is added to `c`. Lengths are checked with assertions: they are
//! internal invariants of the model, never user input.

use gemm::Parallelism;

/// How many threads a product may use (it runs on the rayon pool it is called from).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Threads(pub usize);

impl Threads {
    fn parallelism(self) -> Parallelism {
        if self.0 > 1 { Parallelism::Rayon(self.0) } else { Parallelism::None }
    }
}

/// Strided view of an `rows x cols` operand: element `(i, j)` is at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Strides {
    rs: isize,
    cs: isize,
}

#[allow(clippy::too_many_arguments)]
fn product(
    c: &mut [f32],
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(c.len(), m * n, "output length");
    assert_eq!(a.len(), m * k, "left operand length");
    assert_eq!(b.len(), k * n, "right operand length");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // SAFETY: `c` holds m*n elements addressed row-major (rs = n, cs = 1); `a` holds m*k elements
    // and `b` k*n elements, and every stride pair passed by the callers below addresses exactly
    // those elements (checked by the length assertions above). The output does not alias the
    // inputs (it is a distinct `&mut` borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            sa.cs,
            sa.rs,
            b.as_ptr(),
            sb.cs,
            sb.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            threads.parallelism(),
        );
    }
}

/// `C[m, n] (+)= A[m, k] . B[n, k]^T` (a linear layer's forward `y = x W^T`).
pub(crate) fn matmul_abt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    let sa = Strides { rs: k as isize, cs: 1 };
    let sb = Strides { rs: 1, cs: k as isize };
    product(c, a, sa, b, sb, (m, n, k), accumulate, threads);
}

/// `C[m, n] (+)= A[m, k] . B[k, n]` (a linear layer's input gradient `dX = dY W`).
pub(crate) fn matmul_ab(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    let sa = Strides { rs: k as isize, cs: 1 };
    let sb = Strides { rs: n as isize, cs: 1 };
    product(c, a, sa, b, sb, (m, n, k), accumulate, threads);
}

/// `C[m, n] (+)= A[k, m]^T . B[k, n]` (a linear layer's weight gradient `dW = dY^T X`).
pub(crate) fn matmul_atb(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    let sa = Strides { rs: 1, cs: m as isize };
    let sb = Strides { rs: n as isize, cs: 1 };
    product(c, a, sa, b, sb, (m, n, k), accumulate, threads);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) * b(p, j)).sum();
            }
        }
        c
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) % 97) as f32 / 97.0 - 0.5
            })
            .collect()
    }

    #[test]
    fn products_match_naive_loops() {
        let (m, n, k) = (7, 5, 9);
        for threads in [1, 2] {
            let t = Threads(threads);
            let a = data(m * k, 1);
            let bt = data(n * k, 2);
            let mut c = vec![0.0; m * n];
            matmul_abt(&mut c, &a, &bt, (m, n, k), false, t);
            let want = naive(|i, p| a[i * k + p], |p, j| bt[j * k + p], m, n, k);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
            let b = data(k * n, 3);
            matmul_ab(&mut c, &a, &b, (m, n, k), false, t);
            let want = naive(|i, p| a[i * k + p], |p, j| b[p * n + j], m, n, k);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
            let at = data(k * m, 4);
            let before = c.clone();
            matmul_atb(&mut c, &at, &b, (m, n, k), true, t);
            let want = naive(|i, p| at[p * m + i], |p, j| b[p * n + j], m, n, k);
            for ((x, y), z) in c.iter().zip(&want).zip(&before) {
                assert!((x - (y + z)).abs() < 1e-5);
            }
        }
    }
}
