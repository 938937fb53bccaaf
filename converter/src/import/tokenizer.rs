//! A GGUF file's vocabulary as a Hugging Face `tokenizer.json` (built with the `tokenizers`
//! crate), and the files beside it that say how to talk to the model:
//! `tokenizer_config.json` (its chat template, BOS/EOS) and `generation_config.json`.
//!
//! Byte-level BPE vocabularies (`tokenizer.ggml.model` = `gpt2`) are converted, with the
//! pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`; others are refused by name rather
//! than tokenized wrongly.

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;
use std::path::Path;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// What the import learned about the vocabulary.
pub struct Vocabulary {
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// The vocabulary of the GGUF file `content` (read from `path`, for messages).
pub fn vocabulary(content: &Content, path: &Path) -> Result<Vocabulary> {
    let meta = |key: &str| content.metadata.get(key);
    let missing = |key: &str| format!("{}: no metadata '{key}'", path.display());
    let model = meta("tokenizer.ggml.model").with_context(|| missing("tokenizer.ggml.model"))?.to_string()?;
    if model != "gpt2" {
        bail!("{}: tokenizer.ggml.model '{model}'; only byte-level BPE vocabularies ('gpt2') are converted", path.display());
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        let values = meta(key).with_context(|| missing(key))?.to_vec().with_context(|| format!("{key} is not an array"))?;
        values.iter().map(|v| Ok(v.to_string().with_context(|| format!("{key} holds a non-string"))?.clone())).collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).with_context(|| format!("merge '{m}' is not two tokens")))
        .collect::<Result<Vec<_>>>()?;
    let types: Vec<i32> = match meta("tokenizer.ggml.token_type") {
        Some(v) => {
            v.to_vec()?.iter().map(|t| t.to_i32().context("tokenizer.ggml.token_type holds a non-integer")).collect::<Result<_>>()?
        }
        None => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe_error = |e: tokenizers::Error| anyhow::anyhow!("{}: {e}", path.display());
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(bpe_error)?;
    let pre = meta("tokenizer.ggml.pre").map(|p| p.to_string().cloned()).transpose()?.unwrap_or_else(|| "default".into());
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(bpe);
    match pre.as_str() {
        // GPT-2's split.
        "default" | "gpt2" => tokenizer.with_pre_tokenizer(Some(byte_level)),
        // GPT-2's split after every digit on its own (llama.cpp's `\p{N}` first).
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])))
        }
        other => bail!("{}: tokenizer.ggml.pre '{other}' is a pre-tokenizer the import does not know", path.display()),
    };
    tokenizer.with_decoder(Some(byte_level));
    let added = |kind: i32, special: bool| -> Vec<AddedToken> {
        tokens.iter().zip(&types).filter(|(_, t)| **t == kind).map(|(s, _)| AddedToken::from(s.clone(), special)).collect()
    };
    tokenizer.add_special_tokens(added(CONTROL, true)).map_err(bpe_error)?;
    tokenizer.add_tokens(added(USER_DEFINED, false)).map_err(bpe_error)?;
    let id = |key: &str| meta(key).and_then(|v| v.to_u32().ok());
    let template = meta("tokenizer.chat_template").map(|t| t.to_string().cloned()).transpose()?;
    Ok(Vocabulary {
        tokenizer,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        add_bos: matches!(meta("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true))),
        chat_template: template,
    })
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` to `dir`, in
/// Hugging Face's layout, each to a temporary file renamed into place.
pub fn write(vocabulary: &Vocabulary, dir: &Path) -> Result<()> {
    let token = |id: Option<u32>| id.and_then(|id| vocabulary.tokenizer.id_to_token(id));
    let config = json!({
        "bos_token": token(vocabulary.bos),
        "eos_token": token(vocabulary.eos),
        "add_bos_token": vocabulary.add_bos,
        "chat_template": vocabulary.chat_template,
    });
    let generation = json!({ "bos_token_id": vocabulary.bos, "eos_token_id": vocabulary.eos });
    let tokenizer = vocabulary.tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))?;
    for (name, text) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", serde_json::to_string_pretty(&config)?),
        ("generation_config.json", serde_json::to_string_pretty(&generation)?),
    ] {
        distq_io::atomic_file::write_text_atomically(&dir.join(name), &text)?;
    }
    Ok(())
}
