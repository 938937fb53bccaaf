//! Energy per inference: a hardware meter where the OS exposes one, an energy model otherwise.
//!
//! Meters read sysfs under a root folder (`/sys` on a device; a fake tree in tests):
//! - [`rapl`]: Linux powercap RAPL package counters (x86 laptops, desktops and servers);
//! - [`odpm`]: Pixel on-device power monitor rails (`iio:device*/energy_value`);
//! - [`power_supply`]: a discharging battery's current × voltage, sampled on a thread
//!   (any Linux or Android device on battery; whole-device power).
//!
//! Counters are polled on a thread as well, so that a long run cannot wrap a counter twice
//! unseen. When none is readable, [`model`] estimates the energy from the plan's arithmetic
//! and bytes moved with published per-operation energies.

mod counter;
pub mod model;
pub mod odpm;
pub mod power_supply;
pub mod rapl;
mod sampler;

use crate::error::{Error, Result};
use std::path::Path;

/// How energy is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Linux powercap RAPL counters.
    Rapl,
    /// A battery's current × voltage.
    PowerSupply,
    /// Pixel ODPM power rails.
    Odpm,
    /// The energy model ([`model`]).
    Model,
}

impl Method {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Rapl => "rapl",
            Method::PowerSupply => "power-supply",
            Method::Odpm => "odpm",
            Method::Model => "model",
        }
    }

    /// Sensor meters, best first: counters of the chip's own rails before whole-device
    /// battery power.
    pub const SENSORS: [Method; 3] = [Method::Rapl, Method::Odpm, Method::PowerSupply];
}

/// A hardware energy meter: joules between [`start`](EnergyMeter::start) and
/// [`stop`](EnergyMeter::stop).
pub trait EnergyMeter: Send {
    /// Which kind it is.
    fn method(&self) -> Method;
    /// What it measures (zones, rails or supply), for reports.
    fn source(&self) -> String;
    /// Starts a measurement.
    fn start(&mut self) -> Result<()>;
    /// Ends it; the joules since [`start`](EnergyMeter::start).
    fn stop(&mut self) -> Result<f64>;
}

/// Opens the sensor meter `method` under the sysfs root `sysfs`.
///
/// ```
/// use distq_runtime::energy::{Method, open};
/// // An empty tree has no sensor: the error names what was looked for.
/// let err = open(Method::Rapl, std::path::Path::new("/nonexistent")).err().unwrap();
/// assert!(err.to_string().contains("powercap"));
/// ```
pub fn open(method: Method, sysfs: &Path) -> Result<Box<dyn EnergyMeter>> {
    Ok(match method {
        Method::Rapl => Box::new(rapl::open(sysfs)?),
        Method::Odpm => Box::new(odpm::open(sysfs)?),
        Method::PowerSupply => Box::new(power_supply::open(sysfs)?),
        Method::Model => return Err(energy_error(Method::Model, "the energy model is not a meter: estimate it from a plan".into())),
    })
}

/// The best readable sensor meter, or `None` with why each was not usable.
pub fn best_sensor(sysfs: &Path) -> (Option<Box<dyn EnergyMeter>>, Vec<String>) {
    let mut why_not = Vec::new();
    for method in Method::SENSORS {
        match open(method, sysfs) {
            Ok(meter) => return (Some(meter), why_not),
            Err(e) => why_not.push(e.to_string()),
        }
    }
    (None, why_not)
}

fn energy_error(method: Method, reason: String) -> Error {
    Error::Energy { method: method.name(), reason }
}

/// Reads a sysfs file as trimmed text, with an error naming it (and the usual cause of a
/// permission error on RAPL counters).
fn read_text(method: Method, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied { " (energy counters are root-only on Linux ≥ 5.10)" } else { "" };
        energy_error(method, format!("cannot read {}: {e}{hint}", path.display()))
    })
}

/// Reads a sysfs file holding one integer.
fn read_int(method: Method, path: &Path) -> Result<i64> {
    let text = read_text(method, path)?;
    text.parse().map_err(|_| energy_error(method, format!("{}: expected an integer, found {text:?}", path.display())))
}

/// Reads a sysfs file holding a counter (a non-negative integer).
fn read_counter(method: Method, path: &Path) -> Result<u64> {
    let v = read_int(method, path)?;
    u64::try_from(v).map_err(|_| energy_error(method, format!("{}: negative counter {v}", path.display())))
}
