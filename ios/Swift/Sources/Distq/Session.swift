import DistqC
import Foundation

/// A loaded ONNX model, ready to run. Thread-safe: several threads may call `run` at once.
///
/// ```swift
/// let session = try Session(path: Bundle.main.path(forResource: "model", ofType: "onnx")!)
/// let outputs = try session.run(["x": Tensor(float32: pixels, shape: [1, 3, 48, 192])])
/// let scores = outputs["softmax_0.tmp_0"]!.floats()
/// ```
public final class Session {
    private let handle: OpaquePointer
    /// The model's input names, in model order.
    public let inputNames: [String]
    /// The model's output names, in model order.
    public let outputNames: [String]

    /// Loads the model at `path`; its weights stay memory-mapped.
    public convenience init(path: String) throws {
        var handle: OpaquePointer?
        try DistqError.check(distq_session_load(path, &handle))
        try self.init(handle: handle!)
    }

    /// Makes a session from model bytes (copied; models with external data need `init(path:)`).
    public convenience init(modelData: Data) throws {
        var handle: OpaquePointer?
        try modelData.withUnsafeBytes { bytes in
            try DistqError.check(distq_session_from_bytes(bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count, &handle))
        }
        try self.init(handle: handle!)
    }

    private init(handle: OpaquePointer) throws {
        self.handle = handle
        func names(_ count: (OpaquePointer?, UnsafeMutablePointer<Int>?) -> DistqStatus,
                   _ nameAt: (OpaquePointer?, Int, UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> DistqStatus) throws -> [String] {
            var n = 0
            try DistqError.check(count(handle, &n))
            return try (0..<n).map { i in
                var name: UnsafePointer<CChar>?
                try DistqError.check(nameAt(handle, i, &name))
                return String(cString: name!)
            }
        }
        do {
            inputNames = try names(distq_session_input_count, distq_session_input_name)
            outputNames = try names(distq_session_output_count, distq_session_output_name)
        } catch {
            distq_session_free(handle)
            throw error
        }
    }

    deinit {
        distq_session_free(handle)
    }

    /// Lets each later run split its kernels over `threads` threads (default: the performance cores).
    public func setThreads(_ threads: Int) throws {
        try DistqError.check(distq_session_set_threads(handle, threads))
    }

    /// Runs the model; inputs are read in place during the call.
    /// - Returns: the outputs by name.
    /// - Throws: `DistqError.input` for an unknown or missing input or a wrong dtype or shape.
    public func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        var outputs: OpaquePointer?
        try Session.withCTensors(Array(inputs)[...], []) { tensors in
            try DistqError.check(distq_session_run(handle, tensors, tensors.count, &outputs))
        }
        defer { distq_outputs_free(outputs) }
        var count = 0
        try DistqError.check(distq_outputs_count(outputs, &count))
        var result: [String: Tensor] = [:]
        for i in 0..<count {
            var view = DistqTensor()
            try DistqError.check(distq_outputs_get(outputs, i, &view))
            let shape = (0..<view.rank).map { Int(view.shape[$0]) }
            let data = view.byte_len == 0 ? Data() : Data(bytes: view.data, count: view.byte_len)
            guard let dtype = Tensor.DType(rawValue: view.dtype) else { throw DistqError.internal("unknown dtype code \(view.dtype)") }
            result[String(cString: view.name)] = try Tensor(dtype: dtype, shape: shape, data: data)
        }
        return result
    }

    /// What `benchmark` measured. Latencies in milliseconds.
    public typealias Benchmark = DistqBenchmark

    /// Runs the model `warmup` times untimed, then `iterations` times timed, and reports
    /// latency percentiles, throughput, peak memory and energy per inference (the best readable
    /// power sensor, else the energy model).
    public func benchmark(_ inputs: [String: Tensor], iterations: Int, warmup: Int = 5) throws -> Benchmark {
        var result = DistqBenchmark()
        try Session.withCTensors(Array(inputs)[...], []) { tensors in
            try DistqError.check(distq_session_benchmark(handle, tensors, tensors.count, iterations, warmup, &result))
        }
        return result
    }

    /// Calls `body` with C views of `items` (names, shapes and data pinned for the call).
    private static func withCTensors(_ items: ArraySlice<(key: String, value: Tensor)>, _ built: [DistqTensor],
                                     _ body: ([DistqTensor]) throws -> Void) throws {
        guard let item = items.first else { return try body(built) }
        let (name, tensor) = (item.key, item.value)
        let shape = tensor.shape.map(Int64.init)
        try name.withCString { cName in
            try shape.withUnsafeBufferPointer { cShape in
                try tensor.data.withUnsafeBytes { bytes in
                    let t = DistqTensor(name: cName, dtype: tensor.dtype.rawValue, shape: cShape.baseAddress, rank: shape.count,
                                        data: bytes.baseAddress, byte_len: bytes.count)
                    try withCTensors(items.dropFirst(), built + [t], body)
                }
            }
        }
    }
}
