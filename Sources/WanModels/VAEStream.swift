import Foundation
import WanTensor

/// The per-frame operations of a Wan-VAE backend (`WanVAE` on the CPU, `CUDAVAE` on a GPU): every stage of the
/// encoder and decoder takes single channels-last frames; `VAEStream` walks the stages and keeps the causal state,
/// the same logic on every backend.
public protocol VAEFrameBackend: AnyObject {
    /// One channels-last frame [H, W, C].
    associatedtype Frame
    /// A causal 3-D conv (kt = 3, over the last two input frames and this one) or a pointwise conv.
    associatedtype Causal
    /// A 3x3 conv of a spatial resampler, or the stride-2 time conv of a temporal downsampler.
    associatedtype Spatial
    /// The causal C -> 2C time conv of a temporal upsampler.
    associatedtype TimeUp
    /// An attention block's weights.
    associatedtype Attn
    /// An RMS_norm gamma.
    associatedtype Gamma

    /// The state key of a causal conv, nil for a pointwise one (it keeps no history).
    func stateID(_ c: Causal) -> Int?
    func stateID(of c: TimeUp) -> Int
    /// One output frame of `c` over `history` (at most two earlier input frames, oldest first) and `x`, new or added
    /// to `out`.
    func causal(_ c: Causal, history: [Frame], _ x: Frame, accumulateInto out: Frame?) throws -> Frame
    /// `x` as causal state (kept by reference where the backend can, or a copy; `copy`: x goes on to stages that
    /// may write into it).
    func keep(_ x: Frame, copy: Bool) throws -> Frame
    /// RMS_norm over channels, then SiLU when asked.
    func norm(_ x: Frame, _ gamma: Gamma, silu: Bool) throws -> Frame
    /// The per-frame single-head attention block with its residual.
    func attention(_ a: Attn, _ x: Frame) throws -> Frame
    /// Zero pad right and bottom, 3x3 stride 2.
    func spatialDown(_ c: Spatial, _ x: Frame) throws -> Frame
    /// Nearest 2x, then 3x3.
    func spatialUp(_ c: Spatial, _ x: Frame) throws -> Frame
    /// The stride-2 time conv over (the previous pair's last frame, the pair).
    func timeDown(_ c: Spatial, _ frames: [Frame]) throws -> Frame
    /// The causal time conv C -> 2C over `history` and `x`: two frames, channels [0, C) then [C, 2C).
    func timeUp(_ c: TimeUp, history: [Frame], _ x: Frame) throws -> [Frame]
}

/// One stage of the Wan-VAE's encoder or decoder (`WanVAEConfig.encoderLayers` / `decoderLayers`) as a backend
/// binds it; the official `Resample` modes are split into their spatial and temporal halves.
public enum VAEStage<B: VAEFrameBackend> {
    case conv(B.Causal)
    case res(gamma1: B.Gamma, gamma2: B.Gamma, conv1: B.Causal, conv2: B.Causal, shortcut: B.Causal?)
    case attn(B.Attn)
    case head(gamma: B.Gamma, conv: B.Causal)
    case spatialDown(B.Spatial)
    case spatialUp(B.Spatial)
    case timeDown(B.Spatial, id: Int)
    case timeUp(B.TimeUp)
}

/// One encode or decode pass through the stages, frame by frame (official `WanVAE_` with its feature cache): the
/// last two input frames of every causal conv, and the temporal resamplers' state. Every stage takes one frame and
/// gives 0 (a temporal downsampler gathering its pair), 1 or 2 frames, which are pushed on at once.
public final class VAEStream<B: VAEFrameBackend> {
    let backend: B
    var history: [Int: [B.Frame]] = [:]     // up to 2 previous input frames per causal conv, oldest first
    var previousLast: [Int: B.Frame] = [:]  // timeDown: last frame of the previous pair
    var pending: [Int: B.Frame] = [:]       // timeDown: first frame of the pair being gathered
    var started: Set<Int> = []              // timeUp/timeDown: the first chunk has passed

    public init(_ backend: B) { self.backend = backend }

    func causal(_ c: B.Causal, _ x: B.Frame, accumulateInto out: B.Frame? = nil) throws -> B.Frame {
        guard let id = backend.stateID(c) else { return try backend.causal(c, history: [], x, accumulateInto: out) }
        let h = history[id] ?? []
        let y = try backend.causal(c, history: h, x, accumulateInto: out)
        history[id] = Array((h + [try backend.keep(x, copy: false)]).suffix(2))
        return y
    }

    /// Applies one stage to one frame; gives 0, 1 or 2 frames.
    func apply(_ stage: VAEStage<B>, _ x: B.Frame) throws -> [B.Frame] {
        let be = backend
        switch stage {
        case .conv(let c):
            return [try causal(c, x)]
        case .res(let gamma1, let gamma2, let conv1, let conv2, let shortcut):
            // Shortcut first (the residual's causal convs see the block input), then the residual path added onto it
            // (onto the block input itself for an identity shortcut: a stage output nobody reads afterwards).
            let h = try shortcut.map { try causal($0, x) } ?? x
            let a = try causal(conv1, be.norm(x, gamma1, silu: true))
            return [try causal(conv2, be.norm(a, gamma2, silu: true), accumulateInto: h)]
        case .attn(let a):
            return [try be.attention(a, x)]
        case .head(let gamma, let c):
            return [try causal(c, be.norm(x, gamma, silu: true))]
        case .spatialDown(let c):
            return [try be.spatialDown(c, x)]
        case .spatialUp(let c):
            return [try be.spatialUp(c, x)]
        case .timeDown(let c, let id):
            // First chunk: the frame passes (no temporal downsampling). Then frames pair up and the stride-2 conv sees
            // (last frame of the previous pair, the pair).
            guard started.contains(id) else {
                started.insert(id)
                previousLast[id] = try be.keep(x, copy: true)  // x goes on to stages that may add into it
                return [x]
            }
            guard let first = pending.removeValue(forKey: id) else { pending[id] = try be.keep(x, copy: false); return [] }
            let y = try be.timeDown(c, [previousLast[id]!, first, x])
            previousLast[id] = try be.keep(x, copy: false)
            return [y]
        case .timeUp(let c):
            let id = be.stateID(of: c)
            guard started.contains(id) else { started.insert(id); return [x] }
            // Causal time conv C -> 2C (zeros before the second chunk): the frame becomes two.
            let h = history[id] ?? []
            let frames = try be.timeUp(c, history: h, x)
            history[id] = Array((h + [try be.keep(x, copy: false)]).suffix(2))
            return frames
        }
    }

    /// Pushes one frame through `stages` from `index` on, handing every frame that leaves the last stage to `sink`.
    public func push(_ stages: [VAEStage<B>], from index: Int = 0, _ x: B.Frame, _ sink: (B.Frame) throws -> Void) throws {
        if index == stages.count { return try sink(x) }
        for y in try apply(stages[index], x) { try push(stages, from: index + 1, y, sink) }
    }
}
