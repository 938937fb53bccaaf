//! What a quantization run reports: JSON for tools, a table for people, and an SVG with the
//! per-layer sensitivity and the size → metric front.

use super::gptq::Rounding;
use super::metric::Metric;
use super::observe::Observer;
use serde::Serialize;
use std::fmt::Write;

/// One quantizable weight.
#[derive(Serialize)]
pub struct LayerReport {
    /// Initializer name.
    pub name: String,
    /// Consuming op.
    pub op: String,
    /// Parameters.
    pub params: usize,
    /// Chosen precision (`fp32`, `fp16`, `int8`, `int4-b32`, …).
    pub precision: String,
    /// Measured loss at the chosen precision (mixed precision only).
    pub sensitivity: Option<f64>,
    /// Measured loss at each candidate precision.
    pub losses: Vec<(String, f64)>,
    /// The uint8 quantization of the layer's input as `[scale, zero_point]`, when it is
    /// quantized statically (int8 with an observer).
    pub activation: Option<(f32, u8)>,
    /// Measured time per sample at fp32 and at each candidate precision, ms (layers that are
    /// timed: MatMul).
    pub ms: Vec<(String, f64)>,
}

/// A point of the greedy size → loss front.
#[derive(Serialize)]
pub struct FrontPoint {
    /// Estimated file bytes.
    pub size_bytes: u64,
    /// Summed sensitivity of the lowered layers (in `sensitivity_metric` loss units).
    pub loss: f64,
    /// Predicted time per sample, ms (when layers were timed).
    pub ms_per_sample: Option<f64>,
    /// Whether the point written is this one (for a size budget: this one with the bytes
    /// it leaves spent on the layers it helps most).
    pub chosen: bool,
}

/// The whole run.
#[derive(Serialize)]
pub struct Report {
    /// Bytes of the written model (model file plus external data).
    pub size_bytes: u64,
    /// Bytes of the fp32 model.
    pub fp32_size_bytes: u64,
    /// The metric.
    pub metric: Metric,
    /// Its value, verified end to end in our runtime on the evaluation set.
    pub metric_value: f64,
    /// Evaluation samples.
    pub samples: usize,
    /// The metric sensitivities were measured in (KL for a top-1 target: smooth).
    pub sensitivity_metric: Metric,
    /// How int8 layers' inputs were calibrated (`None`: inputs stay float, quantized per row
    /// at run time).
    pub observer: Option<Observer>,
    /// How int4 weights were rounded (nearest when GPTQ was asked for but the calibration
    /// set was too small).
    pub rounding: Rounding,
    /// Per layer, in graph order.
    pub layers: Vec<LayerReport>,
    /// The front (empty for a uniform precision).
    pub front: Vec<FrontPoint>,
    /// The fp32 model's time per sample on this machine, ms, and the written model's as
    /// predicted from its layers' (when layers were timed).
    pub fp32_ms_per_sample: Option<f64>,
    /// See `fp32_ms_per_sample`.
    pub predicted_ms_per_sample: Option<f64>,
}

impl Report {
    /// The human summary: a line per precision and the front's table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut by_precision: Vec<(String, usize, usize)> = Vec::new();
        for l in &self.layers {
            match by_precision.iter_mut().find(|(p, _, _)| *p == l.precision) {
                Some(entry) => (entry.1, entry.2) = (entry.1 + 1, entry.2 + l.params),
                None => by_precision.push((l.precision.clone(), 1, l.params)),
            }
        }
        let mb = |b: u64| b as f64 / 1e6;
        let _ = writeln!(s, "{:<10} {:>7} {:>12}", "precision", "layers", "params");
        for (p, n, params) in &by_precision {
            let _ = writeln!(s, "{p:<10} {n:>7} {params:>12}");
        }
        let _ = writeln!(
            s,
            "size {:.2} MB (fp32 {:.2} MB, {:.1} %), {:?} {:.5} over {} evaluation samples",
            mb(self.size_bytes),
            mb(self.fp32_size_bytes),
            100.0 * self.size_bytes as f64 / self.fp32_size_bytes as f64,
            self.metric,
            self.metric_value,
            self.samples
        );
        if let (Some(fp32), Some(ms)) = (self.fp32_ms_per_sample, self.predicted_ms_per_sample) {
            let verdict = match ms <= fp32 {
                true => format!("{:.2}× faster", fp32 / ms),
                false => format!("{:.2}× slower: no point within the size and metric targets is faster on this machine", ms / fp32),
            };
            let _ = writeln!(s, "time per sample on this machine: fp32 {fp32:.3} ms, predicted {ms:.3} ms ({verdict})");
        }
        if self.layers.iter().any(|l| l.precision.starts_with("int4")) {
            let _ = writeln!(s, "int4 rounding: {:?}", self.rounding);
        }
        if !self.front.is_empty() {
            let _ = writeln!(s, "front (size → summed {:?} loss of the lowered layers), every 4th point:", self.sensitivity_metric);
            for (i, p) in self.front.iter().enumerate().filter(|(i, p)| i % 4 == 0 || p.chosen) {
                let ms = p.ms_per_sample.map_or(String::new(), |ms| format!("  {ms:>8.3} ms"));
                let _ =
                    writeln!(s, "  {i:>3}  {:>8.2} MB  {:.5}{ms}{}", mb(p.size_bytes), p.loss, if p.chosen { "  ← written" } else { "" });
            }
        }
        s
    }

    /// An SVG: per-layer losses (log scale, one mark per candidate precision) above the
    /// front (size → summed loss).
    pub fn svg(&self) -> String {
        let (w, h, pad) = (900.0, 640.0, 50.0);
        let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\n");
        let _ = writeln!(s, "<text x='{pad}' y='20'>per-layer loss in {:?} when lowered alone (log scale)</text>", self.sensitivity_metric);
        let colors = [("fp16", "#2a9d8f"), ("int8", "#e9c46a"), ("int4", "#e76f51")];
        let losses: Vec<f64> = self.layers.iter().flat_map(|l| l.losses.iter().map(|(_, v)| v.max(1e-7))).collect();
        let (lo, hi) = (1e-7f64.log10(), losses.iter().fold(1e-6f64, |m, &v| m.max(v)).log10());
        let top = (pad, 280.0);
        let n = self.layers.len().max(1) as f64;
        for (i, l) in self.layers.iter().enumerate() {
            let x = pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n;
            for (p, v) in &l.losses {
                let color = colors.iter().find(|(c, _)| p.starts_with(c)).map_or("#888", |(_, c)| c);
                let y = top.1 - (top.1 - top.0) * ((v.max(1e-7).log10() - lo) / (hi - lo).max(1e-9));
                let _ = writeln!(s, "<circle cx='{x:.1}' cy='{y:.1}' r='3' fill='{color}'><title>{} {p}: {v:.3e}</title></circle>", l.name);
            }
        }
        for (k, (p, c)) in colors.iter().enumerate() {
            let _ = writeln!(s, "<text x='{}' y='40' fill='{c}'>● {p}</text>", w - 220.0 + 60.0 * k as f64);
        }
        if let (Some(first), Some(last)) = (self.front.first(), self.front.last()) {
            let (y0, y1) = (360.0, h - pad);
            let _ = writeln!(s, "<text x='{pad}' y='{}'>size (MB) → summed {:?} loss</text>", y0 - 10.0, self.sensitivity_metric);
            let (smin, smax) = (last.size_bytes as f64, first.size_bytes as f64);
            let (mmin, mmax) = self.front.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.loss), b.max(p.loss)));
            let px = |b: u64| pad + (w - 2.0 * pad) * (b as f64 - smin) / (smax - smin).max(1.0);
            let py = |m: f64| y1 - (y1 - y0) * (m - mmin) / (mmax - mmin).max(1e-12);
            let points: Vec<String> = self.front.iter().map(|p| format!("{:.1},{:.1}", px(p.size_bytes), py(p.loss))).collect();
            let _ = writeln!(s, "<polyline fill='none' stroke='#264653' points='{}'/>", points.join(" "));
            for p in self.front.iter().filter(|p| p.chosen) {
                let _ = writeln!(s, "<circle cx='{:.1}' cy='{:.1}' r='5' fill='#e76f51'/>", px(p.size_bytes), py(p.loss));
            }
            let _ = writeln!(
                s,
                "<text x='{pad}' y='{}'>{:.2} MB</text><text x='{}' y='{}'>{:.2} MB</text>",
                h - 30.0,
                smin / 1e6,
                w - pad - 60.0,
                h - 30.0,
                smax / 1e6
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
