import Foundation
import WanTensor
import WanWeights

/// float8 e4m3fn (the fp8 of ComfyUI's fp8_scaled weights and of the fp8 products' activations): sign, 4 exponent
/// bits (bias 7), 3 mantissa bits, no infinities, S.1111.111 NaN; the largest finite value is 448, the smallest
/// normal 2^-6, subnormals m · 2^-9.
public enum FP8E4M3 {
    public static let maxFinite: Float = 448

    /// float -> e4m3 as Kernels/fp8.cu computes it (and as PTX cvt.rn.satfinite.e4m3x2.f32 does): round to nearest
    /// even, |f| >= 448 and infinities saturate to ±448 (0x7e), NaN is 0x7f with the sign.
    public static func encode(_ f: Float) -> UInt8 {
        let u = f.bitPattern
        let sign = (u >> 24) & 0x80, a = u & 0x7fff_ffff
        if a > 0x7f80_0000 { return UInt8(sign | 0x7f) }
        if a >= 0x43e0_0000 { return UInt8(sign | 0x7e) }
        if a >= 0x3c80_0000 {
            var code = (a >> 20) - (120 << 3)
            let rest = a & 0xfffff
            if rest > 0x80000 || (rest == 0x80000 && code & 1 == 1) { code += 1 }
            return UInt8(sign | code)
        }
        let e = Int(a >> 23) - 127
        if e < -11 { return UInt8(sign) }
        let mant = (a & 0x7f_ffff) | 0x80_0000
        let shift = UInt32(14 - e)
        var m = mant >> shift
        let rest = mant & ((1 << shift) - 1), half = UInt32(1) << (shift - 1)
        if rest > half || (rest == half && m & 1 == 1) { m += 1 }
        return UInt8(sign | m)
    }

    /// e4m3 -> float, exact (NaN for S.1111.111).
    public static func decode(_ b: UInt8) -> Float {
        let sign: Float = b & 0x80 != 0 ? -1 : 1
        let exp = Int(b >> 3) & 0xf, man = Int(b & 7)
        if exp == 15 && man == 7 { return .nan }
        if exp == 0 { return sign * Float(man) * 0.001953125 }
        return sign * Float(8 + man) * Float(sign: .plus, exponent: exp - 10, significand: 1)
    }

    /// The per-tensor scale of an activation whose largest magnitude is `amax`: amax / 448, so the largest value
    /// quantises to ±448; 1 where amax is 0 or not finite (or the quotient underflows to 0).
    public static func activationScale(amax: Float) -> Float {
        let q = amax / maxFinite
        return q > 0 && q.isFinite ? q : 1
    }

    /// The activation quantisation of Kernels/fp8.cu on the host: s = activationScale(max |x|) (NaNs ignored), then
    /// q[i] = encode(x[i] / s). The CUDA emulator's twin of the kernels and the tests' reference.
    public static func quantize(_ x: [Float]) -> (bytes: [UInt8], scale: Float) {
        var amax: Float = 0
        for v in x where !v.isNaN { amax = max(amax, abs(v)) }
        let s = activationScale(amax: amax)
        return (x.map { encode($0 / s) }, s)
    }
}

/// The fp8 products (opt-in: `CUDAComputeBackend.fp8Products`, `--fp8-products`): under bf16, a product whose weight
/// is stored as e4m3 runs as a cuBLASLt fp8 matmul on the weight's stored bytes and the activation quantised on the
/// device to e4m3 with a per-tensor scale (Kernels/fp8.cu), the two scales handed to cuBLASLt as its A/B scale
/// pointers, f32 accumulation, output in the product's type (bf16, or f32 for MLPProj's last Linear) with the bias
/// (and GELU) epilogue as the bf16 products have it (f32 outputs: the bias by `bias_act`, since cuBLASLt's fp8
/// products take a bf16 bias there). Products that do not meet cuBLASLt's fp8 rules run through the bf16
/// dequantisation as before, with a one-line note per weight shape.
public enum FP8Products {
    /// fp8 tensor cores arrived with Ada (8.9) and Hopper (9.0).
    public static let minimumCapability = (major: 8, minor: 9)

    public static func supported(_ gpu: GPUInfo) -> Bool {
        (gpu.computeCapabilityMajor, gpu.computeCapabilityMinor) >= minimumCapability
    }

    /// Why fp8 products cannot run on `gpu` at `precision` (a GPU below 8.9, or a precision other than bf16), with the
    /// fix; nil where they can.
    public static func refusal(_ gpu: GPUInfo, precision: CUDAPrecision) -> String? {
        guard supported(gpu) else {
            return "\(gpu.name) has compute capability \(gpu.computeCapability); cuBLASLt's fp8 matmul needs 8.9 or newer (Ada, "
                + "Hopper): leave out --fp8-products (fp8 weights then run through the bf16 dequantisation, as by default)"
        }
        guard precision == .bf16 else {
            return "fp8 products run under --precision bf16 only (\(precision.rawValue) dequantises fp8 weights on the host): "
                + "use --precision bf16 or leave out --fp8-products"
        }
        return nil
    }

    /// Throws `refusal` as a `CUDAError`.
    public static func check(_ gpu: GPUInfo, precision: CUDAPrecision) throws {
        if let refusal = refusal(gpu, precision: precision) { throw CUDAError.callFailed(call: "fp8 products", code: -1, message: refusal) }
    }

    /// Why a product y[m, n] = x[m, k] · w[n, k]ᵀ cannot take cuBLASLt's fp8 path (nil: it can). cuBLASLt's fp8 rules:
    /// A transposed and B not ("TN": the dense y = x · wᵀ is that in column-major terms), leading dimensions and
    /// pointers 16-byte aligned (k and n multiples of 16 here), compute 32F; and the quantise kernel reads x 16
    /// bytes at a time.
    static func ineligibility(m: Int, n: Int, k: Int, x: UInt64) -> String? {
        if k % 16 != 0 { return "k \(k) is not a multiple of 16" }
        if n % 16 != 0 { return "n \(n) is not a multiple of 16" }
        if x % 16 != 0 { return "the input is not 16-byte aligned" }
        return nil
    }

    /// Partial maxima fp8_amax_bf16 writes (its grid), FP8_MAX_PARTIALS in fp8.cu.
    static let maxPartials = 256
    /// Blocks of fp8_quantize_e4m3_bf16 (each re-reduces the partial maxima, so not one per 2048 values).
    static let quantizeBlocks = 4096
}

extension CUDAOps {
    /// Quantises `count` bf16 values at `x` (16-byte aligned, count a multiple of 8) to e4m3 at `out` with the
    /// per-tensor scale s = max|x| / 448 (Kernels/fp8.cu); `scratch` (at least 4 · (2 + FP8Products.maxPartials)
    /// bytes) receives s at [0] and `weightScale` at [1] (the fp8 product's B and A scales), partial maxima after.
    public func quantizeFP8(out: UInt64, x: UInt64, count: Int, weightScale: Float, scratch: UInt64) throws {
        guard count % 8 == 0, x % 16 == 0, out % 8 == 0 else {
            throw CUDAError.callFailed(call: "fp8_quantize_e4m3_bf16", code: -1, message: "\(count) values (x % 16 = \(x % 16)): needs a multiple of 8, 16-byte aligned")
        }
        let partials = min(Self.blocks(count / 8), FP8Products.maxPartials), partial = scratch + 8
        try go("fp8_amax_bf16", grid: (partials, 1, 1), block: (256, 1, 1), [.pointer(partial), .pointer(x), .int64(Int64(count))])
        try go("fp8_quantize_e4m3_bf16", grid: (min(Self.blocks(count / 8), FP8Products.quantizeBlocks), 1, 1), block: (256, 1, 1),
               [.pointer(out), .pointer(scratch), .pointer(x), .pointer(partial), .int32(Int32(partials)), .float(weightScale), .int64(Int64(count))])
    }
}

extension CUDAMatmul {
    /// The product of an uploaded `Linear` whose weight is stored as e4m3 through cuBLASLt's fp8 matmul (see
    /// `FP8Products`): the activation quantised into a pool buffer (m·k bytes, handed back after), the weight's
    /// stored bytes as A with its scale, the bias/GELU epilogue as `linear` has it. Returns false (after a one-line
    /// note, once per weight shape) where the product does not meet cuBLASLt's fp8 rules or cuBLASLt has no fp8
    /// algorithm for it: the caller then runs it through the bf16 dequantisation.
    func fp8Linear(_ l: DeviceLinear, rows m: Int, x: UInt64, y: UInt64, epilogue: MatmulEpilogue, ops: CUDAOps, pool: DeviceMemoryPool) throws -> Bool {
        precondition(l.compact == .fp8E4M3 && l.weightType == .bf16)
        let n = l.outFeatures, k = l.inFeatures
        guard m > 0, n > 0 else { return true }
        let bias = l.bias?.pointer ?? 0
        let key = PlanKey(m: m, n: n, k: k, ldx: k, ldw: k, ldy: n, transposed: true, input: .bf16, output: l.outputType,
                          epilogue: epilogue, hasBias: bias != 0, fp8: true)
        if let reason = FP8Products.ineligibility(m: m, n: n, k: k, x: x) ?? fp8Refused[key] {
            fp8Note(n: n, k: k, reason)
            return false
        }
        if fp8Scratch == nil { fp8Scratch = try context.allocate(bytes: 4 * (2 + FP8Products.maxPartials)) }
        let scales = fp8Scratch!.pointer
        let quantized = try pool.acquire(bytes: m * k)
        defer { pool.release(quantized) }
        try ops.quantizeFP8(out: quantized.pointer, x: x, count: m * k, weightScale: l.scale, scratch: scales)
        let fused: Bool
        do {
            fused = try product(key, x: quantized.pointer, w: l.weight.pointer, y: y, bias: bias, beta: 0, scales: scales,
                                timing: "gemm fp8->\(l.outputType) \(epilogue == .none ? "" : "gelu ")\(m)x\(n)x\(k)")
        } catch let error as CUDAError where plans[key] == nil {
            // No plan could be made (the heuristic has no fp8 algorithm for this shape): the bf16 path takes it.
            fp8Refused[key] = "cuBLASLt has no fp8 algorithm (\(ComputeDevice.shortReason(error)))"
            fp8Note(n: n, k: k, fp8Refused[key]!)
            return false
        }
        fp8ProductCount += 1
        if !fused && (bias != 0 || epilogue != .none) {
            guard let finish = unfusedEpilogue else {
                throw CUDAError.callFailed(call: "cublasLtMatmul", code: -1, message: "no fused epilogue and no bias_act kernel")
            }
            try finish(l.outputType, y, bias, m, n, epilogue == .geluTanh ? 1 : 0)
        }
        return true
    }

    private func fp8Note(n: Int, k: Int, _ reason: String) {
        let shape = "\(n)x\(k)"
        guard fp8NotedShapes.insert(shape).inserted else { return }
        FileHandle.standardError.write("wan: fp8 products: the [\(n), \(k)] e4m3 weights run through the bf16 dequantisation (\(reason))\n".data(using: .utf8)!)
    }
}

/// Another source with its matrices (by default every 2-D `….weight`) stored as float8 e4m3 with a per-tensor scale,
/// as ComfyUI's fp8_scaled files hold them: each quantised in memory when asked for (scale = max|w| / 448, bytes
/// `FP8E4M3.encode(w / scale)`), the rest passed through. For `wan bench dit --fp8-weights`: random weights in the
/// real shapes that stay compact on the GPU and run through the fp8 products.
public final class FP8ScaledSource: WeightSource, @unchecked Sendable {
    public let base: WeightSource
    private let quantizes: (String, [Int]) -> Bool

    public init(_ base: WeightSource, matrices: ((String, [Int]) -> Bool)? = nil) {
        self.base = base
        quantizes = matrices ?? { name, shape in shape.count == 2 && name.hasSuffix(".weight") }
    }

    public var label: String { base.label + " (matrices as fp8 e4m3, scaled)" }
    public var names: [String] { base.names }

    public func info(_ name: String) -> TensorInfo? {
        guard let info = base.info(name) else { return nil }
        guard quantizes(name, info.shape) else { return info }
        return TensorInfo(name: name, dtype: .f8e4m3, shape: info.shape, offset: 0, byteCount: info.elementCount)
    }

    public func float32(_ name: String) throws -> Tensor {
        guard let info = base.info(name), quantizes(name, info.shape) else { return try base.float32(name) }
        return try stored(name).float32()
    }

    /// The bytes of one quantised matrix (the `StoredTensor`'s owner).
    final class Bytes {
        let pointer: UnsafeMutablePointer<UInt8>
        init(count: Int) { pointer = .allocate(capacity: max(count, 1)) }
        deinit { pointer.deallocate() }
    }

    public func stored(_ name: String) throws -> StoredTensor {
        guard let info = base.info(name), quantizes(name, info.shape) else { return try base.stored(name) }
        let t = try base.float32(name)
        let count = t.count, data = t.data
        var amax: Float = 0
        for i in 0..<count where !data[i].isNaN { amax = max(amax, abs(data[i])) }
        let scale = FP8E4M3.activationScale(amax: amax)
        let bytes = Bytes(count: count), out = bytes.pointer
        Parallel.forRanges(count, grain: 1 << 16) { range in
            for i in range { out[i] = FP8E4M3.encode(data[i] / scale) }
        }
        return StoredTensor(name: name, type: .dtype(.f8e4m3), shape: t.shape, data: UnsafeRawPointer(out), byteCount: count,
                            scale: scale, owner: bytes)
    }
}
