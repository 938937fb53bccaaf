//! Pixel's on-device power monitor (ODPM): `bus/iio/devices/iio:device*/energy_value` lists
//! each monitored rail's accumulated energy in µW·s (= µJ), one line per rail:
//!
//! ```text
//! t=473305
//! CH0(T=473305)[S10M_VDD_TPU], 3264883
//! CH1(T=473305)[VSYS_PWR_MODEM], 48506287
//! ```
//!
//! The meter sums every rail of every monitor (Pixel 6 and later have two). The counters are
//! 64-bit and do not wrap in practice; one that goes down was reset and counts from 0.

use super::counter::CounterMeter;
use super::{Method, energy_error, read_text};
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The rails of one `energy_value` text: `(name, µJ)`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, u64)>> {
    let mut rails = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("t=")) {
        let bad = || energy_error(Method::Odpm, format!("{}: cannot parse rail line {line:?}", path.display()));
        let (head, value) = line.rsplit_once(',').ok_or_else(bad)?;
        let name = head.rsplit_once('[').and_then(|(_, n)| n.strip_suffix(']')).ok_or_else(bad)?;
        rails.push((name.to_string(), value.trim().parse().map_err(|_| bad())?));
    }
    Ok(rails)
}

/// A meter summing every ODPM rail under `sysfs`.
pub fn open(sysfs: &Path) -> Result<CounterMeter> {
    let root = sysfs.join("bus/iio/devices");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| energy_error(Method::Odpm, format!("no iio device folder {}: {e}", root.display())))?
        .flatten()
        .map(|e| e.path().join("energy_value"))
        .filter(|f| f.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(energy_error(Method::Odpm, format!("no iio:device*/energy_value under {}", root.display())));
    }
    let read_rails = move || -> Result<Vec<(String, u64)>> {
        let mut all = Vec::new();
        for f in &files {
            all.extend(parse(f, &read_text(Method::Odpm, f)?)?);
        }
        Ok(all)
    };
    let rails = read_rails()?;
    if rails.is_empty() {
        return Err(energy_error(Method::Odpm, format!("the energy_value files under {} list no rail", root.display())));
    }
    let names: Vec<String> = rails.iter().map(|(n, _)| n.clone()).collect();
    let ranges = vec![None; rails.len()];
    let read = Arc::new(move || Ok(read_rails()?.into_iter().map(|(_, v)| v).collect()));
    Ok(CounterMeter::new(Method::Odpm, format!("ODPM rails {}", names.join(", ")), read, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::EnergyMeter;

    fn monitor(root: &Path, device: &str, t: u64, rails: &[(&str, u64)]) {
        let d = root.join("bus/iio/devices").join(device);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = format!("t={t}\n");
        for (i, (name, uj)) in rails.iter().enumerate() {
            text += &format!("CH{i}(T={t})[{name}], {uj}\n");
        }
        std::fs::write(d.join("energy_value"), text).unwrap();
    }

    #[test]
    fn rails_of_both_monitors_are_summed() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("bus/iio/devices/iio:device2")).unwrap(); // not a monitor
        monitor(root, "iio:device0", 100, &[("S10M_VDD_TPU", 3_264_883), ("VSYS_PWR_MODEM", 48_506_287)]);
        monitor(root, "iio:device1", 100, &[("S2M_VDD_CPUCL2", 1_000_000)]);
        let mut meter = open(root).unwrap();
        assert_eq!(meter.source(), "ODPM rails S10M_VDD_TPU, VSYS_PWR_MODEM, S2M_VDD_CPUCL2");
        meter.start().unwrap();
        monitor(root, "iio:device0", 600, &[("S10M_VDD_TPU", 3_764_883), ("VSYS_PWR_MODEM", 48_506_287)]);
        monitor(root, "iio:device1", 600, &[("S2M_VDD_CPUCL2", 2_500_000)]);
        let joules = meter.stop().unwrap();
        assert!((joules - 2.0).abs() < 1e-9, "{joules}");
    }

    #[test]
    fn malformed_lines_are_named() {
        let p = Path::new("energy_value");
        let err = parse(p, "t=1\nCH0(T=1)[VDD], twelve\n").unwrap_err().to_string();
        assert!(err.contains("energy meter odpm") && err.contains("\"CH0(T=1)[VDD], twelve\""), "{err}");
        assert!(parse(p, "t=1\nCH0 12\n").is_err());
        let tree = tempfile::tempdir().unwrap();
        assert!(open(tree.path()).err().unwrap().to_string().contains("iio"));
    }
}
