import Foundation
import WanTensor

/// A CPU stand-in for libcuda and cuBLASLt, so the host side of the CUDA backend (weight upload, workspace offsets,
/// launch arguments and shapes, the cuBLASLt layouts of `CUDAMatmul`, the order of operations in `CUDADiT`) runs and
/// is checked on a machine without a GPU. The driver and cuBLASLt entry points are Swift functions given to the same
/// loaders as the real libraries' symbols; "device memory" is host memory; each kernel of Kernels/*.cu is re-done in
/// Swift from its documented semantics, reading its arguments exactly as the .cu file declares them and refusing a
/// launch shape that would not cover the work; cuBLASLt's column-major matmul is done as the library defines it
/// (op(A) · op(B) + bias per row of D, then GELU), refusing layouts that do not fit together.
///
/// It says nothing about the CUDA C++ itself (that needs a GPU: `wan devices --self-test`). NVRTC is still used (the
/// modules are compiled for real, the images are then ignored). Install with `CUDAEmulator.install()` or by setting
/// WANKIT_CUDA_EMULATOR=1 (then `--device cuda` runs on it).
public enum CUDAEmulator {
    /// Whether fused cuBLASLt epilogues are refused by the heuristic (to exercise the bias_act fallback).
    public static var refuseFusedEpilogues = false
    /// The compute capability the emulated GPU reports (9.0, an H100; lower it to check what needs 8.9+).
    nonisolated(unsafe) public static var computeCapability = (major: 9, minor: 0)

    nonisolated(unsafe) static var installed = false
    nonisolated(unsafe) static var driver: CUDADriver?

    public static func install() { installed = true }
    public static func uninstall() { installed = false }

    static var isActive: Bool { installed || ProcessInfo.processInfo.environment["WANKIT_CUDA_EMULATOR"] == "1" }

    static func activeDriver() -> CUDADriver? {
        guard isActive else { return nil }
        if driver == nil { driver = try? CUDADriver(library: nil) { EmulatedDriver.symbols[$0] } }
        return driver
    }

    static func activeCublasResolver() -> ((String) -> UnsafeMutableRawPointer?)? {
        guard isActive else { return nil }
        return { EmulatedCublas.symbols[$0] }
    }

    /// Launches the emulator refused (name: reason), for tests to read.
    nonisolated(unsafe) public static var refusals: [String] = []
    /// Bytes of emulated device memory in use.
    public static var allocatedBytes: Int { EmulatedDriver.allocations.values.reduce(0, +) }
}

// MARK: driver

private func raw<T>(_ f: T) -> UnsafeMutableRawPointer { unsafeBitCast(f, to: UnsafeMutableRawPointer.self) }

enum EmulatedDriver {
    nonisolated(unsafe) static var allocations: [UInt64: Int] = [:]
    nonisolated(unsafe) static var functionNames: [String] = []
    static let total = 80 << 30
    static let errorText = strdup("CUDAEmulator: invalid launch (see CUDAEmulator.refusals)")!

    static let symbols: [String: UnsafeMutableRawPointer] = [
        "cuInit": raw({ (_: UInt32) -> Int32 in 0 } as @convention(c) (UInt32) -> Int32),
        "cuDriverGetVersion": raw({ (v: UnsafeMutablePointer<Int32>) -> Int32 in v.pointee = 13000; return 0 } as @convention(c) (UnsafeMutablePointer<Int32>) -> Int32),
        "cuDeviceGetCount": raw({ (n: UnsafeMutablePointer<Int32>) -> Int32 in n.pointee = 1; return 0 } as @convention(c) (UnsafeMutablePointer<Int32>) -> Int32),
        "cuDeviceGet": raw({ (d: UnsafeMutablePointer<Int32>, i: Int32) -> Int32 in d.pointee = i; return i == 0 ? 0 : 101 } as @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32),
        "cuDeviceGetName": raw({ (name: UnsafeMutablePointer<CChar>, length: Int32, _: Int32) -> Int32 in
            let text = Array("WanKit CUDA emulator (CPU)".utf8CString.prefix(Int(length) - 1)) + [0]
            for (i, c) in text.enumerated() { name[i] = c }
            return 0
        } as @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32),
        "cuDeviceGetAttribute": raw({ (value: UnsafeMutablePointer<Int32>, attribute: Int32, _: Int32) -> Int32 in
            switch attribute {
            case 16: value.pointee = 132         // multiprocessors
            case 75: value.pointee = Int32(CUDAEmulator.computeCapability.major)  // compute capability
            case 76: value.pointee = Int32(CUDAEmulator.computeCapability.minor)
            case 97: value.pointee = 227 * 1024  // shared memory per block (opt-in)
            default: value.pointee = 0
            }
            return 0
        } as @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32),
        "cuDeviceTotalMem_v2": raw({ (bytes: UnsafeMutablePointer<Int>, _: Int32) -> Int32 in bytes.pointee = EmulatedDriver.total; return 0 } as @convention(c) (UnsafeMutablePointer<Int>, Int32) -> Int32),
        "cuDevicePrimaryCtxRetain": raw({ (ctx: UnsafeMutablePointer<OpaquePointer?>, _: Int32) -> Int32 in ctx.pointee = OpaquePointer(bitPattern: 0xc0de); return 0 } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Int32),
        "cuDevicePrimaryCtxRelease_v2": raw({ (_: Int32) -> Int32 in 0 } as @convention(c) (Int32) -> Int32),
        "cuCtxSetCurrent": raw({ (_: OpaquePointer?) -> Int32 in 0 } as @convention(c) (OpaquePointer?) -> Int32),
        "cuCtxSynchronize": raw({ () -> Int32 in 0 } as @convention(c) () -> Int32),
        "cuMemGetInfo_v2": raw({ (free: UnsafeMutablePointer<Int>, total: UnsafeMutablePointer<Int>) -> Int32 in
            total.pointee = EmulatedDriver.total
            free.pointee = EmulatedDriver.total - CUDAEmulator.allocatedBytes
            return 0
        } as @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32),
        "cuMemAlloc_v2": raw({ (pointer: UnsafeMutablePointer<UInt64>, bytes: Int) -> Int32 in
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 256)
            p.initializeMemory(as: UInt8.self, repeating: 0xff, count: max(bytes, 1))  // NaN-ish garbage, as fresh memory may hold
            let address = UInt64(UInt(bitPattern: p))
            EmulatedDriver.allocations[address] = bytes
            pointer.pointee = address
            return 0
        } as @convention(c) (UnsafeMutablePointer<UInt64>, Int) -> Int32),
        "cuMemFree_v2": raw({ (address: UInt64) -> Int32 in
            guard EmulatedDriver.allocations.removeValue(forKey: address) != nil else { return 1 }
            UnsafeMutableRawPointer(bitPattern: UInt(address))!.deallocate()
            return 0
        } as @convention(c) (UInt64) -> Int32),
        "cuMemcpyHtoD_v2": raw({ (dst: UInt64, src: UnsafeRawPointer, bytes: Int) -> Int32 in
            guard EmulatedDriver.inside(dst, bytes) else { return 1 }
            UnsafeMutableRawPointer(bitPattern: UInt(dst))!.copyMemory(from: src, byteCount: bytes)
            return 0
        } as @convention(c) (UInt64, UnsafeRawPointer, Int) -> Int32),
        "cuMemcpyDtoH_v2": raw({ (dst: UnsafeMutableRawPointer, src: UInt64, bytes: Int) -> Int32 in
            guard EmulatedDriver.inside(src, bytes) else { return 1 }
            dst.copyMemory(from: UnsafeRawPointer(bitPattern: UInt(src))!, byteCount: bytes)
            return 0
        } as @convention(c) (UnsafeMutableRawPointer, UInt64, Int) -> Int32),
        "cuMemcpyDtoD_v2": raw({ (dst: UInt64, src: UInt64, bytes: Int) -> Int32 in
            guard EmulatedDriver.inside(dst, bytes), EmulatedDriver.inside(src, bytes) else { return 1 }
            UnsafeMutableRawPointer(bitPattern: UInt(dst))!.copyMemory(from: UnsafeRawPointer(bitPattern: UInt(src))!, byteCount: bytes)
            return 0
        } as @convention(c) (UInt64, UInt64, Int) -> Int32),
        "cuModuleLoadData": raw({ (module: UnsafeMutablePointer<OpaquePointer?>, _: UnsafeRawPointer) -> Int32 in
            module.pointee = OpaquePointer(bitPattern: 0x30d)
            return 0
        } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Int32),
        "cuModuleUnload": raw({ (_: OpaquePointer) -> Int32 in 0 } as @convention(c) (OpaquePointer) -> Int32),
        "cuModuleGetFunction": raw({ (function: UnsafeMutablePointer<OpaquePointer?>, _: OpaquePointer, name: UnsafePointer<CChar>) -> Int32 in
            let kernel = String(cString: name)
            guard EmulatedKernels.known.contains(kernel) else { return 500 }  // CUDA_ERROR_NOT_FOUND
            EmulatedDriver.functionNames.append(kernel)
            function.pointee = OpaquePointer(bitPattern: EmulatedDriver.functionNames.count)
            return 0
        } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer, UnsafePointer<CChar>) -> Int32),
        "cuFuncSetAttribute": raw({ (_: OpaquePointer, _: Int32, _: Int32) -> Int32 in 0 } as @convention(c) (OpaquePointer, Int32, Int32) -> Int32),
        "cuLaunchKernel": raw({ (f: OpaquePointer, gx: UInt32, gy: UInt32, gz: UInt32, bx: UInt32, by: UInt32, bz: UInt32, _: UInt32, _: OpaquePointer?,
                                 params: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 in
            let index = Int(bitPattern: UnsafeRawPointer(f)) - 1
            guard index >= 0, index < EmulatedDriver.functionNames.count, let params else { return 400 }  // CUDA_ERROR_INVALID_HANDLE
            let name = EmulatedDriver.functionNames[index]
            if let refusal = EmulatedKernels.run(name, grid: (Int(gx), Int(gy), Int(gz)), block: (Int(bx), Int(by), Int(bz)), args: EmulatedArgs(params)) {
                CUDAEmulator.refusals.append("\(name): \(refusal)")
                return 1  // CUDA_ERROR_INVALID_VALUE
            }
            return 0
        } as @convention(c) (OpaquePointer, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, OpaquePointer?,
                             UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32),
        "cuGetErrorString": raw({ (_: Int32, text: UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32 in
            text.pointee = UnsafePointer(EmulatedDriver.errorText)
            return 0
        } as @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32),
    ]

    /// Whether [address, address + bytes) lies inside one allocation.
    static func inside(_ address: UInt64, _ bytes: Int) -> Bool {
        for (base, size) in allocations where address >= base && address + UInt64(bytes) <= base + UInt64(size) { return true }
        return false
    }
}

/// The kernel arguments as cuLaunchKernel receives them: one pointer to each value.
struct EmulatedArgs {
    let params: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    init(_ params: UnsafeMutablePointer<UnsafeMutableRawPointer?>) { self.params = params }
    func address(_ i: Int) -> UInt64 { params[i]!.load(as: UInt64.self) }
    func int32(_ i: Int) -> Int { Int(params[i]!.load(as: Int32.self)) }
    func int64(_ i: Int) -> Int { Int(params[i]!.load(as: Int64.self)) }
    func float(_ i: Int) -> Float { params[i]!.load(as: Float.self) }
}

/// Typed access to emulated device memory.
struct EmulatedTensor {
    let address: UInt64
    let bf16: Bool
    var isNull: Bool { address == 0 }
    init(_ address: UInt64, bf16: Bool) { self.address = address; self.bf16 = bf16 }
    subscript(i: Int) -> Float {
        get {
            let p = UnsafeMutableRawPointer(bitPattern: UInt(address))!
            return bf16 ? BFloat16.float(p.load(fromByteOffset: 2 * i, as: UInt16.self)) : p.load(fromByteOffset: 4 * i, as: Float.self)
        }
        nonmutating set {
            let p = UnsafeMutableRawPointer(bitPattern: UInt(address))!
            if bf16 { p.storeBytes(of: BFloat16.from(newValue), toByteOffset: 2 * i, as: UInt16.self) } else { p.storeBytes(of: newValue, toByteOffset: 4 * i, as: Float.self) }
        }
    }
    func int(_ i: Int) -> Int { Int(UnsafeRawPointer(bitPattern: UInt(address))!.load(fromByteOffset: 4 * i, as: Int32.self)) }
}

// MARK: kernels

enum EmulatedKernels {
    static var known: Set<String> { Set(KernelCatalog.kernels.values.joined()) }

    static func gelu(_ x: Float) -> Float { 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) }

    /// Runs kernel `name`; returns why the launch is refused, or nil.
    static func run(_ name: String, grid: (Int, Int, Int), block: (Int, Int, Int), args a: EmulatedArgs) -> String? {
        let bf = name.hasSuffix("_bf16") || name.hasPrefix("flash_attention_bf16")
        func t(_ i: Int, bf16: Bool = bf) -> EmulatedTensor { EmulatedTensor(a.address(i), bf16: bf16) }
        func f32(_ i: Int) -> EmulatedTensor { EmulatedTensor(a.address(i), bf16: false) }
        let threads = block.0 * block.1 * block.2
        guard grid.0 > 0, grid.1 > 0, grid.2 > 0, threads > 0, threads <= 1024, grid.0 < (1 << 31), grid.1 <= 65535, grid.2 <= 65535 else {
            return "grid \(grid) block \(block) is not a valid launch"
        }
        switch name {
        case "silu_f32", "silu_bf16", "gelu_tanh_f32", "gelu_tanh_bf16", "gelu_erf_f32", "gelu_erf_bf16", "convert_f32_to_bf16", "convert_bf16_to_f32":
            let n = a.int64(2)
            let out = name == "convert_f32_to_bf16" ? t(0, bf16: true) : name == "convert_bf16_to_f32" ? t(0, bf16: false) : t(0)
            let x = name == "convert_f32_to_bf16" ? t(1, bf16: false) : name == "convert_bf16_to_f32" ? t(1, bf16: true) : t(1)
            for i in 0..<n {
                let v = x[i]
                if name.hasPrefix("silu") { out[i] = v / (1 + exp(-v)) }
                else if name.hasPrefix("gelu_tanh") { out[i] = gelu(v) }
                else if name.hasPrefix("gelu_erf") { out[i] = 0.5 * v * (1 + erf(v * 0.7071067811865476)) }
                else { out[i] = v }
            }
        case "add_f32", "add_bf16":
            let out = t(0), x = t(1), y = t(2), n = a.int64(3)
            for i in 0..<n { out[i] = x[i] + y[i] }
        case "bias_act_f32", "bias_act_bf16":
            let y = t(0), bias = t(1), rows = a.int64(2), cols = a.int32(3), act = a.int32(4)
            for i in 0..<(rows * cols) {
                var v = y[i] + (bias.isNull ? 0 : bias[i % cols])
                if act == 1 { v = gelu(v) }
                y[i] = v
            }
        case "gated_residual_f32", "gated_residual_bf16":
            let x = f32(0), y = t(1), gate = f32(2), stride = a.int32(3), rows = a.int64(4), perBatch = a.int32(5), dim = a.int32(6)
            for i in 0..<(rows * dim) {
                let r = i / dim, c = i % dim
                x[i] += y[i] * (gate.isNull ? 1 : gate[(r / perBatch) * stride + c])
            }
        case "modulation_add_f32":
            let out = f32(0), e = f32(1), modulation = f32(2), batch = a.int32(3), n = a.int32(4)
            for i in 0..<(batch * n) { out[i] = e[i] + modulation[i % n] }
        case "rms_norm_f32", "rms_norm_bf16":
            let out = t(0), x = t(1), weight = f32(2), rows = a.int32(3), dim = a.int32(4), eps = a.float(5)
            guard grid.0 >= rows, threads == 256 else { return "one block of 256 per row: grid \(grid), block \(block) for \(rows) rows" }
            for r in 0..<rows {
                var sum = 0.0
                for c in 0..<dim { let v = Double(x[r * dim + c]); sum += v * v }
                let inv = Float(1 / (sum / Double(dim) + Double(eps)).squareRoot())
                for c in 0..<dim { out[r * dim + c] = x[r * dim + c] * inv * (weight.isNull ? 1 : weight[c]) }
            }
        case "layer_norm_modulate_f32", "layer_norm_modulate_bf16":
            let out = t(0), x = f32(1), weight = f32(2), bias = f32(3), shift = f32(4), scale = f32(5)
            let stride = a.int32(6), rows = a.int32(7), perBatch = a.int32(8), dim = a.int32(9), eps = a.float(10)
            guard grid.0 >= rows, threads == 256 else { return "one block of 256 per row: grid \(grid), block \(block) for \(rows) rows" }
            for r in 0..<rows {
                var mean = 0.0
                for c in 0..<dim { mean += Double(x[r * dim + c]) }
                mean /= Double(dim)
                var variance = 0.0
                for c in 0..<dim { let d = Double(x[r * dim + c]) - mean; variance += d * d }
                let inv = 1 / (variance / Double(dim) + Double(eps)).squareRoot()
                let sample = r / perBatch
                for c in 0..<dim {
                    var y = Float((Double(x[r * dim + c]) - mean) * inv)
                    if !weight.isNull { y *= weight[c] }
                    if !bias.isNull { y += bias[c] }
                    if !scale.isNull { y *= 1 + scale[sample * stride + c] }
                    if !shift.isNull { y += shift[sample * stride + c] }
                    out[r * dim + c] = y
                }
            }
        case "rope_3d_f32", "rope_3d_bf16":
            let x = t(0), grids = EmulatedTensor(a.address(1), bf16: false), batch = a.int32(2), seqLen = a.int32(3), heads = a.int32(4), headDim = a.int32(5)
            let theta = Double(a.float(6))
            let pairs = headDim / 2, ph = pairs / 3, pf = pairs - 2 * ph
            for b in 0..<batch {
                let f = grids.int(3 * b), h = grids.int(3 * b + 1), w = grids.int(3 * b + 2)
                for tok in 0..<min(seqLen, f * h * w) {
                    let position = [tok / (h * w), (tok / w) % h, tok % w]
                    for n in 0..<heads {
                        for j in 0..<pairs {
                            let (axis, k, parts) = j < pf ? (0, j, pf) : j < pf + ph ? (1, j - pf, ph) : (2, j - pf - ph, ph)
                            let angle = Double(position[axis]) / pow(theta, Double(2 * k) / Double(2 * parts))
                            let at = ((b * seqLen + tok) * heads + n) * headDim + 2 * j
                            let re = Double(x[at]), im = Double(x[at + 1])
                            x[at] = Float(re * cos(angle) - im * sin(angle))
                            x[at + 1] = Float(re * sin(angle) + im * cos(angle))
                        }
                    }
                }
            }
        case "flash_attention_f32", "flash_attention_bf16_any", "flash_attention_bf16_d32", "flash_attention_bf16_d64", "flash_attention_bf16_d128",
             "flash_attention_bf16_v2_d64", "flash_attention_bf16_v2_d128":
            let out = t(0), q = t(1), k = t(2), v = t(3), lens = a.address(4)
            let lq = a.int32(5), lk = a.int32(6), heads = a.int32(7)
            let cudaCores = name == "flash_attention_f32" || name == "flash_attention_bf16_any"  // head_dim is an argument
            let d = cudaCores ? a.int32(8) : Int(name.split(separator: "d").last!)!
            let scale = Double(a.float(cudaCores ? 9 : 8))
            // attention2.cu: 128 query rows a block of 128 threads (d64) or 256 (d128); attention.cu: 4 (CUDA cores) or 64 rows, 128 threads.
            let version2 = name.hasPrefix("flash_attention_bf16_v2")
            let rowsPerBlock = cudaCores ? 4 : version2 ? CUDAOps.bf16V2Rows : 64
            let blockThreads = version2 ? CUDAOps.bf16V2Threads(headDim: d) : 128
            guard threads == blockThreads, block.1 == 1, block.2 == 1, grid.0 * rowsPerBlock >= lq, grid.1 == heads else {
                return "grid \(grid) block \(block) does not cover \(lq) queries x \(heads) heads (\(rowsPerBlock) rows per block of \(blockThreads))"
            }
            if cudaCores && (d < 1 || d > CUDAOps.maxHeadDim) { return "head_dim \(d)" }
            KernelSelfTest.referenceAttention(batch: grid.2, lq: lq, lk: lk, heads: heads, d: d, scale: scale,
                                              keys: { lens == 0 ? lk : min(EmulatedTensor(lens, bf16: false).int($0), lk) },
                                              q: { Double(q[$0]) }, k: { Double(k[$0]) }, v: { Double(v[$0]) },
                                              store: { out[$0] = Float($1) })
        case _ where name.hasPrefix("dequant_"):  // the kernel of a CompactWeightFormat
            // out = bf16(float(stored) * scale), element by element as the host dequantises the stored tensor.
            guard let format = CompactWeightFormat.allCases.first(where: { $0.kernel == name }) else { return "no format for \(name)" }
            let out = a.address(0), w = a.address(1), scale = a.float(2), n = a.int64(3)
            guard n >= 0, let bytes = format.bytes(elements: n) else { return "\(n) values are not whole \(format) blocks" }
            guard n == 0 || (EmulatedDriver.inside(out, 2 * n) && EmulatedDriver.inside(w, bytes)) else {
                return "\(n) values (\(bytes) stored bytes) run past an allocation"
            }
            if n > 0 {
                CompactWeightFormat.hostDequantize(format, data: UnsafeRawPointer(bitPattern: UInt(w))!, count: n, scale: scale,
                                                   into: UnsafeMutablePointer<UInt16>(bitPattern: UInt(out))!)
            }
        case "fp8_amax_bf16":
            // partial[b] for b < grid: their maximum is max |x| (NaNs ignored); here partial[0] holds it, the rest 0.
            let partial = a.address(0), x = a.address(1), n = a.int64(2)
            guard threads == 256, block.1 == 1, grid.0 >= 1, grid.0 <= FP8Products.maxPartials, n >= 0, n % 8 == 0, x % 16 == 0 else {
                return "grid \(grid) block \(block) for \(n) values (256 threads, 1...\(FP8Products.maxPartials) blocks, n % 8 == 0, x 16-byte aligned)"
            }
            guard EmulatedDriver.inside(partial, 4 * grid.0), n == 0 || EmulatedDriver.inside(x, 2 * n) else { return "a buffer runs past its allocation" }
            let values = UnsafePointer<UInt16>(bitPattern: UInt(x))
            var amax: Float = 0
            for i in 0..<n { let v = BFloat16.float(values![i]); if !v.isNaN { amax = max(amax, abs(v)) } }
            let p = UnsafeMutablePointer<Float>(bitPattern: UInt(partial))!
            for b in 0..<grid.0 { p[b] = b == 0 ? amax : 0 }
        case "fp8_quantize_e4m3_bf16":
            let out = a.address(0), scales = a.address(1), x = a.address(2), partial = a.address(3), partials = a.int32(4)
            let weightScale = a.float(5), n = a.int64(6)
            guard threads == 256, block.1 == 1, grid.0 >= 1, n >= 0, n % 8 == 0, x % 16 == 0, out % 8 == 0, partials >= 1 else {
                return "grid \(grid) block \(block) for \(n) values (256 threads, n % 8 == 0, x 16- and out 8-byte aligned, partials \(partials))"
            }
            guard EmulatedDriver.inside(scales, 8), EmulatedDriver.inside(partial, 4 * partials),
                  n == 0 || (EmulatedDriver.inside(x, 2 * n) && EmulatedDriver.inside(out, n)) else { return "a buffer runs past its allocation" }
            let p = UnsafePointer<Float>(bitPattern: UInt(partial))!
            var amax: Float = 0
            for b in 0..<partials { amax = max(amax, p[b]) }
            let s = FP8E4M3.activationScale(amax: amax)
            let sc = UnsafeMutablePointer<Float>(bitPattern: UInt(scales))!
            sc[0] = s
            sc[1] = weightScale
            if n > 0 {
                let values = UnsafePointer<UInt16>(bitPattern: UInt(x))!, q = UnsafeMutablePointer<UInt8>(bitPattern: UInt(out))!
                for i in 0..<n { q[i] = FP8E4M3.encode(BFloat16.float(values[i]) / s) }
            }
        case _ where name.hasPrefix("vae_"):
            return EmulatedVAEKernels.run(name, grid: grid, block: block, args: a)
        case _ where name.hasPrefix("t5_"):
            return EmulatedT5Kernels.run(name, grid: grid, block: block, args: a)
        default:
            return "no emulation for \(name)"
        }
        return nil
    }
}

// MARK: cuBLASLt

enum EmulatedCublas {
    struct Desc {
        var compute: Int32; var transA: Int32 = 0; var transB: Int32 = 0; var epilogue: UInt32 = 1; var bias: UInt64 = 0
        /// Device f32 scales of A and B (0: 1), for fp8 inputs.
        var scaleA: UInt64 = 0, scaleB: UInt64 = 0
    }
    struct Layout { var type: Int32; var rows: Int; var cols: Int; var ld: Int }
    nonisolated(unsafe) static var descs: [Int: Desc] = [:]
    nonisolated(unsafe) static var layouts: [Int: Layout] = [:]
    nonisolated(unsafe) static var next = 1
    /// The alignments (bytes) a preference promises for A, B, C, D: cuBLASLt assumes 256 unless told
    /// (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A..D_BYTES = 5...8); the heuristic writes them into the algorithm it
    /// returns and cublasLtMatmul refuses pointers that break the promise.
    nonisolated(unsafe) static var alignments: [Int: [UInt32]] = [:]

    static func key(_ p: OpaquePointer) -> Int { Int(bitPattern: UnsafeRawPointer(p)) }
    static func handle() -> OpaquePointer { next += 1; return OpaquePointer(bitPattern: next * 16)! }

    /// D dims, K and why the layouts do not fit (nil when they do).
    static func check(_ d: Desc, _ a: Layout, _ b: Layout, _ c: Layout) -> (m: Int, n: Int, k: Int, error: String?) {
        let (am, ak) = d.transA == 1 ? (a.cols, a.rows) : (a.rows, a.cols)
        let (bk, bn) = d.transB == 1 ? (b.cols, b.rows) : (b.rows, b.cols)
        var error: String? = nil
        if ak != bk { error = "op(A) is \(am)x\(ak) but op(B) is \(bk)x\(bn)" }
        else if c.rows != am || c.cols != bn { error = "D is \(c.rows)x\(c.cols), op(A)op(B) is \(am)x\(bn)" }
        else if a.ld < a.rows || b.ld < b.rows || c.ld < c.rows { error = "a leading dimension is below its row count" }
        else if a.type != b.type { error = "A and B types differ" }
        else if d.compute != CublasLtConstants.CUBLAS_COMPUTE_32F { error = "compute type \(d.compute)" }
        else if a.type == CublasLtConstants.CUDA_R_8F_E4M3 {
            // cuBLASLt's fp8 rules: "TN" (A transposed, B not), leading dimensions of 16 bytes, D bf16 or f32.
            if d.transA != CublasLtConstants.CUBLAS_OP_T || d.transB != CublasLtConstants.CUBLAS_OP_N { error = "fp8 needs A transposed and B not (TN)" }
            else if a.ld % 16 != 0 || b.ld % 16 != 0 || (c.ld * (c.type == CublasLtConstants.CUDA_R_32F ? 4 : 2)) % 16 != 0 {
                error = "fp8 leading dimensions \(a.ld)/\(b.ld)/\(c.ld) are not multiples of 16 bytes"
            }
            else if c.type != CublasLtConstants.CUDA_R_16BF && c.type != CublasLtConstants.CUDA_R_32F { error = "fp8 with D of type \(c.type)" }
        } else if d.scaleA != 0 || d.scaleB != 0 { error = "A/B scale pointers on a non-fp8 product" }
        return (am, bn, ak, error)
    }

    static let symbols: [String: UnsafeMutableRawPointer] = [
        "cublasLtCreate": raw({ (h: UnsafeMutablePointer<OpaquePointer?>) -> Int32 in h.pointee = EmulatedCublas.handle(); return 0 } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32),
        "cublasLtDestroy": raw({ (_: OpaquePointer) -> Int32 in 0 } as @convention(c) (OpaquePointer) -> Int32),
        "cublasLtGetVersion": raw({ () -> Int in 130100 } as @convention(c) () -> Int),
        "cublasLtMatmulDescCreate": raw({ (d: UnsafeMutablePointer<OpaquePointer?>, compute: Int32, scale: Int32) -> Int32 in
            guard scale == CublasLtConstants.CUDA_R_32F else { return 7 }
            let h = EmulatedCublas.handle()
            EmulatedCublas.descs[EmulatedCublas.key(h)] = Desc(compute: compute)
            d.pointee = h
            return 0
        } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> Int32),
        "cublasLtMatmulDescDestroy": raw({ (d: OpaquePointer) -> Int32 in EmulatedCublas.descs[EmulatedCublas.key(d)] = nil; return 0 } as @convention(c) (OpaquePointer) -> Int32),
        "cublasLtMatmulDescSetAttribute": raw({ (d: OpaquePointer, attribute: Int32, value: UnsafeRawPointer, size: Int) -> Int32 in
            guard var desc = EmulatedCublas.descs[EmulatedCublas.key(d)] else { return 7 }
            switch (attribute, size) {
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_TRANSA, 4): desc.transA = value.load(as: Int32.self)
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_TRANSB, 4): desc.transB = value.load(as: Int32.self)
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_EPILOGUE, 4): desc.epilogue = value.load(as: UInt32.self)
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_BIAS_POINTER, 8): desc.bias = value.load(as: UInt64.self)
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, 8): desc.scaleA = value.load(as: UInt64.self)
            case (CublasLtConstants.CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, 8): desc.scaleB = value.load(as: UInt64.self)
            default: return 7
            }
            EmulatedCublas.descs[EmulatedCublas.key(d)] = desc
            return 0
        } as @convention(c) (OpaquePointer, Int32, UnsafeRawPointer, Int) -> Int32),
        "cublasLtMatrixLayoutCreate": raw({ (l: UnsafeMutablePointer<OpaquePointer?>, type: Int32, rows: UInt64, cols: UInt64, ld: Int64) -> Int32 in
            guard [CublasLtConstants.CUDA_R_32F, CublasLtConstants.CUDA_R_16BF, CublasLtConstants.CUDA_R_8F_E4M3].contains(type) else { return 15 }
            let h = EmulatedCublas.handle()
            EmulatedCublas.layouts[EmulatedCublas.key(h)] = Layout(type: type, rows: Int(rows), cols: Int(cols), ld: Int(ld))
            l.pointee = h
            return 0
        } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> Int32),
        "cublasLtMatrixLayoutDestroy": raw({ (l: OpaquePointer) -> Int32 in EmulatedCublas.layouts[EmulatedCublas.key(l)] = nil; return 0 } as @convention(c) (OpaquePointer) -> Int32),
        "cublasLtMatmulPreferenceCreate": raw({ (p: UnsafeMutablePointer<OpaquePointer?>) -> Int32 in
            let h = EmulatedCublas.handle()
            EmulatedCublas.alignments[EmulatedCublas.key(h)] = [256, 256, 256, 256]
            p.pointee = h
            return 0
        } as @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32),
        "cublasLtMatmulPreferenceDestroy": raw({ (_: OpaquePointer) -> Int32 in 0 } as @convention(c) (OpaquePointer) -> Int32),
        "cublasLtMatmulPreferenceSetAttribute": raw({ (p: OpaquePointer, attribute: Int32, value: UnsafeRawPointer, size: Int) -> Int32 in
            if (5...8).contains(attribute) && size == 4 {  // MIN_ALIGNMENT_A/B/C/D_BYTES
                EmulatedCublas.alignments[EmulatedCublas.key(p), default: [256, 256, 256, 256]][Int(attribute) - 5] = value.load(as: UInt32.self)
                return 0
            }
            return attribute == CublasLtConstants.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && size == 8 ? 0 : 7
        } as @convention(c) (OpaquePointer, Int32, UnsafeRawPointer, Int) -> Int32),
        "cublasLtMatmulAlgoGetHeuristic": raw({ (_: OpaquePointer, d: OpaquePointer, a: OpaquePointer, b: OpaquePointer, c: OpaquePointer, dd: OpaquePointer,
                                                 preference: OpaquePointer, requested: Int32, results: UnsafeMutableRawPointer, count: UnsafeMutablePointer<Int32>) -> Int32 in
            guard requested >= 1, let desc = EmulatedCublas.descs[EmulatedCublas.key(d)], let la = EmulatedCublas.layouts[EmulatedCublas.key(a)],
                  let lb = EmulatedCublas.layouts[EmulatedCublas.key(b)], let lc = EmulatedCublas.layouts[EmulatedCublas.key(c)],
                  EmulatedCublas.layouts[EmulatedCublas.key(dd)] != nil else { return 7 }
            let shape = EmulatedCublas.check(desc, la, lb, lc)
            if let error = shape.error { CUDAEmulator.refusals.append("cublasLtMatmulAlgoGetHeuristic: \(error)"); return 7 }
            if CUDAEmulator.refuseFusedEpilogues && desc.epilogue != CublasLtConstants.CUBLASLT_EPILOGUE_DEFAULT { count.pointee = 0; return 15 }
            // fp8 with an f32 D takes a bf16 bias (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), which the emulator does not model.
            if la.type == CublasLtConstants.CUDA_R_8F_E4M3 && lc.type == CublasLtConstants.CUDA_R_32F
                && desc.epilogue & CublasLtConstants.CUBLASLT_EPILOGUE_BIAS != 0 { count.pointee = 0; return 15 }
            results.initializeMemory(as: UInt8.self, repeating: 0, count: CublasLtConstants.heuristicResultSize)
            for (i, bytes) in (EmulatedCublas.alignments[EmulatedCublas.key(preference)] ?? [256, 256, 256, 256]).enumerated() {
                results.storeBytes(of: bytes, toByteOffset: 4 * i, as: UInt32.self)  // inside the opaque algorithm
            }
            count.pointee = 1
            return 0
        } as @convention(c) (OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, OpaquePointer, Int32,
                             UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32),
        "cublasLtMatmul": raw({ (_: OpaquePointer, d: OpaquePointer, alpha: UnsafeRawPointer, a: UInt64, la: OpaquePointer, b: UInt64, lb: OpaquePointer,
                                 beta: UnsafeRawPointer, c: UInt64, lc: OpaquePointer, dd: UInt64, ld: OpaquePointer, algo: UnsafeRawPointer?, _: UInt64, _: Int, _: OpaquePointer?) -> Int32 in
            guard let desc = EmulatedCublas.descs[EmulatedCublas.key(d)], let A = EmulatedCublas.layouts[EmulatedCublas.key(la)],
                  let B = EmulatedCublas.layouts[EmulatedCublas.key(lb)], let C = EmulatedCublas.layouts[EmulatedCublas.key(lc)],
                  let D = EmulatedCublas.layouts[EmulatedCublas.key(ld)] else { return 7 }
            let shape = EmulatedCublas.check(desc, A, B, D)
            if let error = shape.error { CUDAEmulator.refusals.append("cublasLtMatmul: \(error)"); return 7 }
            for (i, (name, address)) in [("A", a), ("B", b), ("C", c), ("D", dd)].enumerated() {
                let promised = UInt64(max(algo?.load(fromByteOffset: 4 * i, as: UInt32.self) ?? 256, 1))
                if address % promised != 0 {
                    CUDAEmulator.refusals.append("cublasLtMatmul: \(name) is not aligned to the \(promised) bytes the heuristic was told")
                    return 7
                }
            }
            if desc.bias % 16 != 0 { CUDAEmulator.refusals.append("cublasLtMatmul: the bias is not 16-byte aligned"); return 7 }
            if A.type == CublasLtConstants.CUDA_R_8F_E4M3 {
                return EmulatedCublas.fp8Matmul(desc, shape: (shape.m, shape.n, shape.k), alpha: Double(alpha.load(as: Float.self)),
                                                a: a, A, b: b, B, beta: Double(beta.load(as: Float.self)), c: c, C, d: dd, D)
            }
            let bf = CublasLtConstants.CUDA_R_16BF
            let ta = EmulatedTensor(a, bf16: A.type == bf), tb = EmulatedTensor(b, bf16: B.type == bf)
            let tc = EmulatedTensor(c, bf16: C.type == bf), td = EmulatedTensor(dd, bf16: D.type == bf)
            let hasBias = desc.epilogue & CublasLtConstants.CUBLASLT_EPILOGUE_BIAS != 0, hasGELU = desc.epilogue & CublasLtConstants.CUBLASLT_EPILOGUE_GELU != 0
            if hasBias && desc.bias == 0 { return 7 }
            guard EmulatedDriver.inside(a, (A.ld * (A.cols - 1) + A.rows) * (ta.bf16 ? 2 : 4)),
                  EmulatedDriver.inside(b, (B.ld * (B.cols - 1) + B.rows) * (tb.bf16 ? 2 : 4)),
                  EmulatedDriver.inside(dd, (D.ld * (D.cols - 1) + D.rows) * (td.bf16 ? 2 : 4)) else {
                CUDAEmulator.refusals.append("cublasLtMatmul: a matrix runs past its allocation")
                return 14
            }
            let bias = EmulatedTensor(desc.bias, bf16: td.bf16)  // the bias has D's type
            let al = Double(alpha.load(as: Float.self)), be = Double(beta.load(as: Float.self))
            for j in 0..<shape.n {
                for i in 0..<shape.m {
                    var s = 0.0
                    for p in 0..<shape.k {
                        let x = desc.transA == 1 ? ta[i * A.ld + p] : ta[p * A.ld + i]
                        let y = desc.transB == 1 ? tb[p * B.ld + j] : tb[j * B.ld + p]
                        s += Double(x) * Double(y)
                    }
                    var value = al * s + (be != 0 ? be * Double(tc[j * C.ld + i]) : 0)
                    if hasBias { value += Double(bias[i]) }
                    var out = Float(value)
                    if hasGELU { out = EmulatedKernels.gelu(out) }
                    td[j * D.ld + i] = out
                }
            }
            return 0
        } as @convention(c) (OpaquePointer, OpaquePointer, UnsafeRawPointer, UInt64, OpaquePointer, UInt64, OpaquePointer, UnsafeRawPointer, UInt64,
                             OpaquePointer, UInt64, OpaquePointer, UnsafeRawPointer?, UInt64, Int, OpaquePointer?) -> Int32),
    ]

    /// cublasLtMatmul with e4m3 A and B (A transposed, B not: checked by `check`): every stored byte decoded exactly,
    /// products summed in float64, then D = alpha · scaleA · scaleB · sum (+ beta · C) (+ bias, of D's type) (then
    /// GELU), rounded once to D's type.
    static func fp8Matmul(_ desc: Desc, shape: (m: Int, n: Int, k: Int), alpha: Double, a: UInt64, _ A: Layout, b: UInt64, _ B: Layout,
                          beta: Double, c: UInt64, _ C: Layout, d: UInt64, _ D: Layout) -> Int32 {
        guard EmulatedDriver.inside(a, A.ld * (A.cols - 1) + A.rows), EmulatedDriver.inside(b, B.ld * (B.cols - 1) + B.rows),
              EmulatedDriver.inside(d, (D.ld * (D.cols - 1) + D.rows) * (D.type == CublasLtConstants.CUDA_R_16BF ? 2 : 4)),
              desc.scaleA == 0 || EmulatedDriver.inside(desc.scaleA, 4), desc.scaleB == 0 || EmulatedDriver.inside(desc.scaleB, 4) else {
            CUDAEmulator.refusals.append("cublasLtMatmul: an fp8 operand or scale runs past its allocation")
            return 14
        }
        let hasBias = desc.epilogue & CublasLtConstants.CUBLASLT_EPILOGUE_BIAS != 0, hasGELU = desc.epilogue & CublasLtConstants.CUBLASLT_EPILOGUE_GELU != 0
        if hasBias && desc.bias == 0 { return 7 }
        let table = (0..<256).map { Double(FP8E4M3.decode(UInt8($0))) }
        let pa = UnsafePointer<UInt8>(bitPattern: UInt(a))!, pb = UnsafePointer<UInt8>(bitPattern: UInt(b))!
        func scale(_ p: UInt64) -> Double { p == 0 ? 1 : Double(UnsafePointer<Float>(bitPattern: UInt(p))!.pointee) }
        let factor = alpha * scale(desc.scaleA) * scale(desc.scaleB)
        let bf = D.type == CublasLtConstants.CUDA_R_16BF
        let tc = EmulatedTensor(c, bf16: C.type == CublasLtConstants.CUDA_R_16BF), td = EmulatedTensor(d, bf16: bf)
        let bias = EmulatedTensor(desc.bias, bf16: bf)
        // op(A) = Aᵀ: row i of op(A) is column i of A (A.ld apart); op(B) = B: column j is B's column j.
        var column = [Double](repeating: 0, count: shape.k)
        for j in 0..<shape.n {
            for p in 0..<shape.k { column[p] = table[Int(pb[j * B.ld + p])] }
            for i in 0..<shape.m {
                var s = 0.0
                for p in 0..<shape.k { s += table[Int(pa[i * A.ld + p])] * column[p] }
                var value = factor * s + (beta != 0 ? beta * Double(tc[j * C.ld + i]) : 0)
                if hasBias { value += Double(bias[i]) }
                var out = Float(value)
                if hasGELU { out = EmulatedKernels.gelu(out) }
                td[j * D.ld + i] = out
            }
        }
        return 0
    }
}
