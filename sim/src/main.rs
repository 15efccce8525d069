//! The simulator's command line: see `troupe_sim::cli`.

fn main() -> std::process::ExitCode {
    troupe_sim::cli::main()
}
