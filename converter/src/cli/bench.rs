//! `distq bench MODEL [--vs OTHER] [...]`: load time, latency percentiles, throughput, peak
//! memory, size on disk and energy per inference; with `--vs`, the ratios between the two. A
//! decoder with a KV cache (and no `--input`) is benchmarked by prompt and generation speed
//! instead (see [`bench_decoder`](super::bench_decoder)).

use super::bench_decoder::{self, DecoderBench};
use super::say;
use crate::inputs;
use anyhow::{Context, Result, ensure};
use distq_io::atomic_file::write_text_atomically;
use distq_runtime::bench::{BenchOptions, BenchReport, EnergySource};
use distq_runtime::energy::Method;
use distq_runtime::generate::Decoder;
use distq_runtime::onnx::proto::tensor_proto::DataLocation;
use distq_runtime::{Model, Session, Tensor};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Energy sources on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum EnergyArg {
    /// The best readable sensor (rapl, odpm, power-supply), else the model.
    Auto,
    /// Linux powercap RAPL package counters.
    Rapl,
    /// A discharging battery's current × voltage (whole device).
    PowerSupply,
    /// Pixel on-device power monitor rails.
    Odpm,
    /// The energy model (MACs by precision and bytes moved × Horowitz ISSCC 2014 energies).
    Model,
}

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// A second model to compare with (typically the fp32 original); ratios are this / other.
    #[arg(long)]
    vs: Option<PathBuf>,
    /// Inputs: an .npz named like the model inputs, or NAME=FILE.npy (repeatable). Without
    /// it inputs are synthesized from the declared shapes (seeded: floats uniform in [−1, 1),
    /// integers 0 or 1).
    #[arg(long)]
    input: Vec<String>,
    /// Shape for a synthesized input with symbolic dims: NAME=D0,D1,… (repeatable).
    #[arg(long)]
    shape: Vec<String>,
    /// Seed of synthesized inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Threads each op may split its work over [default: the performance cores]; above 1,
    /// the same runs on one thread too, and the scaling (p50 on 1 thread / p50 on these).
    #[arg(long)]
    threads: Option<usize>,
    /// The file's literal float arithmetic everywhere: 4-bit block weights in f32 instead of
    /// at int8 compute (see `Session::set_exact`).
    #[arg(long)]
    exact: bool,
    #[arg(long, value_enum, default_value = "auto")]
    energy: EnergyArg,
    /// Root of the sysfs tree the energy meters read.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Write the results as JSON to this file, or to stdout (instead of the table) when
    /// given without a path.
    #[arg(long, num_args = 0..=1)]
    json: Option<Option<PathBuf>>,
    /// Write an SVG chart of latency percentiles and energy.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A decoder with a KV cache (Optimum's names) is benchmarked as llama-bench does: a
    /// prompt of this many tokens in one prefill (pp)…
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// …then this many greedy tokens, one at a time (tg).
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
}

/// One model's measurements.
struct Measured {
    path: PathBuf,
    model_bytes: u64,
    load_ms: f64,
    inputs: Vec<(String, Tensor)>,
    report: BenchReport,
    /// With `--threads` above 1: the same runs on one thread, for the scaling.
    single_thread: Option<BenchReport>,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.iters >= 1, "--iters {}: at least one timed run is needed", args.iters);
    ensure!(args.threads != Some(0), "--threads must be at least 1");
    let energy = match args.energy {
        EnergyArg::Auto => EnergySource::Auto,
        EnergyArg::Rapl => EnergySource::Only(Method::Rapl),
        EnergyArg::PowerSupply => EnergySource::Only(Method::PowerSupply),
        EnergyArg::Odpm => EnergySource::Only(Method::Odpm),
        EnergyArg::Model => EnergySource::Only(Method::Model),
    };
    let (model, load_ms) = load(&args.model)?;
    if args.input.is_empty() && args.vs.is_none() && Decoder::accepts(&model) {
        let decoder = Decoder::new(model)?;
        ensure!(args.prompt_tokens >= 1 && args.gen_tokens >= 1, "--prompt-tokens and --gen-tokens must be at least 1");
        let threads = args.threads.unwrap_or_else(distq_runtime::performance_cores);
        let bench = DecoderBench {
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            iters: args.iters,
            warmup: args.warmup,
            threads,
        };
        let mut report = bench_decoder::run(&decoder, load_ms, &bench, matches!(args.json, Some(None)))?;
        report["machine"] = machine();
        let text = serde_json::to_string_pretty(&report)?;
        match &args.json {
            Some(None) => say!("{text}"),
            Some(Some(path)) => write_text_atomically(path, &text)?,
            None => {}
        }
        return Ok(());
    }
    let options = BenchOptions { iters: args.iters, warmup: args.warmup, energy, sysfs: args.sysfs.clone() };
    let this = measure(&args.model, (model, load_ms), &args, &options)?;
    let other = args.vs.as_ref().map(|p| measure(p, load(p)?, &args, &options)).transpose()?;
    let mut out = entry(&this);
    if let Some(o) = &other {
        out["vs"] = entry(o);
        out["ratios"] = json!({
            "speedup": o.report.latency.p50 / this.report.latency.p50,
            "size": this.model_bytes as f64 / o.model_bytes as f64,
            "energy": this.report.energy.joules_per_inference / o.report.energy.joules_per_inference,
        });
    }
    out["machine"] = machine();
    match &args.json {
        Some(None) => say!("{}", serde_json::to_string_pretty(&out)?),
        Some(Some(path)) => {
            let text = serde_json::to_string_pretty(&out)?;
            write_text_atomically(path, &text)?;
        }
        None => {}
    }
    if !matches!(args.json, Some(None)) {
        say!("{}", table(&this, other.as_ref()).trim_end());
    }
    if let Some(path) = &args.plot {
        let svg = svg(&this, other.as_ref());
        write_text_atomically(path, &svg)?;
    }
    Ok(())
}

/// The model at `path` and the milliseconds its load took.
fn load(path: &Path) -> Result<(Model, f64)> {
    let started = Instant::now();
    let model = Model::load(path).with_context(|| format!("{}: cannot load", path.display()))?;
    Ok((model, started.elapsed().as_secs_f64() * 1e3))
}

/// Benchmarks `model`, loaded from `path` in `load_ms`.
fn measure(path: &Path, (model, load_ms): (Model, f64), args: &Args, options: &BenchOptions) -> Result<Measured> {
    let model_bytes = bytes_on_disk(path, &model)?;
    let inputs = if args.input.is_empty() {
        let shapes: Vec<_> = args.shape.iter().map(|s| inputs::parse_shape(s)).collect::<Result<_>>()?;
        inputs::synthesize(model.inputs(), &shapes, args.seed).with_context(|| format!("{}: synthesizing inputs", path.display()))?
    } else {
        inputs::load(&args.input)?
    };
    let session = Session::new(model);
    session.set_exact(args.exact);
    let bench = |threads: usize| {
        session.set_threads(threads);
        session.benchmark(inputs.clone(), options).with_context(|| format!("benchmarking {} on {threads} threads", path.display()))
    };
    let threads = args.threads.unwrap_or_else(distq_runtime::performance_cores);
    let single_thread = if threads > 1 { Some(bench(1)?) } else { None };
    let report = bench(threads)?;
    Ok(Measured { path: path.to_path_buf(), model_bytes, load_ms, inputs, report, single_thread })
}

/// The model file plus every external data file it names.
fn bytes_on_disk(path: &Path, model: &Model) -> Result<u64> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).with_context(|| format!("{}: cannot stat", p.display()));
    let external = DataLocation::External as i32;
    let locations: BTreeSet<&str> = model
        .file()
        .proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| t.data_location == Some(external))
        .flat_map(|t| &t.external_data)
        .filter(|e| e.key.as_deref() == Some("location"))
        .filter_map(|e| e.value.as_deref())
        .collect();
    let dir = path.parent().unwrap_or(Path::new("."));
    locations.iter().try_fold(size(path)?, |total, l| Ok(total + size(&dir.join(l))?))
}

fn entry(m: &Measured) -> Value {
    let r = &m.report;
    let e = &r.energy.model;
    json!({
        "model": m.path,
        "model_bytes": m.model_bytes,
        "load_ms": m.load_ms,
        "latency_ms": {"p50": r.latency.p50, "p90": r.latency.p90, "p99": r.latency.p99, "mean": r.latency.mean, "min": r.latency.min, "max": r.latency.max},
        "throughput_per_s": r.throughput_per_s,
        "iters": r.iters,
        "warmup": r.warmup,
        "threads": r.threads,
        "scaling": m.single_thread.as_ref().map(|one| json!({"p50_1_thread": one.latency.p50, "speedup": one.latency.p50 / r.latency.p50})),
        "peak_rss_bytes": r.peak_rss_bytes,
        "arena_bytes": r.arena_bytes,
        "inputs": m.inputs.iter().map(|(n, t)| json!({"name": n, "dtype": t.dtype().name(), "shape": t.shape()})).collect::<Vec<_>>(),
        "energy": {
            "method": r.energy.method.name(),
            "joules_per_inference": r.energy.joules_per_inference,
            "source": r.energy.source,
            "notes": r.energy.notes,
            "model_estimate": {
                "joules": e.joules, "compute_joules": e.compute_joules, "memory_joules": e.memory_joules,
                "f32_macs": e.f32_macs, "int8_macs": e.int8_macs, "other_ops": e.other_ops,
                "weight_bytes": e.weight_bytes, "activation_bytes": e.activation_bytes,
            },
        },
    })
}

/// CPU and kernel facts, so a reader knows where figures came from.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").or_else(|| l.strip_prefix("Hardware")))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "cpu": cpu,
        "arch": std::env::consts::ARCH,
        "logical_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "int8_kernel": distq_runtime::kernels::best_gemm_u8i8().name(),
    })
}

fn table(this: &Measured, other: Option<&Measured>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let name = |m: &Measured| m.path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let _ = writeln!(
        s,
        "{:<22} {:>16} {:>16} {:>9}",
        "",
        name(this),
        other.map_or(String::new(), name),
        if other.is_some() { "ratio" } else { "" }
    );
    let mut row = |what: &str, f: Figure, digits: usize, ratio: Option<fn(f64, f64) -> f64>| {
        let a = f(this);
        let (b, r) = match other {
            Some(o) => (format!("{:.digits$}", f(o)), ratio.map_or(String::new(), |g| format!("{:.2}×", g(a, f(o))))),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(s, "{what:<22} {a:>16.digits$} {b:>16} {r:>9}");
    };
    let this_over: fn(f64, f64) -> f64 = |a, b| a / b;
    let other_over: fn(f64, f64) -> f64 = |a, b| b / a;
    row("size MB", |m| m.model_bytes as f64 / 1e6, 2, Some(this_over));
    row("load ms", |m| m.load_ms, 1, None);
    row("latency p50 ms", |m| m.report.latency.p50, 3, Some(other_over));
    row("latency p90 ms", |m| m.report.latency.p90, 3, None);
    row("latency p99 ms", |m| m.report.latency.p99, 3, None);
    row("latency mean ms", |m| m.report.latency.mean, 3, None);
    row("throughput /s", |m| m.report.throughput_per_s, 1, None);
    if this.single_thread.is_some() {
        row("p50 on 1 thread ms", single_thread_p50, 3, None);
        row("thread scaling ×", |m| single_thread_p50(m) / m.report.latency.p50, 2, None);
    }
    row("peak RSS MB", |m| m.report.peak_rss_bytes.unwrap_or(0) as f64 / 1e6, 1, None);
    row("arena MB", |m| m.report.arena_bytes as f64 / 1e6, 2, None);
    row("energy mJ/inference", |m| m.report.energy.joules_per_inference * 1e3, 3, Some(this_over));
    if other.is_some() {
        let _ = writeln!(s, "ratios: speed-up = other p50 / this p50; size and energy = this / other");
    }
    for m in std::iter::once(this).chain(other) {
        let e = &m.report.energy;
        let _ = writeln!(s, "energy of {}: {} ({})", name(m), e.method.name(), e.source);
        for note in &e.notes {
            let _ = writeln!(s, "  {note}");
        }
    }
    s
}

/// One figure of a measurement.
type Figure = fn(&Measured) -> f64;

/// The p50 of the same runs on one thread (with `--threads` above 1).
fn single_thread_p50(m: &Measured) -> f64 {
    m.single_thread.as_ref().map_or(f64::NAN, |r| r.latency.p50)
}

/// Bars of p50 / p90 / p99 latency and energy per inference, one colour per model.
fn svg(this: &Measured, other: Option<&Measured>) -> String {
    use std::fmt::Write as _;
    let models: Vec<&Measured> = std::iter::once(this).chain(other).collect();
    let metrics: [(&str, Figure); 4] = [
        ("p50 ms", |m| m.report.latency.p50),
        ("p90 ms", |m| m.report.latency.p90),
        ("p99 ms", |m| m.report.latency.p99),
        ("energy mJ", |m| m.report.energy.joules_per_inference * 1e3),
    ];
    let (w, row_h, label_w) = (720.0, 22.0, 110.0);
    let h = 40.0 + metrics.len() as f64 * (models.len() as f64 * row_h + 14.0);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n");
    let colors = ["#264653", "#e76f51"];
    for (i, m) in models.iter().enumerate() {
        let name = m.path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let _ = writeln!(s, "<text x='{}' y='18' fill='{}'>■ {name}</text>", label_w + 260.0 * i as f64, colors[i]);
    }
    let mut y = 34.0;
    for (label, f) in metrics {
        let max = models.iter().map(|m| f(m)).fold(f64::MIN_POSITIVE, f64::max);
        let _ = writeln!(s, "<text x='4' y='{:.1}'>{label}</text>", y + row_h * 0.75);
        for (i, m) in models.iter().enumerate() {
            let v = f(m);
            let bar = (w - label_w - 90.0) * v / max;
            let _ = writeln!(s, "<rect x='{label_w}' y='{y:.1}' width='{bar:.1}' height='{:.1}' fill='{}'/>", row_h - 4.0, colors[i]);
            let _ = writeln!(s, "<text x='{:.1}' y='{:.1}'>{v:.3}</text>", label_w + bar + 4.0, y + row_h * 0.65);
            y += row_h;
        }
        y += 14.0;
    }
    s.push_str("</svg>\n");
    s
}
