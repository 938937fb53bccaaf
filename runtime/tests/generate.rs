//! The generation loop over a decoder in Optimum's names: a toy bigram model whose cache holds
//! the tokens it was fed, so that what the generator caches, picks and refuses can be seen.

use distq_runtime::generate::{End, GenerateOptions, Generator, Sampling};
use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Model, Session, Tensor};

const VOCAB: usize = 8;

/// After token `t` the most likely next token is `(3t + 1) mod 8`; the cache (one KV head of
/// width 1) holds every token fed so far, as floats.
fn bigram_decoder() -> Session {
    let table: Vec<f32> =
        (0..VOCAB * VOCAB).map(|i| if i % VOCAB == (3 * (i / VOCAB) + 1) % VOCAB { 5.0 } else { (i % VOCAB) as f32 * 0.1 }).collect();
    let mut m = ModelBuilder::new(17)
        .input_named("input_ids", DataType::I64, &["batch", "sequence"])
        .input_named("attention_mask", DataType::I64, &["batch", "total"])
        .input_named("position_ids", DataType::I64, &["batch", "sequence"])
        .initializer("table", &Tensor::from_vec(vec![VOCAB, VOCAB], table).unwrap())
        .initializer("axes", &Tensor::from_vec(vec![2], vec![1i64, 3]).unwrap())
        .node("Gather", &["table", "input_ids"], &["logits"], vec![])
        .node("Cast", &["input_ids"], &["ids"], vec![("to", Attr::Int(1))])
        .node("Unsqueeze", &["ids", "axes"], &["new"], vec![]);
    for kind in ["key", "value"] {
        let (past, present) = (format!("past_key_values.0.{kind}"), format!("present.0.{kind}"));
        m = m
            .input_named(&past, DataType::F32, &["batch", "1", "past", "1"])
            .node("Concat", &[&past, "new"], &[&present], vec![("axis", Attr::Int(2))])
            .output_named(&present, DataType::F32, &["batch", "1", "total", "1"]);
    }
    let session = Session::new(Model::from_bytes(m.output_named("logits", DataType::F32, &["batch", "sequence", "8"]).to_bytes()).unwrap());
    session.set_threads(1);
    session
}

#[test]
fn greedy_generation_caches_what_it_feeds_and_plans_the_growth_once() {
    let session = bigram_decoder();
    let mut generator = Generator::new(&session).unwrap();
    let mut streamed = Vec::new();
    let options = GenerateOptions { max_tokens: 12, ..GenerateOptions::default() };
    let done = generator
        .generate(&[0, 2], &options, |t| {
            streamed.push(t);
            true
        })
        .unwrap();
    let mut want = vec![7i64];
    while want.len() < 12 {
        want.push((3 * want.last().unwrap() + 1) % VOCAB as i64);
    }
    assert_eq!(done.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!((done.end, done.prompt_tokens, done.decode.len()), (End::MaxTokens, 2, 11));
    // The prompt and every token but the last were fed: 13 cached.
    assert_eq!(generator.past(), 13);
    // Prefill, the first decode step, then one plan for every longer past.
    assert_eq!(session.plans_made(), 3);
    // A sampled generation: seeded, so repeatable; top-k 1 is greedy.
    let sampled = |sampling: Sampling| {
        let mut g = Generator::new(&session).unwrap();
        g.generate(&[5], &GenerateOptions { max_tokens: 8, sampling, ..GenerateOptions::default() }, |_| true).unwrap().tokens
    };
    let warm = Sampling { temperature: 3.0, seed: 11, ..Sampling::default() };
    assert_eq!(sampled(warm.clone()), sampled(warm.clone()));
    assert_ne!(sampled(warm.clone()), sampled(Sampling { seed: 12, ..warm.clone() }));
    assert_eq!(sampled(Sampling { top_k: 1, ..warm }), sampled(Sampling::default()));
}

#[test]
fn stops_cancellation_and_context_limits() {
    let session = bigram_decoder();
    let mut generator = Generator::new(&session).unwrap();
    // 2 → 7 → 6 → 3: the stop token ends it and is not emitted.
    let stop = GenerateOptions { stop_tokens: vec![3], ..GenerateOptions::default() };
    let done = generator.generate(&[2], &stop, |_| true).unwrap();
    assert_eq!((done.tokens, done.end), (vec![7, 6], End::StopToken));
    // The callback cancels after the second token.
    generator.reset();
    let mut seen = 0;
    let done = generator
        .generate(&[2], &GenerateOptions::default(), |_| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert_eq!((done.tokens.len(), done.end), (2, End::Cancelled));
    // A context of 4 tokens: a prompt of 2 and 2 more fit, the third is refused by name.
    generator.reset();
    generator.set_max_context(4);
    let err = generator.generate(&[1, 2], &GenerateOptions { max_tokens: 5, ..GenerateOptions::default() }, |_| true).unwrap_err();
    assert!(err.to_string().contains("exceed the maximum context of 4"), "{err}");
    // A model that is not a decoder is refused, naming what it lacks.
    let encoder = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model()).unwrap());
    let err = Generator::new(&encoder).err().unwrap().to_string();
    assert!(err.contains("not a decoder") && err.contains("input_ids"), "{err}");
}
