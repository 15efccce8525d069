//! `cargo run --release -p troupe-chaos-tests --bin sim -- --seeds N`: the deterministic
//! simulator (`troupe_sim::cli`) run from the chaos-tests package, beside the real-process
//! fault matrix. The same as `-p troupe-sim --bin sim`.

fn main() -> std::process::ExitCode {
    troupe_sim::cli::main()
}
