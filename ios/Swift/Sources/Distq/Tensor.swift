import Foundation

/// A tensor: element type, shape and little-endian row-major element bytes.
///
/// ```swift
/// let ids = Tensor(int64: [101, 7592, 102], shape: [1, 3])
/// let image = try Tensor(dtype: .float32, shape: [1, 3, 48, 192], data: pixelBytes)
/// ```
public struct Tensor: Equatable {
    /// Element types, with their ONNX codes.
    public enum DType: Int32 {
        case float32 = 1, uint8 = 2, int8 = 3, int32 = 6, int64 = 7, bool = 9, float16 = 10, float64 = 11

        /// Bytes per element.
        public var size: Int {
            switch self {
            case .uint8, .int8, .bool: return 1
            case .float16: return 2
            case .float32, .int32: return 4
            case .int64, .float64: return 8
            }
        }
    }

    public let dtype: DType
    public let shape: [Int]
    /// The elements, `shape`'s product × `dtype.size` bytes.
    public let data: Data

    /// A tensor over `data`; throws if its size does not match the shape.
    public init(dtype: DType, shape: [Int], data: Data) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else { throw DistqError.invalidArgument("negative dim in shape \(shape)") }
        let expected = shape.reduce(1, *) * dtype.size
        guard data.count == expected else {
            throw DistqError.invalidArgument("shape \(shape) of \(dtype) needs \(expected) bytes, got \(data.count)")
        }
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    private init<T>(_ values: [T], dtype: DType, shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values for shape \(shape)")
        self.dtype = dtype
        self.shape = shape
        self.data = values.withUnsafeBytes { Data($0) }
    }

    public init(float32 values: [Float], shape: [Int]) { self.init(values, dtype: .float32, shape: shape) }
    public init(int64 values: [Int64], shape: [Int]) { self.init(values, dtype: .int64, shape: shape) }
    public init(int32 values: [Int32], shape: [Int]) { self.init(values, dtype: .int32, shape: shape) }
    public init(uint8 values: [UInt8], shape: [Int]) { self.init(values, dtype: .uint8, shape: shape) }
    public init(int8 values: [Int8], shape: [Int]) { self.init(values, dtype: .int8, shape: shape) }

    /// The elements as `T` (a copy); `T` must match the dtype's size.
    public func values<T>(as _: T.Type = T.self) -> [T] {
        precondition(MemoryLayout<T>.stride == dtype.size, "\(T.self) does not match \(dtype)")
        let count = data.count / dtype.size
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            initialized = data.copyBytes(to: buffer) / dtype.size
        }
    }

    /// The elements as floats; the dtype must be `.float32`.
    public func floats() -> [Float] {
        precondition(dtype == .float32, "the tensor holds \(dtype), not float32")
        return values(as: Float.self)
    }
}
