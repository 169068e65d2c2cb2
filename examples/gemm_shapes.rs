//! GFLOP/s of the `gemm` crate (candle's and our matmul kernels) at SmolLM2-135M's training
//! shapes (4 × 128 tokens), for each operand layout, best of 12: how close the matmuls of a
//! step can get to the CPU's peak. `aR`/`aC`: left operand row-/column-major; `bR`/`bC` the
//! same for the right one (`x · Wᵀ` with a row-major `W` is `aRbC`).
//! With a bf16 kernel (AMX tiles or AVX512-BF16), the same shapes through `ops::gemm_bf16`, for
//! frozen weights. Run: `cargo run --release --example gemm_shapes [THREADS]` (default 2).
use std::time::Instant;

fn run(m: usize, n: usize, k: usize, a_rowmajor: bool, b_rowmajor: bool, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    // a: m×k; row-major: rs=k, cs=1; col-major: rs=1, cs=m
    let (ars, acs) = if a_rowmajor { (k, 1) } else { (1, m) };
    let (brs, bcs) = if b_rowmajor { (n, 1) } else { (1, k) };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = f64::MAX;
    for _ in 0..12 {
        let t = Instant::now();
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                acs as isize,
                ars as isize,
                b.as_ptr(),
                bcs as isize,
                brs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    for (name, m, n, k) in [
        ("q/o fwd  512x576x576", 512, 576, 576),
        ("up fwd   512x1536x576", 512, 1536, 576),
        ("down fwd 512x576x1536", 512, 576, 1536),
        ("k/v fwd  512x192x576", 512, 192, 576),
        ("head     512x49152x576", 512, 8192, 576),
        ("big      1024x1024x1024", 1024, 1024, 1024),
    ] {
        let mut line = format!("{name:28}");
        for (ar, br) in [(true, true), (true, false), (false, true)] {
            line += &format!(
                " a{}b{} {:6.1}",
                if ar { "R" } else { "C" },
                if br { "R" } else { "C" },
                run(m, n, k, ar, br, threads)
            );
        }
        if offsite::ops::gemm_bf16::available() {
            line += &format!(" bf16 {:6.1}", run_bf16(m, n, k));
        }
        println!("{line}");
    }
}

/// The same product in bf16 on the bf16 kernel (the right operand packed beforehand, as for a
/// frozen weight; the left one rounded per call, as activations are).
fn run_bf16(m: usize, n: usize, k: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let packed = offsite::ops::gemm_bf16::PackedRhs::pack(&b, k, n, n, 1);
    let mut c = vec![0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..12 {
        let t = Instant::now();
        offsite::ops::gemm_bf16::matmul(&a, m, &packed, &mut c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}
