//! Argument parsing and dispatch; one file per subcommand.

mod bench;
mod inspect;
mod quantize;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// distq: distill, quantize and run ONNX models on phones.
#[derive(Parser)]
#[command(name = "distq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's opset, inputs, outputs, op histogram, parameters and bytes per dtype.
    Inspect(inspect::Args),
    /// Run a model on inputs from .npz/.npy files and print or save its outputs.
    Run(run::Args),
    /// Quantize a model's weights to QDQ ONNX: int8, int4, fp16, or mixed per layer from
    /// measured sensitivity.
    Quantize(quantize::Args),
    /// Benchmark a model (optionally against another): load time, latency percentiles,
    /// throughput, peak memory, size and energy per inference.
    Bench(bench::Args),
}

/// Writes one line to stdout. A closed pipe (`distq inspect m.onnx | head`) is not an
/// error worth a panic: the rest of the output is dropped.
pub(crate) fn emit(line: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// `println!` that tolerates a closed stdout (see [`emit`]).
macro_rules! say {
    ($($arg:tt)*) => { $crate::cli::emit(format!($($arg)*)) };
}
pub(crate) use say;

/// Entry point of the binary: parses arguments, runs the subcommand, prints errors.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
