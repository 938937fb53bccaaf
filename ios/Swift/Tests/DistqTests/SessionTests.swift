import Distq
import XCTest

/// `add_one.onnx` computes y = x + 1 over a float vector (distq_runtime::testing::add_one_model).
final class SessionTests: XCTestCase {
    private func model() throws -> Session {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "add_one", withExtension: "onnx"))
        return try Session(path: url.path)
    }

    func testRunsTheModel() throws {
        let session = try model()
        XCTAssertEqual(session.inputNames, ["x"])
        XCTAssertEqual(session.outputNames, ["y"])
        let outputs = try session.run(["x": Tensor(float32: [1, 2, 3], shape: [3])])
        XCTAssertEqual(outputs["y"]?.floats(), [2, 3, 4])
        XCTAssertEqual(outputs["y"]?.shape, [3])
    }

    func testErrorsAreThrownWithTheirKind() throws {
        XCTAssertThrowsError(try Session(path: "/nonexistent/model.onnx")) { error in
            guard case DistqError.io(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("/nonexistent/model.onnx"))
        }
        XCTAssertThrowsError(try Session(modelData: Data([0xff, 0xff, 0xff]))) { error in
            guard case DistqError.invalidModel = error else { return XCTFail("\(error)") }
        }
        let session = try model()
        XCTAssertThrowsError(try session.run(["q": Tensor(float32: [1], shape: [1])])) { error in
            guard case DistqError.input(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("is not an input of this model"))
        }
        XCTAssertThrowsError(try session.run(["x": Tensor(int64: [1], shape: [1])])) { error in
            guard case DistqError.input(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("has dtype int64, the model declares float"))
        }
        XCTAssertThrowsError(try Tensor(dtype: .float32, shape: [3], data: Data(count: 8)))
    }

    func testOneSessionServesSeveralThreads() throws {
        let session = try model()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for i in 0..<50 {
                let x = (0..<(t + i % 5 + 1)).map { Float(t * 1000 + i * 10 + $0) }
                let y = try? session.run(["x": Tensor(float32: x, shape: [x.count])])["y"]?.floats()
                XCTAssertEqual(y, x.map { $0 + 1 })
            }
        }
    }

    func testBenchmark() throws {
        let session = try model()
        let b = try session.benchmark(["x": Tensor(float32: Array(repeating: 1, count: 64), shape: [64])], iterations: 20, warmup: 2)
        XCTAssertEqual(b.iters, 20)
        XCTAssertGreaterThan(b.p50_ms, 0)
        XCTAssertLessThanOrEqual(b.p50_ms, b.max_ms)
        XCTAssertGreaterThan(b.joules_per_inference, 0)
    }
}
