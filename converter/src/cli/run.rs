//! `distq run MODEL --input IN.npz [--output OUT.npz]`.

use super::inspect::dims_text;
use super::say;
use anyhow::{Context, Result, bail};
use distq_io::npz::write_npz;
use distq_runtime::bench::peak_rss_bytes;
use distq_runtime::{Session, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// Inputs: an .npz whose arrays are named like the model inputs, or NAME=FILE.npy
    /// (repeatable).
    #[arg(long, short, required = true)]
    input: Vec<String>,
    /// Write the outputs to this .npz (arrays named like the model outputs).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Run this many times and report the median (the first run plans and warms up).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print time per op type (over all runs).
    #[arg(long)]
    profile: bool,
    /// Threads each op may split its work over [default: the performance cores].
    #[arg(long)]
    threads: Option<usize>,
    /// The file's literal float arithmetic everywhere: 4-bit block weights in f32 instead of
    /// at int8 compute (see `Session::set_exact`).
    #[arg(long)]
    exact: bool,
}

fn summary(t: &Tensor) -> String {
    let values: Vec<f64> = match t.dtype() {
        distq_runtime::DataType::F32 => t.as_slice::<f32>().map(|v| v.iter().map(|&x| x as f64).collect()).unwrap_or_default(),
        distq_runtime::DataType::I64 => t.as_slice::<i64>().map(|v| v.iter().map(|&x| x as f64).collect()).unwrap_or_default(),
        _ => Vec::new(),
    };
    if values.is_empty() {
        return String::new();
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let head: Vec<String> = values.iter().take(4).map(|v| format!("{v:.5}")).collect();
    format!("mean {mean:.6}  first [{}{}]", head.join(", "), if values.len() > 4 { ", …" } else { "" })
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    anyhow::ensure!(args.threads != Some(0), "--threads must be at least 1");
    let t0 = Instant::now();
    let session = Session::load(&args.model)?;
    if let Some(threads) = args.threads {
        session.set_threads(threads);
    }
    session.set_exact(args.exact);
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs = crate::inputs::load(&args.input)?;
    for i in session.model().inputs() {
        if !inputs.iter().any(|(n, _)| n == &i.name) {
            bail!(
                "input '{}' ({} {}) is missing from {}",
                i.name,
                i.dtype.map_or("?", |d| d.name()),
                dims_text(&i.dims),
                args.input.join(", ")
            );
        }
    }
    let mut times = Vec::with_capacity(args.repeat);
    let mut outputs = Vec::new();
    let mut per_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for _ in 0..args.repeat {
        let t = Instant::now();
        let (out, steps) =
            session.run_profiled(inputs.clone(), args.profile).with_context(|| format!("running {}", args.model.display()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        outputs = out;
        for s in steps {
            let e = per_op.entry(s.op_type).or_default();
            e.0 += s.duration.as_secs_f64() * 1e3 / args.repeat as f64;
            e.1 += 1;
        }
    }
    let shapes: Vec<_> = session
        .model()
        .inputs()
        .iter()
        .filter_map(|i| inputs.iter().find(|(n, _)| n == &i.name))
        .map(|(_, t)| (t.dtype(), t.shape().to_vec()))
        .collect();
    let plan = session.plan_for(&shapes)?;
    let first_ms = times[0];
    times.sort_by(f64::total_cmp);
    for (name, t) in &outputs {
        say!("{name}: {} {:?}  {}", t.dtype(), t.shape(), summary(t));
    }
    let median = times[times.len() / 2];
    say!(
        "load {load_ms:.1} ms, first run {first_ms:.1} ms{}, peak RSS {:.1} MB",
        if args.repeat > 1 { format!(", median of {} runs {median:.1} ms", args.repeat) } else { String::new() },
        peak_rss_bytes().unwrap_or(0) as f64 / 1e6
    );
    say!(
        "plan: {} steps ({} nodes folded at plan time), activation arena {:.2} MB ({:.2} MB without buffer reuse)",
        plan.num_steps(),
        plan.folded_nodes,
        plan.arena_bytes as f64 / 1e6,
        plan.unshared_bytes as f64 / 1e6
    );
    if args.profile {
        let mut rows: Vec<_> = per_op.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        say!("{:<24} {:>10} {:>8}", "op", "ms/run", "nodes");
        for (op, (ms, n)) in rows {
            say!("{op:<24} {ms:>10.3} {:>8}", n / args.repeat);
        }
    }
    if let Some(path) = &args.output {
        write_npz(path, &outputs)?;
        say!("wrote {}", path.display());
    }
    Ok(())
}
