//! The `offsite` command line. Thin: parsing and dispatch live in `cli`, the work in the library.

mod cli;

fn main() -> std::process::ExitCode {
    // candle's element-wise worker threads spin 25,000 times before sleeping after each op.
    // With as many threads as cores, that spinning takes a core from the matmul threads that
    // run next (6% of a training step's throughput, measured in docs/performance.md); spin
    // briefly instead, unless the user chose a limit.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Set before any thread exists (candle reads it when it starts its pool).
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    // candle asks for its thread count on every CPU matmul, and without RAYON_NUM_THREADS that
    // re-reads the CPU affinity and /proc/cpuinfo each time: on the many small products of
    // multiple-choice scoring, 3–13 % of the run (100 hypernym records: 17.4–19.4 s → 16.8 s).
    // Ask once, with candle's own rule, and pin the answer (the user's own setting wins).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    keep_freed_memory();
    cli::main()
}

/// glibc hands every allocation above a (dynamically raised) threshold back to the kernel when
/// it is freed, so a training step's buffers — the same sizes every step — come back as fresh
/// pages, each first touch a page fault (8 % of a bf16 linear's forward + backward). Serving
/// allocations up to 32 MB (glibc's maximum) from the heap and never trimming it keeps those
/// pages: the op went from 9.5–10.6 ms to 5.4–6.2 ms (docs/performance.md). The user's own
/// `GLIBC_TUNABLES` win.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator settings; called before any thread starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
