//! Argument parsing and dispatch; one file per subcommand.

mod bench;
mod bench_decoder;
pub mod convert;
pub mod demo;
pub mod distill;
mod generate;
mod import;
mod inspect;
mod progress;
pub mod quantize;
mod run;
pub mod train;

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
    /// Train an ONNX model's weights on labelled data (cross-entropy, Adam).
    Train(train::Args),
    /// Distill a frozen teacher into a student (given, or derived from the teacher).
    Distill(distill::Args),
    /// Distill, search mixed precision, fine-tune quantization-aware, and write the
    /// quantized student with a report.
    Convert(convert::Args),
    /// The whole pipeline on the bundled Fashion-MNIST subset: distill, quantize, measure.
    Demo(demo::Args),
    /// Import a pre-trained language model (a Llama-family GGUF file) as an ONNX decoder
    /// with a KV cache.
    Import(import::Args),
    /// Generate text with a decoder (an imported language model), streamed as it is made,
    /// then its speed and peak memory.
    Generate(generate::Args),
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
        Command::Train(a) => train::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Import(a) => import::run(a),
        Command::Generate(a) => generate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique ids and groups across flattened flag sets),
    /// which otherwise fire only when a subcommand is first parsed.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
