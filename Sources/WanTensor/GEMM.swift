import CDNNL
import Foundation

/// Errors from the oneDNN runtime (these indicate a broken installation, not bad user input).
public struct DNNLError: Error, CustomStringConvertible {
    public let call: String
    public let status: dnnl_status_t
    public var description: String { "oneDNN call \(call) failed with status \(status.rawValue); check the libdnnl installation (Debian package libdnnl-dev 2.6.x)" }
}

@inline(__always) func check(_ status: dnnl_status_t, _ call: @autoclosure () -> String) {
    if status != dnnl_success {
        fatalError(DNNLError(call: call(), status: status).description)
    }
}

/// Activation fused into a matrix product's epilogue.
public enum Epilogue: Int, Hashable, Sendable {
    case none
    /// GELU, tanh approximation (PyTorch `GELU(approximate='tanh')`).
    case geluTanh
    /// GELU, exact erf form (PyTorch `GELU()`).
    case geluErf
    case silu
}

/// The element type of a product's two inputs (the output and bias are float32 either way): float32, or bfloat16
/// (oneDNN's AVX512-BF16 kernels, about twice the float32 rate on CPUs that have them; f32 accumulation).
public enum ProductType: Sendable, Hashable {
    case f32, bf16
    var dnnl: dnnl_data_type_t { self == .f32 ? dnnl_f32 : dnnl_bf16 }
    var size: Int { self == .f32 ? 4 : 2 }
}

/// Matrix products on oneDNN: `dst[M,N] = src[M,K] · W[N,K]ᵀ (+ bias) (→ epilogue)`, the `nn.Linear` of PyTorch,
/// with W in its stored [out, in] row-major layout; float32 or bfloat16 inputs (`ProductType`), float32 out.
/// Primitives are created once per shape and cached.
public final class GEMM: @unchecked Sendable {
    public static let shared = GEMM()

    private(set) var engine: dnnl_engine_t?
    private(set) var stream: dnnl_stream_t?
    private var cache: [Key: dnnl_primitive_t] = [:]
    private let lock = NSLock()

    /// One product's shape: src [m, k] rows `lda` apart; the second operand [k, n] read from W [n, k] rows `ldb`
    /// apart when `transposed`, else from [k, n] rows `ldb` apart; dst [m, n] rows `ldc` apart, added to when
    /// `accumulate`.
    private struct Key: Hashable {
        let type: ProductType
        let m, k, n: Int
        let lda: Int, ldb: Int, ldc: Int
        let transposed: Bool
        let bias: Bool, epilogue: Epilogue, accumulate: Bool
        let threads: Int
    }

    private init() {
        check(dnnl_engine_create(&engine, dnnl_cpu, 0), "dnnl_engine_create")
        check(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags.rawValue), "dnnl_stream_create")
    }

    /// Whether bfloat16 products run on native instructions here (AVX512-BF16 or AMX): oneDNN's `brg:avx512_core_bf16`
    /// kernels ran at 414-448 GFLOP/s against 206-221 for float32 on 2 Zen 4 cores (3120-token DiT products).
    /// Elsewhere oneDNN converts on AVX-512 (slower than float32) or has no bf16 products (`supportsBF16`).
    public static let nativeBF16: Bool = {
        #if arch(x86_64) && os(Linux)
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return false }
        let set = Set(flags.split(separator: " "))
        return (set.contains("avx512_bf16") || set.contains("amx_bf16")) && supportsBF16
        #else
        return false
        #endif
    }()

    /// Whether oneDNN can run bf16 products on this CPU at all (natively or emulated on AVX-512; oneDNN 2.6 has none
    /// on AVX2-only CPUs): a small bf16 matmul primitive is created once to find out.
    public static let supportsBF16: Bool = shared.probeBF16()

    private func probeBF16() -> Bool {
        var src = dnnl_memory_desc_t(), wei = dnnl_memory_desc_t(), dst = dnnl_memory_desc_t()
        var dims: dnnl_dims_t = zeroDims(), strides: dnnl_dims_t = zeroDims()
        setDims(&dims, [16, 32]); setDims(&strides, [32, 1])
        guard dnnl_memory_desc_init_by_strides(&src, 2, &dims.0, dnnl_bf16, &strides.0) == dnnl_success else { return false }
        setDims(&dims, [32, 16]); setDims(&strides, [1, 32])
        guard dnnl_memory_desc_init_by_strides(&wei, 2, &dims.0, dnnl_bf16, &strides.0) == dnnl_success else { return false }
        setDims(&dims, [16, 16]); setDims(&strides, [16, 1])
        guard dnnl_memory_desc_init_by_strides(&dst, 2, &dims.0, dnnl_f32, &strides.0) == dnnl_success else { return false }
        var desc = dnnl_matmul_desc_t()
        guard dnnl_matmul_desc_init(&desc, &src, &wei, nil, &dst) == dnnl_success else { return false }
        var pd: dnnl_primitive_desc_t?
        guard dnnl_primitive_desc_create(&pd, &desc, nil, engine, nil) == dnnl_success else { return false }
        dnnl_primitive_desc_destroy(pd)
        return true
    }

    private func primitive(_ key: Key) -> dnnl_primitive_t {
        lock.lock(); defer { lock.unlock() }
        if let p = cache[key] { return p }
        var src = dnnl_memory_desc_t(), wei = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), dst = dnnl_memory_desc_t()
        var dims: dnnl_dims_t = zeroDims(), strides: dnnl_dims_t = zeroDims()
        setDims(&dims, [key.m, key.k]); setDims(&strides, [key.lda, 1])
        check(dnnl_memory_desc_init_by_strides(&src, 2, &dims.0, key.type.dnnl, &strides.0), "memory_desc src")
        setDims(&dims, [key.k, key.n]); setDims(&strides, key.transposed ? [1, key.ldb] : [key.ldb, 1])
        check(dnnl_memory_desc_init_by_strides(&wei, 2, &dims.0, key.type.dnnl, &strides.0), "memory_desc weights")
        setDims(&dims, [1, key.n]); setDims(&strides, [key.n, 1])
        check(dnnl_memory_desc_init_by_strides(&bias, 2, &dims.0, dnnl_f32, &strides.0), "memory_desc bias")
        setDims(&dims, [key.m, key.n]); setDims(&strides, [key.ldc, 1])
        check(dnnl_memory_desc_init_by_strides(&dst, 2, &dims.0, dnnl_f32, &strides.0), "memory_desc dst")
        var desc = dnnl_matmul_desc_t()
        if key.bias {
            check(dnnl_matmul_desc_init(&desc, &src, &wei, &bias, &dst), "matmul_desc_init")
        } else {
            check(dnnl_matmul_desc_init(&desc, &src, &wei, nil, &dst), "matmul_desc_init")
        }
        var attr: dnnl_primitive_attr_t?
        check(dnnl_primitive_attr_create(&attr), "attr_create")
        // Our own scratchpad per execution: primitives run on whichever pool worker needs them, and the library's
        // shared scratchpad is only safe for a primitive executed on the thread that created it.
        check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode")
        if key.epilogue != .none || key.accumulate {
            var ops: dnnl_post_ops_t?
            check(dnnl_post_ops_create(&ops), "post_ops_create")
            if key.accumulate { check(dnnl_post_ops_append_sum(ops, 1), "append_sum") }
            if key.epilogue != .none {
                let alg: dnnl_alg_kind_t
                var alpha: Float = 0
                switch key.epilogue {
                case .geluTanh: alg = dnnl_eltwise_gelu_tanh
                case .geluErf: alg = dnnl_eltwise_gelu_erf
                case .silu: alg = dnnl_eltwise_swish; alpha = 1
                case .none: alg = dnnl_eltwise_linear
                }
                check(dnnl_post_ops_append_eltwise(ops, 1, alg, alpha, 0), "append_eltwise")
            }
            check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops")
            dnnl_post_ops_destroy(ops)
        }
        var pd: dnnl_primitive_desc_t?
        check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "matmul primitive_desc_create \(key)")
        var prim: dnnl_primitive_t?
        check(dnnl_primitive_create(&prim, pd), "primitive_create")
        dnnl_primitive_desc_destroy(pd)
        dnnl_primitive_attr_destroy(attr)
        cache[key] = prim!
        return prim!
    }

    /// `dst[m, 0..<n] = src[m, 0..<k] · weight[n, k]ᵀ + bias[n]`, then the epilogue. `weight` rows are `ldWeight` apart
    /// (default k); `dst` rows are `ldDst` apart (default n).
    public func linear(m: Int, k: Int, n: Int, src: UnsafePointer<Float>, weight: UnsafePointer<Float>, ldWeight: Int? = nil,
                       bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int? = nil, epilogue: Epilogue = .none) {
        linear(.f32, m: m, k: k, n: n, src: UnsafeRawPointer(src), weight: UnsafeRawPointer(weight), ldWeight: ldWeight, bias: bias,
               dst: dst, ldDst: ldDst, epilogue: epilogue)
    }

    /// The same product on bfloat16 `src` and `weight` (raw bf16 bits), float32 bias and output.
    public func linearBF16(m: Int, k: Int, n: Int, src: UnsafePointer<UInt16>, weight: UnsafePointer<UInt16>, ldWeight: Int? = nil,
                           bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int? = nil, epilogue: Epilogue = .none) {
        linear(.bf16, m: m, k: k, n: n, src: UnsafeRawPointer(src), weight: UnsafeRawPointer(weight), ldWeight: ldWeight, bias: bias,
               dst: dst, ldDst: ldDst, epilogue: epilogue)
    }

    private func linear(_ type: ProductType, m: Int, k: Int, n: Int, src: UnsafeRawPointer, weight: UnsafeRawPointer, ldWeight: Int?,
                        bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int?, epilogue: Epilogue) {
        if m == 0 || n == 0 { return }
        Profile.measure(epilogue == .none ? "linear" : "linear+act") {
            // Split the output columns over the workers of the one thread pool; oneDNN runs single-threaded in each.
            let ldw = ldWeight ?? k, ldd = ldDst ?? n
            let chunks = (2 * m * n * k >= 1 << 24 && n >= 32 * Parallel.workers) ? Parallel.workers : 1
            let per = ((n + chunks - 1) / chunks + 15) / 16 * 16
            Parallel.forEach(chunks) { c in
                let n0 = c * per
                let nc = min(per, n - n0)
                if nc <= 0 { return }
                execute(type, m: m, k: k, n: nc, a: src, lda: k, b: weight + n0 * ldw * type.size, ldb: ldw, transposed: true,
                        bias: bias.map { $0 + n0 }, c: dst + n0, ldc: ldd, accumulate: false, epilogue: epilogue)
            }
        }
    }

    /// Output rows (weight rows) per tile of `linear(m:k:n:src:weightRows:…)`: about 8 MB of float32 weights, a
    /// multiple of 16 between 64 and 1024. Large tiles keep oneDNN's blocking efficient (256-row tiles ran ~10%
    /// slower at 1560 tokens); two workers' tiles and the activations still fit a 32 MB L3.
    public static func tileRows(k: Int) -> Int {
        min(1024, max(64, (1 << 21) / max(k, 1) / 16 * 16))
    }

    /// `dst[m, 0..<n] = src[m, 0..<k] · W[n, k]ᵀ + bias[n]`, then the epilogue, for weights kept in another form
    /// (f16, bf16, fp8, ggml blocks): `weightRows(rows, into)` writes rows `rows` of W as float32 (k values each,
    /// densely) into a scratch tile. The output columns are split over the pool's workers as in the float32
    /// `linear`; each worker makes one tile of at most `tileRows(k)` weight rows at a time in its own scratch and
    /// runs the oneDNN product on it while it is in cache, so no float32 copy of W exists beyond the tiles.
    public func linear(m: Int, k: Int, n: Int, src: UnsafePointer<Float>,
                       weightRows: (Range<Int>, UnsafeMutablePointer<Float>) -> Void,
                       bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int? = nil, epilogue: Epilogue = .none) {
        tiledLinear(.f32, m: m, k: k, n: n, src: UnsafeRawPointer(src), weightRows: { r, raw in
            weightRows(r, raw.assumingMemoryBound(to: Float.self))
        }, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
    }

    /// The same on bfloat16 `src`, with `weightRows` writing bfloat16 rows.
    public func linearBF16(m: Int, k: Int, n: Int, src: UnsafePointer<UInt16>,
                           weightRows: (Range<Int>, UnsafeMutablePointer<UInt16>) -> Void,
                           bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int? = nil, epilogue: Epilogue = .none) {
        tiledLinear(.bf16, m: m, k: k, n: n, src: UnsafeRawPointer(src), weightRows: { r, raw in
            weightRows(r, raw.assumingMemoryBound(to: UInt16.self))
        }, bias: bias, dst: dst, ldDst: ldDst, epilogue: epilogue)
    }

    private func tiledLinear(_ type: ProductType, m: Int, k: Int, n: Int, src: UnsafeRawPointer,
                             weightRows: (Range<Int>, UnsafeMutableRawPointer) -> Void,
                             bias: UnsafePointer<Float>?, dst: UnsafeMutablePointer<Float>, ldDst: Int?, epilogue: Epilogue) {
        if m == 0 || n == 0 { return }
        Profile.measure(epilogue == .none ? "linear" : "linear+act") {
            let ldd = ldDst ?? n
            // Converting the weights costs about as much as a product with a few rows, so even small products are
            // split when the matrix is large.
            let big = (2 * m * n * k >= 1 << 24 || n * k >= 1 << 18) && n >= 32 * Parallel.workers
            let chunks = big ? Parallel.workers : 1
            let per = ((n + chunks - 1) / chunks + 15) / 16 * 16
            let maxTile = Self.tileRows(k: k)
            Parallel.forEach(chunks) { c in
                let n0 = c * per
                let nc = min(per, n - n0)
                if nc <= 0 { return }
                // Equal tiles (multiples of 16) over this chunk: at most two primitive shapes per product.
                let tiles = (nc + maxTile - 1) / maxTile
                let tile = min(nc, ((nc + tiles - 1) / tiles + 15) / 16 * 16)
                let scratch = Tensor(uninitialized: [(tile * k * type.size + 3) / 4])
                var r0 = n0
                while r0 < n0 + nc {
                    let nr = min(tile, n0 + nc - r0)
                    weightRows(r0 ..< r0 + nr, UnsafeMutableRawPointer(scratch.data))
                    execute(type, m: m, k: k, n: nr, a: src, lda: k, b: UnsafeRawPointer(scratch.data), ldb: k, transposed: true,
                            bias: bias.map { $0 + r0 }, c: dst + r0, ldc: ldd, accumulate: false, epilogue: epilogue)
                    r0 += nr
                }
            }
        }
    }

    /// One product on the calling thread (oneDNN at the thread count in force): `c[m, n] (+)= a[m, k] · B` with B read
    /// as `Key` says. Attention runs its tiles through this inside pool workers.
    public func matmul(_ type: ProductType, m: Int, n: Int, k: Int, a: UnsafeRawPointer, lda: Int, b: UnsafeRawPointer, ldb: Int,
                       transposed: Bool, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
        execute(type, m: m, k: k, n: n, a: a, lda: lda, b: b, ldb: ldb, transposed: transposed, bias: nil, c: c, ldc: ldc,
                accumulate: accumulate, epilogue: .none)
    }

    private func execute(_ type: ProductType, m: Int, k: Int, n: Int, a: UnsafeRawPointer, lda: Int, b: UnsafeRawPointer, ldb: Int,
                         transposed: Bool, bias: UnsafePointer<Float>?, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                         epilogue: Epilogue) {
        let key = Key(type: type, m: m, k: k, n: n, lda: lda, ldb: ldb, ldc: ldc, transposed: transposed, bias: bias != nil,
                      epilogue: epilogue, accumulate: accumulate, threads: Int(omp_get_max_threads()))
        let prim = primitive(key)
        var pd: const_dnnl_primitive_desc_t?
        check(dnnl_primitive_get_primitive_desc(prim, &pd), "get_primitive_desc")
        func mem(_ what: dnnl_query_t, _ ptr: UnsafeMutableRawPointer) -> dnnl_memory_t {
            let md = dnnl_primitive_desc_query_md(pd, what, 0)
            var m: dnnl_memory_t?
            check(dnnl_memory_create(&m, md, engine, ptr), "memory_create")
            return m!
        }
        let srcMem = mem(dnnl_query_src_md, UnsafeMutableRawPointer(mutating: a))
        let weiMem = mem(dnnl_query_weights_md, UnsafeMutableRawPointer(mutating: b))
        let dstMem = mem(dnnl_query_dst_md, UnsafeMutableRawPointer(c))
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: srcMem),
                    dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: weiMem),
                    dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: dstMem)]
        var biasMem: dnnl_memory_t?
        if let bias {
            let md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1)
            check(dnnl_memory_create(&biasMem, md, engine, UnsafeMutableRawPointer(mutating: bias)), "memory_create bias")
            args.append(dnnl_exec_arg_t(arg: DNNL_ARG_BIAS, memory: biasMem))
        }
        let scratchpad = Scratchpad(pd, engine: engine)
        if let m = scratchpad.memory { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: m)) }
        withExtendedLifetime(scratchpad) {
            check(dnnl_primitive_execute(prim, stream, Int32(args.count), &args), "matmul execute")
            check(dnnl_stream_wait(stream), "stream_wait")
        }
        dnnl_memory_destroy(srcMem); dnnl_memory_destroy(weiMem); dnnl_memory_destroy(dstMem)
        if let biasMem { dnnl_memory_destroy(biasMem) }
    }

    /// Plain row-major SGEMM (`C = alpha·op(A)·op(B) + beta·C`), oneDNN's dnnl_sgemm. Used for attention tiles
    /// inside worker threads (single-threaded there) and as the reference rate in `wan bench`.
    public static func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let status = dnnl_sgemm(transA ? 84 : 78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha,
                                a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        check(status, "dnnl_sgemm")
    }
}

@inline(__always) private func zeroDims() -> dnnl_dims_t { (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) }
private func setDims(_ d: inout dnnl_dims_t, _ v: [Int]) {
    withUnsafeMutableBytes(of: &d) { raw in
        let p = raw.bindMemory(to: Int64.self)
        for i in 0..<12 { p[i] = i < v.count ? Int64(v[i]) : 0 }
    }
}

/// A user-managed oneDNN scratchpad for one primitive execution (memory from the buffer pool).
final class Scratchpad {
    let memory: dnnl_memory_t?
    private let buffer: Tensor?
    init(_ pd: const_dnnl_primitive_desc_t?, engine: dnnl_engine_t?) {
        guard let md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0), dnnl_memory_desc_get_size(md) > 0 else {
            memory = nil; buffer = nil; return
        }
        let b = Tensor(uninitialized: [(dnnl_memory_desc_get_size(md) + 3) / 4])
        var m: dnnl_memory_t?
        check(dnnl_memory_create(&m, md, engine, UnsafeMutableRawPointer(b.data)), "scratchpad memory_create")
        memory = m
        buffer = b
    }
    deinit { if let memory { dnnl_memory_destroy(memory) } }
}
