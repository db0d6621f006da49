import Foundation
import WanTensor
import WanModels
import WanSampling

/// What a VACE generation is conditioned on (official `WanVace.generate`'s src_video, src_mask, src_ref_images).
/// Every part is optional: no video means a zero video with an all-ones mask (pure generation); a video without a
/// mask is taken whole as the control / source video (all-ones mask).
public struct VACEInputs: Sendable {
    /// The source video (extension, control videos, inpainting / outpainting source).
    public var video: RGBVideo?
    /// The mask video (white = generate, black = keep); only with `video`, with at least its frame count (a mask of
    /// another size is resized and cropped like the video).
    public var mask: RGBVideo?
    /// Reference images, each encoded as one latent frame in front of the video's.
    public var referenceImages: [RGBImage]

    public init(video: RGBVideo? = nil, mask: RGBVideo? = nil, referenceImages: [RGBImage] = []) {
        self.video = video; self.mask = mask; self.referenceImages = referenceImages
    }
}

extension RGBVideo {
    /// The first `frames` frames as [3, frames, height, width] in [-1, 1], as the official
    /// `VaceVideoProcessor.resize_crop` makes them: a video of another size is scaled by max(width/W, height/H) to
    /// (round(scale*H), round(scale*W)) with PyTorch's uint8 antialiased bicubic (`AntialiasedBicubic`, what
    /// `F.interpolate(uint8, mode='bicubic', antialias=True)` computes on the CPU), centre-cropped at
    /// ((W' - width) // 2, (H' - height) // 2), then v / 127.5 - 1. Which frames and what size: see
    /// `PreparedSourceVideo` (the official frame sampling and size rule).
    public func tensor(frames count: Int, height oh: Int, width ow: Int) throws -> Tensor {
        guard frames.count >= count else {
            throw GenerationError.invalidSettings("the video has \(frames.count) frames; \(count) are needed: generate at most \(frames.count) frames (4n+1)")
        }
        if height == oh && width == ow { return tensor(frames: count) }
        // Frames in parallel (each resize is independent).
        final class Slots: @unchecked Sendable { var frames: [RGBImage?]; var error: Error?; init(_ n: Int) { frames = .init(repeating: nil, count: n) } }
        let slots = Slots(count), lock = NSLock(), source = frames
        DispatchQueue.concurrentPerform(iterations: count) { i in
            do {
                let f = try source[i].resizedCropped(height: oh, width: ow)
                lock.lock(); slots.frames[i] = f; lock.unlock()
            } catch { lock.lock(); slots.error = error; lock.unlock() }
        }
        if let e = slots.error { throw e }
        return try RGBVideo(frames: slots.frames.map { $0! }).tensor(frames: count)
    }
}

/// The steps of the official `WanVace` (wan/vace.py): prepare_source, vace_encode_frames, vace_encode_masks,
/// vace_latent. Tensors are one video each, without the batch list.
public enum VACEConditioning {
    /// `prepare_source` for one video at the generation's size and frame count: `video` [3, F, H, W] in [-1, 1] or
    /// nil (then zeros, and an all-ones mask), `mask` [3, F, H, W] in [-1, 1] as the mask video is read (then
    /// clamp((mask[:1] + 1) / 2, 0, 1)) or nil (all ones); each reference [3, h, w] in [-1, 1] is put on a white
    /// canvas of the video's size (`fitOnCanvas`) when its size differs. The mask is returned as [1, F, H, W]: the
    /// official all-ones default is `ones_like(video)` with 3 equal channels, of which the later steps use the first
    /// (vace_encode_masks) or broadcast it (vace_encode_frames), so one channel gives the same result.
    public static func prepareSource(video: Tensor?, mask: Tensor?, references: [Tensor], frames F: Int, height H: Int,
                                     width W: Int) -> (video: Tensor, mask: Tensor, references: [Tensor]) {
        let plane = F * H * W
        let v = video ?? Tensor(zeros: [3, F, H, W])
        let m = Tensor(uninitialized: [1, F, H, W])
        if let mask, video != nil {
            for i in 0..<plane { m.data[i] = min(max((mask.data[i] + 1) / 2, 0), 1) }
        } else {
            for i in 0..<plane { m.data[i] = 1 }
        }
        let refs = references.map { r in (r.shape[1] == H && r.shape[2] == W) ? r : fitOnCanvas(r, height: H, width: W) }
        return (v, m, refs)
    }

    /// A reference image of another size on a white canvas [3, H, W] (value 1): scaled by min(H/h, W/w) to
    /// (int(h*scale), int(w*scale)) with bilinear interpolation and placed at ((H - h') // 2, (W - w') // 2).
    public static func fitOnCanvas(_ image: Tensor, height H: Int, width W: Int) -> Tensor {
        let (h, w) = (image.shape[1], image.shape[2])
        let scale = min(Double(H) / Double(h), Double(W) / Double(w))
        let (nh, nw) = (Int(Double(h) * scale), Int(Double(w) * scale))
        let resized = resizeBilinear(image, height: nh, width: nw)
        let canvas = Tensor(uninitialized: [3, H, W])
        for i in 0..<canvas.count { canvas.data[i] = 1 }
        let (top, left) = ((H - nh) / 2, (W - nw) / 2)
        for c in 0..<3 {
            for y in 0..<nh {
                (canvas.data + (c * H + top + y) * W + left).update(from: resized.data + (c * nh + y) * nw, count: nw)
            }
        }
        return canvas
    }

    /// `F.interpolate(x[None], size=(h, w), mode='bilinear', align_corners=False)` of [C, H, W] (no antialias):
    /// source index max(0, (dst + 0.5) * in/out - 0.5) in float32, the neighbour clamped at the edge.
    public static func resizeBilinear(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
        let (C, H, W) = (x.shape[0], x.shape[1], x.shape[2])
        func taps(_ outSize: Int, _ inSize: Int) -> [(Int, Int, Float, Float)] {
            let scale = Float(inSize) / Float(outSize)
            return (0..<outSize).map { d in
                let src = max(scale * (Float(d) + 0.5) - 0.5, 0)
                let i0 = Int(src)
                let l1 = src - Float(i0)
                return (i0, i0 < inSize - 1 ? i0 + 1 : i0, 1 - l1, l1)
            }
        }
        let ty = taps(oh, H), tx = taps(ow, W)
        let out = Tensor(uninitialized: [C, oh, ow])
        for c in 0..<C {
            let src = x.data + c * H * W
            for (y, (y0, y1, wy0, wy1)) in ty.enumerated() {
                for (xo, (x0, x1, wx0, wx1)) in tx.enumerated() {
                    let top = wx0 * src[y0 * W + x0] + wx1 * src[y0 * W + x1]
                    let bottom = wx0 * src[y1 * W + x0] + wx1 * src[y1 * W + x1]
                    out.data[(c * oh + y) * ow + xo] = wy0 * top + wy1 * bottom
                }
            }
        }
        return out
    }

    /// The two halves of `vace_encode_frames` before encoding: with m = where(mask > 0.5, 1, 0),
    /// inactive = video * (1 - m) + 0 * m, reactive = video * m + 0 * (1 - m) ([3, F, H, W] each; mask [1, F, H, W]).
    public static func inactiveReactive(video: Tensor, mask: Tensor) -> (inactive: Tensor, reactive: Tensor) {
        let plane = mask.count
        let inactive = Tensor(uninitialized: video.shape), reactive = Tensor(uninitialized: video.shape)
        for c in 0..<3 {
            let v = video.data + c * plane, a = inactive.data + c * plane, r = reactive.data + c * plane
            for i in 0..<plane {
                let m: Float = mask.data[i] > 0.5 ? 1 : 0
                a[i] = v[i] * (1 - m) + 0 * m
                r[i] = v[i] * m + 0 * (1 - m)
            }
        }
        return (inactive, reactive)
    }

    /// `vace_encode_frames` with a mask: concat(encode(inactive), encode(reactive)) on channels [2z, T, h, w], and
    /// each reference's latent [z, 1, h, w] with a zero reactive half prepended in time (references first, in order):
    /// [2z, refs + T, h, w]. `encode` is the VAE's encode ([3, F, H, W] → [z, T, h, w]).
    public static func encodeFrames(video: Tensor, mask: Tensor, references: [Tensor],
                                    encode: (Tensor) throws -> Tensor) throws -> Tensor {
        let (inactive, reactive) = inactiveReactive(video: video, mask: mask)
        let latent = concatenate([try encode(inactive), try encode(reactive)], axis: 0)
        guard !references.isEmpty else { return latent }
        var frames: [Tensor] = []
        for r in references {
            let u = try encode(r.rank == 3 ? r.reshaped([3, 1, r.shape[1], r.shape[2]]) : r)
            precondition(u.shape[1] == 1, "a reference image must encode to one latent frame")
            frames.append(concatenate([u, Tensor(zeros: u.shape)], axis: 0))
        }
        return concatenate(frames + [latent], axis: 1)
    }

    /// PyTorch's 'nearest-exact' source index: min(floor((dst + 0.5) * scale), in - 1), scale = in / out in float32.
    static func nearestExact(_ dst: Int, input: Int, output: Int) -> Int {
        let scale = Float(input) / Float(output)
        return min(Int(Float((Double(dst) + 0.5) * Double(scale)).rounded(.down)), input - 1)
    }

    /// `vace_encode_masks`: mask [1, F, H, W] → [s*s, (F + 3) // t, H // s, W // s] (s = 8 spatial, t = 4 temporal
    /// stride): channel p*s + q holds the pixel at row offset p, column offset q of each s x s cell (view + permute),
    /// then 'nearest-exact' in time to the latent frame count; `referenceCount` zero frames in front.
    public static func encodeMasks(_ mask: Tensor, referenceCount: Int, spatialStride s: Int = 8, temporalStride t: Int = 4) -> Tensor {
        let (F, H, W) = (mask.shape[1], mask.shape[2], mask.shape[3])
        let depth = (F + 3) / t
        let (h, w) = (2 * (H / (s * 2)), 2 * (W / (s * 2)))
        precondition(h * s == H && w * s == W, "the mask's size must be a multiple of \(2 * s)")
        let T = referenceCount + depth
        let out = Tensor(zeros: [s * s, T, h, w])
        for d in 0..<depth {
            let f = nearestExact(d, input: F, output: depth)
            let src = mask.data + f * H * W
            for p in 0..<s { for q in 0..<s {
                let dst = out.data + ((p * s + q) * T + referenceCount + d) * h * w
                for i in 0..<h { for j in 0..<w { dst[i * w + j] = src[(i * s + p) * W + j * s + q] } }
            } }
        }
        return out
    }

    /// `vace_latent`: concat(z, m) on channels.
    public static func latent(frames z: Tensor, masks m: Tensor) -> Tensor { concatenate([z, m], axis: 0) }

    /// Concatenates tensors along `axis` (all other dimensions equal).
    static func concatenate(_ parts: [Tensor], axis: Int) -> Tensor {
        var shape = parts[0].shape
        shape[axis] = parts.reduce(0) { $0 + $1.shape[axis] }
        let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *)
        let out = Tensor(uninitialized: shape)
        var offset = 0
        for p in parts {
            precondition(p.rank == shape.count && (0..<shape.count).allSatisfy { $0 == axis || p.shape[$0] == shape[$0] }, "shapes \(p.shape) and \(shape) do not concatenate on axis \(axis)")
            let n = p.shape[axis] * inner
            for o in 0..<outer { (out.data + o * shape[axis] * inner + offset).update(from: p.data + o * n, count: n) }
            offset += n
        }
        return out
    }
}

/// What a caller may observe along a VACE generation (for tests and parity checks).
public enum VACEPipelineEvent {
    case prompts(ids: [Int], negativeIds: [Int], context: Tensor, negativeContext: Tensor)
    /// prepare_source's output (mask [1, F, H, W]), z0 = vace_encode_frames [2z, refs + T, h, w],
    /// m0 = vace_encode_masks [64, refs + T, h, w] and the vace context z = concat(z0, m0).
    case conditioning(video: Tensor, mask: Tensor, references: [Tensor], frames: Tensor, masks: Tensor, context: Tensor)
    /// The initial latent [z, refs + T, h, w].
    case noise(Tensor)
    case timesteps([Double])
    case latentAfterStep(Int, Tensor)
}

/// VACE (official `WanVace.generate`, wan/vace.py): reference images, masks for inpainting and outpainting, source
/// videos for extension and control. The conditioning (inactive / reactive VAE latents, references, the 8x8
/// unshuffled mask) becomes vace_context; the sampling loop with CFG runs the VACE DiT with `contextScale`
/// (vace_context_scale); the noise has the references' latent frames too, and they are dropped before decoding.
public final class VACEPipeline: DecodingPipeline, @unchecked Sendable {
    public typealias Event = VACEPipelineEvent
    public let text: TextConditioner
    /// The VACE DiT on its backend: `WanVACEDiT` (CPU) or `CUDAVACE` (GPU).
    public let dit: any VACEDenoiser
    /// The VAE on its backend: `WanVAE` (CPU) or `CUDAVAE` (GPU).
    public let vae: any VAECoding

    public init(text: TextConditioner, dit: any VACEDenoiser, vae: any VAECoding) throws {
        let c = dit.config.dit, z = vae.config.zDim, s = vae.config.spatialFactor
        guard c.textDim == text.encoderConfig.dim else {
            throw GenerationError.modelMismatch("the DiT takes text embeddings of width \(c.textDim) but the text encoder makes \(text.encoderConfig.dim)")
        }
        guard c.inDim == z, c.outDim == z else {
            throw GenerationError.modelMismatch("the DiT works on \(c.inDim)-channel latents, the VAE on \(z)")
        }
        guard dit.config.vaceInDim == 2 * z + s * s else {
            throw GenerationError.modelMismatch("the VACE branch takes \(dit.config.vaceInDim) channels; with this \(z)-channel VAE vace_context has \(2 * z + s * s) (inactive + reactive latents, \(s)x\(s) mask)")
        }
        guard vae.config.temporalFactor == 4 else {
            throw GenerationError.modelMismatch("the VAE compresses time by \(vae.config.temporalFactor); the mask encoding is built for 4")
        }
        self.text = text; self.dit = dit; self.vae = vae
    }

    /// Runs the sampling loop and returns the final latent [z, T, H/8, W/8] with the reference frames dropped (what
    /// `decode_latent` decodes). `contextScale` is vace_context_scale; `noise` [z, refs + T, H/8, W/8] replaces the
    /// seed's. The video and mask are used at the settings' size and frame count (see `RGBVideo.tensor(frames:height:width:)`).
    public func sample(prompt: String, inputs: VACEInputs, settings s: GenerationSettings, contextScale: Float = 1,
                       noise: Tensor? = nil, progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       observe: ((Event) -> Void)? = nil) throws -> Tensor {
        try s.validate()
        guard contextScale.isFinite else { throw GenerationError.invalidSettings("context scale must be a finite number") }
        if inputs.mask != nil && inputs.video == nil {
            throw GenerationError.invalidSettings("a mask needs the source video it applies to")
        }
        let (F, H, W) = (s.frames, s.height, s.width)
        let video = try inputs.video?.tensor(frames: F, height: H, width: W)
        let maskVideo = try inputs.mask?.tensor(frames: F, height: H, width: W)

        let (cond, uncond) = try PipelineCore.encodePrompts(text, prompt: prompt, negativePrompt: s.negativePrompt,
                                                            defaultNegative: GenerationTask.vace.defaultNegativePrompt, progress: progress)
        observe?(.prompts(ids: cond.ids, negativeIds: uncond.ids, context: cond.embedding, negativeContext: uncond.embedding))
        if isCancelled?() == true { throw GenerationError.cancelled }

        progress?(GenerationProgress(stage: .encodingVideo, step: 0, total: 1, secondsPerStep: 0, secondsLeft: 0))
        let started = DispatchTime.now().uptimeNanoseconds
        let source = VACEConditioning.prepareSource(video: video, mask: maskVideo, references: inputs.referenceImages.map(\.tensor),
                                                    frames: F, height: H, width: W)
        let z0 = try VACEConditioning.encodeFrames(video: source.video, mask: source.mask, references: source.references) { x in
            if isCancelled?() == true { throw GenerationError.cancelled }
            return try vae.encode(x)
        }
        let m0 = VACEConditioning.encodeMasks(source.mask, referenceCount: source.references.count,
                                              spatialStride: vae.config.spatialFactor, temporalStride: vae.config.temporalFactor)
        let z = VACEConditioning.latent(frames: z0, masks: m0)
        observe?(.conditioning(video: source.video, mask: source.mask, references: source.references, frames: z0, masks: m0, context: z))
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) * 1e-9
        progress?(GenerationProgress(stage: .encodingVideo, step: 1, total: 1, secondsPerStep: seconds, secondsLeft: 0))

        // target_shape = z0's shape with half its channels.
        let latents = try PipelineCore.startingNoise(noise, shape: [z0.shape[0] / 2] + Array(z0.shape[1...]), seed: s.seed, what: "the inputs")
        observe?(.noise(latents))

        let condContext = try dit.prepareConditioning(text: cond.embedding)
        let uncondContext = try dit.prepareConditioning(text: uncond.embedding)
        let x0 = try PipelineCore.denoise(noise: latents, solver: s.solver, steps: s.steps, shift: s.shift, guideScale: s.guideScale,
                                          progress: progress, isCancelled: isCancelled,
                                          onTimesteps: { observe?(.timesteps($0)) },
                                          afterStep: { observe?(.latentAfterStep($0, $1)) }) { x, t, conditional in
            try dit.velocity(x: x, t: t, conditioning: conditional ? condContext : uncondContext, vaceContext: z, scale: contextScale)
        }
        // decode_latent: z[:, len(refs):].
        let refs = source.references.count
        guard refs > 0 else { return x0 }
        let kept = x0.shape[1] - refs
        let parts = x0.shape[0], plane = x0.shape[2] * x0.shape[3]
        let out = Tensor(uninitialized: [parts, kept] + Array(x0.shape[2...]))
        for c in 0..<parts { (out.data + c * kept * plane).update(from: x0.data + (c * x0.shape[1] + refs) * plane, count: kept * plane) }
        return out
    }

    /// Hands the DiT's activations back before the decode (`DecodingPipeline`).
    public func releaseDenoiser() { dit.releaseActivations() }

    /// The whole job: the video [3, F, H, W] in [-1, 1].
    public func generate(prompt: String, inputs: VACEInputs, settings: GenerationSettings, contextScale: Float = 1,
                         progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil) throws -> Tensor {
        let latent = try sample(prompt: prompt, inputs: inputs, settings: settings, contextScale: contextScale,
                                progress: progress, isCancelled: isCancelled)
        return try decodeVideo(latent, progress: progress, isCancelled: isCancelled)
    }
}
