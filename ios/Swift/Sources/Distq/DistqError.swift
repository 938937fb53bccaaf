import DistqC

/// A failed distq call: the kind (from the C ABI's `DistqStatus`) and the message naming the
/// problem (file, input, node, dim).
public enum DistqError: Error, Equatable, CustomStringConvertible {
    case nullArgument(String)
    case invalidArgument(String)
    /// The model file is missing or unreadable.
    case io(String)
    /// Not a valid ONNX model.
    case invalidModel(String)
    /// An operator the runtime does not implement.
    case unsupported(String)
    /// An input that does not fit the model: unknown or missing name, wrong dtype or shape.
    case input(String)
    /// A node failed while running.
    case runtime(String)
    /// A bug in distq, caught instead of crashing the app.
    case `internal`(String)

    public var description: String {
        switch self {
        case .nullArgument(let m), .invalidArgument(let m), .io(let m), .invalidModel(let m),
             .unsupported(let m), .input(let m), .runtime(let m), .internal(let m):
            return m
        }
    }

    /// Throws the error a C call's status stands for; returns on `DISTQ_STATUS_OK`.
    static func check(_ status: DistqStatus) throws {
        if status == DISTQ_STATUS_OK { return }
        let message = String(cString: distq_last_error())
        switch status {
        case DISTQ_STATUS_NULL_ARGUMENT: throw DistqError.nullArgument(message)
        case DISTQ_STATUS_INVALID_ARGUMENT: throw DistqError.invalidArgument(message)
        case DISTQ_STATUS_IO: throw DistqError.io(message)
        case DISTQ_STATUS_INVALID_MODEL: throw DistqError.invalidModel(message)
        case DISTQ_STATUS_UNSUPPORTED: throw DistqError.unsupported(message)
        case DISTQ_STATUS_INPUT: throw DistqError.input(message)
        case DISTQ_STATUS_RUNTIME: throw DistqError.runtime(message)
        default: throw DistqError.internal(message)
        }
    }
}
