import Foundation
import WanTensor
import WanWeights

/// Constructor arguments of the official `WanVAE_` (wan/modules/vae.py) plus the 16 latent statistics of the
/// `WanVAE` wrapper.
public struct WanVAEConfig: Sendable, Equatable {
    public var dim = 96
    public var zDim = 16
    public var dimMult = [1, 2, 4, 4]
    public var numResBlocks = 2
    public var attnScales: [Double] = []
    public var temporalDownsample = [false, true, true]
    public var latentMean: [Float] = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
    public var latentStd: [Float] = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

    /// The published Wan2.1 VAE (Wan2.1_VAE.pth).
    public static let wan21 = WanVAEConfig()
    public init() {}

    /// Spatial and temporal compression: 8x8 pixels and 4 frames per latent.
    public var spatialFactor: Int { 1 << (dimMult.count - 1) }
    public var temporalFactor: Int { 1 << temporalDownsample.filter { $0 }.count }

    public mutating func apply(officialArguments a: [String: Any]) {
        if let v = (a["dim"] as? NSNumber)?.intValue { dim = v }
        if let v = (a["z_dim"] as? NSNumber)?.intValue { zDim = v }
        if let v = a["dim_mult"] as? [NSNumber] { dimMult = v.map(\.intValue) }
        if let v = (a["num_res_blocks"] as? NSNumber)?.intValue { numResBlocks = v }
        if let v = a["attn_scales"] as? [NSNumber] { attnScales = v.map(\.doubleValue) }
        if let v = a["temperal_downsample"] as? [Bool] { temporalDownsample = v }
        if let v = a["latent_mean"] as? [NSNumber] { latentMean = v.map(\.floatValue) }
        if let v = a["latent_std"] as? [NSNumber] { latentStd = v.map(\.floatValue) }
    }
}

/// Errors of VAE calls with unusable inputs.
public struct VAEInputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A channels-last activation: [frames, height, width, channels].
struct ChannelsLastVideo {
    var data: Tensor
    var frames: Int, height: Int, width: Int, channels: Int
    init(frames: Int, height: Int, width: Int, channels: Int) {
        data = Tensor(uninitialized: [frames, height, width, channels])
        self.frames = frames; self.height = height; self.width = width; self.channels = channels
    }
    var rows: Int { frames * height * width }
    var frameSize: Int { height * width * channels }
}

/// The Wan-VAE (official `WanVAE_` + `WanVAE` wrapper): a causal 3-D VAE. Encode takes the first frame alone, then
/// chunks of 4 frames; decode takes one latent frame at a time; every causal convolution carries the last 2 input
/// frames of the previous chunk (zeros before the first), which makes the chunked pass equal to a full causal pass.
/// Activations are channels-last so oneDNN runs direct convolutions.
public final class WanVAE: @unchecked Sendable {
    public let config: WanVAEConfig

    /// A causal 3-D conv (kt = 3, spatial padding 1) or a pointwise conv (kt = 1).
    final class CausalConv {
        let conv: Conv3D?
        let pointwise: Linear?
        let id: Int
        init(_ b: WeightBinder, _ name: String, in cin: Int, out cout: Int, kernel: Int, id: Int) throws {
            self.id = id
            if kernel == 1 {
                let w = try b.tensor(name + ".weight", [cout, cin, 1, 1, 1])
                pointwise = Linear(weight: Tensor(borrowing: w.data, shape: [cout, cin], owner: w), bias: try b.tensor(name + ".bias", [cout]))
                conv = nil
            } else {
                conv = Conv3D(weight: try b.tensor(name + ".weight", [cout, cin, 3, 3, 3]), bias: try b.tensor(name + ".bias", [cout]),
                              padLeft: (1, 1), padRight: (1, 1))
                pointwise = nil
            }
        }
        var outChannels: Int { conv?.outChannels ?? pointwise!.outFeatures }
    }

    struct ResBlock {
        let gamma1, gamma2: Tensor
        let conv1, conv2: CausalConv
        let shortcut: CausalConv?
    }
    struct AttnBlock {
        let gamma: Tensor
        let qkv, proj: Linear
    }
    enum Resample {
        case down2d(Conv3D)
        case down3d(Conv3D, time: Conv3D, id: Int)
        case up2d(Conv3D)
        case up3d(Conv3D, time: Conv3D, id: Int)
    }
    enum Layer {
        case res(ResBlock)
        case attn(AttnBlock)
        case resample(Resample)
    }
    struct Coder {
        let conv1: CausalConv
        let layers: [Layer]
        let headGamma: Tensor
        let head: CausalConv
    }

    let encoder: Coder
    let decoder: Coder
    let quantConv: Linear      // conv1: 2z -> 2z
    let postQuantConv: Linear  // conv2: z -> z

    public init(config c: WanVAEConfig, weights source: WeightSource) throws {
        config = c
        let b = WeightBinder(source)
        var nextID = 0
        func causal(_ name: String, _ cin: Int, _ cout: Int, _ k: Int) throws -> CausalConv {
            defer { nextID += 1 }
            return try CausalConv(b, name, in: cin, out: cout, kernel: k, id: nextID)
        }
        func gamma(_ name: String, _ ch: Int, images: Bool) throws -> Tensor {
            try b.tensor(name, images ? [ch, 1, 1] : [ch, 1, 1, 1])
        }
        func res(_ p: String, _ cin: Int, _ cout: Int) throws -> ResBlock {
            ResBlock(gamma1: try gamma(p + ".residual.0.gamma", cin, images: false), gamma2: try gamma(p + ".residual.3.gamma", cout, images: false),
                     conv1: try causal(p + ".residual.2", cin, cout, 3), conv2: try causal(p + ".residual.6", cout, cout, 3),
                     shortcut: cin != cout ? try causal(p + ".shortcut", cin, cout, 1) : nil)
        }
        func attn(_ p: String, _ ch: Int) throws -> AttnBlock {
            let qw = try b.tensor(p + ".to_qkv.weight", [3 * ch, ch, 1, 1])
            let pw = try b.tensor(p + ".proj.weight", [ch, ch, 1, 1])
            return AttnBlock(gamma: try gamma(p + ".norm.gamma", ch, images: true),
                             qkv: Linear(weight: Tensor(borrowing: qw.data, shape: [3 * ch, ch], owner: qw), bias: try b.tensor(p + ".to_qkv.bias", [3 * ch])),
                             proj: Linear(weight: Tensor(borrowing: pw.data, shape: [ch, ch], owner: pw), bias: try b.tensor(p + ".proj.bias", [ch])))
        }
        func conv2d(_ p: String, _ cin: Int, _ cout: Int, down: Bool) throws -> Conv3D {
            Conv3D(weight: try b.tensor(p + ".weight", [cout, cin, 3, 3]), bias: try b.tensor(p + ".bias", [cout]),
                   stride: down ? (1, 2, 2) : (1, 1, 1), padLeft: down ? (0, 0) : (1, 1), padRight: (1, 1))
        }
        func timeConv(_ p: String, _ cin: Int, _ cout: Int, stride: Int) throws -> Conv3D {
            Conv3D(weight: try b.tensor(p + ".weight", [cout, cin, 3, 1, 1]), bias: try b.tensor(p + ".bias", [cout]),
                   stride: (stride, 1, 1), padLeft: (0, 0), padRight: (0, 0))
        }

        // Encoder.
        let encDims = ([1] + c.dimMult).map { $0 * c.dim }
        var layers: [Layer] = []
        var index = 0
        var scale = 1.0
        var outDim = encDims[0]
        for i in 0..<(encDims.count - 1) {
            var inDim = encDims[i]
            outDim = encDims[i + 1]
            for _ in 0..<c.numResBlocks {
                layers.append(.res(try res("encoder.downsamples.\(index)", inDim, outDim))); index += 1
                if c.attnScales.contains(scale) { layers.append(.attn(try attn("encoder.downsamples.\(index)", outDim))); index += 1 }
                inDim = outDim
            }
            if i != c.dimMult.count - 1 {
                let p = "encoder.downsamples.\(index)"
                let spatial = try conv2d(p + ".resample.1", outDim, outDim, down: true)
                if c.temporalDownsample[i] {
                    layers.append(.resample(.down3d(spatial, time: try timeConv(p + ".time_conv", outDim, outDim, stride: 2), id: nextID)))
                    nextID += 1
                } else {
                    layers.append(.resample(.down2d(spatial)))
                }
                index += 1
                scale /= 2
            }
        }
        layers.append(.res(try res("encoder.middle.0", outDim, outDim)))
        layers.append(.attn(try attn("encoder.middle.1", outDim)))
        layers.append(.res(try res("encoder.middle.2", outDim, outDim)))
        encoder = Coder(conv1: try causal("encoder.conv1", 3, encDims[0], 3), layers: layers,
                        headGamma: try gamma("encoder.head.0.gamma", outDim, images: false),
                        head: try causal("encoder.head.2", outDim, 2 * c.zDim, 3))

        // Decoder.
        let decDims = ([c.dimMult.last!] + c.dimMult.reversed()).map { $0 * c.dim }
        let temporalUp = Array(c.temporalDownsample.reversed())
        layers = [.res(try res("decoder.middle.0", decDims[0], decDims[0])), .attn(try attn("decoder.middle.1", decDims[0])),
                  .res(try res("decoder.middle.2", decDims[0], decDims[0]))]
        index = 0
        scale = 1.0 / Double(1 << (c.dimMult.count - 2))
        for i in 0..<(decDims.count - 1) {
            var inDim = (i == 1 || i == 2 || i == 3) ? decDims[i] / 2 : decDims[i]
            outDim = decDims[i + 1]
            for _ in 0..<(c.numResBlocks + 1) {
                layers.append(.res(try res("decoder.upsamples.\(index)", inDim, outDim))); index += 1
                if c.attnScales.contains(scale) { layers.append(.attn(try attn("decoder.upsamples.\(index)", outDim))); index += 1 }
                inDim = outDim
            }
            if i != c.dimMult.count - 1 {
                let p = "decoder.upsamples.\(index)"
                let spatial = try conv2d(p + ".resample.1", outDim, outDim / 2, down: false)
                if temporalUp[i] {
                    layers.append(.resample(.up3d(spatial, time: try timeConv(p + ".time_conv", outDim, 2 * outDim, stride: 1), id: nextID)))
                    nextID += 1
                } else {
                    layers.append(.resample(.up2d(spatial)))
                }
                index += 1
                scale *= 2
            }
        }
        decoder = Coder(conv1: try causal("decoder.conv1", c.zDim, decDims[0], 3), layers: layers,
                        headGamma: try gamma("decoder.head.0.gamma", outDim, images: false),
                        head: try causal("decoder.head.2", outDim, 3, 3))
        let q = try b.tensor("conv1.weight", [2 * c.zDim, 2 * c.zDim, 1, 1, 1])
        quantConv = Linear(weight: Tensor(borrowing: q.data, shape: [2 * c.zDim, 2 * c.zDim], owner: q), bias: try b.tensor("conv1.bias", [2 * c.zDim]))
        let pq = try b.tensor("conv2.weight", [c.zDim, c.zDim, 1, 1, 1])
        postQuantConv = Linear(weight: Tensor(borrowing: pq.data, shape: [c.zDim, c.zDim], owner: pq), bias: try b.tensor("conv2.bias", [c.zDim]))
        try b.finish()
    }

    /// Loads with the configuration of `arguments` (official constructor arguments) over the published defaults.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil) throws {
        var c = WanVAEConfig()
        if let w = source.info("encoder.conv1.weight")?.shape, w.count == 5 { c.dim = w[0] }
        if let w = source.info("conv2.weight")?.shape, w.count == 5 { c.zDim = w[0] }
        if let arguments { c.apply(officialArguments: arguments) }
        try self.init(config: c, weights: source)
    }

    // MARK: streaming state

    /// Per-call caches: the last input frames of every causal conv, and the state of the temporal resamplers.
    final class StreamState {
        var history: [Int: Tensor] = [:]   // [2, H, W, C] per causal conv / up3d time conv
        var previousLast: [Int: Tensor] = [:]  // down3d: last frame of the previous chunk
        var started: Set<Int> = []
    }

    /// Runs a 3x3x3 causal conv over `x` with the conv's 2-frame history (zeros before the first chunk).
    func causal(_ c: CausalConv, _ x: ChannelsLastVideo, _ state: StreamState, accumulateInto out: ChannelsLastVideo? = nil) -> ChannelsLastVideo {
        if let lin = c.pointwise {
            var y = out ?? ChannelsLastVideo(frames: x.frames, height: x.height, width: x.width, channels: lin.outFeatures)
            if out != nil {
                let tmp = Tensor(uninitialized: [x.rows, lin.outFeatures])
                lin(x.data.data, rows: x.rows, into: tmp.data)
                Kernels.add(y.data.data, tmp.data, count: tmp.count, out: y.data.data)
            } else {
                lin(x.data.data, rows: x.rows, into: y.data.data)
            }
            y.channels = lin.outFeatures
            return y
        }
        let conv = c.conv!
        return timeCausal(conv, id: c.id, x, state, accumulateInto: out)
    }

    /// Prepends the 2-frame history of `id` to x, convolves, and keeps the last 2 frames as the new history.
    func timeCausal(_ conv: Conv3D, id: Int, _ x: ChannelsLastVideo, _ state: StreamState, accumulateInto out: ChannelsLastVideo? = nil) -> ChannelsLastVideo {
        let fs = x.frameSize
        let history = state.history[id] ?? Tensor(zeros: [2, x.height, x.width, x.channels])
        let input = Tensor(uninitialized: [2 + x.frames, x.height, x.width, x.channels])
        input.data.update(from: history.data, count: 2 * fs)
        (input.data + 2 * fs).update(from: x.data.data, count: x.frames * fs)
        let o = conv.outputSize(frames: 2 + x.frames, height: x.height, width: x.width)
        var y = out ?? ChannelsLastVideo(frames: o.t, height: o.h, width: o.w, channels: conv.outChannels)
        conv(input.data, frames: 2 + x.frames, height: x.height, width: x.width, into: y.data.data, accumulate: out != nil)
        y.channels = conv.outChannels
        let newHistory = Tensor(uninitialized: [2, x.height, x.width, x.channels])
        newHistory.data.update(from: input.data + x.frames * fs, count: 2 * fs)
        state.history[id] = newHistory
        return y
    }

    func normalized(_ x: ChannelsLastVideo, _ gamma: Tensor, silu: Bool) -> ChannelsLastVideo {
        var y = ChannelsLastVideo(frames: x.frames, height: x.height, width: x.width, channels: x.channels)
        Kernels.channelRMSNorm(x.data.data, rows: x.rows, channels: x.channels, gamma: gamma.data, silu: silu, out: y.data.data)
        y.channels = x.channels
        return y
    }

    func run(_ block: ResBlock, _ x: ChannelsLastVideo, _ state: StreamState) -> ChannelsLastVideo {
        // Shortcut first (the residual's causal convs see the block input), then the residual path added onto it.
        // The block input is an intermediate nobody reads afterwards, so an identity shortcut accumulates into it in
        // place (one full-resolution buffer less: 613 MB for 4 frames of 832x480x96).
        let h = block.shortcut.map { causal($0, x, state) } ?? x
        let a = causal(block.conv1, normalized(x, block.gamma1, silu: true), state)
        return causal(block.conv2, normalized(a, block.gamma2, silu: true), state, accumulateInto: h)
    }

    func run(_ block: AttnBlock, _ x: ChannelsLastVideo) -> ChannelsLastVideo {
        let c = x.channels, hw = x.height * x.width
        var y = ChannelsLastVideo(frames: x.frames, height: x.height, width: x.width, channels: c)
        let n = normalized(x, block.gamma, silu: false)
        let qkv = Tensor(uninitialized: [hw, 3 * c]), att = Tensor(uninitialized: [hw, c])
        for f in 0..<x.frames {
            block.qkv(n.data.data + f * hw * c, rows: hw, into: qkv.data)
            Attention.run(q: qkv.data, ldq: 3 * c, queries: hw, k: qkv.data + c, ldk: 3 * c, v: qkv.data + 2 * c, ldv: 3 * c, keys: hw,
                          heads: 1, headDim: c, scale: 1 / Float(c).squareRoot(), out: att.data, ldo: c)
            block.proj(att.data, rows: hw, into: y.data.data + f * hw * c)
        }
        Kernels.add(y.data.data, x.data.data, count: x.data.count, out: y.data.data)
        y.channels = c
        return y
    }

    func spatial(_ conv: Conv3D, _ x: ChannelsLastVideo) -> ChannelsLastVideo {
        let o = conv.outputSize(frames: x.frames, height: x.height, width: x.width)
        var y = ChannelsLastVideo(frames: o.t, height: o.h, width: o.w, channels: conv.outChannels)
        conv(x.data.data, frames: x.frames, height: x.height, width: x.width, into: y.data.data)
        y.channels = conv.outChannels
        return y
    }

    func upsampled(_ x: ChannelsLastVideo) -> ChannelsLastVideo {
        var y = ChannelsLastVideo(frames: x.frames, height: 2 * x.height, width: 2 * x.width, channels: x.channels)
        Kernels.upsampleNearest2x(x.data.data, frames: x.frames, height: x.height, width: x.width, channels: x.channels, out: y.data.data)
        y.channels = x.channels
        return y
    }

    func run(_ r: Resample, _ x: ChannelsLastVideo, _ state: StreamState) -> ChannelsLastVideo {
        switch r {
        case .down2d(let conv):
            return spatial(conv, x)
        case .up2d(let conv):
            return spatial(conv, upsampled(x))
        case .down3d(let conv, let time, let id):
            let s = spatial(conv, x)
            let fs = s.frameSize
            defer {
                let last = Tensor(uninitialized: [1, s.height, s.width, s.channels])
                last.data.update(from: s.data.data + (s.frames - 1) * fs, count: fs)
                state.previousLast[id] = last
            }
            guard let prev = state.previousLast[id] else { return s }  // first chunk: no temporal downsampling
            let input = Tensor(uninitialized: [1 + s.frames, s.height, s.width, s.channels])
            input.data.update(from: prev.data, count: fs)
            (input.data + fs).update(from: s.data.data, count: s.frames * fs)
            let o = time.outputSize(frames: 1 + s.frames, height: s.height, width: s.width)
            var y = ChannelsLastVideo(frames: o.t, height: o.h, width: o.w, channels: time.outChannels)
            time(input.data, frames: 1 + s.frames, height: s.height, width: s.width, into: y.data.data)
            y.channels = time.outChannels
            return y
        case .up3d(let conv, let time, let id):
            var t = x
            if state.started.contains(id) {
                // Causal time conv (C -> 2C) over the frames after the first chunk, zeros before them; each input frame
                // becomes two frames (channels [0, C) then [C, 2C)).
                let doubled = timeCausal(time, id: id, x, state)
                let c = x.channels, hw = x.height * x.width
                var inter = ChannelsLastVideo(frames: 2 * x.frames, height: x.height, width: x.width, channels: c)
                Parallel.forRanges(x.frames * hw, grain: 256) { range in
                    for p in range {
                        let f = p / hw, pos = p % hw
                        let src = doubled.data.data + (f * hw + pos) * 2 * c
                        (inter.data.data + ((2 * f) * hw + pos) * c).update(from: src, count: c)
                        (inter.data.data + ((2 * f + 1) * hw + pos) * c).update(from: src + c, count: c)
                    }
                }
                inter.channels = c
                t = inter
            } else {
                state.started.insert(id)
            }
            return spatial(conv, upsampled(t))
        }
    }

    func run(_ coder: Coder, _ x: ChannelsLastVideo, _ state: StreamState) -> ChannelsLastVideo {
        var h = causal(coder.conv1, x, state)
        for layer in coder.layers {
            switch layer {
            case .res(let b): h = run(b, h, state)
            case .attn(let a): h = run(a, h)
            case .resample(let r): h = run(r, h, state)
            }
        }
        return causal(coder.head, normalized(h, coder.headGamma, silu: true), state)
    }

    // MARK: public API

    /// Encodes a video [3, 1+4k, H, W] in [-1, 1] (H, W multiples of 8) into the normalised latent
    /// [16, 1+k, H/8, W/8] = (mu - mean) / std, as `WanVAE.encode` does (no sampling).
    public func encode(_ video: Tensor) throws -> Tensor {
        guard video.rank == 4, video.shape[0] == 3 else { throw VAEInputError("the video must be [3, frames, height, width], got \(video.shape)") }
        let (T, H, W) = (video.shape[1], video.shape[2], video.shape[3])
        let tf = config.temporalFactor, sf = config.spatialFactor
        guard T >= 1, (T - 1) % tf == 0 else {
            throw VAEInputError("the video has \(T) frames; the Wan-VAE needs 1 + \(tf)k frames (1, 5, 9, …, 81): drop or add frames")
        }
        guard H % sf == 0, W % sf == 0, H > 0, W > 0 else {
            throw VAEInputError("the video is \(W)x\(H); width and height must be multiples of \(sf): crop or resize it")
        }
        let z = config.zDim
        let latentT = 1 + (T - 1) / tf, h = H / sf, w = W / sf
        let latent = Tensor(uninitialized: [z, latentT, h, w])
        let state = StreamState()
        var written = 0
        var start = 0
        while start < T {
            let count = start == 0 ? 1 : tf
            var x = ChannelsLastVideo(frames: count, height: H, width: W, channels: 3)
            // [3, T, H, W] -> [t, H, W, 3]
            for f in 0..<count { for ch in 0..<3 {
                let src = video.data + (ch * T + start + f) * H * W
                let dst = x.data.data + f * H * W * 3 + ch
                for p in 0..<(H * W) { dst[p * 3] = src[p] }
            } }
            let out = run(encoder, x, state)
            let moments = Tensor(uninitialized: [out.rows, 2 * z])
            quantConv(out.data.data, rows: out.rows, into: moments.data)
            let plane = h * w
            for f in 0..<out.frames {
                for p in 0..<plane {
                    let m = moments.data + (f * plane + p) * 2 * z
                    for ch in 0..<z {
                        latent.data[(ch * latentT + written + f) * plane + p] = (m[ch] - config.latentMean[ch]) * (1 / config.latentStd[ch])
                    }
                }
            }
            written += out.frames
            start += count
        }
        precondition(written == latentT, "VAE encode produced \(written) latent frames, expected \(latentT)")
        return latent
    }

    /// Decodes a normalised latent [16, F, h, w] into a video [3, 1+4(F-1), 8h, 8w] clamped to [-1, 1], handing the
    /// frames of each latent frame to `onFrames` (video chunk [3, n, H, W], index of its first frame) as soon as they
    /// are ready, so memory does not grow with the length of the video.
    public func decode(_ latent: Tensor, onFrames: (Tensor, Int) throws -> Void) throws {
        let z = config.zDim
        guard latent.rank == 4, latent.shape[0] == z else { throw VAEInputError("the latent must be [\(z), frames, height, width], got \(latent.shape)") }
        let (F, h, w) = (latent.shape[1], latent.shape[2], latent.shape[3])
        guard F >= 1, h > 0, w > 0 else { throw VAEInputError("the latent \(latent.shape) is empty") }
        let plane = h * w
        let state = StreamState()
        var emitted = 0
        for f in 0..<F {
            // De-normalise (z / (1/std) + mean, as the wrapper does) into channels-last, then conv2.
            let zin = Tensor(uninitialized: [plane, z])
            for ch in 0..<z {
                let inv = 1 / config.latentStd[ch], mean = config.latentMean[ch]
                let src = latent.data + (ch * F + f) * plane
                for p in 0..<plane { zin.data[p * z + ch] = src[p] / inv + mean }
            }
            var x = ChannelsLastVideo(frames: 1, height: h, width: w, channels: z)
            postQuantConv(zin.data, rows: plane, into: x.data.data)
            x.channels = z
            let out = run(decoder, x, state)
            let chunk = Tensor(uninitialized: [3, out.frames, out.height, out.width])
            let pixels = out.height * out.width
            for fr in 0..<out.frames {
                let src = out.data.data + fr * pixels * 3
                for ch in 0..<3 {
                    let dst = chunk.data + (ch * out.frames + fr) * pixels
                    for p in 0..<pixels { dst[p] = min(max(src[p * 3 + ch], -1), 1) }
                }
            }
            try onFrames(chunk, emitted)
            emitted += out.frames
        }
    }

    /// Decodes the whole latent into one video tensor [3, T, H, W].
    public func decode(_ latent: Tensor) throws -> Tensor {
        var chunks: [Tensor] = []
        try decode(latent) { chunk, _ in chunks.append(chunk) }
        return concatenateFrames(chunks)
    }
}

/// Joins video chunks [3, n_i, H, W] along frames.
public func concatenateFrames(_ chunks: [Tensor]) -> Tensor {
    let T = chunks.reduce(0) { $0 + $1.shape[1] }
    let (H, W) = (chunks[0].shape[2], chunks[0].shape[3])
    let video = Tensor(uninitialized: [3, T, H, W])
    var t0 = 0
    for chunk in chunks {
        let n = chunk.shape[1]
        for ch in 0..<3 { (video.data + (ch * T + t0) * H * W).update(from: chunk.data + ch * n * H * W, count: n * H * W) }
        t0 += n
    }
    return video
}
