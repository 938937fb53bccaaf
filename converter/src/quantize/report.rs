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

    /// An SVG a user picks from: per-layer losses when lowered alone (log scale, one dot per
    /// candidate precision, the chosen one ringed, layer names under the axis) above the
    /// fronts, size → summed loss and, where layers were timed, size → predicted time per
    /// sample, each with its chosen point. Every axis has values; every dot a tooltip.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (960.0, 760.0, 70.0);
        let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\n");
        let colors = [("fp16", "#2a9d8f"), ("int8", "#e9c46a"), ("int4", "#e76f51")];
        let color = |p: &str| colors.iter().find(|(c, _)| p.starts_with(c)).map_or("#888", |(_, c)| c);
        // Top: losses per layer.
        let _ = writeln!(
            s,
            "<text x='{pad}' y='20'>{:?} loss of each layer lowered alone (log scale); ringed: the precision written</text>",
            self.sensitivity_metric
        );
        for (k, (p, c)) in colors.iter().enumerate() {
            let _ = writeln!(s, "<text x='{}' y='20' fill='{c}'>● {p}</text>", w - 230.0 + 60.0 * k as f64);
        }
        let floor = 1e-7f64;
        let losses: Vec<f64> = self.layers.iter().flat_map(|l| l.losses.iter().map(|(_, v)| v.max(floor))).collect();
        let (lo, hi) = (floor.log10(), losses.iter().fold(1e-6f64, |m, &v| m.max(v)).log10().ceil());
        let (top, bottom) = (40.0, 300.0);
        let y_of = |v: f64| bottom - (bottom - top) * ((v.max(floor).log10() - lo) / (hi - lo).max(1e-9));
        let _ = writeln!(s, "<line x1='{pad}' y1='{top}' x2='{pad}' y2='{bottom}' stroke='#333'/>");
        for decade in (lo as i32)..=(hi as i32) {
            let y = y_of(10f64.powi(decade));
            let _ = writeln!(s, "<line x1='{}' y1='{y:.1}' x2='{}' y2='{y:.1}' stroke='#ddd'/>", pad, w - pad);
            let _ = writeln!(s, "<text x='{}' y='{:.1}' text-anchor='end'>1e{decade}</text>", pad - 4.0, y + 4.0);
        }
        let n = self.layers.len().max(1) as f64;
        for (i, l) in self.layers.iter().enumerate() {
            let x = pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n;
            for (p, v) in &l.losses {
                let y = y_of(*v);
                let _ = writeln!(
                    s,
                    "<circle cx='{x:.1}' cy='{y:.1}' r='3' fill='{}'><title>{} {p}: {v:.3e}</title></circle>",
                    color(p),
                    escape(&l.name)
                );
                if *p == l.precision {
                    let _ = writeln!(s, "<circle cx='{x:.1}' cy='{y:.1}' r='6' fill='none' stroke='#264653' stroke-width='1.5'/>");
                }
            }
            let _ = writeln!(
                s,
                "<text transform='translate({x:.1},{:.1}) rotate(60)' font-size='8'>{} ({})<title>{}: {}</title></text>",
                bottom + 8.0,
                escape(&short(&l.name, 18)),
                l.precision,
                escape(&l.name),
                l.precision
            );
        }
        // Bottom: the fronts.
        let (Some(first), Some(last)) = (self.front.first(), self.front.last()) else {
            s.push_str("</svg>\n");
            return s;
        };
        let (y0, y1) = (440.0, h - pad);
        let _ = writeln!(
            s,
            "<text x='{pad}' y='{}'>front: file size (MB) → summed {:?} loss (line, left axis)",
            y0 - 16.0,
            self.sensitivity_metric
        );
        let timed = self.front.iter().all(|p| p.ms_per_sample.is_some());
        if timed {
            let _ = writeln!(s, " and predicted ms per sample on this machine (dashed, right axis)");
        }
        s.push_str("; the written point is marked</text>\n");
        let (smin, smax) = (last.size_bytes.min(first.size_bytes) as f64, last.size_bytes.max(first.size_bytes) as f64);
        let px = |b: u64| pad + (w - 2.0 * pad) * (b as f64 - smin) / (smax - smin).max(1.0);
        let range =
            |values: &mut dyn Iterator<Item = f64>| values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (mmin, mmax) = range(&mut self.front.iter().map(|p| p.loss));
        let py = |m: f64| y1 - (y1 - y0) * (m - mmin) / (mmax - mmin).max(1e-12);
        let _ = writeln!(
            s,
            "<line x1='{pad}' y1='{y1}' x2='{}' y2='{y1}' stroke='#333'/><line x1='{pad}' y1='{y0}' x2='{pad}' y2='{y1}' stroke='#333'/>",
            w - pad
        );
        for t in 0..=4 {
            let f = t as f64 / 4.0;
            let (bytes, loss) = (smin + f * (smax - smin), mmin + f * (mmax - mmin));
            let (x, y) = (px(bytes as u64), py(loss));
            let _ = writeln!(s, "<text x='{x:.1}' y='{}' text-anchor='middle'>{:.2} MB</text>", y1 + 16.0, bytes / 1e6);
            let _ = writeln!(s, "<text x='{}' y='{:.1}' text-anchor='end'>{loss:.2e}</text>", pad - 4.0, y + 4.0);
        }
        let points: Vec<String> = self.front.iter().map(|p| format!("{:.1},{:.1}", px(p.size_bytes), py(p.loss))).collect();
        let _ = writeln!(s, "<polyline fill='none' stroke='#264653' points='{}'/>", points.join(" "));
        for p in &self.front {
            let ms = p.ms_per_sample.map_or(String::new(), |ms| format!(", {ms:.3} ms"));
            let _ = writeln!(
                s,
                "<circle cx='{:.1}' cy='{:.1}' r='{}' fill='{}'><title>{:.2} MB, loss {:.3e}{ms}</title></circle>",
                px(p.size_bytes),
                py(p.loss),
                if p.chosen { 6 } else { 2 },
                if p.chosen { "#e76f51" } else { "#264653" },
                p.size_bytes as f64 / 1e6,
                p.loss
            );
        }
        if timed {
            let (tmin, tmax) = range(&mut self.front.iter().filter_map(|p| p.ms_per_sample));
            let pt = |ms: f64| y1 - (y1 - y0) * (ms - tmin) / (tmax - tmin).max(1e-12);
            let _ = writeln!(s, "<line x1='{0}' y1='{y0}' x2='{0}' y2='{y1}' stroke='#6d597a'/>", w - pad);
            for t in 0..=4 {
                let ms = tmin + t as f64 / 4.0 * (tmax - tmin);
                let _ = writeln!(s, "<text x='{}' y='{:.1}' fill='#6d597a'>{ms:.3} ms</text>", w - pad + 4.0, pt(ms) + 4.0);
            }
            let points: Vec<String> =
                self.front.iter().filter_map(|p| Some(format!("{:.1},{:.1}", px(p.size_bytes), pt(p.ms_per_sample?)))).collect();
            let _ = writeln!(s, "<polyline fill='none' stroke='#6d597a' stroke-dasharray='4 3' points='{}'/>", points.join(" "));
            for p in self.front.iter().filter(|p| p.chosen) {
                let ms = p.ms_per_sample.unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "<rect x='{:.1}' y='{:.1}' width='10' height='10' fill='#6d597a'><title>written: {ms:.3} ms per sample</title></rect>",
                    px(p.size_bytes) - 5.0,
                    pt(ms) - 5.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// `text` with the characters XML gives a meaning escaped (layer names come from the model).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// `name` cut to `max` characters, keeping its end (where layer names differ).
fn short(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    match chars.len() > max {
        true => format!("…{}", chars[chars.len() - max + 1..].iter().collect::<String>()),
        false => name.to_string(),
    }
}
