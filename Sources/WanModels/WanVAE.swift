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

    /// Throws a `WeightError.badConfig` naming `source` when a value (the published defaults, the shapes, or a
    /// config.json) cannot describe a Wan-VAE: widths and counts that are not positive or absurdly large, a
    /// temperal_downsample with fewer entries than downsampling stages, fewer latent statistics than z_dim.
    public func validate(source: String) throws {
        func fail(_ what: String) -> WeightError { .impossibleConfig(source: source, part: "VAE", what) }
        let maxWidth = 1 << 16
        guard (1...maxWidth).contains(dim) else { throw fail("dim \(dim), not an integer from 1 to \(maxWidth)") }
        guard (1...maxWidth).contains(zDim) else { throw fail("z_dim \(zDim), not an integer from 1 to \(maxWidth)") }
        guard (1...8).contains(dimMult.count), dimMult.allSatisfy({ (1...64).contains($0) }) else {
            throw fail("dim_mult \(dimMult), not 1 to 8 integers from 1 to 64 (Wan2.1: [1, 2, 4, 4])")
        }
        guard (0...64).contains(numResBlocks) else { throw fail("num_res_blocks \(numResBlocks), not an integer from 0 to 64") }
        guard temporalDownsample.count >= dimMult.count - 1 else {
            throw fail("temperal_downsample \(temporalDownsample) for dim_mult \(dimMult) (one entry per downsampling stage: \(dimMult.count - 1))")
        }
        guard latentMean.count >= zDim, latentStd.count >= zDim else {
            throw fail("\(latentMean.count) latent_mean and \(latentStd.count) latent_std values, fewer than z_dim \(zDim)")
        }
    }

    /// Spatial and temporal compression: 8x8 pixels and 4 frames per latent.
    public var spatialFactor: Int { 1 << (dimMult.count - 1) }
    public var temporalFactor: Int { 1 << temporalDownsample.filter { $0 }.count }

    /// Bytes a decode at this size keeps besides the weights: the 2-frame history of every causal conv (the bulk: 3.8
    /// GB at 832x480 in float32; `stateValueBytes` per value, 2 where a backend keeps it in bf16), and a few float32
    /// frames in flight at the widest stage. It does not grow with the frame count: the decoder runs one frame at a
    /// time.
    public func decodeStateBytes(width: Int, height: Int, stateValueBytes: Int = MemoryLayout<Float>.size) -> Int {
        let dims = ([dimMult.last!] + dimMult.reversed()).map { $0 * dim }
        let timeUp = Array(temporalDownsample.reversed())
        var pixels = (height / spatialFactor) * (width / spatialFactor)
        var history = 2 * zDim * pixels + 4 * 2 * dims[0] * pixels  // conv1, middle blocks
        var widest = dims[0] * pixels
        for i in 0..<(dims.count - 1) {
            var inDim = (1...3).contains(i) ? dims[i] / 2 : dims[i]
            let outDim = dims[i + 1]
            for _ in 0..<(numResBlocks + 1) { history += 2 * (inDim + outDim) * pixels; inDim = outDim }
            widest = max(widest, outDim * pixels)
            if i != dimMult.count - 1 {
                if timeUp[i] { history += 2 * outDim * pixels; widest = max(widest, 2 * outDim * pixels) }
                pixels *= 4
            }
        }
        history += 2 * dims.last! * pixels  // head
        return history * stateValueBytes + 4 * widest * MemoryLayout<Float>.size
    }

    /// Tiles (in latent pixels, per axis) for a spatially tiled decode whose per-tile state fits `stateBudget` bytes:
    /// the fewest tiles of equal size, with `overlap` latent pixels shared by neighbours. One tile = no tiling.
    public func decodeTiles(latentHeight h: Int, latentWidth w: Int, stateBudget: Int, overlap: Int = 8) -> (rows: Int, columns: Int, height: Int, width: Int) {
        let sf = spatialFactor
        var (ny, nx) = (1, 1)
        func size(_ n: Int, _ extent: Int) -> Int { n == 1 ? extent : min(extent, (extent + (n - 1) * overlap + n - 1) / n) }
        while decodeStateBytes(width: size(nx, w) * sf, height: size(ny, h) * sf) > stateBudget {
            let (th, tw) = (size(ny, h), size(nx, w))
            if th <= 2 * overlap && tw <= 2 * overlap { break }  // tiles cannot shrink further
            if th >= tw { ny += 1 } else { nx += 1 }
        }
        return (ny, nx, size(ny, h), size(nx, w))
    }

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

/// One stage of the Wan-VAE's encoder or decoder, named as the official module tree names its weights (see
/// `WanVAEConfig.encoderLayers`/`decoderLayers`): what `WanVAE` and other backends bind and run, in order.
public enum WanVAELayer: Equatable, Sendable {
    /// Causal 3x3x3 conv (`name`.weight [out, in, 3, 3, 3], `name`.bias).
    case conv(name: String, inChannels: Int, outChannels: Int)
    /// ResidualBlock: `prefix`.residual.0.gamma (RMS_norm, SiLU), .residual.2 (causal conv), .residual.3.gamma, .residual.6,
    /// and `prefix`.shortcut (1x1x1 conv) when the channel counts differ.
    case res(prefix: String, inChannels: Int, outChannels: Int)
    /// AttentionBlock: `prefix`.norm.gamma, .to_qkv (1x1 conv to 3C), per-frame single-head attention, .proj, residual.
    case attn(prefix: String, channels: Int)
    /// Resample 'downsample2d/3d', spatial half: zero pad right/bottom, `prefix`.resample.1 (3x3, stride 2).
    case spatialDown(prefix: String, channels: Int)
    /// Resample 'downsample3d', temporal half: `prefix`.time_conv [C, C, 3, 1, 1], stride 2 over (last frame of the
    /// previous pair, the pair); the first frame passes.
    case timeDown(prefix: String, channels: Int)
    /// Resample 'upsample3d', temporal half: `prefix`.time_conv [2C, C, 3, 1, 1] causal, each frame becomes two
    /// (channels [0, C) then [C, 2C)); the first frame passes.
    case timeUp(prefix: String, channels: Int)
    /// Resample 'upsample2d/3d', spatial half: nearest x2, then `prefix`.resample.1 (3x3, padding 1).
    case spatialUp(prefix: String, inChannels: Int, outChannels: Int)
    /// Head: `prefix`.0.gamma (RMS_norm, SiLU), `prefix`.2 (causal conv).
    case head(prefix: String, inChannels: Int, outChannels: Int)
}

extension WanVAEConfig {
    /// The configuration of a checkpoint: dim and z_dim from its shapes, then the official constructor arguments
    /// (`arguments`) over the published defaults.
    public init(inferringFrom source: WeightSource, arguments: [String: Any]? = nil) {
        self.init()
        if let w = source.info("encoder.conv1.weight")?.shape, w.count == 5 { dim = w[0] }
        if let w = source.info("conv2.weight")?.shape, w.count == 5 { zDim = w[0] }
        if let arguments { apply(officialArguments: arguments) }
    }

    // MARK: host-side steps every backend shares

    /// Checks a normalised latent for decoding ([zDim, F, h, w], none empty) and gives (F, h, w).
    public func decodeShape(_ latent: Tensor) throws -> (frames: Int, height: Int, width: Int) {
        guard latent.rank == 4, latent.shape[0] == zDim else { throw VAEInputError("the latent must be [\(zDim), frames, height, width], got \(latent.shape)") }
        let (F, h, w) = (latent.shape[1], latent.shape[2], latent.shape[3])
        guard F >= 1, h > 0, w > 0 else { throw VAEInputError("the latent \(latent.shape) is empty") }
        return (F, h, w)
    }

    /// Checks a video size for encoding (at least one frame, sides of at least 8) and gives the latent to fill,
    /// [zDim, 1 + (frames - 1)/4, height/8, width/8] (rounded down: each of the three stride-2 downsamples, zero padded
    /// right and bottom, halves a side rounding down, as in the official encoder).
    public func encodeLatent(frames T: Int, height H: Int, width W: Int) throws -> Tensor {
        let tf = temporalFactor, sf = spatialFactor
        guard T >= 1 else { throw VAEInputError("the video has no frames; the Wan-VAE encodes 1 + \(tf)k frames (1, 5, 9, …, 81)") }
        guard H >= sf, W >= sf else {
            throw VAEInputError("the video is \(W)x\(H); the Wan-VAE needs at least \(sf)x\(sf) pixels: resize it")
        }
        guard Self.encodeChunk % tf == 0 else {
            throw VAEInputError("this VAE compresses time by \(tf); the official encoder reads chunks of \(Self.encodeChunk) frames, which only a factor of 1, 2 or 4 divides: it cannot encode with this VAE")
        }
        return Tensor(uninitialized: [zDim, 1 + (T - 1) / Self.encodeChunk * (Self.encodeChunk / tf), H / sf, W / sf])
    }

    /// The frames the official `WanVAE_.encode` takes at a time after the first one (its loop runs 1 + (T - 1) // 4
    /// times, whatever the VAE's temporal factor).
    public static let encodeChunk = 4

    /// The frames an encode of `T` frames reads: 1 + 4k, the first frame and every whole chunk of 4 after it. As the
    /// official `WanVAE_.encode`, frames past the last whole chunk are not encoded.
    public func encodedFrames(_ T: Int) -> Int { T < 1 ? 0 : 1 + Self.encodeChunk * ((T - 1) / Self.encodeChunk) }

    /// Latent frame `f` de-normalised (z / (1/std) + mean, as the official wrapper does) into channels-last [h*w, zDim].
    public func denormalize(_ latent: Tensor, frame f: Int, into out: UnsafeMutablePointer<Float>) {
        let (F, plane, z) = (latent.shape[1], latent.shape[2] * latent.shape[3], zDim)
        for ch in 0..<z {
            let inv = 1 / latentStd[ch], mean = latentMean[ch]
            let src = latent.data + (ch * F + f) * plane
            for p in 0..<plane { out[p * z + ch] = src[p] / inv + mean }
        }
    }

    /// The encoder's moments (rows of 2 zDim, mu first) normalised, (mu - mean) * (1/std), into latent frame `f`.
    public func normalize(moments: UnsafePointer<Float>, into latent: Tensor, frame f: Int) {
        let (F, plane, z) = (latent.shape[1], latent.shape[2] * latent.shape[3], zDim)
        for p in 0..<plane {
            let m = moments + p * 2 * z
            for ch in 0..<z { latent.data[(ch * F + f) * plane + p] = (m[ch] - latentMean[ch]) * (1 / latentStd[ch]) }
        }
    }

    /// A planar RGB frame [3, pixels] as channels-last [pixels, 3].
    public static func channelsLast(planar: UnsafePointer<Float>, pixels: Int, into out: UnsafeMutablePointer<Float>) {
        for ch in 0..<3 {
            let src = planar + ch * pixels, dst = out + ch
            for p in 0..<pixels { dst[p * 3] = src[p] }
        }
    }

    /// A decoded channels-last frame [H*W, 3] clamped to [-1, 1] into frame `index` of a video chunk [3, n, H, W].
    public static func storeClamped(_ pixels: UnsafePointer<Float>, into chunk: Tensor, frame index: Int) {
        let n = chunk.shape[1], count = chunk.shape[2] * chunk.shape[3]
        for ch in 0..<3 {
            let src = pixels + ch, dst = chunk.data + (ch * n + index) * count
            for p in 0..<count { dst[p] = min(max(src[p * 3], -1), 1) }
        }
    }

    /// Parameters of the whole model (encoder, decoder, conv1, conv2): 126.9M for Wan2.1.
    public var parameterCount: Int {
        func count(_ layer: WanVAELayer) -> Int {
            switch layer {
            case .conv(_, let i, let o): return 27 * i * o + o
            case .res(_, let i, let o): return i + o + (27 * i * o + o) + (27 * o * o + o) + (i != o ? i * o + o : 0)
            case .attn(_, let c): return c + 3 * c * c + 3 * c + c * c + c
            case .spatialDown(_, let c): return 9 * c * c + c
            case .timeDown(_, let c): return 3 * c * c + c
            case .timeUp(_, let c): return 6 * c * c + 2 * c
            case .spatialUp(_, let i, let o): return 9 * i * o + o
            case .head(_, let i, let o): return i + 27 * i * o + o
            }
        }
        let z = zDim
        return (encoderLayers + decoderLayers).reduce(0) { $0 + count($1) } + (4 * z * z + 2 * z) + (z * z + z)
    }

    /// Pixels of the frames each attention block sees, relative to the latent's (1 at latent size): where the
    /// per-frame attention's L x L scores are largest.
    public var attentionPixelFactors: [Int] {
        var factors: [Int] = []
        var factor = 1 << (2 * (dimMult.count - 1))  // the encoder starts at full resolution
        for layer in encoderLayers {
            if case .spatialDown = layer { factor /= 4 }
            if case .attn = layer { factors.append(factor) }
        }
        factor = 1
        for layer in decoderLayers {
            if case .spatialUp = layer { factor *= 4 }
            if case .attn = layer { factors.append(factor) }
        }
        return factors
    }

    /// The official `Encoder3d`'s stages in order (conv1, downsamples, middle, head).
    public var encoderLayers: [WanVAELayer] {
        let dims = ([1] + dimMult).map { $0 * dim }
        var layers: [WanVAELayer] = [.conv(name: "encoder.conv1", inChannels: 3, outChannels: dims[0])]
        var index = 0, scale = 1.0, outDim = dims[0]
        for i in 0..<(dims.count - 1) {
            var inDim = dims[i]
            outDim = dims[i + 1]
            for _ in 0..<numResBlocks {
                layers.append(.res(prefix: "encoder.downsamples.\(index)", inChannels: inDim, outChannels: outDim)); index += 1
                if attnScales.contains(scale) { layers.append(.attn(prefix: "encoder.downsamples.\(index)", channels: outDim)); index += 1 }
                inDim = outDim
            }
            if i != dimMult.count - 1 {
                let p = "encoder.downsamples.\(index)"
                layers.append(.spatialDown(prefix: p, channels: outDim))
                if temporalDownsample[i] { layers.append(.timeDown(prefix: p, channels: outDim)) }
                index += 1
                scale /= 2
            }
        }
        layers += [.res(prefix: "encoder.middle.0", inChannels: outDim, outChannels: outDim), .attn(prefix: "encoder.middle.1", channels: outDim),
                   .res(prefix: "encoder.middle.2", inChannels: outDim, outChannels: outDim),
                   .head(prefix: "encoder.head", inChannels: outDim, outChannels: 2 * zDim)]
        return layers
    }

    /// The official `Decoder3d`'s stages in order (conv1, middle, upsamples, head).
    public var decoderLayers: [WanVAELayer] {
        let dims = ([dimMult.last!] + dimMult.reversed()).map { $0 * dim }
        let temporalUp = Array(temporalDownsample.reversed())
        var layers: [WanVAELayer] = [.conv(name: "decoder.conv1", inChannels: zDim, outChannels: dims[0]),
                                     .res(prefix: "decoder.middle.0", inChannels: dims[0], outChannels: dims[0]),
                                     .attn(prefix: "decoder.middle.1", channels: dims[0]),
                                     .res(prefix: "decoder.middle.2", inChannels: dims[0], outChannels: dims[0])]
        var index = 0, scale = 1.0 / Double(1 << (dimMult.count - 2)), outDim = dims[0]
        for i in 0..<(dims.count - 1) {
            var inDim = (i == 1 || i == 2 || i == 3) ? dims[i] / 2 : dims[i]
            outDim = dims[i + 1]
            for _ in 0..<(numResBlocks + 1) {
                layers.append(.res(prefix: "decoder.upsamples.\(index)", inChannels: inDim, outChannels: outDim)); index += 1
                if attnScales.contains(scale) { layers.append(.attn(prefix: "decoder.upsamples.\(index)", channels: outDim)); index += 1 }
                inDim = outDim
            }
            if i != dimMult.count - 1 {
                let p = "decoder.upsamples.\(index)"
                if temporalUp[i] { layers.append(.timeUp(prefix: p, channels: outDim)) }
                layers.append(.spatialUp(prefix: p, inChannels: outDim, outChannels: outDim / 2))
                index += 1
                scale *= 2
            }
        }
        layers.append(.head(prefix: "decoder.head", inChannels: outDim, outChannels: 3))
        return layers
    }
}

/// A Wan-VAE whichever backend runs it (`WanVAE` on the CPU, `CUDAVAE` on a GPU): what the pipelines and the
/// conformance runner need.
public protocol VAECoding: AnyObject {
    var config: WanVAEConfig { get }
    /// Video [3, 1+4k, H, W] in [-1, 1] -> normalised latent [16, 1+k, H/8, W/8].
    func encode(_ video: Tensor) throws -> Tensor
    /// Normalised latent [16, F, h, w] -> video [3, 1+4(F-1), 8h, 8w] clamped to [-1, 1].
    func decode(_ latent: Tensor) throws -> Tensor
    /// Streaming decode: each latent frame's pixels ([3, n, H, W] in [-1, 1], index of the first frame) as soon as
    /// they are decoded.
    func decode(_ latent: Tensor, onFrames: (Tensor, Int) throws -> Void) throws
    /// Streaming encode: `readFrame(i, planar)` fills frame i as [3, H, W] in [-1, 1], in order.
    func encode(frames T: Int, height H: Int, width W: Int,
                readFrame: (_ index: Int, _ planar: UnsafeMutablePointer<Float>) throws -> Void) throws -> Tensor
}

extension WanVAE: VAECoding {}

/// Errors of VAE calls with unusable inputs.
public struct VAEInputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A channels-last activation: [frames, height, width, channels].
public struct ChannelsLastVideo {
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
public final class WanVAE: VAEFrameBackend, @unchecked Sendable {
    public let config: WanVAEConfig

    /// A causal 3-D conv (kt = 3) run one output frame at a time as three per-frame taps, or a pointwise conv.
    /// Tap k weighs input frame t - 2 + k; taps over the zero frames before the first chunk are skipped (they add
    /// exactly zero), so no padded or concatenated input is ever built and the 2-frame history is kept by reference.
    public final class CausalConv {
        let taps: [Conv3D]
        let pointwise: Linear?
        let id: Int
        let outChannels: Int
        /// `weight` [Cout, Cin, 3, kh, kw] (padding kh/2, kw/2) or [Cout, Cin, 1, 1, 1] (pointwise).
        init(weight w: Tensor, bias: Tensor, id: Int) {
            self.id = id
            let s = w.shape
            outChannels = s[0]
            if s[2] == 1 && s[3] == 1 && s[4] == 1 {
                pointwise = Linear(weight: Tensor(borrowing: w.data, shape: [s[0], s[1]], owner: w), bias: bias)
                taps = []
                return
            }
            precondition(s[2] == 3, "causal conv with temporal kernel \(s[2])")
            let plane = s[3] * s[4]
            taps = (0..<3).map { k in
                let tap = Tensor(uninitialized: [s[0], s[1], 1, s[3], s[4]])
                for oi in 0..<(s[0] * s[1]) { (tap.data + oi * plane).update(from: w.data + (oi * 3 + k) * plane, count: plane) }
                return Conv3D(weight: tap, bias: k == 2 ? bias : nil, padLeft: (s[3] / 2, s[4] / 2), padRight: (s[3] / 2, s[4] / 2))
            }
            pointwise = nil
        }
    }

    public struct AttnBlock {
        let gamma: Tensor
        let qkv, proj: Linear
    }
    public typealias Frame = ChannelsLastVideo
    public typealias Causal = CausalConv
    public typealias Spatial = Conv3D
    public typealias TimeUp = CausalConv
    public typealias Attn = AttnBlock
    public typealias Gamma = Tensor

    struct Coder {
        let stages: [VAEStage<WanVAE>]
    }

    let encoder: Coder
    let decoder: Coder
    let quantConv: Linear      // conv1: 2z -> 2z
    let postQuantConv: Linear  // conv2: z -> z

    public init(config c: WanVAEConfig, weights source: WeightSource) throws {
        try c.validate(source: source.label)
        config = c
        let b = WeightBinder(source)
        var nextID = 0
        func causal(_ name: String, _ cin: Int, _ cout: Int, _ k: Int) throws -> CausalConv {
            defer { nextID += 1 }
            return CausalConv(weight: try b.tensor(name + ".weight", [cout, cin, k, k, k]), bias: try b.tensor(name + ".bias", [cout]), id: nextID)
        }
        func gamma(_ name: String, _ ch: Int, images: Bool) throws -> Tensor {
            try b.tensor(name, images ? [ch, 1, 1] : [ch, 1, 1, 1])
        }
        func conv2d(_ p: String, _ cin: Int, _ cout: Int, down: Bool) throws -> Conv3D {
            Conv3D(weight: try b.tensor(p + ".weight", [cout, cin, 3, 3]), bias: try b.tensor(p + ".bias", [cout]),
                   stride: down ? (1, 2, 2) : (1, 1, 1), padLeft: down ? (0, 0) : (1, 1), padRight: (1, 1))
        }
        func timeConv(_ p: String, _ cin: Int, _ cout: Int) throws -> (weight: Tensor, bias: Tensor) {
            (try b.tensor(p + ".weight", [cout, cin, 3, 1, 1]), try b.tensor(p + ".bias", [cout]))
        }
        func stage(_ layer: WanVAELayer) throws -> VAEStage<WanVAE> {
            switch layer {
            case .conv(let name, let cin, let cout):
                return .conv(try causal(name, cin, cout, 3))
            case .res(let p, let cin, let cout):
                return .res(gamma1: try gamma(p + ".residual.0.gamma", cin, images: false), gamma2: try gamma(p + ".residual.3.gamma", cout, images: false),
                            conv1: try causal(p + ".residual.2", cin, cout, 3), conv2: try causal(p + ".residual.6", cout, cout, 3),
                            shortcut: cin != cout ? try causal(p + ".shortcut", cin, cout, 1) : nil)
            case .attn(let p, let ch):
                let qw = try b.tensor(p + ".to_qkv.weight", [3 * ch, ch, 1, 1])
                let pw = try b.tensor(p + ".proj.weight", [ch, ch, 1, 1])
                return .attn(AttnBlock(gamma: try gamma(p + ".norm.gamma", ch, images: true),
                                       qkv: Linear(weight: Tensor(borrowing: qw.data, shape: [3 * ch, ch], owner: qw), bias: try b.tensor(p + ".to_qkv.bias", [3 * ch])),
                                       proj: Linear(weight: Tensor(borrowing: pw.data, shape: [ch, ch], owner: pw), bias: try b.tensor(p + ".proj.bias", [ch]))))
            case .spatialDown(let p, let ch):
                return .spatialDown(try conv2d(p + ".resample.1", ch, ch, down: true))
            case .timeDown(let p, let ch):
                let t = try timeConv(p + ".time_conv", ch, ch)
                defer { nextID += 1 }
                return .timeDown(Conv3D(weight: t.weight, bias: t.bias, stride: (2, 1, 1), padLeft: (0, 0), padRight: (0, 0)), id: nextID)
            case .timeUp(let p, let ch):
                let t = try timeConv(p + ".time_conv", ch, 2 * ch)
                defer { nextID += 1 }
                return .timeUp(CausalConv(weight: t.weight, bias: t.bias, id: nextID))
            case .spatialUp(let p, let cin, let cout):
                return .spatialUp(try conv2d(p + ".resample.1", cin, cout, down: false))
            case .head(let p, let cin, let cout):
                return .head(gamma: try gamma(p + ".0.gamma", cin, images: false), conv: try causal(p + ".2", cin, cout, 3))
            }
        }
        encoder = Coder(stages: try c.encoderLayers.map(stage))
        decoder = Coder(stages: try c.decoderLayers.map(stage))
        let q = try b.tensor("conv1.weight", [2 * c.zDim, 2 * c.zDim, 1, 1, 1])
        quantConv = Linear(weight: Tensor(borrowing: q.data, shape: [2 * c.zDim, 2 * c.zDim], owner: q), bias: try b.tensor("conv1.bias", [2 * c.zDim]))
        let pq = try b.tensor("conv2.weight", [c.zDim, c.zDim, 1, 1, 1])
        postQuantConv = Linear(weight: Tensor(borrowing: pq.data, shape: [c.zDim, c.zDim], owner: pq), bias: try b.tensor("conv2.bias", [c.zDim]))
        try b.finish()
    }

    /// Loads with the configuration of `arguments` (official constructor arguments) over the published defaults.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil) throws {
        try self.init(config: WanVAEConfig(inferringFrom: source, arguments: arguments), weights: source)
    }

    // MARK: frame operations (VAEFrameBackend; `VAEStream` walks the stages and keeps the causal state)

    public func stateID(_ c: CausalConv) -> Int? { c.pointwise == nil ? c.id : nil }
    public func stateID(of c: CausalConv) -> Int { c.id }

    /// A conv's history holds its input frames by reference, which is safe because a conv's input is never written
    /// after the conv has read it (the only in-place write, a residual accumulating into its block input, targets a
    /// stage output, never a conv input); `copy` for a frame that goes on to such stages.
    public func keep(_ x: ChannelsLastVideo, copy: Bool) throws -> ChannelsLastVideo {
        guard copy else { return x }
        var y = x
        y.data = Tensor(uninitialized: x.data.shape)
        y.data.data.update(from: x.data.data, count: x.data.count)
        return y
    }

    /// One output frame of a causal conv (kt = 3: the taps over the kept history; pointwise: a linear map), new or
    /// added to `out`. Taps over the zero frames before the first chunk are skipped (they add exactly zero).
    public func causal(_ c: CausalConv, history: [ChannelsLastVideo], _ x: ChannelsLastVideo, accumulateInto out: ChannelsLastVideo?) throws -> ChannelsLastVideo {
        precondition(x.frames == 1, "the VAE runs one frame per stage call")
        var y = out ?? ChannelsLastVideo(frames: 1, height: x.height, width: x.width, channels: c.outChannels)
        y.channels = c.outChannels
        if let lin = c.pointwise {
            if out != nil {
                let tmp = Tensor(uninitialized: [x.rows, lin.outFeatures])
                lin(x.data.data, rows: x.rows, into: tmp.data)
                Kernels.add(y.data.data, tmp.data, count: tmp.count, out: y.data.data)
            } else {
                lin(x.data.data, rows: x.rows, into: y.data.data)
            }
            return y
        }
        c.taps[2](x.data.data, frames: 1, height: x.height, width: x.width, into: y.data.data, accumulate: out != nil)
        for (j, h) in history.enumerated() {
            c.taps[2 - history.count + j](h.data.data, frames: 1, height: x.height, width: x.width, into: y.data.data, accumulate: true)
        }
        return y
    }

    public func norm(_ x: ChannelsLastVideo, _ gamma: Tensor, silu: Bool) throws -> ChannelsLastVideo { normalized(x, gamma, silu: silu) }

    func normalized(_ x: ChannelsLastVideo, _ gamma: Tensor, silu: Bool) -> ChannelsLastVideo {
        var y = ChannelsLastVideo(frames: x.frames, height: x.height, width: x.width, channels: x.channels)
        Kernels.channelRMSNorm(x.data.data, rows: x.rows, channels: x.channels, gamma: gamma.data, silu: silu, out: y.data.data)
        y.channels = x.channels
        return y
    }

    public func attention(_ block: AttnBlock, _ x: ChannelsLastVideo) throws -> ChannelsLastVideo {
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

    func spatial(_ conv: Conv3D, _ x: UnsafePointer<Float>, frames: Int, height: Int, width: Int) -> ChannelsLastVideo {
        let o = conv.outputSize(frames: frames, height: height, width: width)
        var y = ChannelsLastVideo(frames: o.t, height: o.h, width: o.w, channels: conv.outChannels)
        conv(x, frames: frames, height: height, width: width, into: y.data.data)
        y.channels = conv.outChannels
        return y
    }

    public func spatialDown(_ conv: Conv3D, _ x: ChannelsLastVideo) throws -> ChannelsLastVideo {
        spatial(conv, x.data.data, frames: 1, height: x.height, width: x.width)
    }

    public func spatialUp(_ conv: Conv3D, _ x: ChannelsLastVideo) throws -> ChannelsLastVideo {
        let up = Tensor(uninitialized: [1, 2 * x.height, 2 * x.width, x.channels])
        Kernels.upsampleNearest2x(x.data.data, frames: 1, height: x.height, width: x.width, channels: x.channels, out: up.data)
        return spatial(conv, up.data, frames: 1, height: 2 * x.height, width: 2 * x.width)
    }

    public func timeDown(_ conv: Conv3D, _ frames: [ChannelsLastVideo]) throws -> ChannelsLastVideo {
        let x = frames[frames.count - 1], fs = x.frameSize
        let input = Tensor(uninitialized: [frames.count, x.height, x.width, x.channels])
        for (i, f) in frames.enumerated() { (input.data + i * fs).update(from: f.data.data, count: fs) }
        return spatial(conv, input.data, frames: frames.count, height: x.height, width: x.width)
    }

    public func timeUp(_ time: CausalConv, history: [ChannelsLastVideo], _ x: ChannelsLastVideo) throws -> [ChannelsLastVideo] {
        let doubled = try causal(time, history: history, x, accumulateInto: nil)
        let c = x.channels, hw = x.height * x.width
        return (0..<2).map { half in
            var f = ChannelsLastVideo(frames: 1, height: x.height, width: x.width, channels: c)
            Parallel.forRanges(hw, grain: 1024) { range in
                for p in range { (f.data.data + p * c).update(from: doubled.data.data + p * 2 * c + half * c, count: c) }
            }
            f.channels = c
            return f
        }
    }

    // MARK: public API

    /// Encodes a video [3, 1+4k, H, W] in [-1, 1] into the normalised latent [16, 1+k, H/8, W/8] (sides rounded
    /// down) = (mu - mean) / std, as `WanVAE.encode` does (no sampling). Frames past the last whole chunk of 4 (a video
    /// of 1+4k+r frames, r < 4) are not encoded, as in the official code.
    public func encode(_ video: Tensor) throws -> Tensor {
        guard video.rank == 4, video.shape[0] == 3 else { throw VAEInputError("the video must be [3, frames, height, width], got \(video.shape)") }
        let (T, H, W) = (video.shape[1], video.shape[2], video.shape[3])
        return try encode(frames: T, height: H, width: W) { index, planar in
            for ch in 0..<3 { (planar + ch * H * W).update(from: video.data + (ch * T + index) * H * W, count: H * W) }
        }
    }

    /// Streaming encode: `readFrame(i, planar)` fills frame i as [3, H, W] in [-1, 1]; frames are read in order, one
    /// at a time, and only the encoder's causal state and the latent are kept, so memory does not grow with the length
    /// of the video. Gives the normalised latent [16, 1 + (frames - 1)/4, H/8, W/8]; reads `encodedFrames(frames)` frames.
    public func encode(frames T: Int, height H: Int, width W: Int,
                       readFrame: (_ index: Int, _ planar: UnsafeMutablePointer<Float>) throws -> Void) throws -> Tensor {
        let latent = try config.encodeLatent(frames: T, height: H, width: W)
        let z = config.zDim, latentT = latent.shape[1], plane = latent.shape[2] * latent.shape[3]
        let stream = VAEStream(self)
        let planar = Tensor(uninitialized: [3, H, W])
        var written = 0
        for index in 0..<config.encodedFrames(T) {
            try readFrame(index, planar.data)
            let x = ChannelsLastVideo(frames: 1, height: H, width: W, channels: 3)
            WanVAEConfig.channelsLast(planar: planar.data, pixels: H * W, into: x.data.data)
            try stream.push(encoder.stages, x) { out in
                guard written < latentT else { throw VAEInputError("the encoder gave more latent frames than \(latentT)") }
                let moments = Tensor(uninitialized: [out.rows, 2 * z])
                quantConv(out.data.data, rows: out.rows, into: moments.data)
                precondition(out.rows == plane)
                config.normalize(moments: moments.data, into: latent, frame: written)
                written += 1
            }
        }
        precondition(written == latentT, "VAE encode produced \(written) latent frames, expected \(latentT)")
        return latent
    }

    /// Decodes a normalised latent [16, F, h, w] into a video [3, 1+4(F-1), 8h, 8w] clamped to [-1, 1], handing the
    /// frames of each latent frame to `onFrames` (video chunk [3, n, H, W], index of its first frame) as soon as they
    /// are ready. The decoder runs one frame at a time through every stage, so memory holds the causal state and a few
    /// frames, whatever the length of the video.
    public func decode(_ latent: Tensor, onFrames: (Tensor, Int) throws -> Void) throws {
        let z = config.zDim
        let (F, h, w) = try config.decodeShape(latent)
        let plane = h * w, sf = config.spatialFactor
        let (H, W) = (h * sf, w * sf)
        let stream = VAEStream(self)
        var emitted = 0
        for f in 0..<F {
            // De-normalise (z / (1/std) + mean, as the wrapper does) into channels-last, then conv2.
            let zin = Tensor(uninitialized: [plane, z])
            config.denormalize(latent, frame: f, into: zin.data)
            var x = ChannelsLastVideo(frames: 1, height: h, width: w, channels: z)
            postQuantConv(zin.data, rows: plane, into: x.data.data)
            x.channels = z
            let n = f == 0 ? 1 : config.temporalFactor
            let chunk = Tensor(uninitialized: [3, n, H, W])
            var produced = 0
            try stream.push(decoder.stages, x) { out in
                precondition(produced < n && out.height == H && out.width == W, "decoder gave an unexpected frame")
                WanVAEConfig.storeClamped(out.data.data, into: chunk, frame: produced)
                produced += 1
            }
            precondition(produced == n, "decoder gave \(produced) frames for latent frame \(f), expected \(n)")
            try onFrames(chunk, emitted)
            emitted += n
        }
    }

    /// Spatially tiled decode for sizes whose full decode state would not fit (see `decodeStateBytes`): the latent
    /// is cut into overlapping tiles (`WanVAEConfig.decodeTiles`), each tile is decoded over all frames with its own causal state,
    /// and the tiles' pixels are blended with linear ramps across the overlaps. NOT bit-exact to the official decode
    /// (each tile sees zero padding at its edges instead of its neighbours; the ramps hide the seams): pipelines use
    /// it only when the memory estimate says the exact decode cannot fit. The frames are handed to `onFrames` per
    /// latent frame after the last tile, so the output video is held once in float32 ([3, T, H, W]).
    /// `afterTileFrame` runs after each latent frame of each tile (progress, cancellation: throw to stop).
    public func decodeTiled(_ latent: Tensor, tileHeight th: Int, tileWidth tw: Int, overlap: Int = 8,
                            afterTileFrame: () throws -> Void = {}, onFrames: (Tensor, Int) throws -> Void) throws {
        let z = config.zDim
        let (F, h, w) = try config.decodeShape(latent)
        guard th > overlap, tw > overlap, overlap >= 0 else { throw VAEInputError("tiles of \(th)x\(tw) latent pixels cannot overlap by \(overlap)") }
        let sf = config.spatialFactor, (H, W) = (h * sf, w * sf), T = 1 + (F - 1) * config.temporalFactor
        func starts(_ extent: Int, _ tile: Int) -> [Int] {
            guard tile < extent else { return [0] }
            var s: [Int] = [], p = 0
            while p + tile < extent { s.append(p); p += tile - overlap }
            s.append(extent - tile)
            return s
        }
        // Blend weight of a tile's pixel along one axis: a ramp over the overlap on each side that has a neighbour.
        func ramp(_ i: Int, _ size: Int, _ lowNeighbour: Bool, _ highNeighbour: Bool) -> Float {
            let o = Float(overlap * sf)
            var v: Float = 1
            if lowNeighbour && o > 0 { v = min(v, (Float(i) + 0.5) / o) }
            if highNeighbour && o > 0 { v = min(v, (Float(size - i) - 0.5) / o) }
            return v
        }
        let video = Tensor(zeros: [3, T, H, W]), weight = Tensor(zeros: [H, W])
        let ys = starts(h, th), xs = starts(w, tw)
        for (yi, y0) in ys.enumerated() {
            for (xi, x0) in xs.enumerated() {
                let (lh, lw) = (min(th, h), min(tw, w))
                let tile = Tensor(uninitialized: [z, F, lh, lw])
                for c in 0..<z { for f in 0..<F { for r in 0..<lh {
                    (tile.data + ((c * F + f) * lh + r) * lw).update(from: latent.data + ((c * F + f) * h + y0 + r) * w + x0, count: lw)
                } } }
                let (ph, pw) = (lh * sf, lw * sf), (py, px) = (y0 * sf, x0 * sf)
                let wy = (0..<ph).map { ramp($0, ph, yi > 0, yi < ys.count - 1) }
                let wx = (0..<pw).map { ramp($0, pw, xi > 0, xi < xs.count - 1) }
                for r in 0..<ph { for c in 0..<pw { weight.data[(py + r) * W + px + c] += wy[r] * wx[c] } }
                try decode(tile) { chunk, first in
                    let n = chunk.shape[1]
                    for ch in 0..<3 { for f in 0..<n { for r in 0..<ph {
                        let src = chunk.data + ((ch * n + f) * ph + r) * pw
                        let dst = video.data + ((ch * T + first + f) * H + py + r) * W + px
                        let k = wy[r]
                        for c in 0..<pw { dst[c] += src[c] * (k * wx[c]) }
                    } } }
                    try afterTileFrame()
                }
            }
        }
        for ch in 0..<3 { for f in 0..<T {
            let plane = video.data + (ch * T + f) * H * W
            for i in 0..<(H * W) { plane[i] = min(max(plane[i] / weight.data[i], -1), 1) }
        } }
        var first = 0
        for f in 0..<F {
            let n = f == 0 ? 1 : config.temporalFactor
            let chunk = Tensor(uninitialized: [3, n, H, W])
            for ch in 0..<3 { (chunk.data + ch * n * H * W).update(from: video.data + (ch * T + first) * H * W, count: n * H * W) }
            try onFrames(chunk, first)
            first += n
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
