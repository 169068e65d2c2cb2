//! A vectorised `exp` for the kernels' hot loops (softmax, the LM head's cross-entropy, SiLU).
//!
//! glibc's scalar `expf` was 7% of a training step's CPU time: the LM head alone takes 25 M
//! exponentials per 512-token step. This is Cephes' single-precision polynomial (relative
//! error ≤ 2 ulp over the whole range), written branch-free so that LLVM vectorises it, and
//! compiled three times (AVX-512, AVX2 + FMA, baseline) with the widest one the CPU has picked
//! at run time — the binary still runs on any x86-64 CPU.

use super::cpu::Float;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part with few mantissa bits (exact products with small integers) and the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` underflows to 0 (we flush instead of producing subnormals).
const MIN_ARG: f32 = -87.336_55;
/// Above this `exp` overflows to infinity.
const MAX_ARG: f32 = 88.722_83;

/// `exp(x)` for one value, branch-free (inlined into the vectorised loops).
#[inline(always)]
fn exp1(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    // n = round(x / ln 2) by the 1.5·2²³ trick (no float → int conversion in the loop).
    let shifter = 12_582_912.0f32;
    let n = (xc * LOG2E + shifter) - shifter;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ: the biased exponent n + 127 ∈ [1, 254] read off the mantissa of (n + 127 + 2²³).
    // n reaches 128 just below MAX_ARG, where 2ⁿ itself overflows: scale by 2¹²⁷ · 2 then.
    let n_lo = n.min(127.0);
    let biased = (n_lo + 127.0 + 8_388_608.0).to_bits() & 0x007f_ffff;
    let twice = if n > 127.0 { 2.0 } else { 1.0 };
    let scaled = y * twice * f32::from_bits(biased << 23);
    let scaled = if x > MAX_ARG { f32::INFINITY } else { scaled };
    // NaN compares false both ways and stays NaN through the polynomial.
    if x < MIN_ARG {
        0.0
    } else {
        scaled
    }
}

#[inline(always)]
fn exp_loop(xs: &mut [f32]) {
    for x in xs {
        *x = exp1(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    exp_loop(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_loop(xs)
}

/// `x ← exp(x)` for every element, on the widest SIMD the CPU has.
pub fn exp_in_place_f32(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { exp_avx512(xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { exp_avx2(xs) };
        }
    }
    exp_loop(xs)
}

/// `x ← exp(x)` for the kernels' element types: the vectorised polynomial for `f32`, the exact
/// libm function for `f64` (used by the gradient checks, where speed does not matter).
pub fn exp_in_place<T: Float>(xs: &mut [T]) {
    if T::DTYPE == candle_core::DType::F32 {
        // SAFETY: `T` is `f32` (its dtype says so): same size, alignment and bit validity.
        let xs = unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast::<f32>(), xs.len()) };
        exp_in_place_f32(xs);
    } else {
        for x in xs {
            *x = x.exp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn matches_libm_within_two_ulp_over_the_range() {
        let mut xs: Vec<f32> = (0..200_001)
            .map(|i| MIN_ARG + (MAX_ARG - MIN_ARG) * i as f32 / 200_000.0)
            .collect();
        let want: Vec<f32> = xs.iter().map(|x| (*x as f64).exp() as f32).collect();
        exp_in_place_f32(&mut xs);
        let (worst, at) = xs
            .iter()
            .zip(&want)
            .enumerate()
            .map(|(i, (a, b))| (ulps(*a, *b), i))
            .max()
            .unwrap();
        assert!(
            worst <= 2,
            "worst error {worst} ulp at {at}: {} vs {}",
            xs[at],
            want[at]
        );
        // The scalar fallback agrees with the dispatched loop bit for bit.
        let mut again: Vec<f32> = (0..1000).map(|i| -20.0 + i as f32 * 0.04).collect();
        let scalar: Vec<f32> = again.iter().map(|x| exp1(*x)).collect();
        exp_in_place_f32(&mut again);
        assert_eq!(again, scalar);
    }

    #[test]
    fn edge_values() {
        let mut xs = vec![
            0.0,
            -0.0,
            1.0,
            -100.0,
            f32::NEG_INFINITY,
            100.0,
            f32::INFINITY,
            f32::NAN,
        ];
        exp_in_place_f32(&mut xs);
        assert_eq!(&xs[..3], &[1.0, 1.0, std::f32::consts::E]);
        assert_eq!(xs[3], 0.0);
        assert_eq!(xs[4], 0.0);
        assert_eq!(xs[5], f32::INFINITY);
        assert_eq!(xs[6], f32::INFINITY);
        assert!(xs[7].is_nan());
    }

    #[test]
    fn f64_uses_the_exact_function() {
        let mut xs = vec![0.5f64, -3.0, 10.0];
        exp_in_place(&mut xs);
        assert_eq!(xs, vec![0.5f64.exp(), (-3.0f64).exp(), 10.0f64.exp()]);
    }
}
