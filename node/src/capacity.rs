//! What a node advertises: CPU and memory (cgroup-aware, via `std` and sysinfo) and its NVIDIA
//! GPUs (via NVML, loaded at run time: no driver means zero GPUs, not a failure).
//!
//! `--simulate-gpus` replaces NVML with made-up GPUs. It exists for tests and demos on machines
//! without GPUs; their UUIDs start with `SIM-` and the node logs that it is simulating.

use nvml_wrapper::Nvml;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use troupe_scheduler::placement::{Capacity, Gpu};
use troupe_scheduler::units::parse_size_bytes;

/// Parses `--simulate-gpus`: `2xH100:80GiB`, or a list such as `H100:80GiB,A10G:24GiB`.
pub fn parse_simulated(text: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (count, rest) = match part.split_once('x') {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => (
                n.parse::<u32>().map_err(|e| format!("{part:?}: {e}"))?,
                rest,
            ),
            _ => (1, part),
        };
        let (model, mem) = rest
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: write MODEL:MEMORY, e.g. 2xH100:80GiB"))?;
        let memory_bytes = parse_size_bytes(mem)?;
        for _ in 0..count {
            let index = gpus.len() as u32;
            gpus.push(Gpu {
                index,
                uuid: format!("SIM-GPU-{index}"),
                model: format!("Simulated {model}"),
                memory_bytes,
            });
        }
    }
    if gpus.is_empty() {
        return Err("no GPUs given; write e.g. 2xH100:80GiB".into());
    }
    Ok(gpus)
}

/// Reads the node's capacity. Blocking (NVML, /proc): call it off the async threads.
///
/// A probe that fails (memory unreadable, or the [`failpoint`] fired) leaves the capacity
/// unknown: the node advertises none (0 CPU, 0 memory, no GPUs), so it takes no placements
/// (`troupe_scheduler::placement::fit` refuses a node with 0 CPU), and it is reported degraded
/// with the reason ([`degraded`], in `/v1/health`) until a probe works again. No NVML is not a
/// failure: a machine without a driver has 0 GPUs.
pub fn discover(simulated: Option<&[Gpu]>) -> Capacity {
    match probe(simulated) {
        Ok(c) => {
            if let Some(was) = set_degraded(None) {
                tracing::info!(was = %was, "resource probe works again: capacity known");
            }
            c
        }
        Err(why) => {
            let why = format!("resource probe failed: {why}; advertising no capacity");
            if set_degraded(Some(why.clone())).as_ref() != Some(&why) {
                tracing::warn!(reason = %why, "node degraded");
            }
            Capacity::default()
        }
    }
}

fn probe(simulated: Option<&[Gpu]>) -> Result<Capacity, String> {
    if let Some(why) = failpoint() {
        return Err(why);
    }
    let cpu_milli = std::thread::available_parallelism()
        .map(|n| n.get() as u64 * 1000)
        .unwrap_or(1000);
    let memory_bytes = memory_bytes();
    if memory_bytes == 0 {
        return Err("sysinfo read no memory".into());
    }
    let gpus = match simulated {
        Some(g) => g.to_vec(),
        None => nvml_gpus().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no NVML: this node advertises 0 GPUs");
            Vec::new()
        }),
    };
    Ok(Capacity {
        cpu_milli,
        memory_bytes,
        gpus,
    })
}

/// Whether [`failpoint`] is honoured: set once at start from `--fault-injection`.
static FAILPOINTS: AtomicBool = AtomicBool::new(false);
/// Why the last probe failed (`None`: it worked).
static DEGRADED: Mutex<Option<String>> = Mutex::new(None);

/// Turns the probe failpoint on (a node started with `--fault-injection`).
pub fn enable_failpoints(on: bool) {
    FAILPOINTS.store(on, Ordering::SeqCst);
}

/// Why this node's capacity is unknown, if it is.
pub fn degraded() -> Option<String> {
    DEGRADED.lock().map(|d| d.clone()).unwrap_or(None)
}

fn set_degraded(why: Option<String>) -> Option<String> {
    match DEGRADED.lock() {
        Ok(mut d) => std::mem::replace(&mut *d, why),
        Err(_) => None,
    }
}

/// The resource-probe failpoint (fault matrix row 10), honoured only with `--fault-injection`:
/// `TROUPE_FAILPOINT_PROBE=fail` fails every probe; `TROUPE_FAILPOINT_PROBE=file:PATH` fails
/// it while PATH exists (so a test can make it work again). Returns the failure it injects.
pub fn failpoint() -> Option<String> {
    if !FAILPOINTS.load(Ordering::SeqCst) {
        return None;
    }
    let value = std::env::var("TROUPE_FAILPOINT_PROBE").ok()?;
    fires(&value, |p| std::path::Path::new(p).exists())
}

/// Whether the failpoint `value` fires (`exists` tells whether a file exists).
fn fires(value: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    match value.split_once(':') {
        None if value == "fail" => Some("injected (TROUPE_FAILPOINT_PROBE=fail)".into()),
        Some(("file", path)) if exists(path) => {
            Some(format!("injected (TROUPE_FAILPOINT_PROBE: {path} exists)"))
        }
        _ => None,
    }
}

/// Total memory, or the cgroup limit when it is lower (containers).
fn memory_bytes() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let Ok(sys) = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
    ) else {
        return 0;
    };
    let total = sys.total_memory();
    sys.cgroup_limits()
        .map(|c| c.total_memory.min(total))
        .unwrap_or(total)
}

/// Every GPU NVML reports: index, UUID, model and total memory.
pub fn nvml_gpus() -> Result<Vec<Gpu>, String> {
    let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for i in 0..count {
        let d = nvml
            .device_by_index(i)
            .map_err(|e| format!("NVML device {i}: {e}"))?;
        gpus.push(Gpu {
            index: d.index().unwrap_or(i),
            uuid: d.uuid().map_err(|e| format!("NVML device {i} uuid: {e}"))?,
            model: d.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
            memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
        });
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failpoint is process-wide: the tests that probe run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn simulated_gpus_parse_and_are_labelled() {
        let g = parse_simulated("2xH100:80GiB,A10G:24GiB").unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[1].uuid, "SIM-GPU-1");
        assert_eq!(g[0].model, "Simulated H100");
        assert_eq!(g[2].memory_bytes, 24 << 30);
        assert!(parse_simulated("H100").is_err());
        assert!(parse_simulated("2xH100:lots").is_err());
    }

    #[test]
    fn the_probe_failpoint_fires_only_as_asked() {
        assert!(fires("fail", |_| false).is_some());
        assert!(fires("file:/x", |p| p == "/x").is_some());
        assert!(fires("file:/x", |_| false).is_none());
        assert!(fires("off", |_| true).is_none());
        assert!(fires("", |_| true).is_none());
    }

    #[test]
    fn a_failed_probe_advertises_nothing_and_says_why_until_it_works() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("fail");
        std::fs::write(&flag, "").unwrap();
        // SAFETY: this test is the only one in this binary that reads or writes this variable.
        unsafe { std::env::set_var("TROUPE_FAILPOINT_PROBE", format!("file:{}", flag.display())) };
        // Not honoured without --fault-injection.
        enable_failpoints(false);
        assert!(discover(None).cpu_milli >= 1000);
        enable_failpoints(true);
        let c = discover(None);
        assert_eq!(c, Capacity::default());
        assert!(
            degraded().unwrap().contains("resource probe failed"),
            "{:?}",
            degraded()
        );
        std::fs::remove_file(&flag).unwrap();
        assert!(discover(None).cpu_milli >= 1000);
        assert_eq!(degraded(), None);
        enable_failpoints(false);
    }

    #[test]
    fn discovery_without_a_driver_reports_zero_gpus_not_an_error() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let c = discover(None);
        assert!(c.cpu_milli >= 1000);
        assert!(c.memory_bytes > 0);
        // On a machine with NVIDIA GPUs this lists them; elsewhere it is empty. Either way, no panic.
        assert_eq!(c.gpus.len(), nvml_gpus().map(|g| g.len()).unwrap_or(0));
    }
}
