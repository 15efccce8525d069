//! What a node advertises: CPU and memory (cgroup-aware, via `std` and sysinfo) and its NVIDIA
//! GPUs (via NVML, loaded at run time: no driver means zero GPUs, not a failure).
//!
//! `--simulate-gpus` replaces NVML with made-up GPUs. It exists for tests and demos on machines
//! without GPUs; their UUIDs start with `SIM-` and the node logs that it is simulating.

use nvml_wrapper::Nvml;
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
pub fn discover(simulated: Option<&[Gpu]>) -> Capacity {
    let cpu_milli = std::thread::available_parallelism()
        .map(|n| n.get() as u64 * 1000)
        .unwrap_or(1000);
    let memory_bytes = memory_bytes();
    let gpus = match simulated {
        Some(g) => g.to_vec(),
        None => nvml_gpus().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no NVML: this node advertises 0 GPUs");
            Vec::new()
        }),
    };
    Capacity {
        cpu_milli,
        memory_bytes,
        gpus,
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
    fn discovery_without_a_driver_reports_zero_gpus_not_an_error() {
        let c = discover(None);
        assert!(c.cpu_milli >= 1000);
        assert!(c.memory_bytes > 0);
        // On a machine with NVIDIA GPUs this lists them; elsewhere it is empty. Either way, no panic.
        assert_eq!(c.gpus.len(), nvml_gpus().map(|g| g.len()).unwrap_or(0));
    }
}
