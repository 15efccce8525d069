//! The `sim` command line (the `sim` binaries of `troupe-sim` and `troupe-chaos-tests` both run
//! it). `sim --seeds N` runs seeds 0..N and prints a summary (and a replay line per failure);
//! `sim --seed S` prints the trace of one seed. `--engine` runs the engine world
//! (`troupe_sim::engine`: real raft-log engines over simulated disks) instead of the RawNode
//! world.

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: sim [--engine] --seeds N [--from S] | sim [--engine] --seed S");
    ExitCode::from(2)
}

/// Runs the command line in `std::env::args`.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.parse().ok()
    };
    let engine = args.iter().any(|a| a == "--engine");
    let run = if engine {
        crate::engine::run
    } else {
        crate::run
    };
    let flag = if engine { " --engine" } else { "" };
    if let Some(seed) = value("--seed") {
        let r = run(seed, true);
        for l in &r.trace {
            println!("{l}");
        }
        println!("events (summed over replicas): {:?}", r.events);
        println!(
            "seed {seed}: {} faults, {} ops ({} acked), {} commands applied, {} checks, trace {:016x}",
            r.faults, r.ops, r.acked, r.commands, r.checks, r.trace_hash
        );
        return if r.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let Some(n) = value("--seeds") else {
        return usage();
    };
    let from = value("--from").unwrap_or(0);
    let started = Instant::now();
    let mut events = std::collections::BTreeMap::new();
    let (mut faults, mut checks, mut commands, mut sim_ms, mut failed) = (0, 0, 0, 0, 0u64);
    for seed in from..from + n {
        let r = run(seed, false);
        faults += r.faults;
        checks += r.checks;
        commands += r.commands;
        sim_ms += r.sim_ms;
        for (k, v) in &r.events {
            *events.entry(*k).or_insert(0u64) += v;
        }
        if !r.violations.is_empty() {
            failed += 1;
            println!("seed {seed} FAILED: {}", r.violations[0]);
            println!(
                "  replay: cargo run --release -p troupe-sim --bin sim --{flag} --seed {seed}"
            );
        }
        if (seed - from + 1).is_multiple_of(1000) {
            eprintln!("{} seeds, {failed} failed", seed - from + 1);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} seeds in {secs:.1} s ({:.1} seeds/s, {:.0} simulated s per wall s): {faults} faults injected ({:.2}/run), {commands} commands applied, {checks} property checks, {failed} failed",
        n as f64 / secs,
        sim_ms as f64 / 1000.0 / secs,
        faults as f64 / n as f64
    );
    println!("events (summed over replicas): {events:?}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
