//! `distq bench` on a decoder with a KV cache, the way `llama-bench` reports: prompt
//! processing (a prompt of `--prompt-tokens` in one prefill) and text generation
//! (`--gen-tokens` greedy tokens one at a time), tokens per second, median over the runs.

use crate::cli::say;
use anyhow::Result;
use distq_runtime::bench::peak_rss_bytes;
use distq_runtime::generate::{Decoder, GenerateOptions, Generator};
use serde_json::{Value, json};

/// What to run.
pub struct DecoderBench {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub iters: usize,
    pub warmup: usize,
    pub threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark; returns its JSON and prints a table unless `quiet`.
pub fn run(decoder: &Decoder, load_ms: f64, b: &DecoderBench, quiet: bool) -> Result<Value> {
    let session = decoder.session();
    session.set_threads(b.threads);
    // A prompt of ordinary token ids (the speed does not depend on which).
    let prompt: Vec<i64> = (0..b.prompt_tokens as i64).map(|i| 100 + (i * 7919) % 10_000).collect();
    let options = GenerateOptions { max_tokens: b.gen_tokens, ..GenerateOptions::default() };
    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let plans_before = session.plans_made();
    for _ in 0..b.warmup {
        Generator::new(decoder).generate(&prompt, &options, |_| true)?;
    }
    let plans_warm = session.plans_made();
    let mut planning = Vec::new();
    for _ in 0..b.iters {
        let mut generator = Generator::new(decoder);
        let planned = session.planning_time();
        let mut prefill_planned = None;
        let done = generator.generate(&prompt, &options, |_| {
            prefill_planned.get_or_insert(session.planning_time());
            true
        })?;
        let decode: f64 = done.decode.iter().map(|d| d.as_secs_f64()).sum();
        let decode_planning = session.planning_time() - prefill_planned.unwrap_or(planned);
        planning.push(decode_planning.as_secs_f64() * 1e6 / done.decode.len().max(1) as f64);
        pp.push(b.prompt_tokens as f64 / done.prefill.as_secs_f64());
        tg.push(done.decode.len() as f64 / decode.max(f64::MIN_POSITIVE));
        ttft.push(done.prefill.as_secs_f64() * 1e3);
    }
    let report = json!({
        "load_ms": load_ms,
        "threads": b.threads,
        "prompt_tokens": b.prompt_tokens,
        "gen_tokens": b.gen_tokens,
        "pp_tokens_per_s": median(pp),
        "tg_tokens_per_s": median(tg),
        "time_to_first_token_ms": median(ttft),
        "plans_made_in_warmup": plans_warm - plans_before,
        "plans_made_after_warmup": session.plans_made() - plans_warm,
        "planning_us_per_decode_step": median(planning),
        "cache_appended_in_place": decoder.appends_in_place(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if !quiet {
        say!("threads                {}", b.threads);
        say!("pp{:<4} tokens/s       {:.1}", b.prompt_tokens, report["pp_tokens_per_s"].as_f64().unwrap_or(0.0));
        say!("tg{:<4} tokens/s       {:.1}", b.gen_tokens, report["tg_tokens_per_s"].as_f64().unwrap_or(0.0));
        say!("time to first token ms {:.1}", report["time_to_first_token_ms"].as_f64().unwrap_or(0.0));
        say!("plans (warm-up, after) {}, {}", report["plans_made_in_warmup"], report["plans_made_after_warmup"]);
        say!("planning µs per token  {:.1}", report["planning_us_per_decode_step"].as_f64().unwrap_or(0.0));
        say!("cache appended in place {}", decoder.appends_in_place());
        say!("peak RSS MB            {:.1}", peak_rss_bytes().unwrap_or(0) as f64 / 1e6);
    }
    Ok(report)
}
