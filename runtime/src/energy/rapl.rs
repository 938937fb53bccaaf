//! Linux powercap RAPL: `class/powercap/intel-rapl:<n>/energy_uj` per CPU package (AMD
//! exposes the same interface), with its range in `max_energy_range_uj`. Sub-zones
//! (`intel-rapl:<n>:<m>`: cores, uncore, dram) are parts of their package and not added.

use super::counter::CounterMeter;
use super::{Method, energy_error, read_counter, read_text};
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A meter summing every package zone's counter under `sysfs`.
pub fn open(sysfs: &Path) -> Result<CounterMeter> {
    let root = sysfs.join("class/powercap");
    let mut zones: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| energy_error(Method::Rapl, format!("no powercap folder {}: {e}", root.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("intel-rapl:")).is_some_and(|n| !n.contains(':')))
        .collect();
    zones.sort();
    if zones.is_empty() {
        return Err(energy_error(Method::Rapl, format!("{} has no intel-rapl:<n> package zone", root.display())));
    }
    let mut names = Vec::new();
    let mut ranges = Vec::new();
    for zone in &zones {
        names.push(read_text(Method::Rapl, &zone.join("name")).unwrap_or_else(|_| zone.display().to_string()));
        ranges.push(Some(read_counter(Method::Rapl, &zone.join("max_energy_range_uj"))?));
    }
    let files: Vec<PathBuf> = zones.iter().map(|z| z.join("energy_uj")).collect();
    let read = Arc::new(move || files.iter().map(|f| read_counter(Method::Rapl, f)).collect());
    // Reading once now reports an unreadable counter (root-only since Linux 5.10) here.
    read()?;
    Ok(CounterMeter::new(Method::Rapl, format!("RAPL zones {}", names.join(", ")), read, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::EnergyMeter;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, range: u64) {
        let z = root.join("class/powercap").join(dir);
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(z.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(z.join("max_energy_range_uj"), format!("{range}\n")).unwrap();
    }

    #[test]
    fn packages_are_summed_across_a_wrap_and_subzones_ignored() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        zone(root, "intel-rapl:0", "package-0", 262_143_000_000, 262_143_328_850);
        zone(root, "intel-rapl:0:0", "core", 5, 262_143_328_850);
        zone(root, "intel-rapl:1", "package-1", 1_000_000, 262_143_328_850);
        let mut meter = open(root).unwrap();
        assert_eq!(meter.source(), "RAPL zones package-0, package-1");
        meter.start().unwrap();
        // Package 0 wraps: 328 850 µJ to its range, then 1 000 000 more; package 1 adds 2 J.
        zone(root, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850);
        zone(root, "intel-rapl:0:0", "core", 999_999_999, 262_143_328_850);
        zone(root, "intel-rapl:1", "package-1", 3_000_000, 262_143_328_850);
        let joules = meter.stop().unwrap();
        assert!((joules - (1.328_850 + 2.0)).abs() < 1e-9, "{joules}");
    }

    #[test]
    fn missing_and_unreadable_counters_are_named() {
        let tree = tempfile::tempdir().unwrap();
        let err = open(tree.path()).err().unwrap().to_string();
        assert!(err.contains("energy meter rapl") && err.contains("powercap"), "{err}");
        std::fs::create_dir_all(tree.path().join("class/powercap/intel-rapl:0")).unwrap();
        let err = open(tree.path()).err().unwrap().to_string();
        assert!(err.contains("max_energy_range_uj"), "{err}");
        zone(tree.path(), "intel-rapl:0", "package-0", 1, 10);
        std::fs::write(tree.path().join("class/powercap/intel-rapl:0/energy_uj"), "n/a").unwrap();
        let err = open(tree.path()).err().unwrap().to_string();
        assert!(err.contains("energy_uj") && err.contains("expected an integer"), "{err}");
    }
}
