//! The AMX kernel: one 32 × 32 output block per call as four 16 × 16 f32 sum tiles, each step a
//! 16 × 32 bf16 tile of the left operand times a 32 × 16 VNNI tile of the right one
//! (`tdpbf16ps`, 16,384 multiply-adds per instruction). Stable Rust has no AMX intrinsics, so
//! the handful of tile instructions are inline assembly; the compiler never allocates tile
//! registers itself, so the tile state cannot be disturbed between the blocks.

use super::{OutPtr, Tiles, BLOCK, TILE_ELEMS};

/// Whether this CPU has AMX bf16 tiles and the OS hands their state to this process (asked
/// once, by the caller's `OnceLock`).
#[cfg(target_arch = "x86_64")]
pub(super) fn present() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    amx_bf16 && amx_tile && request_tile_permission()
}

/// Linux hands out the (8 KB) tile register state only on request: `arch_prctl(
/// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process. Fails on other systems.
#[cfg(target_arch = "x86_64")]
fn request_tile_permission() -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it only changes which register state the process may use.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

/// `ldtilecfg`'s 64-byte operand: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Holds the tile configuration on this thread; releases the tile state when dropped (a
/// worker's batch of panels is done).
pub(super) struct TileGuard;

impl TileGuard {
    /// Configures the tiles (palette 1, eight 16 × 64-byte tiles) on this thread.
    pub(super) fn configure() -> TileGuard {
        // SAFETY: the config is a valid palette-1 layout; the guard releases the tiles.
        unsafe { std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack)) };
        TileGuard
    }
}
impl Drop for TileGuard {
    fn drop(&mut self) {
        // SAFETY: releasing tiles is always allowed.
        unsafe { std::arch::asm!("tilerelease", options(nostack)) };
    }
}

/// One 32 × 32 output block: rows `32i..`, columns `32j..`. (Not inlined, so profiles name it.)
#[inline(never)]
pub(super) unsafe fn block(t: &Tiles, i: usize, out: OutPtr, m: usize, n: usize, j: usize) {
    use std::arch::asm;
    let kp = t.kp;
    // Bands 2i and 2i + 1 of the tiled left operand.
    let a0 = t.lhs.as_ptr().add(i * BLOCK * kp);
    let a1 = a0.add(16 * kp);
    let b = t.panel.as_ptr();
    let (r0, c0) = (i * BLOCK, j * BLOCK);
    let inside = r0 + BLOCK <= m && c0 + BLOCK <= n;
    let (rows, cols) = (BLOCK.min(m - r0), BLOCK.min(n - c0));
    // An edge block goes through a scratch block, keeping only the rows and columns that exist
    // (the rest of it is never read back: left uninitialised rather than zeroed every block).
    let mut scratch = std::mem::MaybeUninit::<[f32; BLOCK * BLOCK]>::uninit();
    let scratch = scratch.as_mut_ptr().cast::<f32>();
    let (base, stride) = if inside {
        (out.0.add(r0 * n + c0), n)
    } else {
        (scratch, BLOCK)
    };
    // The four 16 × 16 sum tiles (tmm0–3) moved to or from the block at `base`, rows `stride`
    // floats apart.
    macro_rules! sums {
        ($($insn:literal),+) => {
            asm!(
                $($insn),+,
                p00 = in(reg) base,
                p01 = in(reg) base.add(16),
                p10 = in(reg) base.add(16 * stride),
                p11 = in(reg) base.add(16 * stride + 16),
                s = in(reg) stride * 4,
                options(nostack)
            )
        };
    }
    if !t.accumulate {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
    } else {
        if !inside {
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(
                    out.0.add((r0 + r) * n + c0),
                    scratch.add(r * BLOCK),
                    cols,
                );
            }
        }
        sums!(
            "tileloadd tmm0, [{p00} + {s}*1]",
            "tileloadd tmm1, [{p01} + {s}*1]",
            "tileloadd tmm2, [{p10} + {s}*1]",
            "tileloadd tmm3, [{p11} + {s}*1]"
        );
    }
    for kb in t.ks.clone() {
        let b0 = b.add(kb * 2 * TILE_ELEMS);
        let b1 = b0.add(TILE_ELEMS);
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(kb * TILE_ELEMS),
            a1 = in(reg) a1.add(kb * TILE_ELEMS),
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            sa = in(reg) 64usize,
            sb = in(reg) 64usize,
            options(nostack)
        );
    }
    sums!(
        "tilestored [{p00} + {s}*1], tmm0",
        "tilestored [{p01} + {s}*1], tmm1",
        "tilestored [{p10} + {s}*1], tmm2",
        "tilestored [{p11} + {s}*1], tmm3"
    );
    if inside {
        return;
    }
    for r in 0..rows {
        std::ptr::copy_nonoverlapping(scratch.add(r * BLOCK), out.0.add((r0 + r) * n + c0), cols);
    }
}
