//! The placement kernel of the pure core against 10,000 simulated nodes, on one core: decisions
//! per second of the indexed best-of-K chooser, and its packing against a full best-fit scan of
//! the same requests (nodes used to hold the same work; fewer is better).

use std::time::Instant;
use troupe_scheduler::placement::{Capacity, Gpu, Placer, Strategy};
use troupe_scheduler::spec::Resources;
use troupe_scheduler::{Command, NodeInfo, State};

const NODES: usize = 10_000;
const GIB: u64 = 1 << 30;

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn cluster(rng: &mut Rng) -> State {
    let mut state = State::default();
    for i in 0..NODES {
        let cores = [8u64, 16, 32, 64][rng.next(4) as usize];
        let gpus = if rng.next(10) == 0 {
            (0..8)
                .map(|g| Gpu {
                    index: g,
                    uuid: format!("GPU-{i}-{g}"),
                    model: "H100".into(),
                    memory_bytes: 80 * GIB,
                })
                .collect()
        } else {
            Vec::new()
        };
        let info = NodeInfo {
            registration: 0,
            node: format!("node-{i:05}"),
            api: String::new(),
            raft_id: 0,
            incarnation: 0,
            slots: 1_000,
            queue: 0,
            capacity: Capacity {
                cpu_milli: cores * 1000,
                memory_bytes: cores * 4 * GIB,
                gpus,
            },
            reserved: Default::default(),
            labels: Default::default(),
        };
        state.apply(0, Command::RegisterNode(info));
    }
    state
}

fn requests(rng: &mut Rng, n: usize) -> Vec<Resources> {
    (0..n)
        .map(|_| Resources {
            cpu_milli: (1 + rng.next(8)) as u32 * 500,
            memory_bytes: (1 + rng.next(16)) * GIB,
            gpu: if rng.next(20) == 0 {
                1 + rng.next(2) as u32
            } else {
                0
            },
            ..Default::default()
        })
        .collect()
}

pub fn run(runs: usize) {
    let mut rng = Rng(0x7e57_5eed);
    let state = cluster(&mut rng);
    // About 60 % of the cluster's CPU: 10,000 nodes x 30 cores average x 0.6 / 2.25 cores average.
    let reqs = requests(&mut rng, 80_000);
    let mut rates = Vec::new();
    let mut placed_all = 0;
    for _ in 0..runs.max(1) {
        let mut placer = Placer::new(state.sched.nodes.values(), Strategy::BinPack);
        let t = Instant::now();
        placed_all = reqs.iter().filter(|r| placer.choose(r).is_some()).count();
        rates.push(reqs.len() as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let rate = rates[rates.len() / 2];
    // The reference scores every node for every request (slow): compare both on the first
    // 30,000 requests (about 25 % of the cluster's CPU).
    let sample = &reqs[..30_000];
    let mut fast = Placer::new(state.sched.nodes.values(), Strategy::BinPack);
    let placed_fast = sample.iter().filter(|r| fast.choose(r).is_some()).count();
    let used_fast = fast.nodes_touched();
    let mut full = Placer::new(state.sched.nodes.values(), Strategy::BinPack);
    let t = Instant::now();
    let placed_full = sample
        .iter()
        .filter(|r| full.choose_full_scan(r).is_some())
        .count();
    let full_rate = sample.len() as f64 / t.elapsed().as_secs_f64();
    let used_full = full.nodes_touched();
    let diff = (used_fast as f64 - used_full as f64) / used_full.max(1) as f64 * 100.0;
    println!(
        "{:<58} {:>10.0}/s {:>12}  full scan {:.0}/s",
        format!(
            "placement decisions, {NODES} nodes, one core ({placed_all}/{} placed)",
            reqs.len()
        ),
        rate,
        "decisions",
        full_rate
    );
    println!(
        "{:<58} {:>11.2}% {:>12}  indexed: {placed_fast} placed on {used_fast} nodes; full scan: {placed_full} on {used_full}",
        "packing vs a full best-fit scan, 30k requests (nodes used)", diff, ""
    );
}
