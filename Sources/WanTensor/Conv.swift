import CDNNL
import Foundation

/// A 3-D convolution on oneDNN (direct convolution, channels-last activations): input [T, H, W, Cin]
/// (time as depth), output [T', H', W', Cout], weights in PyTorch's [Cout, Cin, kt, kh, kw] layout, reordered once
/// into the layout the primitive wants. No temporal padding: causal callers prepend the frames themselves.
/// A 2-D convolution applied to every frame is the kt = 1 case.
public final class Conv3D: @unchecked Sendable {
    public let outChannels: Int
    public let inChannels: Int
    public let kernel: (t: Int, h: Int, w: Int)
    public let stride: (t: Int, h: Int, w: Int)
    public let padLeft: (h: Int, w: Int)
    public let padRight: (h: Int, w: Int)
    /// The PyTorch-layout weights until the first reorder; afterwards nil (later layouts come from the first one),
    /// so a convolution holds one copy of its weights.
    private var weight: Tensor?
    let bias: Tensor?

    private struct Key: Hashable { let t, h, w: Int; let accumulate: Bool; let threads: Int }
    private var primitives: [Key: dnnl_primitive_t] = [:]
    private var reordered: [(md: dnnl_memory_desc_t, data: Tensor)] = []
    private let lock = NSLock()

    /// `weight` [Cout, Cin, kt, kh, kw] (a 4-D [Cout, Cin, kh, kw] 2-D weight is taken as kt = 1).
    public init(weight: Tensor, bias: Tensor?, stride: (t: Int, h: Int, w: Int) = (1, 1, 1),
                padLeft: (h: Int, w: Int), padRight: (h: Int, w: Int)) {
        let s = weight.shape
        precondition(s.count == 5 || s.count == 4, "conv weight must be 4-D or 5-D, got \(s)")
        self.weight = weight
        self.bias = bias
        outChannels = s[0]
        inChannels = s[1]
        kernel = s.count == 5 ? (s[2], s[3], s[4]) : (1, s[2], s[3])
        self.stride = stride
        self.padLeft = padLeft
        self.padRight = padRight
    }

    public func outputSize(frames: Int, height: Int, width: Int) -> (t: Int, h: Int, w: Int) {
        ((frames - kernel.t) / stride.t + 1,
         (height + padLeft.h + padRight.h - kernel.h) / stride.h + 1,
         (width + padLeft.w + padRight.w - kernel.w) / stride.w + 1)
    }

    /// Runs the convolution. With `accumulate`, the result is added to what `out` holds (oneDNN's sum post-op).
    /// Multiply-add FLOPs performed by all convolutions (for benchmarks).
    nonisolated(unsafe) public static var flops: Double = 0

    public func callAsFunction(_ x: UnsafePointer<Float>, frames: Int, height: Int, width: Int,
                               into out: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        let o = outputSize(frames: frames, height: height, width: width)
        Conv3D.flops += 2 * Double(outChannels * inChannels * kernel.t * kernel.h * kernel.w) * Double(o.t * o.h * o.w)
        Profile.measure(Profile.enabled && Profile.byShape ? "conv \(inChannels)>\(outChannels) k\(kernel.t)x\(kernel.h) s\(stride.h) in \(frames)x\(height)x\(width)" : "conv") {
            let key = Key(t: frames, h: height, w: width, accumulate: accumulate, threads: Int(omp_get_max_threads()))
            let (prim, weights) = primitive(key)
            let engine = GEMM.shared.engine, stream = GEMM.shared.stream
            var pd: const_dnnl_primitive_desc_t?
            check(dnnl_primitive_get_primitive_desc(prim, &pd), "get_primitive_desc")
            func mem(_ md: UnsafePointer<dnnl_memory_desc_t>?, _ ptr: UnsafeMutableRawPointer) -> dnnl_memory_t {
                var m: dnnl_memory_t?
                check(dnnl_memory_create(&m, md, engine, ptr), "memory_create")
                return m!
            }
            let srcMem = mem(dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), UnsafeMutableRawPointer(mutating: x))
            let weiMem = mem(dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), UnsafeMutableRawPointer(weights.data))
            let dstMem = mem(dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), UnsafeMutableRawPointer(out))
            var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: srcMem), dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: weiMem),
                        dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: dstMem)]
            var biasMem: dnnl_memory_t?
            if let bias {
                biasMem = mem(dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1), UnsafeMutableRawPointer(bias.data))
                args.append(dnnl_exec_arg_t(arg: DNNL_ARG_BIAS, memory: biasMem))
            }
            let scratchpad = Scratchpad(pd, engine: GEMM.shared.engine)
            if let m = scratchpad.memory { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: m)) }
            withExtendedLifetime(scratchpad) {
                check(dnnl_primitive_execute(prim, stream, Int32(args.count), &args), "convolution execute")
                check(dnnl_stream_wait(stream), "stream_wait")
            }
            dnnl_memory_destroy(srcMem); dnnl_memory_destroy(weiMem); dnnl_memory_destroy(dstMem)
            if let biasMem { dnnl_memory_destroy(biasMem) }
        }
    }

    private func primitive(_ key: Key) -> (dnnl_primitive_t, Tensor) {
        lock.lock(); defer { lock.unlock() }
        let engine = GEMM.shared.engine
        let prim: dnnl_primitive_t
        if let p = primitives[key] {
            prim = p
        } else {
            let o = outputSize(frames: key.t, height: key.h, width: key.w)
            var src = dnnl_memory_desc_t(), dst = dnnl_memory_desc_t(), wei = dnnl_memory_desc_t(), b = dnnl_memory_desc_t()
            var dims = Dims([1, inChannels, key.t, key.h, key.w])
            check(dnnl_memory_desc_init_by_tag(&src, 5, dims.pointer, dnnl_f32, dnnl_ndhwc), "conv src md")
            dims = Dims([1, outChannels, o.t, o.h, o.w])
            check(dnnl_memory_desc_init_by_tag(&dst, 5, dims.pointer, dnnl_f32, dnnl_ndhwc), "conv dst md")
            dims = Dims([outChannels, inChannels, kernel.t, kernel.h, kernel.w])
            check(dnnl_memory_desc_init_by_tag(&wei, 5, dims.pointer, dnnl_f32, dnnl_format_tag_any), "conv weights md")
            dims = Dims([outChannels])
            check(dnnl_memory_desc_init_by_tag(&b, 1, dims.pointer, dnnl_f32, dnnl_a), "conv bias md")
            let strides = Dims([stride.t, stride.h, stride.w])
            let pl = Dims([0, padLeft.h, padLeft.w]), pr = Dims([0, padRight.h, padRight.w])
            var desc = dnnl_convolution_desc_t()
            if bias != nil {
                check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei,
                                                         &b, &dst, strides.pointer, pl.pointer, pr.pointer), "convolution_forward_desc_init")
            } else {
                check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei,
                                                         nil, &dst, strides.pointer, pl.pointer, pr.pointer), "convolution_forward_desc_init")
            }
            var attr: dnnl_primitive_attr_t?
            check(dnnl_primitive_attr_create(&attr), "attr_create")
        // Our own scratchpad per execution: primitives run on whichever pool worker needs them, and the library's
        // shared scratchpad is only safe for a primitive executed on the thread that created it.
        check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode")
            if key.accumulate {
                var ops: dnnl_post_ops_t?
                check(dnnl_post_ops_create(&ops), "post_ops_create")
                check(dnnl_post_ops_append_sum(ops, 1), "append_sum")
                check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops")
                dnnl_post_ops_destroy(ops)
            }
            var pd: dnnl_primitive_desc_t?
            check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "convolution primitive_desc_create")
            var p: dnnl_primitive_t?
            check(dnnl_primitive_create(&p, pd), "primitive_create")
            if ProcessInfo.processInfo.environment["WANKIT_VERBOSE_PRIMITIVES"] != nil {
                var impl: UnsafePointer<CChar>?
                dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl)
                FileHandle.standardError.write("conv \(inChannels)->\(outChannels) k\(kernel) in \(key.t)x\(key.h)x\(key.w): \(impl.map { String(cString: $0) } ?? "?")\n".data(using: .utf8)!)
            }
            dnnl_primitive_desc_destroy(pd)
            dnnl_primitive_attr_destroy(attr)
            primitives[key] = p!
            prim = p!
        }
        var pd: const_dnnl_primitive_desc_t?
        check(dnnl_primitive_get_primitive_desc(prim, &pd), "get_primitive_desc")
        let wanted = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0)!
        for entry in reordered {
            var md = entry.md
            if dnnl_memory_desc_equal(&md, wanted) != 0 { return (prim, entry.data) }
        }
        // Reorder the weights once into the wanted layout: from the PyTorch layout the first time, then from the first
        // reordered copy (the PyTorch-layout tensor is released after the first reorder).
        var plain = dnnl_memory_desc_t()
        let source: Tensor
        if let weight {
            let dims = Dims([outChannels, inChannels, kernel.t, kernel.h, kernel.w])
            check(dnnl_memory_desc_init_by_tag(&plain, 5, dims.pointer, dnnl_f32, dnnl_oidhw), "plain weights md")
            source = weight
        } else {
            plain = reordered[0].md
            source = reordered[0].data
        }
        let bytes = dnnl_memory_desc_get_size(wanted)
        let data = Tensor(zeros: [(bytes + 3) / 4])
        var rpd: dnnl_primitive_desc_t?
        check(dnnl_reorder_primitive_desc_create(&rpd, &plain, engine, wanted, engine, nil), "reorder pd")
        var rp: dnnl_primitive_t?
        check(dnnl_primitive_create(&rp, rpd), "reorder primitive")
        var from: dnnl_memory_t?, to: dnnl_memory_t?
        check(dnnl_memory_create(&from, &plain, engine, UnsafeMutableRawPointer(source.data)), "memory_create")
        check(dnnl_memory_create(&to, wanted, engine, UnsafeMutableRawPointer(data.data)), "memory_create")
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: from), dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: to)]
        check(dnnl_primitive_execute(rp, GEMM.shared.stream, 2, &args), "reorder execute")
        check(dnnl_stream_wait(GEMM.shared.stream), "stream_wait")
        dnnl_memory_destroy(from); dnnl_memory_destroy(to)
        dnnl_primitive_destroy(rp); dnnl_primitive_desc_destroy(rpd)
        reordered.append((wanted.pointee, data))
        weight = nil
        return (prim, data)
    }
}

/// A dnnl_dims_t (12 int64) on the heap, so its address is stable when passed to the C API.
final class Dims {
    let pointer: UnsafeMutablePointer<Int64>
    init(_ v: [Int]) {
        pointer = .allocate(capacity: 12)
        pointer.initialize(repeating: 0, count: 12)
        for (i, x) in v.enumerated() { pointer[i] = Int64(x) }
    }
    deinit { pointer.deallocate() }
}
