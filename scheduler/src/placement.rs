//! Placement: which node can run a task (feasibility) and which one should (scoring).
//!
//! Pure functions over the replicated node table. The leader's planner uses [`Placer`] to choose;
//! apply re-checks with [`fit`] so no node is ever over-committed whatever the planner saw.
//! Feasibility covers CPU, memory, GPU count, GPU memory, GPU model and node labels; a node also
//! needs a free credit (`slots + queue`).

use crate::spec::Resources;
use crate::state::{Node, NodeStatus};
use crate::units::format_size;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How the planner scores feasible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill the fullest node that fits (keeps whole nodes free for big tasks).
    #[default]
    BinPack,
    /// Use the emptiest node (spreads load and failure impact).
    Spread,
}

/// One GPU a node advertises (from NVML, or simulated in tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
}

/// What a node offers (before operator reservations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
}

/// What the live attempts on a node hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub gpus: BTreeSet<String>,
}

/// Capacity an operator keeps back from scheduling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
}

impl Node {
    pub fn allocatable_cpu(&self) -> u64 {
        self.capacity
            .cpu_milli
            .saturating_sub(self.reserved.cpu_milli)
    }
    pub fn allocatable_memory(&self) -> u64 {
        self.capacity
            .memory_bytes
            .saturating_sub(self.reserved.memory_bytes)
    }
    pub fn free_cpu(&self) -> u64 {
        self.allocatable_cpu().saturating_sub(self.used.cpu_milli)
    }
    pub fn free_memory(&self) -> u64 {
        self.allocatable_memory()
            .saturating_sub(self.used.memory_bytes)
    }
    pub fn credits(&self) -> u32 {
        (self.slots + self.queue).saturating_sub(self.assigned)
    }
}

pub fn gpu_matches(g: &Gpu, req: &Resources) -> bool {
    g.memory_bytes >= req.gpu_memory_bytes
        && req
            .gpu_model
            .as_ref()
            .is_none_or(|m| g.model.to_lowercase().contains(&m.to_lowercase()))
}

fn labels_match(node: &Node, req: &Resources) -> bool {
    req.labels
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Checks that `req` fits the node's free capacity now, and picks its GPUs (the smallest that
/// fit, lowest index first). `Err` says what is short.
pub fn fit(node: &Node, req: &Resources, extra: &Usage) -> Result<Vec<String>, String> {
    if node.status != NodeStatus::Up {
        return Err(format!("node {} is {:?}", node.id, node.status));
    }
    if node.capacity.cpu_milli == 0 {
        // What a node advertises when its resource probe failed: unknown, so nothing fits.
        return Err(format!(
            "node {} has no known capacity (its resource probe failed)",
            node.id
        ));
    }
    if !labels_match(node, req) {
        return Err("labels do not match".into());
    }
    if node.free_cpu().saturating_sub(extra.cpu_milli) < req.cpu_milli as u64 {
        return Err("not enough free cpu".into());
    }
    if node.free_memory().saturating_sub(extra.memory_bytes) < req.memory_bytes {
        return Err("not enough free memory".into());
    }
    if req.gpu == 0 {
        return Ok(Vec::new());
    }
    let mut free: Vec<&Gpu> = node
        .capacity
        .gpus
        .iter()
        .filter(|g| {
            !node.used.gpus.contains(&g.uuid)
                && !extra.gpus.contains(&g.uuid)
                && gpu_matches(g, req)
        })
        .collect();
    if free.len() < req.gpu as usize {
        return Err("not enough free matching gpus".into());
    }
    free.sort_by_key(|g| (g.memory_bytes, g.index));
    Ok(free
        .iter()
        .take(req.gpu as usize)
        .map(|g| g.uuid.clone())
        .collect())
}

/// Why a node could never run `req`, even empty (`None`: it could).
pub fn never_fits(node: &Node, req: &Resources) -> Option<Vec<String>> {
    let mut why = Vec::new();
    if (req.cpu_milli as u64) > node.allocatable_cpu() {
        why.push(format!(
            "{} cpu, needs {}",
            node.allocatable_cpu() as f64 / 1000.0,
            req.cpu_milli as f64 / 1000.0
        ));
    }
    if req.memory_bytes > node.allocatable_memory() {
        why.push(format!(
            "{} memory, needs {}",
            format_size(node.allocatable_memory()),
            format_size(req.memory_bytes)
        ));
    }
    if req.gpu > 0 {
        let matching = node
            .capacity
            .gpus
            .iter()
            .filter(|g| gpu_matches(g, req))
            .count();
        if matching < req.gpu as usize {
            let what = match (&req.gpu_model, req.gpu_memory_bytes) {
                (Some(m), 0) => format!(" {m}"),
                (Some(m), b) => format!(" {m} with {}", format_size(b)),
                (None, 0) => String::new(),
                (None, b) => format!(" with {}", format_size(b)),
            };
            why.push(format!("{matching} GPU(s){what}, needs {}", req.gpu));
        }
    }
    for (k, v) in &req.labels {
        if node.labels.get(k) != Some(v) {
            why.push(format!(
                "label {k}={}, needs {k}={v}",
                node.labels.get(k).map(String::as_str).unwrap_or("(unset)")
            ));
        }
    }
    (!why.is_empty()).then_some(why)
}

/// How far a node is from fitting `req` (0 = fits), as the sum of relative gaps.
fn shortfall(node: &Node, req: &Resources) -> f64 {
    let gap = |need: f64, have: f64| {
        if need > have {
            (need - have) / need
        } else {
            0.0
        }
    };
    let gpus = node
        .capacity
        .gpus
        .iter()
        .filter(|g| gpu_matches(g, req))
        .count() as f64;
    gap(req.cpu_milli as f64, node.allocatable_cpu() as f64)
        + gap(req.memory_bytes as f64, node.allocatable_memory() as f64)
        + gap(req.gpu as f64, gpus)
}

/// `Some(message)` when no registered node could ever run `req`: names the closest node and what
/// it lacks. `None` when some node could (or no node is registered yet).
pub fn unschedulable(
    step: &str,
    req: &Resources,
    nodes: &BTreeMap<String, Node>,
) -> Option<String> {
    let live: Vec<&Node> = nodes
        .values()
        .filter(|n| n.status != NodeStatus::Down)
        .collect();
    if live.is_empty() || req.is_empty() {
        return None;
    }
    let mut closest: Option<(&Node, Vec<String>, f64)> = None;
    for n in live {
        match never_fits(n, req) {
            None => return None,
            Some(why) => {
                // Fewest missing dimensions first, then the smallest relative shortfall.
                let gap = shortfall(n, req) + why.len() as f64;
                if closest.as_ref().is_none_or(|(_, _, g)| gap < *g) {
                    closest = Some((n, why, gap));
                }
            }
        }
    }
    let (node, why, _) = closest?;
    Some(format!(
        "unschedulable: step \"{step}\" asks for {}; no node can ever run it. Closest: node {} has {}",
        req.describe(),
        node.id,
        why.join("; ")
    ))
}

/// The planner's view of the nodes for one plan: free capacity including its own decisions not
/// yet applied, indexed by free CPU so best fit is a range scan, not a full scan.
pub struct Placer<'a> {
    nodes: Vec<&'a Node>,
    extra: Vec<Usage>,
    credits: Vec<i64>,
    by_cpu: BTreeSet<(u64, u64, usize)>,
    strategy: Strategy,
}

/// How many feasible nodes, in order of free CPU, are scored before choosing (best of K).
pub const CANDIDATES: usize = 16;

impl<'a> Placer<'a> {
    pub fn new(nodes: impl Iterator<Item = &'a Node>, strategy: Strategy) -> Self {
        let nodes: Vec<&Node> = nodes.filter(|n| n.status == NodeStatus::Up).collect();
        let extra = vec![Usage::default(); nodes.len()];
        let credits = nodes.iter().map(|n| n.credits() as i64).collect();
        // Only nodes with a free credit can take anything: the index holds just those.
        let by_cpu = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.credits() > 0)
            .map(|(i, n)| (n.free_cpu(), n.free_memory(), i))
            .collect();
        Placer {
            nodes,
            extra,
            credits,
            by_cpu,
            strategy,
        }
    }

    /// True while some node can still take an attempt (has a free credit in this view).
    pub fn has_credit(&self) -> bool {
        !self.by_cpu.is_empty()
    }

    /// Counts a decision made earlier (proposed, not yet applied) against its node.
    pub fn hold(&mut self, node: &str, req: &Resources, gpus: &[String]) {
        if let Some(i) = self.nodes.iter().position(|n| n.id == node) {
            self.take(i, req, gpus);
        }
    }

    fn key(&self, i: usize) -> (u64, u64, usize) {
        let n = self.nodes[i];
        (
            n.free_cpu().saturating_sub(self.extra[i].cpu_milli),
            n.free_memory().saturating_sub(self.extra[i].memory_bytes),
            i,
        )
    }

    fn take(&mut self, i: usize, req: &Resources, gpus: &[String]) {
        let old = self.key(i);
        self.by_cpu.remove(&old);
        if self.credits[i] <= 0 {
            return;
        }
        let e = &mut self.extra[i];
        e.cpu_milli += req.cpu_milli as u64;
        e.memory_bytes += req.memory_bytes;
        e.gpus.extend(gpus.iter().cloned());
        self.credits[i] -= 1;
        if self.credits[i] > 0 {
            let new = self.key(i);
            self.by_cpu.insert(new);
        }
    }

    /// Lower is tighter: the share of the node's CPU and memory left after placing.
    fn score(&self, i: usize, req: &Resources) -> f64 {
        let n = self.nodes[i];
        let (cpu, mem) = (
            n.allocatable_cpu().max(1) as f64,
            n.allocatable_memory().max(1) as f64,
        );
        let (fc, fm, _) = self.key(i);
        (fc as f64 - req.cpu_milli as f64) / cpu + (fm as f64 - req.memory_bytes as f64) / mem
    }

    /// Chooses a node for `req` and reserves it in this view: `(node, epoch, gpus)`. Scores at
    /// most [`CANDIDATES`] feasible nodes, walking the free-CPU index from the tightest fit
    /// (bin-pack) or the emptiest node (spread).
    pub fn choose(&mut self, req: &Resources) -> Option<(String, u64, Vec<String>)> {
        self.choose_where(req, |_| true)
    }

    /// [`Self::choose`] among the nodes `ok` accepts.
    pub fn choose_where(
        &mut self,
        req: &Resources,
        ok: impl Fn(&Node) -> bool,
    ) -> Option<(String, u64, Vec<String>)> {
        let start = (req.cpu_milli as u64, 0, 0);
        let walk: Box<dyn Iterator<Item = &(u64, u64, usize)>> = match self.strategy {
            Strategy::BinPack => Box::new(self.by_cpu.range(start..)),
            Strategy::Spread => Box::new(self.by_cpu.range(start..).rev()),
        };
        let order: Vec<usize> = walk
            .filter(|k| k.1 >= req.memory_bytes)
            .map(|k| k.2)
            .filter(|i| ok(self.nodes[*i]) && self.feasible(*i, req))
            .take(CANDIDATES)
            .collect();
        self.best_of(order, req)
    }

    /// Reference: score every node (for measuring the index's packing against a full scan).
    pub fn choose_full_scan(&mut self, req: &Resources) -> Option<(String, u64, Vec<String>)> {
        let order: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.feasible(*i, req))
            .collect();
        self.best_of(order, req)
    }

    fn feasible(&self, i: usize, req: &Resources) -> bool {
        self.credits[i] > 0 && fit(self.nodes[i], req, &self.extra[i]).is_ok()
    }

    /// The best-scored of `candidates` (all feasible), reserved in this view.
    fn best_of(
        &mut self,
        candidates: Vec<usize>,
        req: &Resources,
    ) -> Option<(String, u64, Vec<String>)> {
        let mut best: Option<(f64, usize)> = None;
        for i in candidates {
            let s = self.score(i, req);
            let better = match (best, self.strategy) {
                (None, _) => true,
                (Some((b, _)), Strategy::BinPack) => s < b,
                (Some((b, _)), Strategy::Spread) => s > b,
            };
            if better {
                best = Some((s, i));
            }
        }
        let (_, i) = best?;
        let gpus = fit(self.nodes[i], req, &self.extra[i]).ok()?;
        self.take(i, req, &gpus);
        let n = self.nodes[i];
        Some((n.id.clone(), n.epoch, gpus))
    }

    /// Nodes with something placed on them in this view (for packing measurements).
    pub fn nodes_touched(&self) -> usize {
        self.nodes
            .iter()
            .zip(&self.extra)
            .filter(|(n, e)| {
                n.used.cpu_milli + e.cpu_milli > 0 || n.used.memory_bytes + e.memory_bytes > 0
            })
            .count()
    }
}
