//! `distq generate`: text from a decoder, streamed to stdout as it is made; the speed
//! (prefill and decode tokens/s, time to first token) and peak memory after it, on stderr.

use anyhow::{Context, Result, ensure};
use distq_runtime::bench::peak_rss_bytes;
use distq_runtime::generate::text::TextModel;
use distq_runtime::generate::{Decoder, End, GenerateOptions, Generator, Sampling};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The decoder (an ONNX file with a KV cache in Optimum's names, its tokenizer beside it).
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user's message.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy; above 0, tokens are drawn from the softmax of logits / T.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Only the K most likely tokens are drawn from (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Only the most likely tokens adding up to P are drawn from.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Only tokens at least P times as likely as the most likely one are drawn from.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Text that ends the generation (not shown); may be repeated.
    #[arg(long)]
    stop: Vec<String>,
    /// Most tokens in the context, prompt included (default: what config.json says the model
    /// was trained for, else unbounded).
    #[arg(long)]
    max_context: Option<usize>,
    /// Threads (default: the performance cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.threads != Some(0), "--threads must be at least 1");
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, min_p: args.min_p, seed: args.seed };
    sampling.check()?;
    let text = TextModel::beside(&args.model)?;
    let decoder = Decoder::load(&args.model).with_context(|| format!("{}: cannot load", args.model.display()))?;
    decoder.session().set_threads(args.threads.unwrap_or_else(distq_runtime::performance_cores));
    let prompt = if args.chat { text.chat_prompt(&args.prompt)? } else { args.prompt.clone() };
    let prompt = text.encode(&prompt)?;
    ensure!(!prompt.is_empty(), "the prompt is empty");
    let mut generator = Generator::new(&decoder);
    if let Some(context) = args.max_context.or(text.context) {
        generator.set_max_context(context);
    }
    let options = GenerateOptions { max_tokens: args.max_tokens, sampling, stop_tokens: text.stop_tokens().to_vec() };
    let mut out = std::io::stdout().lock();
    let (done, _) = text.generate(&mut generator, &prompt, &options, args.stop.clone(), |piece| {
        // A closed stdout (`| head`) ends the generation like a stop string.
        out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    let _ = writeln!(out);
    let decode: f64 = done.decode.iter().map(|d| d.as_secs_f64()).sum();
    let end = match done.end {
        End::MaxTokens => "the maximum tokens",
        End::StopToken => "an end-of-sequence token",
        End::Cancelled => "a stop string",
    };
    eprintln!("prompt tokens          {}", done.prompt_tokens);
    eprintln!("generated tokens       {} (ended by {end})", done.tokens.len());
    eprintln!("prefill tokens/s       {:.1}", done.prompt_tokens as f64 / done.prefill.as_secs_f64());
    eprintln!("decode tokens/s        {:.1}", done.decode.len() as f64 / decode.max(f64::MIN_POSITIVE));
    eprintln!("time to first token ms {:.1}", done.prefill.as_secs_f64() * 1e3);
    eprintln!("peak RSS MB            {:.1}", peak_rss_bytes().unwrap_or(0) as f64 / 1e6);
    Ok(())
}
