// swift-tools-version:6.0
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"])]

let package = Package(
    name: "WanKit",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "WanKit", targets: ["WanKit"]),
        .executable(name: "wan", targets: ["wan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
        .target(name: "WanTensor", dependencies: ["CDNNL"], swiftSettings: optimize),
        .target(name: "WanWeights", dependencies: ["WanTensor"], swiftSettings: optimize),
        .target(name: "WanModels", dependencies: ["WanTensor", "WanWeights"], swiftSettings: optimize),
        .target(name: "WanKit", dependencies: ["WanTensor", "WanWeights", "WanModels"], swiftSettings: optimize),
        .executableTarget(name: "wan", dependencies: [
            "WanKit",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: optimize),
        .testTarget(name: "WanKitTests", dependencies: ["WanKit"]),
    ],
    swiftLanguageModes: [.v5]
)
