//! bf16 matrix products with f32 sums: the kernel behind `--precision bf16`, on every CPU that
//! has bf16 arithmetic — Intel AMX tiles (Sapphire Rapids and later, [`tiles`]) or AVX512-BF16
//! dot products (AMD Zen 4 and later, [`dot`]), chosen once per process at run time
//! ([`kernel`]).
//!
//! Products of bf16 values are exact and summed in f32, so the only rounding is that of the
//! operands to bf16 (8 significant bits): the usual mixed-precision trade, offered first for
//! weights that are not trained (the emulator), where the emulator's own compression dwarfs it.
//!
//! The right operand is packed ([`PackedRhs`]) in the "VNNI" layout both kernels read (pairs of
//! consecutive `k` side by side) — once for a frozen weight, per call for anything else; the
//! left operand is rounded to bf16 per call. The packing, the parallel loop over column panels
//! and the slicing of long `k` are shared; only the 32 × 32 output block differs per kernel.

mod dot;
mod pack;
mod tiles;

use super::cpu::MatRef;
use rayon::prelude::*;
use std::sync::OnceLock;

/// A strided f32 matrix (`(r, c)` at `data[r·rs + c·cs]`): gemm's operand view.
pub type Strided<'a> = MatRef<'a, f32>;

/// Rows and columns of an output block: 2 × 2 tiles of 16 × 16.
const BLOCK: usize = 32;
/// `k` covered by one tile product.
const TILE_K: usize = 32;
/// bf16 elements in one tile (16 rows of 64 bytes).
const TILE_ELEMS: usize = 512;

/// The instructions that compute the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`): Intel Sapphire Rapids and later.
    AmxTiles,
    /// AVX512-BF16 dot products (`vdpbf16ps`): AMD Zen 4 and later, Intel Cooper Lake.
    Avx512Bf16,
}

impl Kernel {
    /// How reports and `bench` name it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::AmxTiles => "AMX tiles",
            Kernel::Avx512Bf16 => "AVX512-BF16",
        }
    }
}

/// The kernel this process uses for bf16 products, or `None` where the CPU has no bf16
/// arithmetic (then every product stays f32). AMX where present; `OFFSITE_BF16_KERNEL=avx512bf16`
/// picks the dot-product kernel on an AMX CPU too (to test and time both on one machine), and
/// `OFFSITE_BF16_KERNEL=none` turns bf16 products off.
pub fn kernel() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let asked = std::env::var("OFFSITE_BF16_KERNEL").unwrap_or_default();
        detect(asked.trim())
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(asked: &str) -> Option<Kernel> {
    // Operands are rounded with AVX512-BF16 (`pack`), which every AMX CPU has too.
    if asked == "none" || !dot::present() {
        return None;
    }
    if asked != "avx512bf16" && tiles::present() {
        return Some(Kernel::AmxTiles);
    }
    Some(Kernel::Avx512Bf16)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_asked: &str) -> Option<Kernel> {
    None
}

/// Whether bf16 products run on this CPU ([`kernel`] found one).
pub fn available() -> bool {
    kernel().is_some()
}

/// Rounds to the nearest bf16 (ties to even), as PyTorch's `.to(torch.bfloat16)` does.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    // A select rather than an early return, so that loops over slices vectorise.
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (bits >> 16) | 0x40 } else { rounded }) as u16
}

/// The f32 value of a bf16.
#[inline]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// A `k × n` right-hand operand in bf16, packed for the tiles: panels of 32 columns, each a run
/// of `k/32` pairs of `[16 k-pairs][16 columns][2]` tiles. Padding (to multiples of 32) is zero.
#[derive(Debug)]
pub struct PackedRhs {
    k: usize,
    n: usize,
    kp: usize,
    data: Vec<u16>,
}

impl PackedRhs {
    /// Packs `b[r·rs + c·cs]` for `r < k`, `c < n` (any strides, so `Wᵀ` needs no copy).
    pub fn pack(b: &[f32], k: usize, n: usize, rs: usize, cs: usize) -> Self {
        Self::pack_on(b, k, n, rs, cs, true)
    }

    /// [`PackedRhs::pack`], its panels spread over the threads or not (`parallel`).
    fn pack_on(b: &[f32], k: usize, n: usize, rs: usize, cs: usize, parallel: bool) -> Self {
        let kp = round_up(k.max(1), TILE_K);
        let np = round_up(n.max(1), BLOCK);
        let mut data = vec![0u16; np * kp];
        let src = Strided {
            data: b,
            rows: k,
            cols: n,
            rs,
            cs,
        };
        // The vectorised packing reads through raw pointers: the view must lie in its slice.
        assert!(
            src.fits(),
            "PackedRhs::pack: a {k} × {n} view exceeds its slice"
        );
        let pack_panel = |(j, out): (usize, &mut [u16])| {
            for kb in 0..kp / TILE_K {
                for h in 0..2 {
                    let tile = &mut out[(kb * 2 + h) * TILE_ELEMS..][..TILE_ELEMS];
                    pack::rhs_tile(&src, kb * TILE_K, j * BLOCK + h * 16, tile);
                }
            }
        };
        if parallel {
            data.par_chunks_mut(kp * BLOCK)
                .enumerate()
                .for_each(pack_panel);
        } else {
            data.chunks_mut(kp * BLOCK).enumerate().for_each(pack_panel);
        }
        PackedRhs { k, n, kp, data }
    }

    /// Column panel `j` (32 columns, all of `k`).
    fn panel(&self, j: usize) -> &[u16] {
        &self.data[j * self.kp * BLOCK..(j + 1) * self.kp * BLOCK]
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// The left operand rounded to bf16 and laid out as tiles: for each band of 16 rows, its `k/32`
/// tiles of 16 × 32 one after the other (1 KB each, so a tile load reads one contiguous run).
/// Rows and columns are padded to 32 with zeros.
#[inline(never)]
fn pack_lhs(a: &Strided, kp: usize, parallel: bool) -> Vec<u16> {
    assert!(
        a.fits(),
        "gemm_bf16: a {} × {} view exceeds its slice",
        a.rows,
        a.cols
    );
    let mp = round_up(a.rows.max(1), BLOCK);
    let mut out = Vec::with_capacity(mp * kp);
    let spare = &mut out.spare_capacity_mut()[..mp * kp];
    let pack_band = |(band, tiles)| pack::lhs_band(a, band, tiles);
    if parallel {
        spare
            .par_chunks_mut(kp * 16)
            .enumerate()
            .for_each(pack_band);
    } else {
        spare.chunks_mut(kp * 16).enumerate().for_each(pack_band);
    }
    // SAFETY: `lhs_band` wrote every element of every band.
    unsafe { out.set_len(mp * kp) };
    out
}

/// The output pointer, shared by the tasks that write disjoint column panels of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes its own columns only.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out = a · b` with `a` an `m × k` row-major f32 matrix rounded to bf16, `b` packed, and the
/// `m × n` row-major product summed in f32. Panics if AMX is not [`available`] or the sizes
/// disagree (callers check both).
pub fn matmul(a: &[f32], m: usize, b: &PackedRhs, out: &mut [f32]) {
    assert_eq!(a.len(), m * b.k, "lhs is not m × k");
    matmul_strided(&Strided::row_major(a, m, b.k), b, out)
}

/// [`matmul`] with a left operand of any strides (`dyᵀ` for a weight gradient, say).
pub fn matmul_strided(a: &Strided, b: &PackedRhs, out: &mut [f32]) {
    assert_eq!(out.len(), a.rows * b.n, "out is not m × n");
    // SAFETY: `out` holds m × n elements.
    unsafe { matmul_raw(a, b, out.as_mut_ptr(), false) }
}

/// `out += a · b` (`out` row-major `m × n`): a weight gradient summed over chunks of rows.
pub fn matmul_add(a: &Strided, b: &PackedRhs, out: &mut [f32]) {
    assert_eq!(out.len(), a.rows * b.n, "out is not m × n");
    // SAFETY: `out` holds m × n initialised elements.
    unsafe { matmul_raw(a, b, out.as_mut_ptr(), true) }
}

/// `out = a · b`, or with `accumulate` `out += a · b` (`out` row-major `m × n`), both operands
/// strided f32 rounded to bf16 here, on the calling thread only: for the small products of
/// work items that already run in parallel (one attention head each).
pub fn matmul_serial(a: &Strided, b: &Strided, out: &mut [f32], accumulate: bool) {
    let kernel = kernel().expect("no bf16 kernel on this CPU");
    assert_eq!(a.cols, b.rows, "lhs columns differ from rhs rows");
    let (m, n) = (a.rows, b.cols);
    assert_eq!(out.len(), m * n, "out is not m × n");
    if m == 0 || n == 0 {
        return;
    }
    let packed = PackedRhs::pack_on(b.data, b.rows, n, b.rs, b.cs, false);
    let kp = packed.kp;
    let lhs = pack_lhs(a, kp, false);
    let _tiles = configure(kernel);
    for j in 0..round_up(n, BLOCK) / BLOCK {
        let tiles = Tiles {
            lhs: &lhs,
            kp,
            panel: packed.panel(j),
            ks: 0..kp / TILE_K,
            accumulate,
        };
        // SAFETY: tiles are configured on this thread, and `out` holds m × n elements.
        unsafe { panel_blocks(kernel, &tiles, OutPtr(out.as_mut_ptr()), m, n, j) };
    }
}

/// `a · b` as a new row-major `m × n` vector, never zero-filled: the tiles write every element.
pub fn matmul_new(a: &Strided, b: &PackedRhs) -> Vec<f32> {
    let len = a.rows * b.n;
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: the capacity holds m × n elements, and `matmul_raw` writes each of them (whole
    // blocks by tile stores, edge blocks element by element) before the length covers them.
    unsafe {
        matmul_raw(a, b, out.as_mut_ptr(), false);
        out.set_len(len);
    }
    out
}

/// The product into `out`, which must have room for `m × n` elements: written and never read,
/// or with `add`, initialised and added to.
unsafe fn matmul_raw(a: &Strided, b: &PackedRhs, out: *mut f32, add: bool) {
    let kernel = kernel().expect("no bf16 kernel on this CPU");
    // SAFETY: the caller's promise on `out`; the kernel was detected on this CPU.
    unsafe { matmul_on(kernel, a, b, out, add) }
}

/// [`matmul_raw`] by a given kernel, whose instructions must be present.
unsafe fn matmul_on(kernel: Kernel, a: &Strided, b: &PackedRhs, out: *mut f32, add: bool) {
    assert_eq!(a.cols, b.k, "lhs columns differ from rhs rows");
    if a.rows == 0 || b.n == 0 {
        return;
    }
    let lhs = pack_lhs(a, b.kp, true);
    // SAFETY: the caller's promise on `out`.
    unsafe { products(kernel, &lhs, a.rows, &[(b, OutPtr(out))], add) }
}

/// `a · bᵢ` for each right operand (all with `a`'s `k`), as new row-major vectors, the left
/// operand rounded and packed once: a layer's q/k/v (or gate/up) projections of one input. Their
/// column panels also share one parallel loop, so that narrow products (k/v: 6 panels) do not
/// each leave a thread idle.
pub fn matmul_shared(a: &Strided, bs: &[&PackedRhs]) -> Vec<Vec<f32>> {
    let kernel = kernel().expect("no bf16 kernel on this CPU");
    for b in bs {
        assert_eq!(a.cols, b.k, "lhs columns differ from rhs rows");
    }
    let mut outs: Vec<Vec<f32>> = bs
        .iter()
        .map(|b| Vec::with_capacity(a.rows * b.n))
        .collect();
    if a.rows > 0 && !bs.is_empty() {
        let lhs = pack_lhs(a, bs[0].kp, true);
        let jobs: Vec<(&PackedRhs, OutPtr)> = bs
            .iter()
            .zip(outs.iter_mut())
            .map(|(b, o)| (*b, OutPtr(o.as_mut_ptr())))
            .collect();
        // SAFETY: each output has capacity for m × n and is written in full.
        unsafe { products(kernel, &lhs, a.rows, &jobs, false) };
    }
    for (o, b) in outs.iter_mut().zip(bs) {
        // SAFETY: `products` wrote every element (whole blocks by tile stores, edge blocks
        // element by element).
        unsafe { o.set_len(a.rows * b.n) };
    }
    outs
}

/// The products of one packed left operand (`m` rows) with each `(b, out)`: every `out` must
/// have room for `m × b.n` elements (written, or with `add` initialised and added to), and every
/// `b` the `kp` the left operand was packed with; `kernel`'s instructions must be present.
unsafe fn products(
    kernel: Kernel,
    lhs: &[u16],
    m: usize,
    jobs: &[(&PackedRhs, OutPtr)],
    add: bool,
) {
    let kp = jobs[0].0.kp;
    // Work items: (job, column panel), all jobs' panels in one loop.
    let items: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(ji, (b, _))| (0..round_up(b.n, BLOCK) / BLOCK).map(move |j| (ji, j)))
        .collect();
    // A long `k` (the LM head's backward sums over the vocabulary) is cut into slices whose
    // operands stay in cache: a block over all of `k = 49,152` streams 3 MB of each operand
    // from memory, for every block. Slices go one after the other, blocks adding to the sums
    // the slice before stored.
    let slices = kp.div_ceil(K_SLICE);
    for s in 0..slices {
        let ks = s * K_SLICE / TILE_K..((s + 1) * K_SLICE).min(kp) / TILE_K;
        items
            .par_iter()
            .with_min_len(
                items
                    .len()
                    .div_ceil(rayon::current_num_threads() * 4)
                    .max(1),
            )
            .for_each_init(
                || configure(kernel),
                |_tiles, &(ji, j)| {
                    let (b, out) = jobs[ji];
                    debug_assert_eq!(b.kp, kp);
                    let tiles = Tiles {
                        lhs,
                        kp,
                        panel: b.panel(j),
                        ks: ks.clone(),
                        accumulate: add || s > 0,
                    };
                    // SAFETY: tiles are configured on this thread, `out` holds m × n elements and
                    // this task writes its own columns only.
                    unsafe { panel_blocks(kernel, &tiles, out, m, b.n, j) };
                },
            );
    }
}

/// Prepares this thread for [`panel_blocks`] by `kernel`: configures the AMX tiles (released
/// when the guard drops) where they are the kernel.
fn configure(kernel: Kernel) -> Option<tiles::TileGuard> {
    (kernel == Kernel::AmxTiles).then(tiles::TileGuard::configure)
}

/// Every 32 × 32 block of column panel `j`, down the rows, by `kernel`. The thread must be
/// [`configure`]d for it and `out` hold `m × n` elements.
unsafe fn panel_blocks(kernel: Kernel, tiles: &Tiles, out: OutPtr, m: usize, n: usize, j: usize) {
    for i in 0..tiles.lhs.len() / tiles.kp / BLOCK {
        // SAFETY: loads are in bounds (operands padded to 32 rows and 32 of `k`); stores go
        // to the block's rows and columns of `out`; the kernel's instructions are present.
        unsafe {
            match kernel {
                Kernel::AmxTiles => tiles::block(tiles, i, out, m, n, j),
                Kernel::Avx512Bf16 => dot::block(tiles, i, out, m, n, j),
            }
        }
    }
}

/// `k` per slice of a long product (see `matmul_raw`): 64 KB of a right panel and 128 KB of
/// a pair of left bands.
const K_SLICE: usize = 2048;

/// What one block reads: the tiled left operand, one right panel, the range of `k` tiles to
/// sum, and whether to add to the sums already in the output.
struct Tiles<'a> {
    lhs: &'a [u16],
    kp: usize,
    panel: &'a [u16],
    ks: std::ops::Range<usize>,
    accumulate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The product of the bf16-rounded operands in f64: what the tiles must reproduce up to
    /// f32 summation error.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k)
                    .map(|t| r(a[i * k + t]) * r(b[t * n + j]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }

    #[test]
    fn matches_reference_on_aligned_and_ragged_shapes() {
        if !available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return;
        }
        for &(m, k, n) in &[
            (32, 32, 32),
            (64, 96, 160),
            (7, 40, 33),
            (50, 576, 192),
            (1, 5, 3),
            // Longer than a slice of `k`, with ragged edges: sums carried across slices.
            (40, 2 * K_SLICE + 70, 50),
        ] {
            let a = lcg(1 + m as u64, m * k);
            let b = lcg(2 + n as u64, k * n);
            let packed = PackedRhs::pack(&b, k, n, n, 1);
            let mut out = vec![f32::NAN; m * n];
            matmul(&a, m, &packed, &mut out);
            let want = reference(&a, &b, m, k, n);
            for (idx, (g, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (k as f32).sqrt(),
                    "{m}x{k}x{n} [{idx}]: {g} vs {w}"
                );
            }
        }
    }

    /// The kernels this CPU has (both on an AMX CPU), whatever the process uses.
    fn present_kernels() -> Vec<Kernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if dot::present() && tiles::present() {
                out.push(Kernel::AmxTiles);
            }
            if dot::present() {
                out.push(Kernel::Avx512Bf16);
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_reference_and_adds_to_its_output() {
        let kernels = present_kernels();
        if kernels.is_empty() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return;
        }
        // The choice: `none` turns bf16 off; `avx512bf16` asks for the dot products.
        assert_eq!(detect("none"), None);
        assert_eq!(detect("avx512bf16"), Some(Kernel::Avx512Bf16));
        assert_eq!(detect(""), kernels.first().copied());
        for &(m, k, n) in &[(33, 70, 47), (8, 32, 16), (96, 2 * K_SLICE + 40, 40)] {
            let a = lcg(7 + m as u64, m * k);
            let b = lcg(8 + n as u64, k * n);
            let packed = PackedRhs::pack(&b, k, n, n, 1);
            let view = Strided::row_major(&a, m, k);
            let want = reference(&a, &b, m, k, n);
            let mut results = Vec::new();
            for &kernel in &kernels {
                // Twice the product: once written, once added to the first.
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: `out` holds m × n elements; the kernel is present.
                unsafe { matmul_on(kernel, &view, &packed, out.as_mut_ptr(), false) };
                unsafe { matmul_on(kernel, &view, &packed, out.as_mut_ptr(), true) };
                for (idx, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g - 2.0 * w).abs() <= 2e-5 * (k as f32).sqrt(),
                        "{kernel:?} {m}x{k}x{n} [{idx}]: {g} vs 2 × {w}"
                    );
                }
                results.push(out);
            }
            if let [tiles, dot] = &results[..] {
                for (t, d) in tiles.iter().zip(dot) {
                    assert!((t - d).abs() <= 2e-5 * (k as f32).sqrt(), "{t} vs {d}");
                }
            }
        }
    }

    #[test]
    fn shared_left_operand_gives_each_product_exactly() {
        if !available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return;
        }
        // Ragged m and n, and a k longer than a slice: every path a shared product takes.
        for &(m, k) in &[(50, 576), (7, 40), (33, K_SLICE + 40)] {
            let a = lcg(5 + m as u64, m * k);
            let packed: Vec<PackedRhs> = [192usize, 33, 64]
                .iter()
                .map(|&n| PackedRhs::pack(&lcg(6 + n as u64, k * n), k, n, n, 1))
                .collect();
            let view = Strided::row_major(&a, m, k);
            let outs = matmul_shared(&view, &packed.iter().collect::<Vec<_>>());
            for (b, got) in packed.iter().zip(&outs) {
                // The same blocks in the same order: bit-equal to the product on its own.
                assert_eq!(got, &matmul_new(&view, b), "{m}x{k}x{}", b.n);
            }
        }
    }

    #[test]
    fn packs_a_transposed_view_without_copying() {
        if !available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return;
        }
        // w is [n, k] row-major; b = wᵀ read with strides (1, k).
        let (m, k, n) = (40, 64, 48);
        let a = lcg(3, m * k);
        let w = lcg(4, n * k);
        let packed = PackedRhs::pack(&w, k, n, 1, k);
        let mut out = vec![0f32; m * n];
        matmul(&a, m, &packed, &mut out);
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let want = reference(&a, &wt, m, k, n);
        for (g, w) in out.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{g} vs {w}");
        }
    }
}
