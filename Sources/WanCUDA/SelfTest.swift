import Foundation
import WanTensor

/// One kernel run on the GPU against a CPU reference (double precision) on small, awkward shapes: lengths that are
/// not multiples of the tiles, masked keys, padded tokens.
public struct SelfTestResult: Codable, CustomStringConvertible {
    public var kernel: String
    public var maxAbsError: Double
    public var relL2: Double
    public var tolerance: Double
    public var passed: Bool
    public var error: String?
    /// Why the case did not run on this GPU (it then counts as passed), e.g. fp8 products below compute capability 8.9.
    public var skipped: String? = nil

    public var description: String {
        if let error { return "\(kernel): FAIL \(error)" }
        if let skipped { return "\(kernel): SKIP (\(skipped))" }
        return String(format: "%@: %@ rel_l2 %.2e (tolerance %.0e), max abs %.2e", kernel, passed ? "PASS" : "FAIL",
                      relL2, tolerance, maxAbsError)
    }
}

/// Runs every kernel of KernelCatalog that has a reference here (used by `wan devices --self-test`).
final class KernelSelfTest {
    let context: CUDAContext
    let compiler: KernelCompiler
    private var modules: [String: CUDAModule] = [:]
    private var seed: UInt64 = 0x2545_f491_4f6c_dd1d

    init(context: CUDAContext, compiler: KernelCompiler) {
        self.context = context
        self.compiler = compiler
    }

    func runAll(filter: (String) -> Bool = { _ in true }) -> [SelfTestResult] {
        let cases: [(String, Double, () throws -> (gpu: [Double], reference: [Double]))] = [
            ("rms_norm_f32", 1e-5, rmsNorm),
            ("layer_norm_modulate_f32", 1e-5, { try self.layerNormModulate(bf16Out: false) }),
            ("layer_norm_modulate_bf16", 5e-3, { try self.layerNormModulate(bf16Out: true) }),
            ("rope_3d_f32", 1e-6, rope),
            ("gelu_tanh_f32", 1e-6, { try self.unary("gelu_tanh_f32") { 0.5 * $0 * (1 + tanh(0.7978845608028654 * ($0 + 0.044715 * $0 * $0 * $0))) } }),
            ("silu_f32", 1e-6, { try self.unary("silu_f32") { $0 / (1 + exp(-$0)) } }),
            ("gated_residual_f32", 1e-6, gatedResidual),
            ("flash_attention_f32", 1e-5, { try self.attention(kernel: "flash_attention_f32", bf16: false, lq: 70, lk: 100, heads: 3, d: 128, kLens: [100, 37]) }),
            ("flash_attention_bf16_d128", 1e-2, { try self.attention(kernel: "flash_attention_bf16_d128", bf16: true, lq: 70, lk: 100, heads: 3, d: 128, kLens: [100, 37]) }),
            ("flash_attention_bf16_d64", 1e-2, { try self.attention(kernel: "flash_attention_bf16_d64", bf16: true, lq: 130, lk: 77, heads: 2, d: 64, kLens: [77, 64]) }),
            ("flash_attention_bf16_d32", 1e-2, { try self.attention(kernel: "flash_attention_bf16_d32", bf16: true, lq: 72, lk: 512, heads: 3, d: 32, kLens: [512, 300]) }),
            ("gelu_erf_f32", 1e-6, { try self.unary("gelu_erf_f32") { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) } }),
            ("bias_act_f32 (GELU)", 1e-6, biasAct),
            ("cublasLt f32 bias", 1e-6, { try self.matmul(.f32, .none) }),
            ("cublasLt f32 gelu+bias", 1e-6, { try self.matmul(.f32, .geluTanh) }),
            ("cublasLt bf16 bias", 1e-2, { try self.matmul(.bf16, .none) }),
            ("cublasLt bf16 gelu+bias", 1e-2, { try self.matmul(.bf16, .geluTanh) }),
            ("cublasLt bf16 -> f32 bias", 1e-2, { try self.matmul(.bf16, .none, output: .f32) }),
        ] + CompactWeightFormat.allCases.map { format -> (String, Double, () throws -> (gpu: [Double], reference: [Double])) in
            // Bit for bit: the GPU's bf16 must be the host dequantisation's, rounded to bf16 (tolerance 0).
            (format.kernel, 0.0, { try self.dequantize(format) })
        }
        // attention2.cu on the same cases as the first bf16 kernel (d128: 70 rows in one block of 128, 4 key tiles of 32, a mask
        // inside tile 2; d64: 2 row blocks, 2 key tiles of 64, the mask on the tile edge).
        // The CUDA-core kernel at head dims without a tensor-core kernel (f32, and bf16 storage).
        let anyHeadDim: [(String, Double, () throws -> (gpu: [Double], reference: [Double]))] = [
            ("flash_attention_f32 (d24)", 1e-5, { try self.attention(kernel: "flash_attention_f32", bf16: false, lq: 33, lk: 70, heads: 3, d: 24, kLens: [70, 41]) }),
            ("flash_attention_bf16_any (d80)", 1e-2, { try self.attention(kernel: "flash_attention_bf16_any", bf16: true, lq: 45, lk: 100, heads: 2, d: 80, kLens: [100, 33]) }),
        ]
        let attention2: [(String, Double, () throws -> (gpu: [Double], reference: [Double]))] = [
            ("flash_attention_bf16_v2_d128", 1e-2, { try self.attention(kernel: "flash_attention_bf16_v2_d128", bf16: true, lq: 70, lk: 100, heads: 3, d: 128, kLens: [100, 37]) }),
            ("flash_attention_bf16_v2_d64", 1e-2, { try self.attention(kernel: "flash_attention_bf16_v2_d64", bf16: true, lq: 130, lk: 77, heads: 2, d: 64, kLens: [77, 64]) }),
        ]
        // The fp8 products (compute capability 8.9+, else a visible skip): the activation quantised on the device
        // (bytes and scale exactly the host's: tolerance 0), then cuBLASLt's e4m3 matmul against float64 of the same
        // quantised operands and scales (bf16 output: its rounding; f32: the f32 sum).
        let fp8: [(String, Double, () throws -> (gpu: [Double], reference: [Double]))] = [
            ("fp8_quantize_e4m3_bf16", 0.0, fp8Quantize),
            ("cublasLt fp8 e4m3 -> bf16 gelu+bias", 1e-2, { try self.fp8Matmul(output: .bf16, .geluTanh) }),
            ("cublasLt fp8 e4m3 -> f32 bias", 1e-5, { try self.fp8Matmul(output: .f32, .none) }),
        ]
        return (cases + anyHeadDim + fp8 + attention2 + vaeSelfTestCases() + t5SelfTestCases()).filter { filter($0.0) }.map { name, tolerance, body in
            do {
                let (gpu, reference) = try body()
                var diff = 0.0, norm = 0.0, maxAbs = 0.0
                for (a, b) in zip(gpu, reference) {
                    let d = a.isFinite ? abs(a - b) : .infinity
                    diff += d * d
                    norm += b * b
                    maxAbs = max(maxAbs, d)
                }
                let rel = gpu.count == reference.count ? (diff / max(norm, 1e-300)).squareRoot() : .infinity
                return SelfTestResult(kernel: name, maxAbsError: maxAbs, relL2: rel, tolerance: tolerance, passed: rel <= tolerance, error: nil)
            } catch let skip as SelfTestSkip {
                return SelfTestResult(kernel: name, maxAbsError: 0, relL2: 0, tolerance: tolerance, passed: true, error: nil, skipped: skip.reason)
            } catch {
                return SelfTestResult(kernel: name, maxAbsError: .nan, relL2: .nan, tolerance: tolerance, passed: false, error: "\(error)")
            }
        }
    }

    // MARK: helpers

    private func function(_ name: String) throws -> CUDAFunction {
        guard let module = KernelCatalog.kernels.first(where: { $0.value.contains(name) })?.key else {
            throw CUDAError.kernelNotFound(name: name, file: "KernelCatalog")
        }
        if modules[module] == nil { modules[module] = try compiler.load(module: module, on: context) }
        return try modules[module]!.function(name)
    }

    private func random(_ count: Int, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return (Float(seed >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
    }

    /// `count` values uniform in ±scale from `seed` (the same stream for the same seed).
    static func values(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
    }

    /// A device copy of `values` (at least 16 bytes: float4 loads stay inside it).
    func upload<T>(_ values: [T]) throws -> DeviceBuffer {
        let buffer = try context.allocate(bytes: max(values.count * MemoryLayout<T>.stride, 16))
        try buffer.upload(values)
        return buffer
    }

    /// A device f32 buffer as doubles (waits for the queued work).
    func floats(_ buffer: DeviceBuffer, _ count: Int) throws -> [Double] {
        try context.synchronize()
        return try buffer.download(count: count, as: Float.self).map(Double.init)
    }

    /// A device bf16 buffer as doubles (waits for the queued work).
    func bf16s(_ buffer: DeviceBuffer, _ count: Int) throws -> [Double] {
        try context.synchronize()
        return try buffer.download(count: count, as: UInt16.self).map { Double(BFloat16.float($0)) }
    }

    private func blocks(_ n: Int) -> Int { min(max((n + 255) / 256, 1), 65535) }

    // MARK: cases

    private func rmsNorm() throws -> ([Double], [Double]) {
        let rows = 7, dim = 1536, eps: Float = 1e-6
        let x = random(rows * dim, scale: 3), weight = random(dim)
        let dx = try upload(x), dw = try upload(weight), out = try context.allocate(bytes: rows * dim * 4)
        try function("rms_norm_f32").launch(grid: (rows, 1, 1), block: (256, 1, 1),
                                            [.buffer(out), .buffer(dx), .buffer(dw), .int32(Int32(rows)), .int32(Int32(dim)), .float(eps)])
        var reference = [Double]()
        for r in 0..<rows {
            let row = x[(r * dim)..<((r + 1) * dim)].map(Double.init)
            let inv = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(dim) + Double(eps)).squareRoot()
            reference += row.enumerated().map { $1 * inv * Double(weight[$0]) }
        }
        return (try floats(out, rows * dim), reference)
    }

    private func layerNormModulate(bf16Out: Bool) throws -> ([Double], [Double]) {
        let batch = 2, perBatch = 5, dim = 1536, rows = batch * perBatch, eps: Float = 1e-6
        let x = random(rows * dim, scale: 4).enumerated().map { $1 + Float($0 % 7) }  // a non-zero mean
        let e = random(batch * 6 * dim, scale: 0.5)
        let dx = try upload(x), de = try upload(e)
        let out = try context.allocate(bytes: rows * dim * 4)
        // shift = e[:, 0], scale = e[:, 1] (norm1's modulation)
        try function(bf16Out ? "layer_norm_modulate_bf16" : "layer_norm_modulate_f32").launch(
            grid: (rows, 1, 1), block: (256, 1, 1),
            [.buffer(out), .buffer(dx), .pointer(0), .pointer(0), .pointer(de.pointer), .pointer(de.pointer + UInt64(dim * 4)),
             .int32(Int32(6 * dim)), .int32(Int32(rows)), .int32(Int32(perBatch)), .int32(Int32(dim)), .float(eps)])
        var reference = [Double]()
        for r in 0..<rows {
            let row = x[(r * dim)..<((r + 1) * dim)].map(Double.init)
            let mean = row.reduce(0, +) / Double(dim)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(dim)
            let inv = 1 / (variance + Double(eps)).squareRoot()
            let b = r / perBatch
            for c in 0..<dim {
                let shift = Double(e[b * 6 * dim + c]), scale = Double(e[b * 6 * dim + dim + c])
                reference.append((row[c] - mean) * inv * (1 + scale) + shift)
            }
        }
        return (bf16Out ? try bf16s(out, rows * dim) : try floats(out, rows * dim), reference)
    }

    private func rope() throws -> ([Double], [Double]) {
        let grids: [Int32] = [2, 3, 4, 1, 2, 3], batch = 2, seqLen = 24, heads = 2, d = 128
        let x = random(batch * seqLen * heads * d)
        let dx = try upload(x), dg = try upload(grids)
        let total = batch * seqLen * heads * d / 2
        try function("rope_3d_f32").launch(grid: (blocks(total), 1, 1), block: (256, 1, 1),
                                           [.buffer(dx), .buffer(dg), .int32(Int32(batch)), .int32(Int32(seqLen)),
                                            .int32(Int32(heads)), .int32(Int32(d)), .float(10000)])
        // The official split: c = d/2 pairs; frames c - 2(c/3), rows c/3, columns c/3.
        let c = d / 2, ch = c / 3, cf = c - 2 * ch
        var reference = x.map(Double.init)
        for b in 0..<batch {
            let f = Int(grids[3 * b]), h = Int(grids[3 * b + 1]), w = Int(grids[3 * b + 2])
            for t in 0..<(f * h * w) {
                let positions = [t / (h * w), (t / w) % h, t % w]
                for n in 0..<heads {
                    for j in 0..<c {
                        let (axis, k, parts) = j < cf ? (0, j, cf) : j < cf + ch ? (1, j - cf, ch) : (2, j - cf - ch, ch)
                        let angle = Double(positions[axis]) / pow(10000, Double(2 * k) / Double(2 * parts))
                        let at = ((b * seqLen + t) * heads + n) * d + 2 * j
                        let re = Double(x[at]), im = Double(x[at + 1])
                        reference[at] = re * cos(angle) - im * sin(angle)
                        reference[at + 1] = re * sin(angle) + im * cos(angle)
                    }
                }
            }
        }
        return (try floats(dx, x.count), reference)
    }

    private func unary(_ kernel: String, _ f: (Double) -> Double) throws -> ([Double], [Double]) {
        let n = 10007
        let x = random(n, scale: 6)
        let dx = try upload(x), out = try context.allocate(bytes: n * 4)
        try function(kernel).launch(grid: (blocks(n), 1, 1), block: (256, 1, 1), [.buffer(out), .buffer(dx), .int64(Int64(n))])
        return (try floats(out, n), x.map { f(Double($0)) })
    }

    private func biasAct() throws -> ([Double], [Double]) {
        let rows = 37, cols = 96
        let y = random(rows * cols, scale: 3), bias = random(cols)
        let dy = try upload(y), db = try upload(bias)
        try function("bias_act_f32").launch(grid: (blocks(rows * cols), 1, 1), block: (256, 1, 1),
                                            [.buffer(dy), .buffer(db), .int64(Int64(rows)), .int32(Int32(cols)), .int32(1)])
        let reference = (0..<(rows * cols)).map { i -> Double in
            let s = Double(y[i]) + Double(bias[i % cols])
            return 0.5 * s * (1 + tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)))
        }
        return (try floats(dy, rows * cols), reference)
    }

    private var gemm: CUDAMatmul?

    /// y = x wᵀ + b (then GELU-tanh) through cuBLASLt at an odd shape, against a double-precision product of the same
    /// (rounded) inputs.
    private func matmul(_ input: DeviceDType, _ epilogue: MatmulEpilogue, output: DeviceDType? = nil) throws -> ([Double], [Double]) {
        try makeGemm()
        return try matmulBody(input, epilogue, output: output ?? input)
    }

    private func makeGemm() throws {
        if gemm == nil {
            let g = try CUDAMatmul(context: context)
            g.unfusedEpilogue = { [unowned self] type, y, bias, rows, cols, act in
                try self.function("bias_act_\(type == .f32 ? "f32" : "bf16")").launch(
                    grid: (self.blocks(rows * cols), 1, 1), block: (256, 1, 1),
                    [.pointer(y), .pointer(bias), .int64(Int64(rows)), .int32(Int32(cols)), .int32(act)])
            }
            gemm = g
        }
    }

    private var fp8Ops: (ops: CUDAOps, pool: DeviceMemoryPool)?

    /// bf16 values (as floats) with awkward magnitudes for the e4m3 quantisation: a wide range, exact zeros, ties.
    private func fp8Activation(_ count: Int) -> [Float] {
        random(count, scale: 3).enumerated().map { i, v in
            let w = i % 11 == 0 ? v * 1e-3 : i % 13 == 0 ? 0 : v
            return BFloat16.float(BFloat16.from(w))
        }
    }

    /// fp8_amax_bf16 + fp8_quantize_e4m3_bf16 (`CUDAOps.quantizeFP8`) against `FP8E4M3.quantize`: bytes and the two
    /// scales, as doubles (equal: error 0).
    private func fp8Quantize() throws -> ([Double], [Double]) {
        if fp8Ops == nil { fp8Ops = (try CUDAOps(context: context, compiler: compiler), DeviceMemoryPool(context: context)) }
        let count = 8 * 4099
        let x = fp8Activation(count)
        let dx = try upload(x.map(BFloat16.from)), out = try context.allocate(bytes: count), scratch = try context.allocate(bytes: 4 * 258)
        try fp8Ops!.ops.quantizeFP8(out: out.pointer, x: dx.pointer, count: count, weightScale: 0.125, scratch: scratch.pointer)
        try context.synchronize()
        let bytes = try out.download(count: count, as: UInt8.self), scales = try scratch.download(count: 2, as: Float.self)
        let (q, s) = FP8E4M3.quantize(x)
        return (bytes.map(Double.init) + scales.map(Double.init), q.map(Double.init) + [Double(s), 0.125])
    }

    /// y = x wᵀ + b (then GELU) with w stored as e4m3 (scale 0.01) through `CUDAMatmul.fp8Linear` at an odd row count,
    /// against float64 of the operands cuBLASLt sees: w's bytes and x quantised as `FP8E4M3.quantize` does, both scales.
    private func fp8Matmul(output: DeviceDType, _ epilogue: MatmulEpilogue) throws -> ([Double], [Double]) {
        guard FP8Products.supported(context.info) else {
            throw SelfTestSkip(reason: "compute capability \(context.info.computeCapability): cuBLASLt's fp8 matmul needs 8.9+ (Ada, Hopper)")
        }
        try makeGemm()
        if fp8Ops == nil { fp8Ops = (try CUDAOps(context: context, compiler: compiler), DeviceMemoryPool(context: context)) }
        let (m, n, k) = (77, 96, 160), wScale: Float = 0.01
        let x = fp8Activation(m * k)
        let wBytes = random(n * k).map { v -> UInt8 in let b = UInt8(truncatingIfNeeded: Int((v + 1) * 128)); return b & 0x7f == 0x7f ? b ^ 1 : b }
        var b = random(n, scale: 0.5)
        if output == .bf16 { b = b.map { BFloat16.float(BFloat16.from($0)) } }
        let dx = try upload(x.map(BFloat16.from)), dw = try upload(wBytes)
        let db = try output == .f32 ? upload(b) : upload(b.map(BFloat16.from))
        let dy = try context.allocate(bytes: m * n * output.size)
        let linear = DeviceLinear(weight: dw, bias: db, inFeatures: k, outFeatures: n, weightType: .bf16, outputType: output,
                                  compact: .fp8E4M3, scale: wScale)
        guard try gemm!.fp8Linear(linear, rows: m, x: dx.pointer, y: dy.pointer, epilogue: epilogue, ops: fp8Ops!.ops, pool: fp8Ops!.pool) else {
            throw CUDAError.callFailed(call: "fp8Linear", code: -1, message: "the product fell back to the bf16 path (\(gemm!.fp8Fallbacks))")
        }
        let (q, s) = FP8E4M3.quantize(x)
        let factor = Double(s) * Double(wScale)
        var reference = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0
                for kk in 0..<k { sum += Double(FP8E4M3.decode(q[i * k + kk])) * Double(FP8E4M3.decode(wBytes[j * k + kk])) }
                var v = factor * sum + Double(b[j])
                if epilogue == .geluTanh { v = 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) }
                reference[i * n + j] = v
            }
        }
        return (output == .f32 ? try floats(dy, m * n) : try bf16s(dy, m * n), reference)
    }

    private func matmulBody(_ input: DeviceDType, _ epilogue: MatmulEpilogue, output: DeviceDType) throws -> ([Double], [Double]) {
        let (m, n, k) = (77, 96, 160)
        var x = random(m * k), w = random(n * k, scale: 0.1), b = random(n, scale: 0.5)
        if input == .bf16 {
            x = x.map { BFloat16.float(BFloat16.from($0)) }
            w = w.map { BFloat16.float(BFloat16.from($0)) }
        }
        if output == .bf16 { b = b.map { BFloat16.float(BFloat16.from($0)) } }
        let dx = try input == .f32 ? upload(x) : upload(x.map(BFloat16.from))
        let dw = try input == .f32 ? upload(w) : upload(w.map(BFloat16.from))
        let db = try output == .f32 ? upload(b) : upload(b.map(BFloat16.from))
        let dy = try context.allocate(bytes: m * n * output.size)
        try gemm!.linear(m: m, n: n, k: k, x: dx.pointer, w: dw.pointer, bias: db.pointer, y: dy.pointer,
                         input: input, output: output, epilogue: epilogue)
        var reference = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = Double(b[j])
                for kk in 0..<k { s += Double(x[i * k + kk]) * Double(w[j * k + kk]) }
                if epilogue == .geluTanh { s = 0.5 * s * (1 + tanh(0.7978845608028654 * (s + 0.044715 * s * s * s))) }
                reference[i * n + j] = s
            }
        }
        return (output == .f32 ? try floats(dy, m * n) : try bf16s(dy, m * n), reference)
    }

    /// Random stored bytes of `format` (fp8 without NaN/Inf patterns; block scales as finite halves, subnormals
    /// included) expanded by its dequant kernel, against the host dequantisation (`StoredTensor.dequantize`, then
    /// bf16 rounding) of the same bytes.
    private func dequantize(_ format: CompactWeightFormat) throws -> ([Double], [Double]) {
        let count = format.blockSize == 1 ? 10007 : format.blockSize * (format.blockSize == 32 ? 37 : 7)
        let scale: Float = format.blockSize == 1 ? 0.0137 : 1
        var bytes = random(format.bytes(elements: count)!).map { UInt8(truncatingIfNeeded: Int(($0 + 1) * 128)) }
        func half(_ i: Int) -> (UInt8, UInt8) {
            let r = random(2)
            let exponent = UInt16(min(20, Int((r[0] + 1) * 10.5))), mantissa = UInt16(truncatingIfNeeded: Int((r[1] + 1) * 512)) & 0x3ff
            let bits = (i % 2 == 0 ? 0 : 0x8000) | exponent << 10 | mantissa
            return (UInt8(bits & 0xff), UInt8(bits >> 8))
        }
        switch format {
        case .fp8E4M3: for i in bytes.indices where bytes[i] & 0x7f == 0x7f { bytes[i] ^= 1 }
        case .fp8E5M2: for i in bytes.indices where bytes[i] & 0x7c == 0x7c { bytes[i] ^= 0x40 }
        default: break
        }
        let halves = format.halfFieldOffsets
        for block in 0..<(count / format.blockSize) {
            for (k, offset) in halves.enumerated() {
                let (lo, hi) = half(block + k)
                bytes[block * format.blockBytes + offset] = lo
                bytes[block * format.blockBytes + offset + 1] = hi
            }
        }
        let stored = try upload(bytes), out = try context.allocate(bytes: 2 * count)
        try function(format.kernel).launch(grid: (blocks(count), 1, 1), block: (256, 1, 1),
                                           [.buffer(out), .buffer(stored), .float(scale), .int64(Int64(count))])
        var reference = [UInt16](repeating: 0, count: count)
        bytes.withUnsafeBytes { raw in
            reference.withUnsafeMutableBufferPointer {
                CompactWeightFormat.hostDequantize(format, data: raw.baseAddress!, count: count, scale: scale, into: $0.baseAddress!)
            }
        }
        return (try bf16s(out, count), reference.map { Double(BFloat16.float($0)) })
    }

    private func gatedResidual() throws -> ([Double], [Double]) {
        let batch = 2, perBatch = 5, dim = 64, rows = batch * perBatch
        let x = random(rows * dim), y = random(rows * dim), e = random(batch * 6 * dim)
        let dx = try upload(x), dy = try upload(y), de = try upload(e)
        // gate = e[:, 2]
        try function("gated_residual_f32").launch(grid: (blocks(rows * dim), 1, 1), block: (256, 1, 1),
                                                  [.buffer(dx), .buffer(dy), .pointer(de.pointer + UInt64(2 * dim * 4)), .int32(Int32(6 * dim)),
                                                   .int64(Int64(rows)), .int32(Int32(perBatch)), .int32(Int32(dim))])
        let reference = (0..<(rows * dim)).map { i -> Double in
            let r = i / dim, c = i % dim
            return Double(x[i]) + Double(y[i]) * Double(e[(r / perBatch) * 6 * dim + 2 * dim + c])
        }
        return (try floats(dx, rows * dim), reference)
    }

    private func attention(kernel: String, bf16: Bool, lq: Int, lk: Int, heads: Int, d: Int, kLens: [Int32]) throws -> ([Double], [Double]) {
        let batch = kLens.count
        var q = random(batch * lq * heads * d, scale: 2), k = random(batch * lk * heads * d, scale: 2), v = random(batch * lk * heads * d)
        if bf16 {  // the reference sees the same rounded inputs
            q = q.map { BFloat16.float(BFloat16.from($0)) }
            k = k.map { BFloat16.float(BFloat16.from($0)) }
            v = v.map { BFloat16.float(BFloat16.from($0)) }
        }
        let scale = 1 / Float(d).squareRoot()
        let dq = try bf16 ? upload(q.map(BFloat16.from)) : upload(q)
        let dk = try bf16 ? upload(k.map(BFloat16.from)) : upload(k)
        let dv = try bf16 ? upload(v.map(BFloat16.from)) : upload(v)
        let dl = try upload(kLens)
        let out = try context.allocate(bytes: batch * lq * heads * d * (bf16 ? 2 : 4))
        if kernel.hasPrefix("flash_attention_bf16_v2") {
            try function(kernel).launch(grid: ((lq + CUDAOps.bf16V2Rows - 1) / CUDAOps.bf16V2Rows, heads, batch),
                                        block: (CUDAOps.bf16V2Threads(headDim: d), 1, 1),
                                        [.buffer(out), .buffer(dq), .buffer(dk), .buffer(dv), .buffer(dl), .int32(Int32(lq)),
                                         .int32(Int32(lk)), .int32(Int32(heads)), .float(scale)])
        } else if bf16 && kernel != "flash_attention_bf16_any" {
            try function(kernel).launch(grid: ((lq + 63) / 64, heads, batch), block: (128, 1, 1),
                                        [.buffer(out), .buffer(dq), .buffer(dk), .buffer(dv), .buffer(dl), .int32(Int32(lq)),
                                         .int32(Int32(lk)), .int32(Int32(heads)), .float(scale)])
        } else {
            try function(kernel).launch(grid: ((lq + 3) / 4, heads, batch), block: (128, 1, 1),
                                        [.buffer(out), .buffer(dq), .buffer(dk), .buffer(dv), .buffer(dl), .int32(Int32(lq)),
                                         .int32(Int32(lk)), .int32(Int32(heads)), .int32(Int32(d)), .float(scale)])
        }
        var reference = [Double](repeating: 0, count: batch * lq * heads * d)
        Self.referenceAttention(batch: batch, lq: lq, lk: lk, heads: heads, d: d, scale: Double(scale), keys: { Int(kLens[$0]) },
                                q: { Double(q[$0]) }, k: { Double(k[$0]) }, v: { Double(v[$0]) }, store: { reference[$0] = $1 })
        return (bf16 ? try bf16s(out, reference.count) : try floats(out, reference.count), reference)
    }

    /// Softmax attention in float64, what the attention kernels are held to (and what the CUDA emulator runs in
    /// their place): q [batch, lq, heads, d], k and v [batch, lk, heads, d], read by flat index; batch b attends to
    /// its first `keys(b)` keys. `store` gets each output's flat index in [batch, lq, heads, d] and its value (0
    /// where a batch has no keys).
    static func referenceAttention(batch: Int, lq: Int, lk: Int, heads: Int, d: Int, scale: Double, keys: (Int) -> Int,
                                   q: (Int) -> Double, k: (Int) -> Double, v: (Int) -> Double, store: (Int, Double) -> Void) {
        for b in 0..<batch {
            let keys = keys(b)
            for h in 0..<heads {
                for i in 0..<lq {
                    let qi = ((b * lq + i) * heads + h) * d
                    var scores = [Double](repeating: 0, count: keys)
                    for j in 0..<keys {
                        let kj = ((b * lk + j) * heads + h) * d
                        var s = 0.0
                        for c in 0..<d { s += q(qi + c) * k(kj + c) }
                        scores[j] = s * scale
                    }
                    let top = scores.max() ?? 0
                    let weights = scores.map { exp($0 - top) }
                    let total = weights.reduce(0, +)
                    for c in 0..<d {
                        var o = 0.0
                        for j in 0..<keys { o += weights[j] * v(((b * lk + j) * heads + h) * d + c) }
                        store(qi + c, keys > 0 ? o / total : 0)
                    }
                }
            }
        }
    }
}

/// A self-test case that cannot run on this GPU (reported as SKIP with the reason, not as a failure).
struct SelfTestSkip: Error { let reason: String }

extension DeviceReport {
    /// The self-test cases of `wan devices --self-test` whose names pass `filter`, on `context` (the tests run the
    /// fp8 cases on the CPU emulator this way).
    public static func selfTest(context: CUDAContext, compiler: KernelCompiler, filter: (String) -> Bool) -> [SelfTestResult] {
        KernelSelfTest(context: context, compiler: compiler).runAll(filter: filter)
    }
}
