//! Text generation (cargo features `capi` and `text`): a generator loads a decoder and the
//! text files beside it (what `distq import` writes), and each call streams the text made
//! after a prompt to a callback, which can stop it.

use super::handles::Handles;
use super::{DistqStatus, Failure, c_str, entry, out_ptr};
use crate::generate::text::TextModel;
use crate::generate::{Decoder, End, GenerateOptions, Generator, Sampling};
use std::ffi::{c_char, c_void};

/// A language model ready to generate text (opaque: a `DistqGenerator*` is a
/// generation-checked handle). Create with `distq_generator_load`; free with
/// `distq_generator_free`. Several threads may generate with one generator at once.
pub struct DistqGenerator {
    decoder: Decoder,
    text: TextModel,
}

/// The live generators.
static GENERATORS: Handles<DistqGenerator> = Handles::new(3);

/// How `distq_generate` runs; `distq_generate_options_default` gives greedy decoding of up to
/// 256 tokens.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DistqGenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// 0 picks the most likely token (greedy); above 0, tokens are drawn at this temperature.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens are candidates (0: all).
    pub top_k: u32,
    /// Only the most likely tokens whose probabilities add up to `top_p` (1: all).
    pub top_p: f32,
    /// Only tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f32,
    /// Seed of the draws: the same seed gives the same text.
    pub seed: u64,
    /// Non-zero: the prompt is a user's message, put in the model's chat template.
    pub chat: i32,
    /// Threads (0: the performance cores).
    pub threads: u32,
    /// Most tokens in the context, prompt included (0: what the model's config.json says,
    /// else unbounded); a longer generation fails with a message saying so.
    pub max_context: u32,
}

/// Why a generation ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistqGenerateEnd {
    /// `max_tokens` were made.
    MaxTokens = 0,
    /// The model ended its text (an end-of-sequence token).
    StopToken = 1,
    /// The callback returned non-zero.
    Stopped = 2,
}

/// What a generation made and how fast.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DistqGenerateStats {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// The prompt's pass: the time to the first token, in milliseconds.
    pub time_to_first_token_ms: f64,
    /// Tokens per second of the token-by-token decoding (0 when nothing was decoded).
    pub decode_tokens_per_s: f64,
    /// Why it ended.
    pub end: DistqGenerateEnd,
}

/// Receives each piece of generated text as it is made: `len` bytes of UTF-8 at `text` (not
/// NUL-terminated, valid during the call only) and the `user_data` given to `distq_generate`.
/// Returns 0 to go on, anything else to stop the generation.
pub type DistqTextCallback = Option<unsafe extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> i32>;

/// Greedy decoding of up to 256 tokens, no chat template, the performance cores.
#[unsafe(no_mangle)]
pub extern "C" fn distq_generate_options_default() -> DistqGenerateOptions {
    let sampling = Sampling::default();
    DistqGenerateOptions {
        max_tokens: 256,
        temperature: sampling.temperature,
        top_k: sampling.top_k as u32,
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        seed: sampling.seed,
        chat: 0,
        threads: 0,
        max_context: 0,
    }
}

/// Loads the decoder at `model_path` (an ONNX file with a KV cache in Optimum's names) and
/// the tokenizer files beside it (`tokenizer.json`, and `tokenizer_config.json`,
/// `generation_config.json`, `config.json` when present).
///
/// # Safety
/// `model_path` must be a NUL-terminated string; `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_generator_load(model_path: *const c_char, out: *mut *mut DistqGenerator) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        // Safety: the caller's contract.
        let path = unsafe { c_str(model_path, "model_path") }?;
        let text = TextModel::beside(path.as_ref())?;
        let decoder = Decoder::load(path)?;
        let handle = GENERATORS
            .insert(DistqGenerator { decoder, text })
            .ok_or_else(|| Failure::new(DistqStatus::InvalidArgument, "too many live generators"))?;
        *out = handle as *mut DistqGenerator;
        Ok(())
    })
}

/// Generates text after `prompt` (UTF-8), calling `on_text` (may be NULL) with each piece as
/// it is made, until `options->max_tokens`, the model's end of text, or `on_text` returning
/// non-zero. `options` NULL means the defaults. `stats` (may be NULL) receives what was made.
///
/// # Safety
/// `prompt` must be a NUL-terminated string; `options` and `stats`, when not NULL, must point
/// to a readable options struct and writable storage; `on_text` must be safe to call with
/// `user_data` from this thread for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_generate(
    generator: *const DistqGenerator,
    prompt: *const c_char,
    options: *const DistqGenerateOptions,
    on_text: DistqTextCallback,
    user_data: *mut c_void,
    stats: *mut DistqGenerateStats,
) -> DistqStatus {
    entry(|| {
        let model = GENERATORS.resolve(generator, "generator")?;
        // Safety: the caller's contract.
        let prompt = unsafe { c_str(prompt, "prompt") }?;
        // Safety: the caller's contract (a readable struct when not NULL).
        let options = unsafe { options.as_ref() }.copied().unwrap_or_else(|| distq_generate_options_default());
        let sampling = Sampling {
            temperature: options.temperature,
            top_k: options.top_k as usize,
            top_p: options.top_p,
            min_p: options.min_p,
            seed: options.seed,
        };
        sampling.check().map_err(|e| Failure::new(DistqStatus::InvalidArgument, e.to_string()))?;
        let text = &model.text;
        let prompt = if options.chat != 0 { text.chat_prompt(prompt)? } else { prompt.to_string() };
        let ids = text.encode(&prompt)?;
        if ids.is_empty() {
            return Err(Failure::new(DistqStatus::InvalidArgument, "the prompt is empty"));
        }
        if options.threads > 0 {
            model.decoder.session().set_threads(options.threads as usize);
        }
        let mut generator = Generator::new(&model.decoder);
        if let Some(context) = Some(options.max_context as usize).filter(|&c| c > 0).or(text.context) {
            generator.set_max_context(context);
        }
        let run = GenerateOptions { max_tokens: options.max_tokens as usize, sampling, stop_tokens: text.stop_tokens().to_vec() };
        let (done, _) = text.generate(&mut generator, &ids, &run, Vec::new(), |piece| match on_text {
            // Safety: the caller's contract; the bytes live until the callback returns.
            Some(callback) => unsafe { callback(piece.as_ptr().cast(), piece.len(), user_data) == 0 },
            None => true,
        })?;
        // Safety: the caller's contract (writable storage when not NULL).
        if let Some(stats) = unsafe { stats.as_mut() } {
            let decode: f64 = done.decode.iter().map(|d| d.as_secs_f64()).sum();
            *stats = DistqGenerateStats {
                prompt_tokens: done.prompt_tokens as u32,
                generated_tokens: done.tokens.len() as u32,
                time_to_first_token_ms: done.prefill.as_secs_f64() * 1e3,
                decode_tokens_per_s: if decode > 0.0 { done.decode.len() as f64 / decode } else { 0.0 },
                end: match done.end {
                    End::MaxTokens => DistqGenerateEnd::MaxTokens,
                    End::StopToken => DistqGenerateEnd::StopToken,
                    End::Cancelled => DistqGenerateEnd::Stopped,
                },
            };
        }
        Ok(())
    })
}

/// Frees a generator (NULL, or a freed or forged handle, is ignored). Generations running on
/// it in other threads finish first.
#[unsafe(no_mangle)]
pub extern "C" fn distq_generator_free(generator: *mut DistqGenerator) {
    // Dropping a generator does not panic, but nothing may unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| GENERATORS.remove(generator as usize)));
}
