// swift-tools-version:6.0
import PackageDescription

// The engine's kernels are plain loops that LLVM vectorises: build them for x86-64-v3 (AVX2, FMA, F16C; every
// x86 server and desktop since 2015). `wan` checks the CPU before anything else runs.
#if arch(x86_64)
let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo", "-Xcc", "-march=x86-64-v3"])]
#else
let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"])]
#endif

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
        // Intrinsics kernels, each function compiled for the instruction set it needs and chosen at run time.
        .target(name: "CWanCPU", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "WanTensor", dependencies: ["CDNNL", "CWanCPU"], swiftSettings: optimize),
        .target(name: "WanWeights", dependencies: ["WanTensor"], swiftSettings: optimize),
        .target(name: "WanModels", dependencies: ["WanTensor", "WanWeights"], swiftSettings: optimize),
        .target(name: "WanSampling", dependencies: ["WanTensor"], swiftSettings: optimize),
        .target(name: "WanText", dependencies: [], swiftSettings: optimize),
        // The CUDA backend: driver, NVRTC and cuBLASLt are loaded at run time (dlopen); nothing CUDA is needed to build.
        .target(name: "WanCUDA", dependencies: ["WanTensor", "WanWeights", "WanModels"], resources: [.copy("Kernels")], swiftSettings: optimize),
        .target(name: "WanKit", dependencies: ["WanTensor", "WanWeights", "WanModels", "WanSampling", "WanText", "WanCUDA"], swiftSettings: optimize),
        .executableTarget(name: "wan", dependencies: [
            "WanKit", "CDNNL", "WanCUDA",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: [.unsafeFlags(["-Ounchecked"])]),
        .testTarget(name: "WanKitTests", dependencies: ["WanKit"]),
        .testTarget(name: "WanCUDATests", dependencies: ["WanCUDA"]),
    ],
    swiftLanguageModes: [.v5]
)
