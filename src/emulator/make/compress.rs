//! Weight compression for emulator layers (the paper's Figure 4 alternatives to plain layer
//! drop, and ScaleOT's rank compression): unstructured magnitude pruning, truncated-SVD low-rank
//! factors and uniform per-tensor quantization, plus the compact encodings that make a
//! compressed package really smaller on disk.
//!
//! These are pure functions on a tensor's values; the package decides which tensors (the 2-D
//! weights of emulator layers) they apply to.

use serde::{Deserialize, Serialize};

/// Zeroes the `floor(ratio · n)` entries of smallest magnitude (ties broken by position, so the
/// count is exact) and returns how many that is.
pub fn magnitude_prune(values: &mut [f32], ratio: f64) -> usize {
    let n = values.len();
    let k = ((ratio.clamp(0.0, 1.0)) * n as f64).floor() as usize;
    if k == 0 {
        return 0;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Partial selection: only the k smallest need to be found, not sorted.
    order.select_nth_unstable_by(k - 1, |&a, &b| {
        values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b))
    });
    for &i in &order[..k] {
        values[i] = 0.0;
    }
    k
}

/// The rank whose factors `B [m × r]`, `A [r × n]` take `ratio` of an `m × n` matrix's
/// parameters: `floor(ratio · m·n / (m + n))`, at least 1 and at most `min(m, n)`.
pub fn rank_for(m: usize, n: usize, ratio: f64) -> usize {
    let r = (ratio * (m * n) as f64 / (m + n) as f64).floor() as usize;
    r.clamp(1, m.min(n))
}

/// The best rank-`r` approximation of the row-major `m × n` matrix `w` in the Frobenius norm
/// (Eckart–Young), as its factors `[B (m × r) | A (r × n)]`, both row-major, `w ≈ B·A`.
///
/// Computed from the eigenvectors of the smaller Gram matrix (`WᵀW` or `WWᵀ`, in f64): for
/// the narrow matrices of a transformer layer that is a 576 × 576 eigenproblem instead of a
/// full SVD, and the leading singular directions it keeps are the well-conditioned ones.
pub fn low_rank_factors(w: &[f32], m: usize, n: usize, r: usize) -> Vec<f32> {
    use nalgebra::DMatrix;
    assert_eq!(
        w.len(),
        m * n,
        "matrix of {} values is not {m} × {n}",
        w.len()
    );
    let r = r.clamp(1, m.min(n));
    let wm = DMatrix::<f64>::from_row_slice(m, n, &w.iter().map(|&x| x as f64).collect::<Vec<_>>());
    // Leading eigenvectors of the smaller Gram matrix, largest eigenvalue first (ties by index,
    // so the factors are deterministic).
    let gram = if n <= m {
        wm.transpose() * &wm
    } else {
        &wm * wm.transpose()
    };
    let eig = gram.symmetric_eigen();
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| {
        eig.eigenvalues[b]
            .total_cmp(&eig.eigenvalues[a])
            .then(a.cmp(&b))
    });
    let basis = DMatrix::from_fn(eig.eigenvectors.nrows(), r, |i, j| {
        eig.eigenvectors[(i, order[j])]
    });
    // n ≤ m: W ≈ (W V) Vᵀ; otherwise W ≈ U (Uᵀ W).
    let (b, a) = if n <= m {
        (&wm * &basis, basis.transpose())
    } else {
        let a = basis.transpose() * &wm;
        (basis, a)
    };
    let mut out = Vec::with_capacity(r * (m + n));
    for i in 0..m {
        out.extend((0..r).map(|k| b[(i, k)] as f32));
    }
    for k in 0..r {
        out.extend((0..n).map(|j| a[(k, j)] as f32));
    }
    out
}

/// `B·A` for factors laid out as [`low_rank_factors`] returns them: the dense `m × n` matrix.
pub fn low_rank_dense(factors: &[f32], m: usize, n: usize, r: usize) -> Vec<f32> {
    let (b, a) = factors.split_at(m * r);
    let mut out = vec![0f32; m * n];
    for (i, row) in out.chunks_exact_mut(n).enumerate() {
        // i-k-j order: each step is one axpy over a row of A, which the compiler vectorizes.
        for (k, &bik) in b[i * r..(i + 1) * r].iter().enumerate() {
            for (o, &akj) in row.iter_mut().zip(&a[k * n..(k + 1) * n]) {
                *o += bik * akj;
            }
        }
    }
    out
}

/// A tensor quantized to `bits` per value: `value = min + code · scale`, codes in
/// `0..2^bits`. The levels are symmetric about the midpoint `(min + max) / 2`, which is the
/// paper's zero-point; unlike rounding `(w − mid) / scale` (the paper's code), which puts the two
/// extremes on a `2^bits + 1`-th level, this uses exactly `2^bits` levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// Bits per value (1 to 8).
    pub bits: u8,
    /// The lowest level (the tensor's minimum).
    pub min: f32,
    /// Distance between levels: `(max − min) / (2^bits − 1)`; 0 for a constant tensor.
    pub scale: f32,
    /// One code per value, `bits` wide, packed little-end first into bytes.
    #[serde(skip)]
    pub packed: Vec<u8>,
    /// Number of values.
    pub len: usize,
}

/// Quantizes `values` to `bits` (1–8) per value.
pub fn quantize(values: &[f32], bits: u8) -> Quantized {
    assert!((1..=8).contains(&bits), "bits must be 1 to 8");
    let (min, max) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (min, max) = if values.is_empty() {
        (0.0, 0.0)
    } else {
        (min, max)
    };
    let top = (1u32 << bits) - 1;
    let scale = (max - min) / top as f32;
    let codes = values.iter().map(|&v| {
        if scale > 0.0 {
            ((v - min) / scale).round_ties_even().clamp(0.0, top as f32) as u8
        } else {
            0
        }
    });
    Quantized {
        bits,
        min,
        scale,
        packed: pack_bits(codes, bits, values.len()),
        len: values.len(),
    }
}

impl Quantized {
    /// The code of value `i`.
    pub fn code(&self, i: usize) -> u8 {
        let bit = i * self.bits as usize;
        let word = u16::from(self.packed[bit / 8])
            | self
                .packed
                .get(bit / 8 + 1)
                .map_or(0, |&b| u16::from(b) << 8);
        ((word >> (bit % 8)) & ((1u16 << self.bits) - 1)) as u8
    }

    /// The dequantized values.
    pub fn values(&self) -> Vec<f32> {
        (0..self.len)
            .map(|i| self.min + f32::from(self.code(i)) * self.scale)
            .collect()
    }
}

/// Packs `n` codes of `bits` bits each into bytes, lowest bits first.
pub fn pack_bits(codes: impl Iterator<Item = u8>, bits: u8, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; (n * bits as usize).div_ceil(8)];
    for (i, c) in codes.enumerate() {
        let bit = i * bits as usize;
        let word = u16::from(c) << (bit % 8);
        out[bit / 8] |= word as u8;
        if let Some(next) = out.get_mut(bit / 8 + 1) {
            *next |= (word >> 8) as u8;
        }
    }
    out
}

/// A sparse encoding of a pruned tensor: a bitmap of the non-zero positions and their values in
/// order. Smaller than dense f32 once more than 1/32 of the entries are zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse {
    /// Bit `i` (lowest bits first) is set when value `i` is non-zero.
    pub mask: Vec<u8>,
    /// The non-zero values, in position order.
    pub values: Vec<f32>,
    /// Number of values, zeros included.
    pub len: usize,
}

impl Sparse {
    /// Encodes `values`.
    pub fn encode(values: &[f32]) -> Self {
        let mask = pack_bits(values.iter().map(|&v| u8::from(v != 0.0)), 1, values.len());
        Sparse {
            mask,
            values: values.iter().copied().filter(|&v| v != 0.0).collect(),
            len: values.len(),
        }
    }

    /// The dense values.
    pub fn decode(&self) -> Vec<f32> {
        let mut next = self.values.iter();
        (0..self.len)
            .map(|i| {
                if self.mask[i / 8] >> (i % 8) & 1 == 1 {
                    *next.next().unwrap_or(&0.0)
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// How a compressed tensor is stored: its shape, whether zeros are left out (a pruned tensor,
/// with a bitmap of the kept positions) and whether the kept values are quantized codes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// The dense tensor's shape.
    pub shape: Vec<usize>,
    /// Zeros left out; a `NAME.__mask` bitmap says where the stored values go.
    pub sparse: bool,
    /// The stored values' quantization (`None`: f32).
    pub quant: Option<Quantized>,
    /// Stored as rank-`r` factors `[B (m × r) | A (r × n)]` of the 2-D `[m, n]` tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

impl Encoding {
    /// The encoding as metadata: without the packed codes, which are stored as a tensor.
    pub fn metadata(&self) -> Encoding {
        let mut m = self.clone();
        if let Some(q) = &mut m.quant {
            q.packed = Vec::new();
        }
        m
    }
}

/// A tensor in its compact form.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Shape and scheme.
    pub encoding: Encoding,
    /// For a sparse tensor, the bitmap of non-zero positions.
    pub mask: Option<Vec<u8>>,
    /// The stored values as f32 (when not quantized).
    pub values: Vec<f32>,
}

/// Suffix of a sparse tensor's bitmap in a safetensors file.
pub const MASK_SUFFIX: &str = ".__mask";

impl Encoded {
    /// Compresses `values` (of `shape`): replace a 2-D tensor by low-rank factors taking the
    /// `low_rank` fraction of its parameters, or zero the `prune` fraction of smallest
    /// magnitude (kept sparse); then quantize what is stored to `bits`. Pruning and low rank
    /// do not compose (the options refuse both).
    pub fn compress(
        mut values: Vec<f32>,
        shape: &[usize],
        prune: Option<f64>,
        low_rank: Option<f64>,
        bits: Option<u8>,
    ) -> Self {
        let rank = match (low_rank, shape) {
            (Some(ratio), &[m, n]) => {
                let r = rank_for(m, n, ratio);
                values = low_rank_factors(&values, m, n, r);
                Some(r)
            }
            _ => None,
        };
        let mask = prune.filter(|_| rank.is_none()).map(|r| {
            magnitude_prune(&mut values, r);
            let sparse = Sparse::encode(&values);
            values = sparse.values;
            sparse.mask
        });
        let quant = bits.map(|b| quantize(&values, b));
        if quant.is_some() {
            values = Vec::new();
        }
        Encoded {
            encoding: Encoding {
                shape: shape.to_vec(),
                sparse: mask.is_some(),
                quant,
                rank,
            },
            mask,
            values,
        }
    }

    /// The dense values: the single decoder used after building and after loading, so a package
    /// reads back bit-identical to what was built.
    pub fn decode(&self) -> Vec<f32> {
        let stored = match &self.encoding.quant {
            Some(q) => q.values(),
            None => self.values.clone(),
        };
        if let (Some(r), &[m, n]) = (self.encoding.rank, self.encoding.shape.as_slice()) {
            return low_rank_dense(&stored, m, n, r);
        }
        match &self.mask {
            Some(mask) => Sparse {
                mask: mask.clone(),
                values: stored,
                len: self.encoding.shape.iter().product(),
            }
            .decode(),
            None => stored,
        }
    }

    /// Parameters stored: the factors' for a low-rank tensor, the kept values' for a pruned
    /// one, all of them otherwise.
    pub fn stored_values(&self) -> usize {
        match (
            self.encoding.rank,
            self.encoding.shape.as_slice(),
            &self.mask,
        ) {
            (Some(r), &[m, n], _) => r * (m + n),
            (_, _, Some(mask)) => mask.iter().map(|b| b.count_ones() as usize).sum(),
            _ => self.encoding.shape.iter().product(),
        }
    }

    /// Bytes on disk (payload only).
    pub fn stored_bytes(&self) -> usize {
        self.mask.as_ref().map_or(0, Vec::len)
            + self
                .encoding
                .quant
                .as_ref()
                .map_or(self.values.len() * 4, |q| q.packed.len())
    }

    /// Checks that the stored parts fit the encoding (for files read from disk).
    pub fn check(&self) -> std::result::Result<(), String> {
        let n: usize = self.encoding.shape.iter().product();
        let stored = match (&self.mask, self.encoding.rank) {
            (Some(_), Some(_)) => return Err("both sparse and low-rank".into()),
            (None, Some(r)) => match self.encoding.shape.as_slice() {
                &[m, k] if r >= 1 && r <= m.min(k) => r
                    .checked_mul(m + k)
                    .ok_or_else(|| format!("rank {r} of a {m} × {k} tensor overflows"))?,
                shape => return Err(format!("rank {r} for a tensor of shape {shape:?}")),
            },
            (Some(mask), None) => {
                if mask.len() != n.div_ceil(8) {
                    return Err(format!("mask of {} bytes for {n} values", mask.len()));
                }
                mask.iter().map(|b| b.count_ones() as usize).sum()
            }
            (None, None) => n,
        };
        match &self.encoding.quant {
            Some(q)
                if !(1..=8).contains(&q.bits)
                    || q.len != stored
                    || q.packed.len() != (stored * q.bits as usize).div_ceil(8) =>
            {
                return Err(format!(
                    "{} bytes of {}-bit codes for {stored} values",
                    q.packed.len(),
                    q.bits
                ));
            }
            Some(_) => {}
            None if self.values.len() != stored => {
                return Err(format!(
                    "{} values where {stored} are expected",
                    self.values.len()
                ));
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn pruning_leaves_exactly_the_requested_fraction_of_zeros() {
        for (n, ratio) in [(1000, 0.3), (1000, 0.6), (37, 0.5), (10, 0.0), (10, 1.0)] {
            let mut v = random(n, 1);
            let before = v.clone();
            let k = magnitude_prune(&mut v, ratio);
            assert_eq!(k, (ratio * n as f64).floor() as usize);
            assert_eq!(v.iter().filter(|x| **x == 0.0).count(), k, "{n} {ratio}");
            // The survivors are untouched and at least as large as anything pruned.
            let kept_min = v
                .iter()
                .filter(|x| **x != 0.0)
                .fold(f32::INFINITY, |m, x| m.min(x.abs()));
            for (a, b) in before.iter().zip(&v) {
                if *b == 0.0 {
                    assert!(a.abs() <= kept_min);
                } else {
                    assert_eq!(a, b);
                }
            }
        }
        // Ties: equal magnitudes still give the exact count.
        let mut v = vec![1.0f32; 10];
        assert_eq!(magnitude_prune(&mut v, 0.45), 4);
        assert_eq!(v.iter().filter(|x| **x == 0.0).count(), 4);
    }

    #[test]
    fn quantization_uses_at_most_two_to_the_bits_levels() {
        for bits in [1u8, 2, 3, 4, 8] {
            let v = random(5000, u64::from(bits));
            let q = quantize(&v, bits);
            let deq = q.values();
            let mut levels: Vec<u32> = deq.iter().map(|x| x.to_bits()).collect();
            levels.sort_unstable();
            levels.dedup();
            assert!(
                levels.len() <= 1 << bits,
                "{bits} bits: {} levels",
                levels.len()
            );
            // Error at most half a step; extremes exact; levels symmetric about the midpoint.
            for (a, b) in v.iter().zip(&deq) {
                assert!((a - b).abs() <= q.scale / 2.0 + 1e-6, "{bits}: {a} -> {b}");
            }
            let (lo, hi) = v
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            assert_eq!(deq.iter().copied().fold(f32::MAX, f32::min), lo);
            assert!((deq.iter().copied().fold(f32::MIN, f32::max) - hi).abs() < 1e-6);
            let mid = (lo + hi) / 2.0;
            let first = q.min - mid;
            let last = q.min + ((1u32 << bits) - 1) as f32 * q.scale - mid;
            assert!((first + last).abs() < 1e-5);
            assert_eq!(q.packed.len(), (5000 * bits as usize).div_ceil(8));
        }
    }

    #[test]
    fn hand_computed_two_bit_quantization() {
        // min −1, max 2: scale 1, levels −1, 0, 1, 2; 0.5 ties to the even code 2 (value 1).
        let q = quantize(&[-1.0, 2.0, 0.4, 0.5, -0.6, 1.6], 2);
        assert_eq!(q.scale, 1.0);
        assert_eq!(q.values(), [-1.0, 2.0, 0.0, 1.0, -1.0, 2.0]);
        // Constant tensors quantize to themselves.
        assert_eq!(quantize(&[3.0; 4], 3).values(), [3.0; 4]);
    }

    #[test]
    fn encodings_shrink_and_decode_to_the_compressed_values() {
        let v = random(4096, 5);
        let dense = 4096 * 4;
        let pruned = Encoded::compress(v.clone(), &[64, 64], Some(0.6), None, None);
        assert!(
            pruned.stored_bytes() < dense / 2,
            "{}",
            pruned.stored_bytes()
        );
        let d = pruned.decode();
        assert_eq!(d.iter().filter(|x| **x == 0.0).count(), 2457);
        let q4 = Encoded::compress(v.clone(), &[64, 64], None, None, Some(4));
        assert_eq!(q4.stored_bytes(), dense / 8);
        let both = Encoded::compress(v.clone(), &[64, 64], Some(0.3), None, Some(3));
        let d = both.decode();
        assert_eq!(d.iter().filter(|x| **x == 0.0).count(), 1228);
        let mut levels: Vec<u32> = d
            .iter()
            .filter(|x| **x != 0.0)
            .map(|x| x.to_bits())
            .collect();
        levels.sort_unstable();
        levels.dedup();
        assert!(levels.len() <= 8);
        for e in [&pruned, &q4, &both] {
            e.check().unwrap();
        }
        let mut bad = both.clone();
        bad.mask.as_mut().unwrap().pop();
        assert!(bad.check().unwrap_err().contains("mask"));
    }

    #[test]
    fn sparse_encoding_round_trips() {
        let mut v = random(999, 4);
        magnitude_prune(&mut v, 0.6);
        let s = Sparse::encode(&v);
        assert_eq!(s.values.len(), 999 - 599);
        assert_eq!(s.mask.len(), 125);
        assert_eq!(s.decode(), v);
    }

    #[test]
    fn rank_for_takes_the_requested_share_of_parameters() {
        // 576 × 1536 at one half: floor(0.5 · 884,736 / 2,112) = 209.
        assert_eq!(rank_for(576, 1536, 0.5), 209);
        assert_eq!(rank_for(4, 4, 0.01), 1);
        assert_eq!(rank_for(4, 6, 10.0), 4);
    }

    #[test]
    fn low_rank_factors_are_the_truncated_svd() {
        // A rank-2 matrix plus a small rank-1 part, W = Σ σₖ uₖ vₖᵀ with orthonormal uₖ (unit
        // vectors) and vₖ (a rotation), σ = 5, 2, 0.1: the
        // rank-2 approximation drops exactly the small part (Eckart–Young), in both
        // orientations (m > n and m < n).
        let (m, n) = (6, 4);
        let left = [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ];
        let right = [
            [0.6, 0.8, 0.0, 0.0],
            [-0.8, 0.6, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let sigma = [5.0, 2.0, 0.1];
        let full = |keep: usize| -> Vec<f32> {
            let mut w = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    w[i * n + j] = (0..keep)
                        .map(|k| left[i][k] * sigma[k] * right[k][j])
                        .sum::<f64>() as f32;
                }
            }
            w
        };
        let (w, want) = (full(3), full(2));
        let got = low_rank_dense(&low_rank_factors(&w, m, n, 2), m, n, 2);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // The transpose (4 × 6) goes through the other Gram matrix and gives the transpose.
        let wt: Vec<f32> = (0..n * m).map(|x| w[(x % m) * n + x / m]).collect();
        let got_t = low_rank_dense(&low_rank_factors(&wt, n, m, 2), n, m, 2);
        for j in 0..n {
            for i in 0..m {
                assert!((got_t[j * m + i] - want[i * n + j]).abs() < 1e-5);
            }
        }
        // Full rank reproduces the matrix.
        let back = low_rank_dense(&low_rank_factors(&w, m, n, 4), m, n, 4);
        for (g, e) in back.iter().zip(&w) {
            assert!((g - e).abs() < 1e-5);
        }
    }

    #[test]
    fn low_rank_encoding_stores_the_factors_and_checks_them() {
        let v = random(64 * 48, 5);
        let e = Encoded::compress(v.clone(), &[64, 48], None, Some(0.25), None);
        let r = rank_for(64, 48, 0.25);
        assert_eq!(e.encoding.rank, Some(r));
        assert_eq!(e.values.len(), r * (64 + 48));
        assert_eq!(e.stored_values(), r * 112);
        assert!(e.stored_values() <= 64 * 48 / 4);
        assert_eq!(e.decode().len(), 64 * 48);
        assert!(e.check().is_ok());
        // Quantized factors compose; a damaged rank or factor count is refused.
        let q = Encoded::compress(v, &[64, 48], None, Some(0.25), Some(8));
        assert!(q.check().is_ok() && q.decode().len() == 64 * 48);
        let mut bad = e.clone();
        bad.encoding.rank = Some(49);
        assert!(bad.check().unwrap_err().contains("rank 49"));
        let mut short = e;
        short.values.pop();
        assert!(short.check().is_err());
    }
}
