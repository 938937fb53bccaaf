//! A language model's text side, read from the files beside its ONNX in Hugging Face's layout
//! (what `distq import` writes, and what Optimum exports hold): the tokenizer
//! (`tokenizer.json`), the chat template and special tokens (`tokenizer_config.json`), the
//! end-of-sequence tokens (`generation_config.json`) and the context (`config.json`).

use super::{GenerateOptions, Generation, Generator, StopStrings};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// An [`Error::Text`] from a message.
fn text_error(message: impl Into<String>) -> Error {
    Error::Text(message.into())
}

/// A decoder's tokenizer and chat conventions.
///
/// ```no_run
/// use distq_runtime::generate::text::TextModel;
/// let text = TextModel::beside("smollm2/model.onnx".as_ref())?;
/// let prompt = text.encode(&text.chat_prompt("What is the capital of France?")?)?;
/// let mut stream = text.text_stream();
/// for token in [504, 3575] {
///     print!("{}", stream.push(token)?);
/// }
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub struct TextModel {
    tokenizer: Tokenizer,
    dir: PathBuf,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    stop_tokens: Vec<i64>,
    /// Positions the model was trained for, if `config.json` says.
    pub context: Option<usize>,
}

/// A JSON file of `dir`, or `None` when it is absent.
fn optional_json(dir: &Path, name: &str) -> Result<Option<Value>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| text_error(format!("{}: not JSON: {e}", path.display())))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// A token given as a string or as `{"content": …}` (both appear in `tokenizer_config.json`).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl TextModel {
    /// The text side of the model file `model` (the files in its folder).
    pub fn beside(model: &Path) -> Result<TextModel> {
        let dir = model.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            let why = "no tokenizer beside the model (`distq import` writes one; Hugging Face exports hold one)";
            return Err(text_error(format!("{}: {why}", path.display())));
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| text_error(format!("{}: {e}", path.display())))?;
        let config = optional_json(&dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
        let generation = optional_json(&dir, "generation_config.json")?.unwrap_or(Value::Null);
        let model_config = optional_json(&dir, "config.json")?.unwrap_or(Value::Null);
        let eos_token = token_string(config.get("eos_token"));
        // generation_config's eos_token_id (one or a list), else the tokenizer's EOS token.
        let mut stop_tokens: Vec<i64> = match generation.get("eos_token_id") {
            Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_i64).collect(),
            Some(id) => id.as_i64().into_iter().collect(),
            None => Vec::new(),
        };
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t))
            && !stop_tokens.contains(&(id as i64))
        {
            stop_tokens.push(id as i64);
        }
        Ok(TextModel {
            chat_template: config.get("chat_template").and_then(Value::as_str).map(String::from),
            bos_token: token_string(config.get("bos_token")),
            add_bos: config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            context: model_config.get("max_position_embeddings").and_then(Value::as_u64).map(|n| n as usize),
            eos_token,
            stop_tokens,
            tokenizer,
            dir,
        })
    }

    /// The token ids of `text` (special tokens written in it, such as `<|im_start|>`, are
    /// single tokens), after the BOS token when the model wants one.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| text_error(format!("tokenizing the prompt: {e}")))?;
        let bos = self.bos_token.as_deref().filter(|_| self.add_bos).and_then(|t| self.tokenizer.token_to_id(t));
        Ok(bos.into_iter().chain(encoding.get_ids().iter().copied()).map(i64::from).collect())
    }

    /// `user`'s message in the model's chat template, ready for the assistant's answer.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            text_error(format!("{}: no chat_template; give the prompt as it is", self.dir.join("tokenizer_config.json").display()))
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        let template_error = |e: minijinja::Error| text_error(format!("the chat template: {e}"));
        env.add_template("chat", template).map_err(template_error)?;
        let context = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => user }],
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat").and_then(|t| t.render(context)).map_err(template_error)
    }

    /// Tokens that end a generation (the EOS tokens).
    pub fn stop_tokens(&self) -> &[i64] {
        &self.stop_tokens
    }

    /// Generates after the token ids `prompt`, streaming text: each piece goes to `on_text`
    /// as soon as no stop string can start in it, and `on_text` returning false ends the
    /// generation ([`End::Cancelled`](super::End::Cancelled)), as a stop string does (it is not
    /// shown). Text held back for a stop string that did not come is flushed at the end.
    /// Returns the generation and whether text (a stop string or `on_text`) ended it.
    pub fn generate(
        &self,
        generator: &mut Generator,
        prompt: &[i64],
        options: &GenerateOptions,
        stop_strings: Vec<String>,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Generation, bool)> {
        let (mut stream, mut stops) = (self.text_stream(), StopStrings::new(stop_strings));
        let (mut failure, mut ended_by_text) = (None, false);
        let generation = generator.generate(prompt, options, |token| match stream.push(token) {
            Ok(piece) => {
                let (shown, stop) = stops.push(&piece);
                let go_on = (shown.is_empty() || on_text(&shown)) && !stop;
                ended_by_text |= !go_on;
                go_on
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let rest = if ended_by_text { String::new() } else { stops.finish() };
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok((generation, ended_by_text))
    }

    /// A decoder of a token stream into text pieces (bytes of a character split across tokens
    /// wait for the rest; special tokens are not shown).
    pub fn text_stream(&self) -> TextStream<'_> {
        TextStream(self.tokenizer.decode_stream(true))
    }
}

/// Tokens in, text pieces out: the `tokenizers` crate's stream decoder.
pub struct TextStream<'t>(
    tokenizers::DecodeStream<
        't,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
);

impl TextStream<'_> {
    /// The text `token` adds (empty while it ends inside a character).
    pub fn push(&mut self, token: i64) -> Result<String> {
        let id = u32::try_from(token).map_err(|_| text_error(format!("token {token} is not a vocabulary index")))?;
        Ok(self.0.step(id).map_err(|e| text_error(format!("decoding token {token}: {e}")))?.unwrap_or_default())
    }
}
