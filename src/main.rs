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
    cli::main()
}
