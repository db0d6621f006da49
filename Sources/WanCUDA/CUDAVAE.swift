import Foundation
import WanTensor
import WanWeights
import WanModels

/// The Wan-VAE on an NVIDIA GPU, stage for stage as `WanVAE` runs it on the CPU: one frame at a time through every
/// stage of the encoder or decoder (`WanVAEConfig.encoderLayers` / `decoderLayers`), the causal state (the last two
/// input frames of every causal conv, the temporal resamplers' pending and previous frames) kept on the device (held
/// by reference at f32, as bf16 copies at bf16), so memory holds the state and a few frames whatever the length of the
/// video.
///
/// Activations are channels-last f32 frames [H, W, C]. Every convolution is one f32 cuBLASLt product (no TF32) over
/// the columns `vae_im2col_f32` gathers: all of a causal conv's available frames (its history and the new frame) and
/// its kh x kw taps at once, K = frames·kh·kw·Cin, with the weights stored [Cout, kt, kh, kw, Cin] so that the taps of
/// the available frames are a suffix of each weight row (the taps over the zero frames before the first chunk are
/// skipped, as on the CPU). Zero padding, stride 2 (spatial downsampling) and the nearest-2x upsampling are folded into
/// the gather; the columns are made in chunks of output rows (`columnBudgetBytes`). A residual add is the product's
/// beta = 1 onto the shortcut. RMS_norm (+ SiLU) and the attention's softmax are kernels of Kernels/vae.cu; the
/// attention's QKᵀ and PV are cuBLASLt products. The host does what `WanVAE` does on the host: the latent
/// (de)normalisation, the planar <-> channels-last layout of the frames and the clamp to [-1, 1].
///
/// Precision: `.f32` (the default) is the exact path (f32 products, no TF32: the golden cases' tolerances). `.bf16`
/// gathers the columns of the convs with taps (3x3 and temporal; Cin and Cout multiples of 8) rounded to bf16 and
/// multiplies them with bf16 weights on the tensor cores (f32 accumulation, f32 output): half the column traffic and
/// the bf16 matrix rate. The causal state is kept in bf16 (`stateType`: half the bytes, 1.9 GB instead of 3.8 at
/// 832x480; the gathers read it as they read f32 frames); activations, the norms, the attention and the pointwise
/// convs stay f32.
public final class CUDAVAE: VAEFrameBackend {
    public let config: WanVAEConfig
    public let precision: CUDAPrecision
    public let context: CUDAContext
    public let ops: CUDAOps
    public let pool: DeviceMemoryPool
    let gemm: VAEMatmul
    /// Device bytes of the uploaded weights.
    public private(set) var weightBytes = 0
    /// The most bytes of im2col columns gathered at once (larger convs run in chunks of output rows).
    public var columnBudgetBytes = CUDAVAE.defaultColumnBudgetBytes
    public static let defaultColumnBudgetBytes = 512 << 20

    /// Device bytes a CUDAVAE holds besides the causal state and the frames in flight (`WanVAEConfig.decodeStateBytes`,
    /// or `encodeStateBytes` for an encode, with `stateType`'s size per state value): the weights of both coders (f32;
    /// bf16 adds bf16 copies of the 3x3 and temporal convs), the column buffer, the largest attention's L x L scores
    /// for a latent of `latentPixels` (h·w) and cuBLASLt's workspace. An upper bound: the pool rounds buffers up by at most 2 MiB each.
    public static func fixedDeviceBytes(config: WanVAEConfig, latentPixels: Int, precision: CUDAPrecision,
                                        columnBudgetBytes: Int = defaultColumnBudgetBytes) -> Int {
        let weights = config.parameterCount * (precision == .bf16 ? 6 : 4)
        let attention = latentPixels * (config.attentionPixelFactors.max() ?? 0)
        return weights + columnBudgetBytes + 4 * attention * attention + CUDAMatmul.defaultWorkspaceBytes
    }
    /// With bf16: the convs whose input channels are multiples of 32 run as one implicit-GEMM kernel on the tensor
    /// cores (`vae_conv_bf16`: the columns are never written) instead of `vae_im2col_bf16` + cuBLASLt. Off by default
    /// until it has been measured and self-tested on a GPU (`wan bench vae --conv implicit`).
    public var implicitConvolution = false
    /// Floating-point operations of the products run so far (convs, 2·pixels·k·out each, and the attention's QKᵀ
    /// and PV, 4·L²·c): the work behind `wan bench vae`'s TFLOP/s. Set it to 0 to start counting.
    public var flopCount = 0.0
    /// Per-kernel and per-product wall time when set (each launch synchronised: for profiling only).
    public var timings: CUDATimings? { didSet { gemm.timings = timings } }
    private var columns: DeviceBuffer?
    /// Bytes of the im2col column buffer (it only grows, up to `columnBudgetBytes`).
    public var columnBytes: Int { columns?.bytes ?? 0 }

    /// A conv's weights: [out, kt, kh, kw, in] f32 (the official [out, in, kt, kh, kw] reordered) and, for the bf16
    /// products, the same in bf16; bias [out] f32.
    public struct Conv {
        let weight: DeviceBuffer
        let weightBF16: DeviceBuffer?
        let bias: DeviceBuffer
        let inChannels, outChannels, kt, kh, kw: Int
        /// The key of the conv's causal state (history, temporal resampler frames).
        let id: Int
        var rowLength: Int { kt * kh * kw * inChannels }
    }

    /// The temporal upsampler's C -> 2C time conv as its two halves (one product each over the same columns).
    public struct TimeUpConvs { let first, second: Conv }
    /// An attention block: its norm's gamma, the fused to_qkv and the projection (pointwise convs).
    public struct AttnConvs { let gamma: DeviceBuffer; let qkv, proj: Conv }

    public typealias Causal = Conv
    public typealias Spatial = Conv
    public typealias TimeUp = TimeUpConvs
    public typealias Attn = AttnConvs
    public typealias Gamma = DeviceBuffer

    let encoder: [VAEStage<CUDAVAE>]
    let decoder: [VAEStage<CUDAVAE>]
    let quantConv: Conv      // conv1: 2z -> 2z
    let postQuantConv: Conv  // conv2: z -> z

    /// Binds the weights strictly, as `WanVAE` does (a missing, unexpected or misshapen tensor throws), and uploads
    /// them once.
    public init(config c: WanVAEConfig, weights source: WeightSource, precision: CUDAPrecision = .f32,
                context: CUDAContext? = nil, compiler: KernelCompiler? = nil) throws {
        try c.validate(source: source.label)
        config = c
        self.precision = precision
        let context = try context ?? CUDAContext()
        self.context = context
        ops = try CUDAOps(context: context, compiler: compiler)
        pool = DeviceMemoryPool(context: context)
        gemm = try VAEMatmul(context: context)
        let ops = self.ops
        gemm.addBias = { y, bias, rows, cols in try ops.biasAct(.f32, y: y, bias: bias, rows: rows, cols: cols, act: 0) }

        let b = WeightBinder(source)
        var nextID = 0
        var uploaded = 0
        func upload(_ values: UnsafePointer<Float>, count: Int) throws -> DeviceBuffer {
            let buffer = try context.allocate(bytes: count * 4)
            try context.copy(toDevice: buffer.pointer, from: UnsafeRawPointer(values), bytes: count * 4)
            uploaded += buffer.bytes
            return buffer
        }
        func uploadBF16(_ values: UnsafePointer<Float>, count: Int) throws -> DeviceBuffer {
            var bits = [UInt16](repeating: 0, count: count)
            bits.withUnsafeMutableBufferPointer { BFloat16.pack(values, into: $0.baseAddress!, count: count) }
            let buffer = try context.allocate(bytes: count * 2)
            try bits.withUnsafeBytes { try context.copy(toDevice: buffer.pointer, from: $0.baseAddress!, bytes: count * 2) }
            uploaded += buffer.bytes
            return buffer
        }
        /// `name`.weight with the official `shape` [out, in, taps...] (kt, kh, kw: the taps' extent) and `name`.bias,
        /// as `halves` convs of out/halves channels each (every weight and bias buffer starts at its own allocation).
        func conv(_ name: String, _ shape: [Int], kt: Int, kh: Int, kw: Int, halves: Int) throws -> [Conv] {
            let w = try b.tensor(name + ".weight", shape), bias = try b.tensor(name + ".bias", [shape[0]])
            let (cout, cin, taps) = (shape[0], shape[1], kt * kh * kw)
            let reordered = Tensor(uninitialized: [cout, taps, cin])
            for o in 0..<cout {
                for i in 0..<cin {
                    let src = w.data + (o * cin + i) * taps, dst = reordered.data + o * taps * cin + i
                    for t in 0..<taps { dst[t * cin] = src[t] }
                }
            }
            defer { nextID += 1 }
            let part = cout / halves
            // bf16 products for the convs that gather columns, where the rows stay 16-byte multiples.
            let bf16 = precision == .bf16 && taps > 1 && cin % 8 == 0 && part % 8 == 0
            return try (0..<halves).map { h in
                let w = reordered.data + h * part * taps * cin
                return Conv(weight: try upload(w, count: part * taps * cin), weightBF16: bf16 ? try uploadBF16(w, count: part * taps * cin) : nil,
                            bias: try upload(bias.data + h * part, count: part), inChannels: cin, outChannels: part, kt: kt, kh: kh, kw: kw, id: nextID)
            }
        }
        func conv(_ name: String, _ shape: [Int], kt: Int, kh: Int, kw: Int) throws -> Conv { try conv(name, shape, kt: kt, kh: kh, kw: kw, halves: 1)[0] }
        func causal(_ name: String, _ cin: Int, _ cout: Int) throws -> Conv { try conv(name, [cout, cin, 3, 3, 3], kt: 3, kh: 3, kw: 3) }
        func gamma(_ name: String, _ ch: Int, images: Bool) throws -> DeviceBuffer {
            let t = try b.tensor(name, images ? [ch, 1, 1] : [ch, 1, 1, 1])
            return try upload(t.data, count: ch)
        }
        func stage(_ layer: WanVAELayer) throws -> VAEStage<CUDAVAE> {
            switch layer {
            case .conv(let name, let cin, let cout):
                return .conv(try causal(name, cin, cout))
            case .res(let p, let cin, let cout):
                return .res(gamma1: try gamma(p + ".residual.0.gamma", cin, images: false), gamma2: try gamma(p + ".residual.3.gamma", cout, images: false),
                            conv1: try causal(p + ".residual.2", cin, cout), conv2: try causal(p + ".residual.6", cout, cout),
                            shortcut: cin != cout ? try conv(p + ".shortcut", [cout, cin, 1, 1, 1], kt: 1, kh: 1, kw: 1) : nil)
            case .attn(let p, let ch):
                return .attn(AttnConvs(gamma: try gamma(p + ".norm.gamma", ch, images: true),
                                       qkv: try conv(p + ".to_qkv", [3 * ch, ch, 1, 1], kt: 1, kh: 1, kw: 1),
                                       proj: try conv(p + ".proj", [ch, ch, 1, 1], kt: 1, kh: 1, kw: 1)))
            case .spatialDown(let p, let ch):
                return .spatialDown(try conv(p + ".resample.1", [ch, ch, 3, 3], kt: 1, kh: 3, kw: 3))
            case .timeDown(let p, let ch):
                let c = try conv(p + ".time_conv", [ch, ch, 3, 1, 1], kt: 3, kh: 1, kw: 1)
                return .timeDown(c, id: c.id)
            case .timeUp(let p, let ch):
                let halves = try conv(p + ".time_conv", [2 * ch, ch, 3, 1, 1], kt: 3, kh: 1, kw: 1, halves: 2)
                return .timeUp(TimeUpConvs(first: halves[0], second: halves[1]))
            case .spatialUp(let p, let cin, let cout):
                return .spatialUp(try conv(p + ".resample.1", [cout, cin, 3, 3], kt: 1, kh: 3, kw: 3))
            case .head(let p, let cin, let cout):
                return .head(gamma: try gamma(p + ".0.gamma", cin, images: false), conv: try causal(p + ".2", cin, cout))
            }
        }
        encoder = try c.encoderLayers.map(stage)
        decoder = try c.decoderLayers.map(stage)
        quantConv = try conv("conv1", [2 * c.zDim, 2 * c.zDim, 1, 1, 1], kt: 1, kh: 1, kw: 1)
        postQuantConv = try conv("conv2", [c.zDim, c.zDim, 1, 1, 1], kt: 1, kh: 1, kw: 1)
        try b.finish()
        weightBytes = uploaded
        try context.synchronize()
    }

    /// Loads with the configuration of `arguments` (official constructor arguments) over the published defaults and
    /// what the checkpoint's shapes say, as `WanVAE(weights:arguments:)` does.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, precision: CUDAPrecision = .f32,
                            context: CUDAContext? = nil) throws {
        try self.init(config: WanVAEConfig(inferringFrom: source, arguments: arguments), weights: source, precision: precision, context: context)
    }

    // MARK: frames and state

    /// One channels-last frame [H, W, C] from the pool (f32; bf16 for causal state at `.bf16`), handed back when the
    /// last reference goes (work runs in order on one stream, so a buffer handed back while queued kernels still read
    /// it is safe to reuse).
    public final class Frame {
        let buffer: DeviceBuffer
        let pool: DeviceMemoryPool
        let height, width, channels: Int
        let type: DeviceDType
        init(_ pool: DeviceMemoryPool, _ height: Int, _ width: Int, _ channels: Int, type: DeviceDType = .f32) throws {
            self.pool = pool
            self.height = height; self.width = width; self.channels = channels; self.type = type
            buffer = try pool.acquire(bytes: height * width * channels * type.size)
        }
        var pointer: UInt64 { buffer.pointer }
        var count: Int { height * width * channels }
        var bytes: Int { count * type.size }
        deinit { pool.release(buffer) }
    }

    func frame(_ height: Int, _ width: Int, _ channels: Int) throws -> Frame { try Frame(pool, height, width, channels) }

    /// The type of the causal state: bf16 at `.bf16` (half the bytes; the gathers read bf16 frames as exactly as f32
    /// ones, and the bf16 products round their columns to bf16 anyway), f32 at `.f32`.
    public static func stateType(_ precision: CUDAPrecision) -> DeviceDType { precision == .bf16 ? .bf16 : .f32 }

    /// `x` as causal state: at f32 `x` itself (kept by reference) or, with `copy` (x goes on to stages that may write
    /// into it), a copy; at bf16 a bf16 copy.
    func stateFrame(_ x: Frame, copy: Bool = false) throws -> Frame {
        let type = Self.stateType(precision)
        guard type != x.type || copy else { return x }
        let y = try Frame(pool, x.height, x.width, x.channels, type: type)
        if type == x.type {
            try context.copy(onDevice: y.pointer, from: x.pointer, bytes: x.bytes)
        } else {
            try launch("convert_f32_to_bf16", grid: Self.blocks(x.count), [.pointer(y.pointer), .pointer(x.pointer), .int64(Int64(x.count))])
        }
        return y
    }

    // MARK: kernels

    func launch(_ name: String, grid: Int, _ arguments: [KernelArgument]) throws { try launch(name, grid: (grid, 1, 1), arguments) }

    /// Launches `name` with blocks of 256 threads (timed alone when `timings` is set).
    func launch(_ name: String, grid: (Int, Int, Int), flops: Double = 0, _ arguments: [KernelArgument]) throws {
        let f = try ops.function(name)
        if let timings {
            try context.synchronize()
            let start = CUDATimings.now()
            try f.launch(grid: grid, block: (256, 1, 1), arguments)
            try context.synchronize()
            timings.add(name, CUDATimings.now() - start, flops: flops)
        } else {
            try f.launch(grid: grid, block: (256, 1, 1), arguments)
        }
    }

    static func blocks(_ work: Int, per: Int = 256) -> Int { min(max((work + per - 1) / per, 1), 1 << 20) }

    /// RMS_norm over channels (then SiLU) into a new frame.
    public func norm(_ x: Frame, _ gamma: DeviceBuffer, silu: Bool) throws -> Frame {
        let y = try frame(x.height, x.width, x.channels)
        let rows = x.height * x.width
        try launch("vae_rms_norm_f32", grid: Self.blocks(rows, per: 8),
                   [.pointer(y.pointer), .pointer(x.pointer), .pointer(gamma.pointer), .int64(Int64(rows)), .int32(Int32(x.channels)), .int32(silu ? 1 : 0)])
        return y
    }

    /// The column buffer, grown to at least `bytes`.
    func columnBuffer(bytes: Int) throws -> DeviceBuffer {
        if let c = columns, c.bytes >= bytes { return c }
        columns = nil
        let c = try context.allocate(bytes: bytes)
        columns = c
        return c
    }

    /// One output frame of conv `c` over `inputs` (oldest first, at most kt frames: the newest meets the last temporal
    /// tap; each f32 or bf16), written to `out` or added to it; `more` are further convs of the same shape over the
    /// same columns (the halves of the temporal upsampler) with their outputs. The output is outHeight x outWidth; input pixel
    /// (oy·stride - padTop + ky, ox·stride - padLeft + kx), zero outside, of the input as stored or nearest-2x
    /// upsampled (`up`).
    func convolve(_ c: Conv, _ inputs: [Frame], outHeight: Int, outWidth: Int, stride: Int = 1, padTop: Int, padLeft: Int, up: Bool = false,
                  into out: Frame, accumulate: Bool = false, more: [(conv: Conv, out: Frame)] = []) throws {
        let frames = inputs.count
        precondition((1...c.kt).contains(frames), "conv with \(c.kt) temporal taps given \(frames) frames")
        let x = inputs[0]
        precondition(inputs.allSatisfy { $0.channels == c.inChannels && $0.height == x.height && $0.width == x.width }, "conv input mismatch")
        let k = frames * c.kh * c.kw * c.inChannels
        let bf16 = c.weightBF16 != nil, type: DeviceDType = bf16 ? .bf16 : .f32
        let skipped = UInt64((c.kt - frames) * c.kh * c.kw * c.inChannels * type.size)
        let pixels = outHeight * outWidth
        flopCount += 2 * Double(pixels) * Double(k) * Double(c.outChannels * (1 + more.count))
        let bf16Frames = inputs.indices.reduce(0) { inputs[$1].type == .bf16 ? $0 | 1 << $1 : $0 }
        func product(rows: Int, row0: Int, x: UInt64, ldx: Int) throws {
            for (conv, out) in [(c, out)] + more {
                precondition(out.height * out.width == pixels && out.channels == conv.outChannels && conv.rowLength == c.rowLength
                             && (conv.weightBF16 != nil) == bf16, "conv output mismatch")
                try gemm.run(m: rows, n: out.channels, k: k, x: x, ldx: ldx, w: (conv.weightBF16 ?? conv.weight).pointer + skipped, ldw: conv.rowLength,
                             transposed: true, y: out.pointer + UInt64(row0 * out.channels * 4), ldy: out.channels, bias: conv.bias.pointer,
                             accumulate: accumulate, input: type)
            }
        }
        if bf16 && implicitConvolution && c.inChannels % 32 == 0 {
            for (conv, out) in [(c, out)] + more {
                precondition(out.height * out.width == pixels && out.channels == conv.outChannels && conv.rowLength == c.rowLength, "conv output mismatch")
                try launch("vae_conv_bf16", grid: ((pixels + 127) / 128, (conv.outChannels + 63) / 64, 1), flops: 2 * Double(pixels * conv.outChannels * k), [
                    .pointer(out.pointer), .pointer(inputs[0].pointer), .pointer(frames > 1 ? inputs[1].pointer : 0), .pointer(frames > 2 ? inputs[2].pointer : 0),
                    .pointer(conv.weightBF16!.pointer + skipped), .pointer(conv.bias.pointer), .int32(Int32(frames)), .int32(Int32(x.height)),
                    .int32(Int32(x.width)), .int32(Int32(c.inChannels)), .int32(up ? 1 : 0), .int32(Int32(outHeight)), .int32(Int32(outWidth)),
                    .int32(Int32(c.kh)), .int32(Int32(c.kw)), .int32(Int32(stride)), .int32(Int32(padTop)), .int32(Int32(padLeft)),
                    .int32(Int32(conv.outChannels)), .int32(Int32(conv.rowLength)), .int32(accumulate ? 1 : 0), .int32(Int32(bf16Frames))])
            }
            return
        }
        if !bf16 && bf16Frames == 0 && frames == 1 && c.kh == 1 && c.kw == 1 && stride == 1 && !up && padTop == 0 && padLeft == 0 {
            return try product(rows: pixels, row0: 0, x: x.pointer, ldx: c.inChannels)  // pointwise: the frame is its columns
        }
        // Chunks of whole 64-row blocks where possible (output rows then start 256-byte aligned).
        var chunk = min(pixels, max(1, min(columnBudgetBytes / (type.size * k), (Int(Int32.max) - 1) / k)))
        if chunk < pixels && chunk >= 64 { chunk -= chunk % 64 }
        let buffer = try columnBuffer(bytes: chunk * k * type.size)
        let vector = c.inChannels % 4 == 0 ? 4 : 1
        var row0 = 0
        while row0 < pixels {
            let rows = min(chunk, pixels - row0)
            try launch(bf16 ? "vae_im2col_bf16" : "vae_im2col_f32", grid: Self.blocks(rows * k / vector),
                       [.pointer(buffer.pointer), .pointer(inputs[0].pointer), .pointer(frames > 1 ? inputs[1].pointer : 0),
                        .pointer(frames > 2 ? inputs[2].pointer : 0), .int32(Int32(frames)), .int32(Int32(x.height)), .int32(Int32(x.width)),
                        .int32(Int32(c.inChannels)), .int32(up ? 1 : 0), .int32(Int32(outWidth)), .int32(Int32(c.kh)), .int32(Int32(c.kw)),
                        .int32(Int32(stride)), .int32(Int32(padTop)), .int32(Int32(padLeft)), .int64(Int64(row0)), .int64(Int64(rows)),
                        .int32(Int32(bf16Frames))])
            try product(rows: rows, row0: row0, x: buffer.pointer, ldx: k)
            row0 += rows
        }
    }

    // MARK: frame operations (VAEFrameBackend; `VAEStream` walks the stages and keeps the causal state)

    public func stateID(_ c: Conv) -> Int? { c.kt == 1 ? nil : c.id }
    public func stateID(of c: TimeUpConvs) -> Int { c.first.id }
    public func keep(_ x: Frame, copy: Bool) throws -> Frame { try stateFrame(x, copy: copy) }

    /// One output frame of a causal conv (kt = 3: over `history` and `x`; kt = 1: pointwise), new or added to `out`.
    public func causal(_ c: Conv, history: [Frame], _ x: Frame, accumulateInto out: Frame?) throws -> Frame {
        let y = try out ?? frame(x.height, x.width, c.outChannels)
        if c.kt == 1 {
            try convolve(c, [x], outHeight: x.height, outWidth: x.width, padTop: 0, padLeft: 0, into: y, accumulate: out != nil)
        } else {
            try convolve(c, history + [x], outHeight: x.height, outWidth: x.width, padTop: c.kh / 2, padLeft: c.kw / 2, into: y, accumulate: out != nil)
        }
        return y
    }

    /// The per-frame single-head attention block, added onto `x` in place (x is a stage output nobody else reads).
    public func attention(_ a: AttnConvs, _ x: Frame) throws -> Frame {
        let c = x.channels, L = x.height * x.width
        let n = try norm(x, a.gamma, silu: false)
        let q = try frame(x.height, x.width, 3 * c)
        try convolve(a.qkv, [n], outHeight: x.height, outWidth: x.width, padTop: 0, padLeft: 0, into: q)
        let scores = try pool.acquire(bytes: L * L * 4)
        defer { pool.release(scores) }
        flopCount += 4 * Double(L) * Double(L) * Double(c)
        // S = Q Kᵀ (rows of q: [q | k | v]), softmax(S / sqrt(c)) along rows, then P V.
        try gemm.run(m: L, n: L, k: c, x: q.pointer, ldx: 3 * c, w: q.pointer + UInt64(c * 4), ldw: 3 * c, transposed: true, y: scores.pointer, ldy: L)
        try launch("vae_softmax_f32", grid: min(L, 1 << 20), [.pointer(scores.pointer), .int64(Int64(L)), .int32(Int32(L)), .float(1 / Float(c).squareRoot())])
        let att = try frame(x.height, x.width, c)
        try gemm.run(m: L, n: c, k: L, x: scores.pointer, ldx: L, w: q.pointer + UInt64(2 * c * 4), ldw: 3 * c, transposed: false, y: att.pointer, ldy: c)
        try convolve(a.proj, [att], outHeight: x.height, outWidth: x.width, padTop: 0, padLeft: 0, into: x, accumulate: true)
        return x
    }

    /// Zero pad right and bottom, 3x3 stride 2.
    public func spatialDown(_ c: Conv, _ x: Frame) throws -> Frame {
        let (oh, ow) = ((x.height + 1 - 3) / 2 + 1, (x.width + 1 - 3) / 2 + 1)
        let y = try frame(oh, ow, c.outChannels)
        try convolve(c, [x], outHeight: oh, outWidth: ow, stride: 2, padTop: 0, padLeft: 0, into: y)
        return y
    }

    public func spatialUp(_ c: Conv, _ x: Frame) throws -> Frame {
        let y = try frame(2 * x.height, 2 * x.width, c.outChannels)
        try convolve(c, [x], outHeight: 2 * x.height, outWidth: 2 * x.width, padTop: 1, padLeft: 1, up: true, into: y)
        return y
    }

    public func timeDown(_ c: Conv, _ frames: [Frame]) throws -> Frame {
        let x = frames[frames.count - 1]
        let y = try frame(x.height, x.width, c.outChannels)
        try convolve(c, frames, outHeight: x.height, outWidth: x.width, padTop: 0, padLeft: 0, into: y)
        return y
    }

    /// The C -> 2C causal time conv as two products over the same columns: channels [0, C), then [C, 2C).
    public func timeUp(_ c: TimeUpConvs, history: [Frame], _ x: Frame) throws -> [Frame] {
        let a = try frame(x.height, x.width, x.channels), b = try frame(x.height, x.width, x.channels)
        try convolve(c.first, history + [x], outHeight: x.height, outWidth: x.width, padTop: 0, padLeft: 0, into: a, more: [(c.second, b)])
        return [a, b]
    }

    // MARK: public API

    /// Decodes a normalised latent [16, F, h, w] into video chunks [3, n, 8h, 8w] clamped to [-1, 1], handed to
    /// `onFrames` (chunk, index of its first frame) per latent frame, as `WanVAE.decode(_:onFrames:)` does.
    public func decode(_ latent: Tensor, onFrames: (Tensor, Int) throws -> Void) throws {
        let z = config.zDim
        let (F, h, w) = try config.decodeShape(latent)
        let sf = config.spatialFactor, (H, W) = (h * sf, w * sf)
        let stream = VAEStream(self)
        let zin = Tensor(uninitialized: [h * w, z]), pixels = Tensor(uninitialized: [H * W, 3])
        var emitted = 0
        for f in 0..<F {
            config.denormalize(latent, frame: f, into: zin.data)
            let input = try frame(h, w, z), x = try frame(h, w, z)
            try context.copy(toDevice: input.pointer, from: UnsafeRawPointer(zin.data), bytes: input.bytes)
            try convolve(postQuantConv, [input], outHeight: h, outWidth: w, padTop: 0, padLeft: 0, into: x)
            let n = f == 0 ? 1 : config.temporalFactor
            let chunk = Tensor(uninitialized: [3, n, H, W])
            var produced = 0
            try stream.push(decoder, x) { out in
                precondition(produced < n && out.height == H && out.width == W && out.channels == 3, "decoder gave an unexpected frame")
                try context.copy(toHost: UnsafeMutableRawPointer(pixels.data), from: out.pointer, bytes: out.bytes)
                WanVAEConfig.storeClamped(pixels.data, into: chunk, frame: produced)
                produced += 1
            }
            precondition(produced == n, "decoder gave \(produced) frames for latent frame \(f), expected \(n)")
            try onFrames(chunk, emitted)
            emitted += n
        }
    }

    /// Decodes the whole latent into one video tensor [3, T, H, W].
    public func decode(_ latent: Tensor) throws -> Tensor {
        var chunks: [Tensor] = []
        try decode(latent) { chunk, _ in chunks.append(chunk) }
        return concatenateFrames(chunks)
    }

    /// Streaming encode, as `WanVAE.encode(frames:height:width:readFrame:)`: `readFrame(i, planar)` fills frame i as
    /// [3, H, W] in [-1, 1], in order (the first `encodedFrames(frames)` of them); gives the normalised latent
    /// [16, 1 + (frames - 1)/4, H/8, W/8].
    public func encode(frames T: Int, height H: Int, width W: Int,
                       readFrame: (_ index: Int, _ planar: UnsafeMutablePointer<Float>) throws -> Void) throws -> Tensor {
        let latent = try config.encodeLatent(frames: T, height: H, width: W)
        let z = config.zDim, latentT = latent.shape[1], plane = latent.shape[2] * latent.shape[3]
        let stream = VAEStream(self)
        let planar = Tensor(uninitialized: [3, H, W]), rgb = Tensor(uninitialized: [H * W, 3]), moments = Tensor(uninitialized: [plane, 2 * z])
        var written = 0
        for index in 0..<config.encodedFrames(T) {
            try readFrame(index, planar.data)
            WanVAEConfig.channelsLast(planar: planar.data, pixels: H * W, into: rgb.data)
            let x = try frame(H, W, 3)
            try context.copy(toDevice: x.pointer, from: UnsafeRawPointer(rgb.data), bytes: x.bytes)
            try stream.push(encoder, x) { out in
                guard written < latentT else { throw VAEInputError("the encoder gave more latent frames than \(latentT)") }
                precondition(out.height * out.width == plane && out.channels == 2 * z, "encoder gave an unexpected frame")
                let m = try frame(out.height, out.width, 2 * z)
                try convolve(quantConv, [out], outHeight: out.height, outWidth: out.width, padTop: 0, padLeft: 0, into: m)
                try context.copy(toHost: UnsafeMutableRawPointer(moments.data), from: m.pointer, bytes: m.bytes)
                config.normalize(moments: moments.data, into: latent, frame: written)
                written += 1
            }
        }
        precondition(written == latentT, "VAE encode produced \(written) latent frames, expected \(latentT)")
        return latent
    }

    /// Encodes a video [3, 1+4k, H, W] in [-1, 1] into the normalised latent [16, 1+k, H/8, W/8].
    public func encode(_ video: Tensor) throws -> Tensor {
        guard video.rank == 4, video.shape[0] == 3 else { throw VAEInputError("the video must be [3, frames, height, width], got \(video.shape)") }
        let (T, H, W) = (video.shape[1], video.shape[2], video.shape[3])
        return try encode(frames: T, height: H, width: W) { index, planar in
            for ch in 0..<3 { (planar + ch * H * W).update(from: video.data + (ch * T + index) * H * W, count: H * W) }
        }
    }

    /// Hands the kept frame buffers and the column buffer back to the driver (the weights stay).
    public func trim() {
        columns = nil
        pool.trim()
    }
}

extension CUDAVAE: VAECoding {}
