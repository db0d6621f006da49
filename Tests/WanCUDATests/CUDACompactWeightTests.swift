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

    // MARK: GGUF blocks

    /// The ggml type each matrix of the GGUF test checkpoint is stored in (the others F32); time embedding,
    /// projection and head are f32 products (dequantised on the host), time_embedding.2 is F16 (never compact).
    static func ggmlType(_ name: String) -> GGMLType? {
        let table: [(String, GGMLType)] = [
            ("text_embedding.0.weight", .q8_0), ("text_embedding.2.weight", .q4_0), ("self_attn.q.weight", .q4_K),
            ("self_attn.k.weight", .q4_1), ("self_attn.v.weight", .q5_K), ("self_attn.o.weight", .q5_0),
            ("cross_attn.q.weight", .q6_K), ("cross_attn.k.weight", .q2_K), ("cross_attn.v.weight", .q3_K),
            ("cross_attn.o.weight", .q5_1), ("k_img.weight", .q8_0), ("v_img.weight", .q8_0), ("ffn.0.weight", .q4_K),
            ("ffn.2.weight", .q6_K), ("time_embedding.0.weight", .q8_0), ("time_embedding.2.weight", .f16),
            ("time_projection.1.weight", .q4_0), ("head.head.weight", .q4_0), ("img_emb.proj.1.weight", .q5_K),
            ("img_emb.proj.3.weight", .q4_0),
        ]
        return table.first { name.hasSuffix($0.0) }?.1
    }

    /// Random blocks of `type` for `count` values of about ±bound (scales as finite halves).
    static func blocks(_ type: GGMLType, count: Int, bound: Float, rng: inout Stream) -> Data {
        var out = Data()
        func half(_ v: Float) -> [UInt8] { let b = Float16(v).bitPattern; return [UInt8(b & 0xff), UInt8(b >> 8)] }
        func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 56) } }
        for _ in 0..<(count / type.blockSize) {
            let jitter = 0.5 + abs(rng.uniform(1))
            switch type {
            case .q8_0: out.append(contentsOf: half(bound * jitter / 127) + random(32))
            case .q4_0: out.append(contentsOf: half(bound * jitter / 8) + random(16))
            case .q4_1: out.append(contentsOf: half(bound * jitter / 8) + half(-bound * jitter) + random(16))
            case .q5_0: out.append(contentsOf: half(bound * jitter / 16) + random(4 + 16))
            case .q5_1: out.append(contentsOf: half(bound * jitter / 16) + half(-bound * jitter) + random(4 + 16))
            case .q2_K: out.append(contentsOf: random(16 + 64) + half(bound * jitter / (15 * 3)) + half(bound * jitter / 15))
            case .q3_K: out.append(contentsOf: random(32 + 64 + 12) + half(bound * jitter / (32 * 4)))
            case .q4_K: out.append(contentsOf: half(bound * jitter / (63 * 15)) + half(bound * jitter / 63) + random(12 + 128))
            case .q5_K: out.append(contentsOf: half(bound * jitter / (63 * 31)) + half(bound * jitter / 63) + random(12 + 32 + 128))
            case .q6_K: out.append(contentsOf: random(128 + 64 + 16) + half(bound * jitter / (127 * 32)))
            case .f16: out.append(contentsOf: half(rng.uniform(bound)))
            default: preconditionFailure("\(type)")
            }
        }
        return out
    }

    /// Writes a GGUF v3 checkpoint of `config` (alignment 32; dims fastest first) with the types of `ggmlType`.
    static func writeGGUF(_ config: WanDiTConfig, seed: UInt64) throws -> String {
        var rng = Stream(state: seed)
        var tensors: [(name: String, ne: [Int], type: GGMLType, data: Data)] = []
        for (name, shape) in config.parameterShapes() {
            let count = shape.reduce(1, *)
            let bound: Float = shape.count >= 2 ? 1 / Float(shape.dropFirst().reduce(1, *)).squareRoot() : 0.02
            if shape.count == 2, let type = ggmlType(name) {
                tensors.append((name, shape.reversed(), type, blocks(type, count: count, bound: bound, rng: &rng)))
            } else {
                let norm = name.contains("norm") && name.hasSuffix(".weight") || name == "img_emb.proj.0.weight" || name == "img_emb.proj.4.weight"
                tensors.append((name, shape.reversed(), .f32, f32((0..<count).map { _ in norm ? 1 : rng.uniform(bound) })))
            }
        }
        var file = Data()
        func u32(_ v: UInt32) { var x = v.littleEndian; file.append(Data(bytes: &x, count: 4)) }
        func u64(_ v: UInt64) { var x = v.littleEndian; file.append(Data(bytes: &x, count: 8)) }
        file.append(contentsOf: Array("GGUF".utf8)); u32(3); u64(UInt64(tensors.count)); u64(0)
        var offset = 0
        for t in tensors {
            u64(UInt64(t.name.utf8.count)); file.append(contentsOf: Array(t.name.utf8))
            u32(UInt32(t.ne.count)); for d in t.ne { u64(UInt64(d)) }
            u32(t.type.rawValue); u64(UInt64(offset))
            offset += (t.data.count + 31) / 32 * 32
        }
        for t in [Data()] + tensors.map(\.data) {
            file.append(t)
            while file.count % 32 != 0 { file.append(0) }
        }
        let path = NSTemporaryDirectory() + "wankit-compact-\(UUID().uuidString).gguf"
        try file.write(to: URL(fileURLWithPath: path))
        return path
    }

    func testGGUFBlockDiTEqualsTheHostDequantisedUploadBitForBit() throws {
        let (context, compiler, cleanup) = try emulatedGPU()
        defer { cleanup() }
        for type in ["t2v", "i2v"] {
            // dim 256 so that every row holds whole 256-value K-quant super-blocks.
            let config = WanDiTConfig(modelType: type, textLen: 16, inDim: type == "t2v" ? 16 : 36, dim: 256, ffnDim: 512, freqDim: 256,
                                      textDim: 64, numHeads: 2, numLayers: 2)
            let path = try Self.writeGGUF(config, seed: type == "t2v" ? 21 : 22)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let weights = try openDiTWeights(path: path)
            XCTAssertEqual(weights.layout, "gguf")
            let (compact, host) = try compareWithHostDequantised(config, weights.source, context: context, compiler: compiler, label: "\(type) gguf")
            let image = type == "t2v" ? 0 : 1
            let layers = config.numLayers
            XCTAssertEqual(compact.compactMatrices, [.q8_0: 1 + 2 * image * layers, .q4_0: 1 + image, .q4_1: layers, .q5_0: layers,
                                                     .q5_1: layers, .q2_K: layers, .q3_K: layers, .q4_K: 2 * layers,
                                                     .q5_K: layers + image, .q6_K: 2 * layers])
            // Each compact matrix takes its blocks' bytes instead of 2 per value (Q4: 0.5625 per value, Q8_0 1.0625).
            var saved = 0
            for (name, shape) in config.parameterShapes() where shape.count == 2 && !["time_", "head."].contains(where: { name.hasPrefix($0) }) {
                guard let t = Self.ggmlType(name) else { continue }
                let n = shape[0] * shape[1]
                saved += 2 * n - n / t.blockSize * t.typeSize
            }
            XCTAssertEqual(host.weightBytes - (compact.weightBytes - compact.dequantScratchBytes), saved)
        }
        XCTAssertEqual(CUDAEmulator.refusals, [], "launches or products the emulator refused")
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
            let halves = format.halfFieldOffsets
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
                case .q4_1: .ggml(.q4_1)
                case .q5_0: .ggml(.q5_0)
                case .q5_1: .ggml(.q5_1)
                case .q2_K: .ggml(.q2_K)
                case .q3_K: .ggml(.q3_K)
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
        XCTAssertNil(CompactWeightFormat(.ggml(.q8_1)))
        XCTAssertNil(CompactWeightFormat(.ggml(.q8_K)))
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }
}

/// Kernels/dequant.cu itself, compiled as C++ for this CPU (a few lines stand in for the CUDA built-ins: one thread
/// walks every index of the grid-stride loops; __fmul_rn/__fadd_rn/__fsub_rn are plain IEEE float operations with
/// contraction off, as on the GPU) and run on random stored bytes against the host dequantisation: the CUDA source's
/// arithmetic and block layouts checked bit for bit without a GPU. Needs a C++ compiler (a visible skip otherwise).
final class DequantSourceOnTheCPUTests: XCTestCase {
    static let shim = """
        #include <cstring>
        #define __global__
        #define __device__
        #define __forceinline__ inline
        struct HostDim3 { unsigned x, y, z; };
        static const HostDim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
        static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
        static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
        static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
        static inline float __fmul_rn(float a, float b) { return a * b; }
        static inline float __fadd_rn(float a, float b) { return a + b; }
        static inline float __fsub_rn(float a, float b) { return a - b; }
        static inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
        static inline void __syncthreads() {}
        static inline float fmaxf(float a, float b) { return a > b ? a : b; }

        """

    static let driver = """
        #include <cstdio>
        #include <cstdlib>
        #include <cstring>
        #include <vector>
        typedef unsigned short bf16;
        extern "C" {
        void dequant_fp8_e4m3_bf16(bf16*, const unsigned char*, float, long);
        void dequant_fp8_e5m2_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q8_0_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q4_0_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q4_1_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q5_0_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q5_1_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q2_k_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q3_k_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q4_k_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q5_k_bf16(bf16*, const unsigned char*, float, long);
        void dequant_q6_k_bf16(bf16*, const unsigned char*, float, long);
        }
        // usage: driver KERNEL SCALE COUNT < stored bytes > bf16 values
        int main(int argc, char** argv) {
            if (argc != 4) return 2;
            const char* name = argv[1];
            float scale = std::strtof(argv[2], nullptr);
            long count = std::strtol(argv[3], nullptr, 10);
            std::vector<unsigned char> in;
            unsigned char buffer[65536];
            size_t got;
            while ((got = std::fread(buffer, 1, sizeof buffer, stdin)) > 0) in.insert(in.end(), buffer, buffer + got);
            std::vector<bf16> out(count);
            void (*k)(bf16*, const unsigned char*, float, long) = nullptr;
            if (!std::strcmp(name, "dequant_fp8_e4m3_bf16")) k = dequant_fp8_e4m3_bf16;
            if (!std::strcmp(name, "dequant_fp8_e5m2_bf16")) k = dequant_fp8_e5m2_bf16;
            if (!std::strcmp(name, "dequant_q8_0_bf16")) k = dequant_q8_0_bf16;
            if (!std::strcmp(name, "dequant_q4_0_bf16")) k = dequant_q4_0_bf16;
            if (!std::strcmp(name, "dequant_q4_1_bf16")) k = dequant_q4_1_bf16;
            if (!std::strcmp(name, "dequant_q5_0_bf16")) k = dequant_q5_0_bf16;
            if (!std::strcmp(name, "dequant_q5_1_bf16")) k = dequant_q5_1_bf16;
            if (!std::strcmp(name, "dequant_q2_k_bf16")) k = dequant_q2_k_bf16;
            if (!std::strcmp(name, "dequant_q3_k_bf16")) k = dequant_q3_k_bf16;
            if (!std::strcmp(name, "dequant_q4_k_bf16")) k = dequant_q4_k_bf16;
            if (!std::strcmp(name, "dequant_q5_k_bf16")) k = dequant_q5_k_bf16;
            if (!std::strcmp(name, "dequant_q6_k_bf16")) k = dequant_q6_k_bf16;
            if (!k) return 3;
            k(out.data(), in.data(), scale, count);
            std::fwrite(out.data(), 2, count, stdout);
            return 0;
        }

        """

    func compiler() -> String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for name in ["clang++", "g++", "c++"] {
            for dir in paths where FileManager.default.isExecutableFile(atPath: dir + "/" + name) { return dir + "/" + name }
        }
        return nil
    }

    /// Runs a program with `input` on stdin; its stdout (and stderr too when `mergeErrors`).
    func run(_ executable: String, _ arguments: [String], input: Data = Data(), mergeErrors: Bool = false) throws -> (status: Int32, output: Data) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let stdin = Pipe(), stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = mergeErrors ? stdout : FileHandle.nullDevice
        try process.run()
        let writer = Thread { stdin.fileHandleForWriting.write(input); try? stdin.fileHandleForWriting.close() }
        writer.start()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while writer.isExecuting { usleep(1000) }
        return (process.terminationStatus, output)
    }

    func testDequantSourceMatchesTheHostDequantisationBitForBit() throws {
        guard let cxx = compiler() else { throw XCTSkip("no C++ compiler (clang++, g++, c++) on PATH: dequant.cu was not run on the CPU") }
        let sources = try KernelSources.load()
        let kernel = try XCTUnwrap(sources.modules["dequant.cu"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-dequant-host-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // The kernel file as NVRTC sees it (common.cuh by name), after the shim.
        for (name, text) in sources.headers { try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8) }
        try (Self.shim + kernel).write(to: dir.appendingPathComponent("dequant_host.cpp"), atomically: true, encoding: .utf8)
        try Self.driver.write(to: dir.appendingPathComponent("driver.cpp"), atomically: true, encoding: .utf8)
        let binary = dir.appendingPathComponent("dequant_host").path
        let build = try run(cxx, ["-std=c++17", "-O2", "-ffp-contract=off", "-I", dir.path, "-o", binary,
                                  dir.appendingPathComponent("dequant_host.cpp").path, dir.appendingPathComponent("driver.cpp").path], mergeErrors: true)
        XCTAssertEqual(build.status, 0, "\(cxx) could not build dequant.cu for the CPU:\n\(String(decoding: build.output, as: UTF8.self))")
        guard build.status == 0 else { return }

        var rng = CUDACompactWeightTests.Stream(state: 2024)
        for format in CompactWeightFormat.allCases {
            for trial in 0..<3 {
                let count = format.blockSize == 1 ? 4099 : format.blockSize * 29
                var bytes = (0..<format.bytes(elements: count)!).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 56) }
                // NaN patterns give some NaN on both sides, not the same bits: left out. Inf stays (e5m2, halves).
                if format == .fp8E4M3 { for i in bytes.indices where bytes[i] & 0x7f == 0x7f { bytes[i] = 0x7e } }
                if format == .fp8E5M2 { for i in bytes.indices where bytes[i] & 0x7f > 0x7c { bytes[i] = 0x7c } }
                let halves = format.halfFieldOffsets
                for b in 0..<(count / format.blockSize) {
                    for o in halves {
                        // Finite halves, small (subnormal) ones in the first trial.
                        let at = b * format.blockBytes + o + 1
                        bytes[at] = trial == 0 ? bytes[at] & 0x83 : (bytes[at] & 0x7c == 0x7c ? bytes[at] ^ 0x40 : bytes[at])
                    }
                }
                let scale: Float = format.blockSize == 1 ? [0.0123, 1, 3.5e-3][trial] : 1
                let result = try run(binary, [format.kernel, "\(scale)", "\(count)"], input: Data(bytes))
                XCTAssertEqual(result.status, 0, "\(format)")
                let got = result.output.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
                var expected = [UInt16](repeating: 0, count: count)
                bytes.withUnsafeBytes { raw in
                    expected.withUnsafeMutableBufferPointer {
                        CompactWeightFormat.hostDequantize(format, data: raw.baseAddress!, count: count, scale: scale, into: $0.baseAddress!)
                    }
                }
                XCTAssertEqual(got.count, count, "\(format)")
                let mismatches = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }
                XCTAssertTrue(mismatches.isEmpty, "\(format) trial \(trial): \(mismatches.count) of \(count) differ, first \(mismatches.prefix(5).map { "[\($0.offset)] \($0.element.0) != \($0.element.1)" })")
            }
        }
    }
}
