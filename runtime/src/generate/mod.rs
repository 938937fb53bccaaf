//! Text generation with an ONNX decoder that has a KV cache, in Optimum's names (what
//! `distq import` writes): inputs `input_ids`, `attention_mask`, `position_ids` (optional)
//! and `past_key_values.{i}.key` / `.value`; outputs `logits` and `present.{i}.key` / `.value`.
//!
//! A [`Decoder`] is the model made ready for that: its cache token-major (see
//! `token_major`), so that each run appends to the cache in place. A [`Generator`] holds one
//! sequence's cache over it: the prompt runs in one pass (prefill), then one token per run
//! (decode), each run's `present` values becoming the next run's past. The session plans the
//! growing past once (see [`Session::plans_made`]).

mod sampling;
mod stop;
#[cfg(feature = "text")]
pub mod text;
mod token_major;

pub use sampling::{Sampler, Sampling};
pub use stop::StopStrings;

use crate::error::{Error, Result};
use crate::graph::{Dim, ValueInfo};
use crate::session::{Model, Session};
use crate::tensor::{DataType, Tensor};
use std::path::Path;
use std::time::{Duration, Instant};

/// A decoder's cache layout, read from its declared inputs.
#[derive(Clone, Debug)]
struct Layout {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    positions: bool,
    /// The cache is `[past, batch, kv_heads, head_dim]` (else Optimum's `[batch, kv_heads, past,
    /// head_dim]`).
    token_major: bool,
}

impl Layout {
    fn of(inputs: &[ValueInfo]) -> Result<Layout> {
        let bad = |reason: String| Error::InvalidModel(format!("not a decoder with a KV cache: {reason}"));
        for name in ["input_ids", "attention_mask"] {
            if !inputs.iter().any(|i| i.name == name) {
                return Err(bad(format!("no input '{name}'")));
            }
        }
        let layers = inputs.iter().filter(|i| i.name.starts_with("past_key_values.") && i.name.ends_with(".key")).count();
        let first =
            inputs.iter().find(|i| i.name == "past_key_values.0.key").ok_or_else(|| bad("no input 'past_key_values.0.key'".into()))?;
        let fixed = |d: usize| match first.dims.as_ref().and_then(|dims| dims.get(d).cloned()) {
            Some(Dim::Fixed(n)) => Ok(n),
            other => Err(bad(format!("dim {d} of 'past_key_values.0.key' is {other:?}, a fixed size is needed"))),
        };
        let layout = Layout {
            layers,
            kv_heads: fixed(1)?,
            head_dim: fixed(3)?,
            positions: inputs.iter().any(|i| i.name == "position_ids"),
            token_major: false,
        };
        for i in 0..layers {
            for kind in ["key", "value"] {
                let name = format!("past_key_values.{i}.{kind}");
                if !inputs.iter().any(|x| x.name == name) {
                    return Err(bad(format!("no input '{name}'")));
                }
            }
        }
        Ok(layout)
    }

    /// The shape of a cache holding `past` tokens of `batch` sequences.
    fn cache_shape(&self, past: usize, batch: usize) -> Vec<usize> {
        if self.token_major { vec![past, batch, self.kv_heads, self.head_dim] } else { vec![batch, self.kv_heads, past, self.head_dim] }
    }
}

/// A decoder model ready to generate with: one per model, shared by any number of
/// [`Generator`]s (sequences).
///
/// ```no_run
/// let decoder = distq_runtime::generate::Decoder::load("decoder/model.onnx")?;
/// decoder.session().set_threads(2);
/// assert!(decoder.appends_in_place());
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub struct Decoder {
    session: Session,
    layout: Layout,
}

impl Decoder {
    /// Makes `model` a decoder; fails when it is not one in Optimum's names. When every
    /// layer's `present` is the plain `Concat(past, new)` over the sequence axis (what
    /// `distq import` and Optimum's exports write), the cache is made token-major so that
    /// runs append to it in place; otherwise it is kept as the graph has it, and each run
    /// copies it (see [`Decoder::appends_in_place`]).
    pub fn new(model: Model) -> Result<Decoder> {
        let mut layout = Layout::of(model.inputs())?;
        let model = match token_major::token_major(model.graph(), layout.layers) {
            Some(graph) => {
                layout.token_major = true;
                model.with_graph(graph)
            }
            None => model,
        };
        Ok(Decoder { session: Session::new(model), layout })
    }

    /// [`Decoder::new`] on the ONNX file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Decoder> {
        Decoder::new(Model::load(path)?)
    }

    /// Whether `model` is a decoder [`Decoder::new`] accepts.
    pub fn accepts(model: &Model) -> bool {
        Layout::of(model.inputs()).is_ok()
    }

    /// The session the decoder runs in (threads, plans made).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether runs append the new tokens' keys and values to the cache in place (else the
    /// graph's Concat copies the whole cache on every run).
    pub fn appends_in_place(&self) -> bool {
        self.layout.token_major
    }
}

/// How [`Generator::generate`] runs.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How each token is picked.
    pub sampling: Sampling,
    /// Tokens that end the generation (they are not emitted).
    pub stop_tokens: Vec<i64>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 32, sampling: Sampling::default(), stop_tokens: Vec::new() }
    }
}

/// What a generation made and what it took.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated tokens (without the prompt, without a stop token).
    pub tokens: Vec<i64>,
    /// Tokens of the prompt (the prefill's).
    pub prompt_tokens: usize,
    /// The prefill's time: the time to the first token.
    pub prefill: Duration,
    /// Every decode run's time, in order.
    pub decode: Vec<Duration>,
    /// Why it ended.
    pub end: End,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `max_tokens` were made.
    MaxTokens,
    /// A stop token was picked.
    StopToken,
    /// The callback asked to stop.
    Cancelled,
}

/// The decoding state of one sequence, or of a batch of them run together, over a
/// [`Decoder`].
pub struct Generator<'d> {
    decoder: &'d Decoder,
    /// Per layer, key then value, in the decoder's cache layout.
    cache: Vec<Tensor>,
    past: usize,
    /// Per sequence, the attention mask of the cached tokens (0: padding before a shorter
    /// prompt).
    masks: Vec<Vec<i64>>,
    max_context: usize,
}

impl<'d> Generator<'d> {
    /// A generator of one sequence with an empty cache.
    pub fn new(decoder: &'d Decoder) -> Generator<'d> {
        Generator::batch(decoder, 1)
    }

    /// A generator of `sequences` sequences run together (at least 1), each row of every run
    /// one sequence's: prompts of different lengths are padded before their start and masked.
    pub fn batch(decoder: &'d Decoder, sequences: usize) -> Generator<'d> {
        let mut g = Generator { decoder, cache: Vec::new(), past: 0, masks: vec![Vec::new(); sequences.max(1)], max_context: usize::MAX };
        g.reset();
        g
    }

    /// Refuses runs that would make the context (cached and new tokens) longer than `tokens`.
    pub fn set_max_context(&mut self, tokens: usize) {
        self.max_context = tokens;
    }

    /// Tokens in the cache.
    pub fn past(&self) -> usize {
        self.past
    }

    /// Empties the cache (a new conversation).
    pub fn reset(&mut self) {
        let empty = Tensor::from_vec(self.decoder.layout.cache_shape(0, self.masks.len()), Vec::<f32>::new()).expect("an empty tensor");
        self.cache = vec![empty; 2 * self.decoder.layout.layers];
        self.past = 0;
        self.masks.iter_mut().for_each(Vec::clear);
    }

    /// Tokens the cache holds room for before its storage must grow (a token-major cache
    /// grows in place, doubling; Optimum's layout is copied on every run, so it has none
    /// spare).
    pub fn cache_room(&self) -> usize {
        let per_token = self.masks.len() * self.decoder.layout.kv_heads * self.decoder.layout.head_dim;
        self.cache.iter().map(|t| t.capacity() / per_token.max(1)).min().unwrap_or(0)
    }

    /// Makes room in the cache for `tokens` in all, so that runs up to that length do not
    /// move it (only a token-major cache keeps the room between runs).
    pub fn reserve(&mut self, tokens: usize) {
        let layout = &self.decoder.layout;
        let (past, batch) = (self.past, self.masks.len());
        let per_token = batch * layout.kv_heads * layout.head_dim;
        for t in self.cache.iter_mut() {
            let taken = std::mem::replace(t, Tensor::scalar(0f32));
            let mut v = taken.into_vec::<f32>().expect("the cache is float");
            v.reserve_exact((tokens * per_token).saturating_sub(v.len()));
            *t = Tensor::from_vec(layout.cache_shape(past, batch), v).expect("the same elements");
        }
    }

    /// Runs `tokens` after the cached ones and caches them; returns the logits after the last.
    /// For a generator of one sequence (see [`Generator::feed_batch`]).
    pub fn feed(&mut self, tokens: &[i64]) -> Result<Vec<f32>> {
        if self.masks.len() != 1 {
            return Err(Error::Input {
                name: "input_ids".into(),
                reason: format!("one sequence's tokens for {} sequences", self.masks.len()),
            });
        }
        Ok(self.feed_batch(&[tokens])?.remove(0))
    }

    /// Runs each sequence's `tokens` after its cached ones (one slice per sequence, at least
    /// one token each; shorter ones are padded before their start and masked) and caches them;
    /// returns each sequence's logits after its last token.
    pub fn feed_batch(&mut self, tokens: &[&[i64]]) -> Result<Vec<Vec<f32>>> {
        let batch = self.masks.len();
        let input_error = |reason: String| Error::Input { name: "input_ids".into(), reason };
        if tokens.len() != batch {
            return Err(input_error(format!("tokens of {} sequences for {batch}", tokens.len())));
        }
        if tokens.iter().any(|t| t.is_empty()) {
            return Err(input_error("no tokens to run".into()));
        }
        let length = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
        let total = self.past + length;
        if total > self.max_context {
            return Err(input_error(format!(
                "{} cached and {length} new tokens exceed the maximum context of {}",
                self.past, self.max_context
            )));
        }
        // Each row padded before its tokens; positions count each sequence's own tokens
        // (padding gets 1, as Hugging Face's models give it: masked, it matters nowhere).
        let (mut ids, mut positions) = (Vec::with_capacity(batch * length), Vec::with_capacity(batch * length));
        for (row, mask) in tokens.iter().zip(&mut self.masks) {
            let padding = length - row.len();
            let mut seen = mask.iter().sum::<i64>();
            ids.extend(std::iter::repeat_n(0, padding).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, row.len())));
            positions.extend(std::iter::repeat_n(1, padding));
            positions.extend(row.iter().map(|_| {
                seen += 1;
                seen - 1
            }));
        }
        let layout = &self.decoder.layout;
        let rows = |v: Vec<i64>| Tensor::from_vec(vec![batch, v.len() / batch], v).expect("rows of ids");
        let mask = self.masks.concat();
        let mut inputs = vec![("input_ids".to_string(), rows(ids)), ("attention_mask".to_string(), rows(mask))];
        if layout.positions {
            inputs.push(("position_ids".to_string(), rows(positions)));
        }
        for (i, t) in self.cache.drain(..).enumerate() {
            inputs.push((format!("past_key_values.{}.{}", i / 2, if i % 2 == 0 { "key" } else { "value" }), t));
        }
        let outputs = self.decoder.session.run(inputs);
        let mut outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                // The cache went into the run: start over rather than keep a broken one.
                self.reset();
                return Err(e);
            }
        };
        let mut logits = None;
        let mut cache = vec![None; 2 * layout.layers];
        for (name, t) in outputs.drain(..) {
            if name == "logits" {
                logits = Some(t);
            } else if let Some((layer, kind)) = name.strip_prefix("present.").and_then(|r| r.split_once('.')) {
                let layer: usize = layer.parse().map_err(|_| Error::InvalidModel(format!("output '{name}' names no layer")))?;
                if layer < layout.layers {
                    cache[2 * layer + (kind == "value") as usize] = Some(t);
                }
            }
        }
        let missing = |what: String| Error::InvalidModel(format!("the decoder gave no output '{what}'"));
        self.cache =
            cache.into_iter().enumerate().map(|(i, t)| t.ok_or_else(|| missing(format!("present.{}.*", i / 2)))).collect::<Result<_>>()?;
        self.past = total;
        let logits = logits.ok_or_else(|| missing("logits".into()))?;
        if logits.dtype() != DataType::F32 || logits.shape().len() != 3 || logits.shape()[..2] != [batch, length] {
            return Err(Error::InvalidModel(format!(
                "logits are {}{:?}; float [{batch}, {length}, vocabulary] expected",
                logits.dtype(),
                logits.shape()
            )));
        }
        // Each row's last position: its last token (padding comes first).
        let (all, vocabulary) = (logits.as_slice::<f32>()?, logits.shape()[2]);
        Ok((0..batch).map(|b| all[((b + 1) * length - 1) * vocabulary..][..vocabulary].to_vec()).collect())
    }

    /// Generates after `prompt` (run after what is cached): prefill, then a token at a time.
    /// `on_token` sees each token as it is made and returns `false` to stop.
    ///
    /// ```no_run
    /// use distq_runtime::generate::{GenerateOptions, Generator};
    /// let decoder = distq_runtime::generate::Decoder::load("decoder/model.onnx")?;
    /// let mut generator = Generator::new(&decoder);
    /// let done = generator.generate(&[504, 3575, 282, 4649, 314], &GenerateOptions::default(), |token| {
    ///     println!("{token}");
    ///     true
    /// })?;
    /// println!("{} tokens, first after {:?}", done.tokens.len(), done.prefill);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn generate(&mut self, prompt: &[i64], options: &GenerateOptions, mut on_token: impl FnMut(i64) -> bool) -> Result<Generation> {
        Ok(self.generate_batch(&[prompt], options, |_, token| on_token(token))?.remove(0))
    }

    /// Generates after each sequence's prompt at once (one prompt per sequence of the
    /// generator), the prompts in one run, then a token of every sequence per run. Each
    /// sequence gets the tokens it would alone (its own sampler, from the same seed); a
    /// sequence that ends (a stop token, `max_tokens`, or `on_token(sequence, token)`
    /// returning false) is run along until all have, its tokens no longer picked.
    pub fn generate_batch(
        &mut self,
        prompts: &[&[i64]],
        options: &GenerateOptions,
        mut on_token: impl FnMut(usize, i64) -> bool,
    ) -> Result<Vec<Generation>> {
        let mut samplers: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(options.sampling.clone())).collect();
        let mut done: Vec<Generation> = prompts
            .iter()
            .map(|p| Generation {
                tokens: Vec::new(),
                prompt_tokens: p.len(),
                prefill: Duration::ZERO,
                decode: Vec::new(),
                end: End::MaxTokens,
            })
            .collect();
        let started = Instant::now();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        self.reserve((self.past + longest + options.max_tokens).min(self.max_context));
        let mut logits = self.feed_batch(prompts)?;
        let prefill = started.elapsed();
        let mut active: Vec<bool> = vec![options.max_tokens > 0; prompts.len()];
        let mut last: Vec<i64> = prompts.iter().map(|p| p.last().copied().unwrap_or(0)).collect();
        done.iter_mut().for_each(|d| d.prefill = prefill);
        while active.iter().any(|&a| a) {
            for (s, (d, active)) in done.iter_mut().zip(active.iter_mut()).enumerate().filter(|(_, (_, a))| **a) {
                let token = samplers[s].pick(&logits[s]) as i64;
                if options.stop_tokens.contains(&token) {
                    (d.end, *active) = (End::StopToken, false);
                    continue;
                }
                d.tokens.push(token);
                last[s] = token;
                if !on_token(s, token) {
                    (d.end, *active) = (End::Cancelled, false);
                } else if d.tokens.len() == options.max_tokens {
                    *active = false;
                }
            }
            if !active.iter().any(|&a| a) {
                break;
            }
            let started = Instant::now();
            let step: Vec<[i64; 1]> = last.iter().map(|&t| [t]).collect();
            logits = self.feed_batch(&step.iter().map(|t| t.as_slice()).collect::<Vec<_>>())?;
            let took = started.elapsed();
            for (d, _) in done.iter_mut().zip(&active).filter(|(_, a)| **a) {
                d.decode.push(took);
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_major_cache_grows_in_place() {
        let decoder = Decoder::new(Model::from_bytes(crate::testing::bigram_decoder(false)).unwrap()).unwrap();
        let mut generator = Generator::new(&decoder);
        generator.reserve(16);
        let storage = |g: &Generator| g.cache.iter().map(|t| t.as_slice::<f32>().unwrap().as_ptr()).collect::<Vec<_>>();
        let reserved = storage(&generator);
        generator.feed(&[1, 2]).unwrap();
        for token in 0..10 {
            generator.feed(&[token % 8]).unwrap();
        }
        // Twelve runs appended in the storage reserved before the first: nothing was copied.
        assert_eq!(storage(&generator), reserved);
        let fed: Vec<f32> = [1., 2.].into_iter().chain((0..10).map(|t| (t % 8) as f32)).collect();
        assert_eq!(generator.cache[0].shape(), [12, 1, 1, 1]);
        assert_eq!(generator.cache[1].as_slice::<f32>().unwrap(), fed);
    }
}
