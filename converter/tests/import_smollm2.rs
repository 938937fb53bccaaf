//! `distq import` of SmolLM2-135M-Instruct (a Q4_1 GGUF) as an ONNX decoder with a KV cache:
//! onnxruntime runs what it writes, our runtime agrees with it on logits at every step of a
//! greedy generation (same tokens), decoding with the cache matches running the whole
//! sequence, and a growing past is planned once.
//!
//! Real model (fetched by `models/fetch.sh DEST llm`) and onnxruntime: `#[ignore]`d for a bare
//! `cargo test`; `tools/test.sh` runs them.

mod common;

use common::{max_diff, model, python_tool};
use distq_converter::import::llama::Matrix;
use distq_converter::import::{WeightFormat, gguf, import as import_model};
use distq_io::npz::read_npz;
use distq_runtime::Tensor;
use distq_runtime::generate::text::TextModel;
use distq_runtime::generate::{Decoder, Generator, Sampler, Sampling};
use std::ffi::OsStr;
use std::path::Path;

const GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// "The capital of France is" in SmolLM2's vocabulary.
const PROMPT: [i64; 5] = [504, 3575, 282, 4649, 314];

/// Greedy generation in our runtime: the picked tokens and the logits each was picked from.
fn generate(decoder: &Decoder, prompt: &[i64], count: usize) -> (Vec<i64>, Vec<Vec<f32>>) {
    let mut generator = Generator::new(decoder);
    let mut greedy = Sampler::new(Sampling::default());
    let (mut logits, mut picked, mut all) = (generator.feed(prompt).unwrap(), Vec::new(), Vec::new());
    for _ in 0..count {
        picked.push(greedy.pick(&logits) as i64);
        all.push(std::mem::take(&mut logits));
        if picked.len() < count {
            logits = generator.feed(&picked[picked.len() - 1..]).unwrap();
        }
    }
    (picked, all)
}

fn import(dir: &Path, layers: Option<usize>) -> Decoder {
    import_as(dir, layers, WeightFormat::F32)
}

fn import_as(dir: &Path, layers: Option<usize>, format: WeightFormat) -> Decoder {
    let imported = import_model(&model(GGUF), dir, layers, format).unwrap();
    assert_eq!((imported.config.hidden, imported.config.heads, imported.config.kv_heads, imported.config.vocab), (576, 9, 3, 49152));
    let decoder = Decoder::load(dir.join("model.onnx")).unwrap();
    assert!(decoder.appends_in_place(), "the imported cache is not appended in place");
    decoder.session().set_threads(1);
    decoder
}

/// onnxruntime's greedy tokens and their logits.
fn onnxruntime_generate(model: &Path, prompt: &[i64], count: usize, dir: &Path) -> (Vec<i64>, Vec<f32>) {
    let out = dir.join("ort_generate.npz");
    let tokens = prompt.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    python_tool("ort_generate.py", &[model.as_os_str(), OsStr::new(&tokens), OsStr::new(&count.to_string()), out.as_os_str()]);
    let arrays = read_npz(&out).unwrap();
    let get = |name: &str| arrays.iter().find(|(n, _)| n == name).unwrap().1.clone();
    (get("tokens").as_slice::<i64>().unwrap().to_vec(), get("logits").as_slice::<f32>().unwrap().to_vec())
}

/// |a − b| at its largest, relative to b's scale (its largest magnitude).
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let tensor = |v: &[f32]| Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap();
    let (diff, scale) = max_diff(&tensor(a), &tensor(b));
    diff / scale
}

/// [`relative_diff`] at its largest over the steps of a generation.
fn worst_relative_diff(ours: &[Vec<f32>], theirs: &[f32]) -> f32 {
    ours.iter().zip(theirs.chunks(ours[0].len())).map(|(a, b)| relative_diff(a, b)).fold(0f32, f32::max)
}

#[test]
#[ignore = "real model + onnxruntime: run by tools/test.sh"]
fn two_blocks_decode_with_the_cache_as_without_it_and_plan_once() {
    let dir = tempfile::tempdir().unwrap();
    let decoder = import(dir.path(), Some(2));
    let session = decoder.session();
    // The whole sequence in one run against prefill + one token at a time.
    let tail = [28i64, 253, 2593];
    let mut whole = Generator::new(&decoder);
    let mut stepwise = Generator::new(&decoder);
    stepwise.feed(&PROMPT).unwrap();
    for (step, &id) in tail.iter().enumerate() {
        let all: Vec<i64> = PROMPT.iter().chain(&tail[..=step]).copied().collect();
        whole.reset();
        let (full, cached) = (whole.feed(&all).unwrap(), stepwise.feed(&[id]).unwrap());
        let diff = relative_diff(&cached, &full);
        assert!(diff <= 1e-4, "token {step}: cached logits differ by {diff} of their scale");
    }
    // Prefill, the first decode step, then one plan for every longer past.
    let plans = session.plans_made();
    let (tokens, _) = generate(&decoder, &PROMPT, 12);
    assert_eq!(tokens.len(), 12);
    assert!(session.plans_made() <= plans + 1, "{} plans after {plans} for 12 more tokens", session.plans_made());
    // The same tokens and logits as onnxruntime's.
    let (ours, our_logits) = generate(&decoder, &PROMPT, 8);
    let (theirs, their_logits) = onnxruntime_generate(&dir.path().join("model.onnx"), &PROMPT, 8, dir.path());
    assert_eq!(ours, theirs);
    let diff = worst_relative_diff(&our_logits, &their_logits);
    println!("2 blocks, 8 greedy tokens: {ours:?}, logits within {diff:.2e} of onnxruntime's (relative to the scale)");
    assert!(diff <= 1e-4, "logits differ from onnxruntime's by {diff} of their scale");
    // The CLI: `distq import`, then `distq bench` reports prompt and generation speed, and
    // plans nothing once warmed up.
    let cli = dir.path().join("cli");
    let (gguf, out) = (model(GGUF), cli.to_str().unwrap().to_string());
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_distq")).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let said = run(&["import", gguf.to_str().unwrap(), "-o", &out, "--layers", "2"]);
    assert!(said.contains("attn_q.weight: Q4_1 in the source, f32 in the ONNX file"), "{said}");
    let model_path = cli.join("model.onnx");
    let bench: serde_json::Value = serde_json::from_str(&run(&[
        "bench",
        model_path.to_str().unwrap(),
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "8",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    ]))
    .unwrap();
    assert!(bench["pp_tokens_per_s"].as_f64().unwrap() > 0.0 && bench["tg_tokens_per_s"].as_f64().unwrap() > 0.0, "{bench}");
    assert_eq!(bench["plans_made_after_warmup"], 0, "{bench}");
    assert_eq!(bench["cache_appended_in_place"], true, "{bench}");
}

#[test]
#[ignore = "real model + onnxruntime: run by tools/test.sh"]
fn two_blocks_in_int8_and_int4_blocks_match_onnxruntime() {
    for format in [WeightFormat::Int8, WeightFormat::Int4] {
        let dir = tempfile::tempdir().unwrap();
        let decoder = import_as(dir.path(), Some(2), format);
        let (theirs, their_logits) = onnxruntime_generate(&dir.path().join("model.onnx"), &PROMPT, 8, dir.path());
        // The integer GEMM quantizes activations per row and block of 32 (as llama.cpp does
        // for Q8_0 and Q4_0 weights; onnxruntime dequantizes the weights to f32).
        let (ours, our_logits) = generate(&decoder, &PROMPT, 8);
        let diff = worst_relative_diff(&our_logits, &their_logits);
        // The file's float arithmetic, asked for: onnxruntime's logits.
        decoder.session().set_exact(true);
        let (exact, exact_logits) = generate(&decoder, &PROMPT, 8);
        let exact_diff = worst_relative_diff(&exact_logits, &their_logits);
        println!("2 blocks, {format:?}: {ours:?} ({exact:?} exact), logits within {diff:.2e} ({exact_diff:.2e} exact) of onnxruntime's");
        assert_eq!(exact, theirs, "{format:?}");
        assert!(exact_diff <= 1e-4, "{format:?}: exact logits differ from onnxruntime's by {exact_diff} of their scale");
        assert_eq!(ours[0], theirs[0], "{format:?}");
        assert!(diff <= 2e-2, "{format:?}: logits differ from onnxruntime's by {diff} of their scale");
    }
}

#[test]
#[ignore = "real model + onnxruntime: run by tools/test.sh"]
fn the_whole_model_generates_what_onnxruntime_does() {
    let dir = tempfile::tempdir().unwrap();
    let decoder = import(dir.path(), None);
    let text = TextModel::beside(&dir.path().join("model.onnx")).unwrap();
    // The imported tokenizer: the prompt's ids as SmolLM2's vocabulary has them, its special
    // tokens whole in a chat prompt.
    assert_eq!(text.encode("The capital of France is").unwrap(), PROMPT);
    let chat = text.chat_prompt("What is the capital of France?").unwrap();
    assert!(chat.starts_with("<|im_start|>system\n") && chat.ends_with("<|im_start|>assistant\n"), "{chat:?}");
    let chat_ids = text.encode(&chat).unwrap();
    assert_eq!((chat_ids[0], chat_ids.iter().filter(|&&t| t == 2).count()), (1, 2), "{chat_ids:?}");
    let prompts = ["The capital of France is".to_string(), chat, "def fibonacci(n):".to_string()];
    for prompt in &prompts {
        let ids = text.encode(prompt).unwrap();
        let (ours, our_logits) = generate(&decoder, &ids, 64);
        let (theirs, their_logits) = onnxruntime_generate(&dir.path().join("model.onnx"), &ids, 64, dir.path());
        let diff = worst_relative_diff(&our_logits, &their_logits);
        let mut stream = text.text_stream();
        let said: String = ours.iter().map(|&t| stream.push(t).unwrap()).collect();
        println!(
            "30 blocks, 64 greedy tokens after {prompt:?}: {said:?}, logits within {diff:.2e} of onnxruntime's (relative to the scale)"
        );
        assert_eq!(ours, theirs, "greedy tokens differ from onnxruntime's after {prompt:?}");
        assert!(diff <= 1e-3, "logits differ from onnxruntime's by {diff} of their scale after {prompt:?}");
        if prompt.starts_with("The capital") {
            assert!(said.starts_with(" Paris"), "{said:?}");
        }
    }
    // `distq generate` streams the chat answer and reports its speed.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_distq"))
        .args(["generate", dir.path().join("model.onnx").to_str().unwrap(), "--prompt", "What is the capital of France?", "--chat"])
        .args(["--max-tokens", "32", "--threads", "1"])
        .output()
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(out.contains("Paris") && !out.contains("<|im_end|>"), "{out}");
    for line in ["prefill tokens/s", "decode tokens/s", "time to first token ms", "peak RSS MB", "ended by an end-of-sequence token"] {
        assert!(err.contains(line), "no '{line}' in {err}");
    }
}

/// A Hugging Face folder made from the GGUF's first 2 blocks (config.json, the weights in two
/// safetensors shards under Hugging Face's names, the tokenizer files) imports as the GGUF
/// does: the same greedy tokens from bit-identical logits, and the same tokenizer.
#[test]
#[ignore = "real model: run by tools/test.sh"]
fn a_hugging_face_folder_imports_as_its_gguf_does() {
    let (from_gguf, folder, from_folder) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let reference = import(from_gguf.path(), Some(2));
    let (weights, _, _) = gguf::read(&model(GGUF), Some(2), WeightFormat::F32).unwrap();
    let c = &weights.config;
    let tensor = |m: &Matrix, rows: usize| {
        let Matrix::F32(v) = m else { panic!("an f32 import") };
        candle_core::Tensor::from_vec(v.clone(), (rows, v.len() / rows), &candle_core::Device::Cpu).unwrap()
    };
    let vector = |v: &[f32]| candle_core::Tensor::from_vec(v.to_vec(), v.len(), &candle_core::Device::Cpu).unwrap();
    let kv = c.kv_heads * c.head_dim();
    let mut shards = [std::collections::HashMap::new(), std::collections::HashMap::new()];
    shards[0].insert("model.embed_tokens.weight".to_string(), tensor(&weights.embedding, c.vocab));
    shards[1].insert("model.norm.weight".to_string(), vector(&weights.final_norm));
    for (i, layer) in weights.layers.iter().enumerate() {
        let p = |part: &str| format!("model.layers.{i}.{part}.weight");
        let shard = &mut shards[i];
        shard.insert(p("input_layernorm"), vector(&layer.attn_norm));
        shard.insert(p("post_attention_layernorm"), vector(&layer.ffn_norm));
        for (part, m, rows) in [
            ("self_attn.q_proj", &layer.q, c.hidden),
            ("self_attn.k_proj", &layer.k, kv),
            ("self_attn.v_proj", &layer.v, kv),
            ("self_attn.o_proj", &layer.o, c.hidden),
            ("mlp.gate_proj", &layer.gate, c.ffn),
            ("mlp.up_proj", &layer.up, c.ffn),
            ("mlp.down_proj", &layer.down, c.hidden),
        ] {
            shard.insert(p(part), tensor(m, rows));
        }
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(shard, folder.path().join(format!("model-0000{}-of-00002.safetensors", i + 1))).unwrap();
    }
    let mut config = c.to_json();
    config["tie_word_embeddings"] = true.into();
    std::fs::write(folder.path().join("config.json"), config.to_string()).unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(from_gguf.path().join(name), folder.path().join(name)).unwrap();
    }

    let imported = import_model(folder.path(), from_folder.path(), None, WeightFormat::F32).unwrap();
    assert_eq!(imported.config.layers, 2);
    let decoder = Decoder::load(from_folder.path().join("model.onnx")).unwrap();
    decoder.session().set_threads(1);
    let ((tokens, logits), (want_tokens, want_logits)) = (generate(&decoder, &PROMPT, 8), generate(&reference, &PROMPT, 8));
    assert_eq!(tokens, want_tokens);
    assert!(logits == want_logits, "logits differ from the GGUF import's");
    let text = |dir: &Path| TextModel::beside(&dir.join("model.onnx")).unwrap().encode("The capital of France is").unwrap();
    assert_eq!(text(from_folder.path()), text(from_gguf.path()));
    assert_eq!(text(from_folder.path()), PROMPT);
    println!("Hugging Face folder of 2 blocks: {tokens:?}, logits identical to the GGUF import's");
}

/// Prompts of 5, 2 and 7 tokens run together, the shorter ones padded and masked: each
/// sequence's logits at every step of a greedy generation are its logits alone.
#[test]
#[ignore = "real model: run by tools/test.sh"]
fn a_batch_of_prompts_decodes_as_each_prompt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let decoder = import(dir.path(), Some(2));
    let prompts: [&[i64]; 3] = [&PROMPT, &PROMPT[..2], &[1, 2, 3, 4, 5, 6, 7]];
    let alone: Vec<(Vec<i64>, Vec<Vec<f32>>)> = prompts.iter().map(|p| generate(&decoder, p, 6)).collect();
    let mut generator = Generator::batch(&decoder, 3);
    let mut greedy: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(Sampling::default())).collect();
    let mut logits = generator.feed_batch(&prompts).unwrap();
    let mut worst = 0f32;
    for step in 0..6 {
        let mut next = Vec::new();
        for (s, (tokens, want)) in alone.iter().enumerate() {
            worst = worst.max(relative_diff(&logits[s], &want[step]));
            let token = greedy[s].pick(&logits[s]) as i64;
            assert_eq!(token, tokens[step], "sequence {s}, step {step}");
            next.push([token]);
        }
        logits = generator.feed_batch(&next.iter().map(|t| t.as_slice()).collect::<Vec<_>>()).unwrap();
    }
    assert!(worst <= 1e-5, "batched logits differ from each sequence's alone by {worst:.2e}");
    println!("3 prompts (5, 2, 7 tokens) in one batch, 6 greedy steps: logits within {worst:.2e} of each alone");
}
