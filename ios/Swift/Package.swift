// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "Distq",
    platforms: [.iOS(.v13), .macOS(.v11)],
    products: [.library(name: "Distq", targets: ["Distq"])],
    targets: [
        // libdistq.a + distq.h for iOS devices, the simulator and macOS: made by
        // ../build-xcframework.sh on a Mac (see ../README.md).
        .binaryTarget(name: "DistqC", path: "DistqC.xcframework"),
        .target(name: "Distq", dependencies: ["DistqC"]),
        .testTarget(name: "DistqTests", dependencies: ["Distq"], resources: [.copy("add_one.onnx")]),
    ]
)
