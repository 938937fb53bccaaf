import DistqC
import Foundation

/// A language model that generates text: a decoder with a KV cache (what `distq import`
/// writes) and the tokenizer files beside it. Several threads may generate at once.
///
/// ```swift
/// let generator = try Generator(path: Bundle.main.path(forResource: "model", ofType: "onnx")!)
/// var options = Generator.Options()
/// options.chat = true
/// let stats = try generator.generate("What is the capital of France?", options: options) { piece in
///     print(piece, terminator: "")
///     return true  // false stops the generation
/// }
/// print("\n\(stats.decodeTokensPerSecond) tokens/s")
/// ```
public final class Generator {
    private let handle: OpaquePointer

    /// How a generation runs; the defaults decode greedily up to 256 tokens.
    public struct Options {
        public var maxTokens = 256
        /// 0 picks the most likely token; above 0, tokens are drawn at this temperature.
        public var temperature: Float = 0
        public var topK = 0
        public var topP: Float = 1
        public var minP: Float = 0
        public var seed: UInt64 = 0
        /// The prompt is a user's message, put in the model's chat template.
        public var chat = false
        /// Threads (0: the performance cores).
        public var threads = 0
        /// Most tokens in the context, prompt included (0: the model's config.json).
        public var maxContext = 0

        public init() {}
    }

    /// What a generation made and how fast.
    public struct Stats {
        public let promptTokens: Int
        public let generatedTokens: Int
        public let timeToFirstTokenMs: Double
        public let decodeTokensPerSecond: Double
        /// The callback returned false.
        public let stopped: Bool
    }

    /// Loads the decoder at `path` and the tokenizer beside it.
    public init(path: String) throws {
        var handle: OpaquePointer?
        try DistqError.check(distq_generator_load(path, &handle))
        self.handle = handle!
    }

    deinit {
        distq_generator_free(handle)
    }

    /// Generates text after `prompt`, calling `onText` with each piece as it is made;
    /// `onText` returning false stops the generation.
    public func generate(_ prompt: String, options: Options = Options(), onText: (String) -> Bool) throws -> Stats {
        var c = distq_generate_options_default()
        c.max_tokens = UInt32(options.maxTokens)
        c.temperature = options.temperature
        c.top_k = UInt32(options.topK)
        c.top_p = options.topP
        c.min_p = options.minP
        c.seed = options.seed
        c.chat = options.chat ? 1 : 0
        c.threads = UInt32(options.threads)
        c.max_context = UInt32(options.maxContext)
        var stats = DistqGenerateStats()
        try withoutActuallyEscaping(onText) { onText in
            var callback = onText
            try withUnsafeMutablePointer(to: &callback) { context in
                try DistqError.check(distq_generate(handle, prompt, &c, { text, len, userData in
                    let onText = userData!.assumingMemoryBound(to: ((String) -> Bool).self).pointee
                    let bytes = UnsafeRawBufferPointer(start: text, count: len)
                    return onText(String(decoding: bytes, as: UTF8.self)) ? 0 : 1
                }, context, &stats))
            }
        }
        return Stats(promptTokens: Int(stats.prompt_tokens), generatedTokens: Int(stats.generated_tokens),
                     timeToFirstTokenMs: stats.time_to_first_token_ms, decodeTokensPerSecond: stats.decode_tokens_per_s,
                     stopped: stats.end == DISTQ_GENERATE_END_STOPPED)
    }
}
