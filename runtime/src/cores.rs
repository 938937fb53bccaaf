//! How many threads a session uses unless told: the performance cores. Phones pair big and
//! little cores whose speeds differ 2–4×; a kernel split over a little core as well waits for
//! it at every step, so by default only the big ones are counted. Linux and Android describe
//! each core in sysfs: `cpu_capacity` (relative speed, the biggest core 1024; arm64, and x86
//! hybrids) or else `cpufreq/cpuinfo_max_freq`. The online cores at the highest value are the
//! performance cores. Where sysfs says nothing (other systems, some VMs), every core the
//! process may use counts.

use std::path::Path;
use std::sync::OnceLock;

/// The performance cores this process may use (at least 1): the default thread count of a
/// [`Session`](crate::Session). Read once per process.
///
/// ```
/// let cores = distq_runtime::performance_cores();
/// assert!(cores >= 1);
/// assert!(cores <= std::thread::available_parallelism().map_or(1, |n| n.get()));
/// ```
pub fn performance_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
        fastest_cores(Path::new("/sys/devices/system/cpu")).map_or(usable, |n| n.clamp(1, usable))
    })
}

/// How many online cores under `cpu_dir` (laid out as sysfs's `/sys/devices/system/cpu`)
/// share the highest `cpu_capacity`, or else the highest `cpufreq/cpuinfo_max_freq`; `None`
/// when no core gives either.
fn fastest_cores(cpu_dir: &Path) -> Option<usize> {
    let online = std::fs::read_to_string(cpu_dir.join("online")).ok().map(|list| cpu_list(&list));
    let mut cores: Vec<usize> = std::fs::read_dir(cpu_dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
        .filter(|n| online.as_ref().is_none_or(|list| list.contains(n)))
        .collect();
    cores.sort_unstable();
    ["cpu_capacity", "cpufreq/cpuinfo_max_freq"].iter().find_map(|measure| {
        let read = |n: &usize| std::fs::read_to_string(cpu_dir.join(format!("cpu{n}/{measure}"))).ok()?.trim().parse::<u64>().ok();
        let values: Vec<u64> = cores.iter().filter_map(read).collect();
        let fastest = *values.iter().max()?;
        Some(values.iter().filter(|&&v| v == fastest).count())
    })
}

/// The cores of a sysfs CPU list such as `0-3,6,8-9` (malformed parts are skipped).
fn cpu_list(list: &str) -> Vec<usize> {
    list.trim()
        .split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
            None => part.parse().ok().map(|n| n..=n),
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs CPU folder: `online`, and per core an optional capacity and max frequency.
    fn sysfs(online: Option<&str>, cores: &[(usize, Option<u64>, Option<u64>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(list) = online {
            std::fs::write(dir.path().join("online"), format!("{list}\n")).unwrap();
        }
        for &(n, capacity, freq) in cores {
            let core = dir.path().join(format!("cpu{n}"));
            std::fs::create_dir_all(core.join("cpufreq")).unwrap();
            if let Some(c) = capacity {
                std::fs::write(core.join("cpu_capacity"), format!("{c}\n")).unwrap();
            }
            if let Some(f) = freq {
                std::fs::write(core.join("cpufreq/cpuinfo_max_freq"), format!("{f}\n")).unwrap();
            }
        }
        // Entries that are not cores are ignored.
        std::fs::create_dir_all(dir.path().join("cpufreq")).unwrap();
        std::fs::create_dir_all(dir.path().join("cpuidle")).unwrap();
        dir
    }

    #[test]
    fn counts_the_fastest_online_cores() {
        // A phone: 4 little cores, 3 big and 1 prime (capacity first, frequency ignored).
        let phone: Vec<_> = (0..8).map(|n| (n, Some([160, 160, 160, 160, 720, 720, 720, 1024][n]), Some(1_800_000))).collect();
        assert_eq!(fastest_cores(sysfs(Some("0-7"), &phone).path()), Some(1));
        // Only maximum frequencies: 4 at 2.4 GHz, 4 at 1.8 GHz.
        let freqs: Vec<_> = (0..8).map(|n| (n, None, Some(if n < 4 { 1_800_000 } else { 2_400_000 }))).collect();
        assert_eq!(fastest_cores(sysfs(Some("0-7"), &freqs).path()), Some(4));
        // Two of those big cores offline.
        assert_eq!(fastest_cores(sysfs(Some("0-4,7"), &freqs).path()), Some(2));
        // Equal cores (a server), no online list.
        let equal: Vec<_> = (0..2).map(|n| (n, Some(1024), None)).collect();
        assert_eq!(fastest_cores(sysfs(None, &equal).path()), Some(2));
        // Nothing said: the caller counts every usable core.
        assert_eq!(fastest_cores(sysfs(Some("0-1"), &[(0, None, None), (1, None, None)]).path()), None);
        assert_eq!(fastest_cores(Path::new("/nonexistent/cpu")), None);
    }

    #[test]
    fn reads_cpu_lists() {
        assert_eq!(cpu_list("0-3,6,8-9\n"), [0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(cpu_list("5"), [5]);
        assert_eq!(cpu_list("x,2"), [2]);
    }
}
