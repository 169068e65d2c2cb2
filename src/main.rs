//! The `offsite` command line. Thin: parsing and dispatch live in `cli`, the work in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
