//! Battery power from `class/power_supply/<name>/` (type `Battery`): `power_now` (µW) where
//! the driver has it, else `current_now` (µA) × `voltage_now` (µV), sampled on a thread and
//! integrated over time. This is the whole device's draw, screen and radios included.
//!
//! Drivers disagree on the current's sign while discharging (Pixel kernels report it
//! negative, most laptops positive), so the magnitude is used; a battery that is charging
//! or full does not show the device's draw at all and is refused.

use super::sampler::Sampler;
use super::{EnergyMeter, Method, energy_error, read_int, read_text};
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sampling interval: fuel gauges update every 0.1–1 s; sampling faster only repeats values.
const SAMPLE: Duration = Duration::from_millis(50);

/// One battery's files.
#[derive(Clone, Debug)]
struct Battery {
    dir: PathBuf,
}

impl Battery {
    /// Power drawn now, watts.
    fn watts(&self) -> Result<f64> {
        let power = self.dir.join("power_now");
        if power.is_file() {
            return Ok(read_int(Method::PowerSupply, &power)?.unsigned_abs() as f64 * 1e-6);
        }
        let current = read_int(Method::PowerSupply, &self.dir.join("current_now"))?.unsigned_abs() as f64 * 1e-6;
        let voltage_path = self.dir.join("voltage_now");
        let volts = read_int(Method::PowerSupply, &voltage_path)?.unsigned_abs() as f64 * 1e-6;
        // Batteries sit between 2.5 V (one Li-ion cell, empty) and 25 V (a six-cell pack).
        if !(2.5..=25.0).contains(&volts) {
            return Err(energy_error(
                Method::PowerSupply,
                format!("{}: {volts} V is not a battery voltage in µV (driver reports another unit)", voltage_path.display()),
            ));
        }
        Ok(current * volts)
    }

    /// Refuses a battery that is charging or full (its current is the charger's).
    fn check_discharging(&self) -> Result<()> {
        let status = read_text(Method::PowerSupply, &self.dir.join("status"))?;
        if matches!(status.as_str(), "Charging" | "Full") {
            return Err(energy_error(
                Method::PowerSupply,
                format!("{} is {status}: a battery on a charger does not show the device's draw (unplug it)", self.dir.display()),
            ));
        }
        Ok(())
    }
}

/// Trapezoidal integral of power samples over time.
#[derive(Debug)]
struct Integrator {
    last: (Instant, f64),
    joules: f64,
}

impl Integrator {
    fn new(at: Instant, watts: f64) -> Integrator {
        Integrator { last: (at, watts), joules: 0.0 }
    }

    fn add(&mut self, at: Instant, watts: f64) {
        let seconds = at.saturating_duration_since(self.last.0).as_secs_f64();
        self.joules += 0.5 * (watts + self.last.1) * seconds;
        self.last = (at, watts);
    }
}

/// The meter over every battery of the device.
pub struct PowerSupply {
    batteries: Vec<Battery>,
    state: Option<(Arc<Mutex<Integrator>>, Sampler)>,
}

/// Opens the batteries under `sysfs`.
pub fn open(sysfs: &Path) -> Result<PowerSupply> {
    let root = sysfs.join("class/power_supply");
    let mut batteries: Vec<Battery> = std::fs::read_dir(&root)
        .map_err(|e| energy_error(Method::PowerSupply, format!("no power_supply folder {}: {e}", root.display())))?
        .flatten()
        .map(|e| Battery { dir: e.path() })
        .filter(|b| read_text(Method::PowerSupply, &b.dir.join("type")).is_ok_and(|t| t == "Battery"))
        .collect();
    batteries.sort_by(|a, b| a.dir.cmp(&b.dir));
    if batteries.is_empty() {
        return Err(energy_error(Method::PowerSupply, format!("{} has no supply of type Battery", root.display())));
    }
    let meter = PowerSupply { batteries, state: None };
    meter.sample()?;
    Ok(meter)
}

impl PowerSupply {
    fn sample(&self) -> Result<f64> {
        self.batteries.iter().map(Battery::watts).sum()
    }
}

impl EnergyMeter for PowerSupply {
    fn method(&self) -> Method {
        Method::PowerSupply
    }

    fn source(&self) -> String {
        let names: Vec<String> =
            self.batteries.iter().map(|b| b.dir.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        format!("battery {} (whole device)", names.join(", "))
    }

    fn start(&mut self) -> Result<()> {
        for b in &self.batteries {
            b.check_discharging()?;
        }
        let integrator = Arc::new(Mutex::new(Integrator::new(Instant::now(), self.sample()?)));
        let (shared, batteries) = (integrator.clone(), self.batteries.clone());
        let sampler = Sampler::spawn(SAMPLE, move || {
            // A failed read (a gauge mid-update) skips this sample; `stop` reports errors.
            if let Ok(watts) = batteries.iter().map(Battery::watts).sum::<Result<f64>>() {
                shared.lock().unwrap_or_else(|e| e.into_inner()).add(Instant::now(), watts);
            }
        });
        self.state = Some((integrator, sampler));
        Ok(())
    }

    fn stop(&mut self) -> Result<f64> {
        let Some((integrator, sampler)) = self.state.take() else {
            return Err(energy_error(Method::PowerSupply, "stopped without being started".into()));
        };
        sampler.finish();
        let watts = self.sample()?;
        let mut integrator = integrator.lock().unwrap_or_else(|e| e.into_inner());
        integrator.add(Instant::now(), watts);
        Ok(integrator.joules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battery(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join("class/power_supply").join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (file, value) in files {
            std::fs::write(d.join(file), format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn trapezoids_integrate_power() {
        let t0 = Instant::now();
        let mut i = Integrator::new(t0, 2.0);
        i.add(t0 + Duration::from_millis(500), 4.0); // 1.5 J
        i.add(t0 + Duration::from_millis(1500), 4.0); // 4 J
        assert!((i.joules - 5.5).abs() < 1e-12);
    }

    #[test]
    fn negative_discharge_current_counts_as_draw() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        battery(root, "AC", &[("type", "Mains"), ("online", "0")]);
        // A Pixel-style gauge: -500 mA at 4 V while discharging = 2 W.
        battery(root, "battery", &[("type", "Battery"), ("status", "Discharging"), ("current_now", "-500000"), ("voltage_now", "4000000")]);
        let mut meter = open(root).unwrap();
        assert_eq!(meter.source(), "battery battery (whole device)");
        let outer = Instant::now();
        meter.start().unwrap();
        let held = Duration::from_millis(120);
        std::thread::sleep(held);
        let joules = meter.stop().unwrap();
        let outer = outer.elapsed().as_secs_f64();
        // Constant 2 W over the meter's interval, which holds the sleep and lies within `outer`.
        assert!(joules >= 2.0 * held.as_secs_f64() - 1e-9 && joules <= 2.0 * outer + 1e-9, "{joules} J over ≤ {outer} s");
    }

    #[test]
    fn power_now_is_preferred_and_batteries_add_up() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        battery(
            root,
            "BAT0",
            &[("type", "Battery"), ("status", "Discharging"), ("power_now", "7000000"), ("current_now", "1"), ("voltage_now", "1")],
        );
        battery(root, "BAT1", &[("type", "Battery"), ("status", "Not charging"), ("current_now", "250000"), ("voltage_now", "12000000")]);
        assert!((open(root).unwrap().sample().unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn charging_wrong_units_and_absent_batteries_are_refused() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        assert!(open(root).err().unwrap().to_string().contains("power_supply"));
        battery(root, "battery", &[("type", "Battery"), ("status", "Charging"), ("current_now", "900000"), ("voltage_now", "4200000")]);
        let err = open(root).unwrap().start().unwrap_err().to_string();
        assert!(err.contains("Charging") && err.contains("unplug"), "{err}");
        battery(root, "battery", &[("status", "Discharging"), ("voltage_now", "4200")]);
        let err = open(root).err().unwrap().to_string();
        assert!(err.contains("voltage_now") && err.contains("µV"), "{err}");
    }
}
