import Foundation
import XCTest
import WanCUDA
import WanModels
import WanTensor
import WanWeights

/// Matrices that stay compact on the GPU (fp8_scaled, ggml blocks), expanded to bf16 by the dequant kernels before
/// each product: on the CUDA emulator the DiT gives the same output, bit for bit, as with the same weights
/// dequantised on the host and uploaded as bf16, in fewer device bytes, as `CUDADiTPlan.weightBytes` plans them.
final class CUDACompactWeightTests: XCTestCase {
    /// The same tensors seen without their stored form: `stored` falls back to the protocol's float32 copy, so
    /// `CUDADiT` dequantises every matrix on the host (the upload before compact weights).
    final class HostDequantized: WeightSource, @unchecked Sendable {
        let base: WeightSource
        init(_ base: WeightSource) { self.base = base }
        var label: String { base.label + " (dequantised on the host)" }
        var names: [String] { base.names }
        func info(_ name: String) -> TensorInfo? { base.info(name) }
        func float32(_ name: String) throws -> Tensor { try base.float32(name) }
    }

    static func config(_ type: String) -> WanDiTConfig {
        WanDiTConfig(modelType: type, textLen: 16, inDim: type == "t2v" ? 16 : 36, dim: 128, ffnDim: 256, freqDim: 256,
                     textDim: 64, numHeads: 2, numLayers: 2)
    }

    /// A counter-based random stream.
    struct Stream {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &+ 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func uniform(_ bound: Float) -> Float { (Float(next() >> 40) / Float(1 << 24) * 2 - 1) * bound }
    }

    /// Writes a ComfyUI fp8_scaled checkpoint of `config`: every 2-D `.weight` float8 (e4m3fn, except the FFN's
    /// second matrices in e5m2) with an f32 `scale_weight` bringing it to about ±1/sqrt(fan_in), the `scaled_fp8`
    /// marker, norm weights 1 and everything else small random f32.
    static func writeFP8Scaled(_ config: WanDiTConfig, seed: UInt64) throws -> String {
        var tensors: [(name: String, dtype: String, shape: [Int], data: Data)] = []
        var rng = Stream(state: seed)
        for (name, shape) in config.parameterShapes() {
            let count = shape.reduce(1, *)
            if name.hasSuffix(".weight") && shape.count == 2 {
                let e5m2 = name.hasSuffix("ffn.2.weight")
                var bytes = [UInt8](repeating: 0, count: count)
                for i in 0..<count {
                    var b = UInt8(truncatingIfNeeded: rng.next() >> 56)
                    if e5m2 { if b & 0x7c == 0x7c { b ^= 0x40 } } else if b & 0x7f == 0x7f { b ^= 1 }  // no NaN or Inf
                    bytes[i] = b
                }
                tensors.append((name, e5m2 ? "F8_E5M2" : "F8_E4M3", shape, Data(bytes)))
                // Random e4m3 bytes have an RMS near 100, e5m2 near 10^4.
                let scale = 1 / Float(shape[1]).squareRoot() / (e5m2 ? 5000 : 100)
                tensors.append((String(name.dropLast(".weight".count)) + ".scale_weight", "F32", [], f32([scale])))
            } else {
                let norm = name.contains("norm") && name.hasSuffix(".weight") || name == "img_emb.proj.0.weight" || name == "img_emb.proj.4.weight"
                let bound: Float = shape.count >= 2 ? 1 / Float(shape.dropFirst().reduce(1, *)).squareRoot() : 0.02
                tensors.append((name, "F32", shape, f32((0..<count).map { _ in norm ? 1 : rng.uniform(bound) })))
            }
        }
        tensors.append(("scaled_fp8", "F8_E4M3", [0], Data()))
        return try writeSafetensors(tensors)
    }

    static func f32(_ values: [Float]) -> Data { values.withUnsafeBufferPointer { Data(buffer: $0) } }

    static func writeSafetensors(_ tensors: [(name: String, dtype: String, shape: [Int], data: Data)]) throws -> String {
        var header: [String: Any] = [:]
        var body = Data()
        for t in tensors {
            header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [body.count, body.count + t.data.count]]
            body.append(t.data)
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var file = Data()
        var length = UInt64(json.count).littleEndian
        file.append(Data(bytes: &length, count: 8))
        file.append(json)
        file.append(body)
        let path = NSTemporaryDirectory() + "wankit-compact-\(UUID().uuidString).safetensors"
        try file.write(to: URL(fileURLWithPath: path))
        return path
    }

    func emulatedGPU() throws -> (CUDAContext, KernelCompiler, cleanup: () -> Void) {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator still compiles the kernels): \(error)") }
        CUDAEmulator.install()
        CUDAEmulator.refusals = []
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-compact-cache-\(getpid())").path
        let context = try CUDAContext(ordinal: 0)
        let compiler = try KernelCompiler(cacheDirectory: cache)
        return (context, compiler, {
            CUDAEmulator.uninstall()
            try? FileManager.default.removeItem(atPath: cache)
        })
    }

    /// A random input for `config` (x, t, 5 text rows; y and one image's CLIP features for image models).
    static func input(_ config: WanDiTConfig) throws -> DiTInput {
        let image = config.hasImageInput
        let rand = RandomWeights(shapes: [("x", [16, 3, 4, 6]), ("y", [20, 3, 4, 6]), ("c", [5, 64]), ("clip", [1, 257, 1280])], seed: 11)
        return DiTInput(x: try rand.float32("x"), t: 613, context: try rand.float32("c"),
                        y: image ? try rand.float32("y") : nil, clipFeatures: image ? try rand.float32("clip") : nil)
    }

    /// Runs `source` and its host-dequantised twin through CUDADiT on the emulator; both outputs and traces must be
    /// equal bit for bit. Returns the two models' weight bytes.
    func compareWithHostDequantised(_ config: WanDiTConfig, _ source: WeightSource, precision: CUDAPrecision = .bf16,
                                    context: CUDAContext, compiler: KernelCompiler, label: String)
        throws -> (compact: CUDADiT, host: CUDADiT) {
        let input = try Self.input(config)
        let compact = try CUDADiT(config: config, weights: source, precision: precision, context: context, compiler: compiler)
        let host = try CUDADiT(config: config, weights: HostDequantized(source), precision: precision, context: context, compiler: compiler)
        XCTAssertTrue(host.compactMatrices.isEmpty, "\(label): \(host.compactMatrices)")
        var compactTrace: [String: [Float]] = [:], hostTrace: [String: [Float]] = [:]
        let got = try compact.forward(input) { compactTrace[$0] = Array($1.buffer) }
        let expected = try host.forward(input) { hostTrace[$0] = Array($1.buffer) }
        XCTAssertEqual(got.shape, expected.shape)
        XCTAssertTrue(Array(got.buffer).allSatisfy(\.isFinite), label)
        XCTAssertEqual(Array(got.buffer).map(\.bitPattern), Array(expected.buffer).map(\.bitPattern), "\(label): the output differs")
        XCTAssertEqual(Set(compactTrace.keys), Set(hostTrace.keys))
        for (name, values) in hostTrace {
            XCTAssertEqual(compactTrace[name]?.map(\.bitPattern), values.map(\.bitPattern), "\(label): trace \(name) differs")
        }
        // The plan counts what is uploaded: the compact matrices' stored bytes and the scratch, or all bf16.
        XCTAssertEqual(compact.weightBytes, CUDADiTPlan.weightBytes(config, precision: precision, weights: source), label)
        XCTAssertEqual(host.weightBytes, CUDADiTPlan.weightBytes(config, precision: precision), label)
        XCTAssertEqual(CUDADiTPlan.weightBytes(config, precision: precision, weights: HostDequantized(source)),
                       CUDADiTPlan.weightBytes(config, precision: precision), label)
        return (compact, host)
    }

    // MARK: fp8_scaled

    func testFP8ScaledDiTEqualsTheHostDequantisedUploadBitForBit() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        for type in ["t2v", "i2v"] {
            let config = Self.config(type)
            let path = try Self.writeFP8Scaled(config, seed: type == "t2v" ? 1 : 2)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let weights = try openDiTWeights(path: path)
            XCTAssertEqual(weights.layout, "comfy-fp8-scaled")
            let (compact, host) = try compareWithHostDequantised(config, weights.source, context: context, compiler: compiler, label: "\(type) fp8")

            // Which matrices stayed compact: every bf16 product (not the f32 time embedding, projection and head).
            let perBlock = type == "t2v" ? 10 : 12
            let e5m2 = config.numLayers
            let imageProjection = type == "t2v" ? 0 : 2
            XCTAssertEqual(compact.compactMatrices[.fp8E5M2], e5m2)
            XCTAssertEqual(compact.compactMatrices[.fp8E4M3], 2 + config.numLayers * perBlock - e5m2 + imageProjection)
            // Device bytes: each compact matrix 1 byte per element instead of 2, plus the scratch for the largest.
            var compactElements = 0, largest = 0
            for (name, shape) in config.parameterShapes() where name.hasSuffix(".weight") && shape.count == 2
                && !["time_embedding.", "time_projection.", "head."].contains(where: { name.hasPrefix($0) }) {
                compactElements += shape[0] * shape[1]
                largest = max(largest, shape[0] * shape[1])
            }
            XCTAssertEqual(compact.dequantScratchBytes, 2 * largest)
            XCTAssertEqual(host.weightBytes - compact.weightBytes, compactElements - 2 * largest)
            XCTAssertEqual(host.dequantScratchBytes, 0)
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches or products the emulator refused")
    }

    func testFP8UnderF32PrecisionIsDequantisedOnTheHost() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let config = Self.config("t2v")
        let path = try Self.writeFP8Scaled(config, seed: 5)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let source = try openDiTWeights(path: path).source
        let (compact, _) = try compareWithHostDequantised(config, source, precision: .f32, context: context, compiler: compiler, label: "t2v fp8 f32")
        XCTAssertTrue(compact.compactMatrices.isEmpty)
        XCTAssertEqual(compact.dequantScratchBytes, 0)
    }

    /// The 14B models' weights: an fp8_scaled checkpoint needs about half the device memory of bf16.
    func testFP8ScaledWeightBytesAt14B() {
        for config in [WanDiTConfig.t2v14B, .i2v14B] {
            let shapes = Dictionary(config.parameterShapes().map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
            let bf16 = CUDADiTPlan.weightBytes(config, precision: .bf16)
            let fp8 = CUDADiTPlan.weightBytes(config, precision: .bf16, compactBytes: { name in shapes[name]!.reduce(1, *) })
            let scratch = CUDADiTPlan.dequantScratchBytes(config, precision: .bf16, compactBytes: { name in shapes[name]!.reduce(1, *) })
            XCTAssertEqual(scratch, 2 * config.ffnDim * config.dim)  // the FFN matrices are the largest
            let ratio = Double(fp8) / Double(bf16)
            XCTAssertLessThan(ratio, 0.52, "\(config.modelType): fp8 \(fp8), bf16 \(bf16)")
            XCTAssertGreaterThan(ratio, 0.5)
            // f32 runs dequantise everything on the host: compact bytes are not used.
            XCTAssertEqual(CUDADiTPlan.weightBytes(config, precision: .f32, compactBytes: { _ in 1 }), CUDADiTPlan.weightBytes(config, precision: .f32))
        }
    }

    // MARK: the kernels alone

    /// Every dequant kernel on the emulator against the host dequantisation, and the launcher's checks.
    func testDequantKernelsOnTheEmulator() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        let ops = try CUDAOps(context: context, compiler: compiler)
        var rng = Stream(state: 99)
        for format in CompactWeightFormat.allCases {
            let count = format.blockSize * (format.blockSize == 1 ? 1001 : 5)
            var bytes = (0..<format.bytes(elements: count)!).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 56) }
            if format == .fp8E4M3 { for i in bytes.indices where bytes[i] & 0x7f == 0x7f { bytes[i] = 0 } }
            if format == .fp8E5M2 { for i in bytes.indices where bytes[i] & 0x7c == 0x7c { bytes[i] = 0 } }
            // Block scales: finite halves.
            let halves: [Int] = format == .q6_K ? [208] : format == .q4_K || format == .q5_K ? [0, 2] : format.blockSize == 32 ? [0] : []
            for b in 0..<(count / format.blockSize) { for o in halves { bytes[b * format.blockBytes + o + 1] &= 0x3f } }
            let stored = try context.allocate(bytes: bytes.count), out = try context.allocate(bytes: 2 * count)
            try stored.upload(bytes)
            let scale: Float = format.blockSize == 1 ? 0.03 : 1
            try ops.dequantize(format, out: out.pointer, weights: stored.pointer, scale: scale, count: count)
            let got = try out.download(count: count, as: UInt16.self)
            // The host path: StoredTensor.dequantize, then bf16 rounding.
            let type: StorageType = switch format {
                case .fp8E4M3: .dtype(.f8e4m3)
                case .fp8E5M2: .dtype(.f8e5m2)
                case .q8_0: .ggml(.q8_0)
                case .q4_0: .ggml(.q4_0)
                case .q4_K: .ggml(.q4_K)
                case .q5_K: .ggml(.q5_K)
                case .q6_K: .ggml(.q6_K)
            }
            let expected: [UInt16] = bytes.withUnsafeBytes { raw in
                let t = StoredTensor(name: "w", type: type, shape: [count], data: raw.baseAddress!, byteCount: bytes.count,
                                     scale: format.blockSize == 1 ? scale : nil, owner: nil)
                let values = t.float32()
                return withExtendedLifetime(values) { values.buffer.map(BFloat16.from) }
            }
            XCTAssertEqual(got, expected, "\(format)")
            XCTAssertEqual(CompactWeightFormat(type), format)
            // A count that is not whole blocks is refused before launching.
            if format.blockSize > 1 {
                XCTAssertThrowsError(try ops.dequantize(format, out: out.pointer, weights: stored.pointer, scale: 1, count: count - 1))
            }
        }
        XCTAssertNil(CompactWeightFormat(.dtype(.bf16)))
        XCTAssertNil(CompactWeightFormat(.ggml(.q5_0)))
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }
}
