//! The generation loop over a decoder in Optimum's names: a toy bigram model whose cache holds
//! the tokens it was fed, so that what the generator caches, picks and refuses can be seen.

use distq_runtime::Model;
use distq_runtime::generate::{Decoder, End, GenerateOptions, Generator, Sampling};
use distq_runtime::testing::bigram_decoder;

/// The bigram decoder's vocabulary.
const VOCAB: usize = 8;

fn bigram(past_shape_output: bool) -> Decoder {
    let decoder = Decoder::new(Model::from_bytes(bigram_decoder(past_shape_output)).unwrap()).unwrap();
    decoder.session().set_threads(1);
    decoder
}

#[test]
fn greedy_generation_caches_what_it_feeds_and_plans_the_growth_once() {
    for past_shape_output in [false, true] {
        greedy_generation(past_shape_output);
    }
}

/// Generation over the bigram decoder, its cache token-major or (with a second reader of the
/// past) as the graph has it.
fn greedy_generation(past_shape_output: bool) {
    let decoder = bigram(past_shape_output);
    assert_eq!(decoder.appends_in_place(), !past_shape_output);
    let mut generator = Generator::new(&decoder);
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
    assert_eq!(decoder.session().plans_made(), 3);
    // Room was made for the prompt and the tokens to generate, once (a token-major cache).
    assert_eq!(generator.cache_room() >= 14, decoder.appends_in_place());
    // A sampled generation: seeded, so repeatable; top-k 1 is greedy.
    let sampled = |sampling: Sampling| {
        let mut g = Generator::new(&decoder);
        g.generate(&[5], &GenerateOptions { max_tokens: 8, sampling, ..GenerateOptions::default() }, |_| true).unwrap().tokens
    };
    let warm = Sampling { temperature: 3.0, seed: 11, ..Sampling::default() };
    assert_eq!(sampled(warm.clone()), sampled(warm.clone()));
    assert_ne!(sampled(warm.clone()), sampled(Sampling { seed: 12, ..warm.clone() }));
    assert_eq!(sampled(Sampling { top_k: 1, ..warm }), sampled(Sampling::default()));
}

#[test]
fn stops_cancellation_and_context_limits() {
    let decoder = bigram(false);
    let mut generator = Generator::new(&decoder);
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
    let encoder = Model::from_bytes(distq_runtime::testing::add_one_model()).unwrap();
    assert!(!Decoder::accepts(&encoder));
    let err = Decoder::new(encoder).err().unwrap().to_string();
    assert!(err.contains("not a decoder") && err.contains("input_ids"), "{err}");
}

/// Sequences of different prompt lengths generated together: each gets the tokens it gets
/// alone; one ends at a stop token, one is cancelled, the others run on; the cache holds
/// every sequence's tokens, padding first.
#[test]
fn a_batch_generates_what_each_sequence_generates_alone() {
    for past_shape_output in [false, true] {
        let decoder = bigram(past_shape_output);
        let prompts: [&[i64]; 3] = [&[2], &[5, 3, 0], &[1, 6]];
        let options = GenerateOptions { max_tokens: 6, stop_tokens: vec![4], ..GenerateOptions::default() };
        let alone: Vec<Vec<i64>> =
            prompts.iter().map(|p| Generator::new(&decoder).generate(p, &options, |_| true).unwrap().tokens).collect();
        let mut generator = Generator::batch(&decoder, 3);
        let mut streamed = vec![Vec::new(); 3];
        // Sequence 2 is cancelled at its third token.
        let done = generator
            .generate_batch(&prompts, &options, |s, t| {
                streamed[s].push(t);
                !(s == 2 && streamed[s].len() == 3)
            })
            .unwrap();
        assert_eq!(done[0].tokens, alone[0]);
        assert_eq!(done[1].tokens, alone[1]);
        assert_eq!(done[2].tokens, alone[2][..3]);
        assert_eq!(streamed.iter().map(Vec::len).collect::<Vec<_>>(), [done[0].tokens.len(), done[1].tokens.len(), 3]);
        let ends: Vec<End> = done.iter().map(|d| d.end).collect();
        let stopped_at_4 = |tokens: &[i64]| tokens.len() < 6;
        assert_eq!(ends[2], End::Cancelled);
        for s in 0..2 {
            assert_eq!(ends[s], if stopped_at_4(&alone[s]) { End::StopToken } else { End::MaxTokens }, "sequence {s}: {:?}", alone[s]);
        }
        assert!(ends.contains(&End::StopToken), "the prompts reach the stop token: {alone:?}");
        // One prefill of the longest prompt, then a run per step until the last sequence ends.
        let longest = done.iter().map(|d| d.tokens.len()).max().unwrap();
        assert_eq!(generator.past(), 3 + longest.min(5));
        let mut one = Generator::batch(&decoder, 2);
        let refused = one.feed(&[1]).unwrap_err().to_string();
        assert!(refused.contains("one sequence's tokens for 2 sequences"), "{refused}");
        assert!(one.feed_batch(&[&[1], &[]]).unwrap_err().to_string().contains("no tokens"));
    }
}
