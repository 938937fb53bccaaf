//! `cargo run --example greedy -- MODEL.onnx IDS N`: loads a decoder with the runtime alone
//! (no tokenizer: token ids in, token ids out), generates N tokens greedily after the
//! comma-separated prompt IDS and prints them, comma-separated, on one line. What
//! tools/mustshow/smollm2_aarch64.sh runs on x86 and under qemu to compare the two.

use distq_runtime::generate::{Decoder, GenerateOptions, Generator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ids, count] = &args[..] else {
        return Err("usage: greedy MODEL.onnx IDS N (IDS comma-separated token ids)".into());
    };
    let prompt = ids.split(',').map(|id| id.trim().parse::<i64>()).collect::<Result<Vec<_>, _>>()?;
    let decoder = Decoder::load(model)?;
    let options = GenerateOptions { max_tokens: count.parse()?, ..GenerateOptions::default() };
    let generation = Generator::new(&decoder).generate(&prompt, &options, |_| true)?;
    let tokens: Vec<String> = generation.tokens.iter().map(i64::to_string).collect();
    println!("{}", tokens.join(","));
    Ok(())
}
