import Foundation
import WanTensor
import WanModels
import WanSampling
import WanText

/// An 8-bit RGB picture, as the official pipelines receive it (a PIL image converted to RGB).
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// Row-major bytes [height, width, 3] (what `np.array(pil_image.convert('RGB'))` holds).
    public let pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        guard width >= 0, height >= 0, pixels.count == width * height * 3 else {
            throw GenerationError.invalidSettings("an RGB image of \(width)x\(height) needs \(max(0, width * height * 3)) bytes, got \(pixels.count)")
        }
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// `TF.to_tensor(img).sub_(0.5).div_(0.5)`: [3, H, W] in [-1, 1] (float32 value / 255, then (v - 0.5) / 0.5).
    public var tensor: Tensor {
        let t = Tensor(uninitialized: [3, height, width])
        let plane = width * height
        pixels.withUnsafeBufferPointer { px in
            for c in 0..<3 {
                let dst = t.data + c * plane
                for p in 0..<plane {
                    let v = Float(px[p * 3 + c]) / 255
                    dst[p] = (v - 0.5) / 0.5
                }
            }
        }
        return t
    }
}

/// Settings of one image-to-video or first-last-frame-to-video generation, as `WanI2V.generate` /
/// `WanFLF2V.generate` take them. The video size follows from `maxArea` and the (first) image's aspect ratio.
public struct ImageGenerationSettings: Sendable, Equatable {
    /// Upper bound of width*height of the video (official `max_area`, e.g. 480*832 or 720*1280).
    public var maxArea = 720 * 1280
    /// 4n + 1 frames.
    public var frames = 81
    public var steps = 40
    public var shift = 5.0
    public var guideScale: Float = 5.0
    public var seed: UInt64 = 0
    public var solver: FlowSolverKind = .unipc
    /// Empty means the task's default negative prompt (i2v: `NegativePrompts.imageToVideo`, flf2v:
    /// `NegativePrompts.firstLastFrameToVideo`).
    public var negativePrompt = ""

    /// `WanI2V.generate`'s defaults (max_area 720*1280, 81 frames, 40 steps, shift 5, guide 5).
    public init() {}

    /// `WanFLF2V.generate`'s defaults: 50 steps, shift 16, guide 5.5.
    public static var firstLastFrame: ImageGenerationSettings {
        var s = ImageGenerationSettings()
        s.steps = 50; s.shift = 16; s.guideScale = 5.5
        return s
    }

    /// Checks what the models need, with messages that say what to change (`minimumFrames` is 5 for FLF2V).
    public func validate(minimumFrames: Int = 1) throws {
        try GenerationSettings.validateSampling(frames: frames, minimumFrames: minimumFrames, steps: steps, shift: shift, guideScale: guideScale)
        guard maxArea > 0 else { throw GenerationError.invalidSettings("max_area must be positive, got \(maxArea)") }
    }
}

extension NegativePrompts {
    /// wan/configs/wan_i2v_14B.py: "镜头晃动，" + the shared default.
    public static let imageToVideo = "镜头晃动，" + textToVideo
    /// wan/configs/__init__.py: flf2v_14B is a copy of i2v_14B with "镜头切换，" prepended to *its* negative prompt.
    public static let firstLastFrameToVideo = "镜头切换，" + imageToVideo
}

/// What a caller may observe along an image-conditioned generation (for tests and parity checks).
public enum ImagePipelineEvent {
    case prompts(ids: [Int], negativeIds: [Int], context: Tensor, negativeContext: Tensor)
    /// The image(s) as the official code holds them: [3, H, W] in [-1, 1] at their own size (FLF2V: first, then the
    /// last frame after its center crop). This is what CLIP receives.
    case images([Tensor])
    /// The CLIP features the DiT receives, [n images, 257, 1280] (given or computed).
    case clipFeatures(Tensor)
    /// The initial latent [16, T, lat_h, lat_w].
    case noise(Tensor)
    /// The VAE input [3, F, h, w] (bicubic-resized image(s), zero frames), its latent [16, T, lat_h, lat_w], the mask
    /// [4, T, lat_h, lat_w] and y = concat(mask, latent) [20, T, lat_h, lat_w].
    case conditioning(vaeInput: Tensor, latent: Tensor, mask: Tensor, y: Tensor)
    case timesteps([Double])
    case latentAfterStep(Int, Tensor)
}

/// The geometry and conditioning formulas of image2video.py / first_last_frame2video.py.
public enum ImageConditioning {
    /// Python's / numpy's float floor division (`x // y` on floats: fmod, then the correction of `float_floor_div`).
    static func floorDivide(_ vx: Double, _ wx: Double) -> Double {
        var mod = Foundation.fmod(vx, wx)
        var div = (vx - mod) / wx
        if mod != 0, (wx < 0) != (mod < 0) { mod += wx; div -= 1 }
        if div != 0 {
            var f = div.rounded(.down)
            if div - f > 0.5 { f += 1 }
            return f
        }
        return Foundation.copysign(0, vx / wx)
    }

    /// `lat_h = round(np.sqrt(max_area * aspect_ratio) // vae_stride // patch * patch)` (and lat_w with
    /// max_area / aspect_ratio), aspect_ratio = h / w of the image.
    public static func latentSize(imageHeight h: Int, imageWidth w: Int, maxArea: Int, vaeStride: Int = 8,
                                  patch: (height: Int, width: Int) = (2, 2)) -> (height: Int, width: Int) {
        let aspect = Double(h) / Double(w)
        let a = Double(maxArea)
        let lh = floorDivide(floorDivide(Foundation.sqrt(a * aspect), Double(vaeStride)), Double(patch.height)) * Double(patch.height)
        let lw = floorDivide(floorDivide(Foundation.sqrt(a / aspect), Double(vaeStride)), Double(patch.width)) * Double(patch.width)
        return (Int(lh.rounded(.toNearestOrEven)), Int(lw.rounded(.toNearestOrEven)))
    }

    /// The official mask [4, T, lat_h, lat_w]: per video frame 1 for the given image(s) (frame 0; and frame F-1 when
    /// `lastFrame`), 0 elsewhere; frame 0 repeated 4 times, the sequence viewed as [T, 4] and transposed. For FLF2V
    /// the official code builds it for 81 frames whatever `frame_num` is (and so works for 81 frames only); this
    /// builds it for `frames`, which is the same for 81.
    public static func mask(frames F: Int, latentHeight h: Int, latentWidth w: Int, lastFrame: Bool) -> Tensor {
        precondition(F >= 1 && (F - 1) % 4 == 0, "frames must be 4n+1")
        var sequence: [Float] = []
        for f in 0..<F {
            let v: Float = (f == 0 || (lastFrame && f == F - 1)) ? 1 : 0
            sequence.append(contentsOf: repeatElement(v, count: f == 0 ? 4 : 1))
        }
        let T = sequence.count / 4
        let m = Tensor(zeros: [4, T, h, w])
        let plane = h * w
        for c in 0..<4 {
            for t in 0..<T where sequence[4 * t + c] != 0 {
                let p = m.data + (c * T + t) * plane
                for i in 0..<plane { p[i] = 1 }
            }
        }
        return m
    }

    /// `TF.center_crop(img, size)` of torchvision on a tensor [C, H, W] with size read as (height, width): zero
    /// padding (split floor / ceil) where the crop is larger than the image, then the crop at
    /// round((H - h) / 2), round((W - w) / 2) (Python's round: half to even).
    public static func centerCrop(_ img: Tensor, height cropH: Int, width cropW: Int) -> Tensor {
        let C = img.shape[0]
        var (H, W) = (img.shape[1], img.shape[2])
        var src = img
        if cropW > W || cropH > H {
            let left = cropW > W ? (cropW - W) / 2 : 0, top = cropH > H ? (cropH - H) / 2 : 0
            let right = cropW > W ? (cropW - W + 1) / 2 : 0, bottom = cropH > H ? (cropH - H + 1) / 2 : 0
            let (PH, PW) = (H + top + bottom, W + left + right)
            let padded = Tensor(zeros: [C, PH, PW])
            for c in 0..<C {
                for y in 0..<H {
                    (padded.data + (c * PH + top + y) * PW + left).update(from: img.data + (c * H + y) * W, count: W)
                }
            }
            src = padded; H = PH; W = PW
            if cropW == W && cropH == H { return padded }
        }
        let top = Int((Double(H - cropH) / 2).rounded(.toNearestOrEven))
        let left = Int((Double(W - cropW) / 2).rounded(.toNearestOrEven))
        let out = Tensor(uninitialized: [C, cropH, cropW])
        for c in 0..<C {
            for y in 0..<cropH {
                (out.data + (c * cropH + y) * cropW).update(from: src.data + (c * H + top + y) * W + left, count: cropW)
            }
        }
        return out
    }

    /// The last frame as first_last_frame2video.py prepares it when the two pictures differ in size:
    /// ratio = max(W1/W2, H1/H2), size = [round(W2*ratio), round(H2*ratio)] from the PIL (width, height) sizes, then
    /// `TF.center_crop(last, size)`, which reads that list as (height, width). Nothing is resized here (the
    /// bicubic resize to the video size comes later), and the crop box is the official one, transposed as it is.
    public static func officialLastFrame(_ last: Tensor, firstHeight H1: Int, firstWidth W1: Int) -> Tensor {
        let (H2, W2) = (last.shape[1], last.shape[2])
        if H1 == H2 && W1 == W2 { return last }
        let ratio = max(Double(W1) / Double(W2), Double(H1) / Double(H2))
        let size0 = Int((Double(W2) * ratio).rounded(.toNearestOrEven))
        let size1 = Int((Double(H2) * ratio).rounded(.toNearestOrEven))
        return centerCrop(last, height: size0, width: size1)
    }

    /// `F.interpolate(img[None], size=(h, w), mode='bicubic')` of [3, H, W] (align_corners=False, no antialias): the
    /// same function CLIP's preprocessing uses.
    public static func resizeBicubic(_ img: Tensor, height h: Int, width w: Int) -> Tensor {
        let out = Tensor(uninitialized: [img.shape[0], h, w])
        CLIPVision.resizeBicubic(img.data, planes: img.shape[0], height: img.shape[1], width: img.shape[2],
                                 toHeight: h, width: w, into: out.data)
        return out
    }
}

/// The sampling of WanI2V / WanFLF2V.generate, shared by ImageToVideo and FirstLastFrameToVideo.
struct ImageConditionedSampler {
    let text: TextConditioner
    let dit: any DiTDenoiser
    let vae: any VAECoding
    let clip: (any CLIPImageEncoder)?
    let lastFrame: Bool
    let defaultNegative: String

    /// Checks the models fit together for `task` ("i2v" or "flf2v").
    static func check(text: TextConditioner, dit: any DiTDenoiser, vae: any VAECoding, clip: (any CLIPImageEncoder)?, task: String, name: String) throws {
        let c = dit.config
        guard c.modelType == task else {
            throw GenerationError.modelMismatch("this DiT's model_type is \(c.modelType); \(name) needs model_type \(task) (in_dim \(2 * vae.config.zDim + 4), with img_emb\(task == "flf2v" ? " and img_emb.emb_pos" : ""))")
        }
        guard c.textDim == text.encoderConfig.dim else {
            throw GenerationError.modelMismatch("the DiT takes text embeddings of width \(c.textDim) but the text encoder makes \(text.encoderConfig.dim)")
        }
        let z = vae.config.zDim
        guard c.inDim == 2 * z + 4, c.outDim == z else {
            throw GenerationError.modelMismatch("the DiT takes \(c.inDim) input channels and makes \(c.outDim); with this \(z)-channel VAE it needs \(2 * z + 4) (noise + mask + image latent) and \(z)")
        }
        guard vae.config.temporalFactor == 4 else {
            throw GenerationError.modelMismatch("the VAE compresses time by \(vae.config.temporalFactor); the image pipelines' mask is built for 4")
        }
        if let clip, clip.config.dim != WanDiTConfig.clipDim {
            throw GenerationError.modelMismatch("the CLIP vision tower makes \(clip.config.dim)-wide features; the DiT's image projection takes \(WanDiTConfig.clipDim)")
        }
    }

    func sample(prompt: String, images: [RGBImage], settings s: ImageGenerationSettings, clipFeatures: Tensor?, noise: Tensor?,
                progress: ((GenerationProgress) -> Void)?, isCancelled: (() -> Bool)?,
                observe: ((ImagePipelineEvent) -> Void)?) throws -> Tensor {
        try s.validate(minimumFrames: lastFrame ? 5 : 1)
        let stride = vae.config.spatialFactor
        let patch = (height: dit.config.patchSize[1], width: dit.config.patchSize[2])
        for (i, image) in images.enumerated() {
            guard image.width >= stride, image.height >= stride else {
                let which = images.count == 1 ? "the image" : (i == 0 ? "the first frame" : "the last frame")
                throw GenerationError.invalidSettings("\(which) is \(image.width)x\(image.height) pixels, smaller than one latent pixel (\(stride)x\(stride) pixels)")
            }
        }
        // img = TF.to_tensor(img).sub_(0.5).div_(0.5)
        var tensors = images.map(\.tensor)
        let (H0, W0) = (images[0].height, images[0].width)
        let lat = ImageConditioning.latentSize(imageHeight: H0, imageWidth: W0, maxArea: s.maxArea, vaeStride: stride, patch: patch)
        guard lat.height >= patch.height, lat.width >= patch.width else {
            throw GenerationError.invalidSettings("max_area \(s.maxArea) with a \(W0)x\(H0) image gives a latent of \(lat.width)x\(lat.height); it needs at least \(patch.width)x\(patch.height) (one DiT patch): raise max_area or use a less elongated image")
        }
        let (h, w) = (lat.height * stride, lat.width * stride)
        if lastFrame, tensors.count == 2 {
            tensors[1] = ImageConditioning.officialLastFrame(tensors[1], firstHeight: H0, firstWidth: W0)
        }
        observe?(.images(tensors))

        let F = s.frames
        let T = (F - 1) / 4 + 1
        let z = vae.config.zDim
        let latents = try PipelineCore.startingNoise(noise, shape: [z, T, lat.height, lat.width], seed: s.seed)
        observe?(.noise(latents))
        let mask = ImageConditioning.mask(frames: F, latentHeight: lat.height, latentWidth: lat.width, lastFrame: lastFrame)

        let (cond, uncond) = try PipelineCore.encodePrompts(text, prompt: prompt, negativePrompt: s.negativePrompt,
                                                            defaultNegative: defaultNegative, progress: progress)
        observe?(.prompts(ids: cond.ids, negativeIds: uncond.ids, context: cond.embedding, negativeContext: uncond.embedding))
        if isCancelled?() == true { throw GenerationError.cancelled }

        // clip_context = self.clip.visual([img[:, None, :, :]]) (FLF2V: first and last frame).
        let features: Tensor
        if let clipFeatures {
            guard clipFeatures.rank == 3, clipFeatures.shape[0] == images.count, clipFeatures.shape[2] == WanDiTConfig.clipDim else {
                throw GenerationError.invalidSettings("CLIP features must be [\(images.count), 257, \(WanDiTConfig.clipDim)] (one row block per image), got \(clipFeatures.shape)")
            }
            features = clipFeatures
        } else if let clip {
            features = try images.count == 1 ? clip.visual(tensors[0]) : clip.visual(tensors)
        } else {
            throw GenerationError.invalidSettings("neither a CLIP vision model nor precomputed CLIP features were given: the \(dit.config.modelType) DiT needs the image's CLIP features")
        }
        observe?(.clipFeatures(features))
        if isCancelled?() == true { throw GenerationError.cancelled }

        // y = vae.encode([concat(bicubic(img) → [3, 1, h, w], zeros(3, F - 1 (- 1), h, w)(, bicubic(last)))])
        let vaeInput = Tensor(zeros: [3, F, h, w])
        let frame = h * w
        for (i, img) in tensors.enumerated() {
            let resized = ImageConditioning.resizeBicubic(img, height: h, width: w)
            let f = i == 0 ? 0 : F - 1
            for c in 0..<3 { (vaeInput.data + (c * F + f) * frame).update(from: resized.data + c * frame, count: frame) }
        }
        let latent = try vae.encode(vaeInput)
        // y = torch.concat([msk, y])
        let y = Tensor(uninitialized: [4 + z, T, lat.height, lat.width])
        y.data.update(from: mask.data, count: mask.count)
        (y.data + mask.count).update(from: latent.data, count: latent.count)
        observe?(.conditioning(vaeInput: vaeInput, latent: latent, mask: mask, y: y))

        let condContext = try dit.prepareConditioning(text: cond.embedding, clipFeatures: features)
        let uncondContext = try dit.prepareConditioning(text: uncond.embedding, clipFeatures: features)
        return try PipelineCore.denoise(dit: dit, noise: latents, y: y, cond: condContext, uncond: uncondContext,
                                        solver: s.solver, steps: s.steps, shift: s.shift, guideScale: s.guideScale,
                                        progress: progress, isCancelled: isCancelled,
                                        onTimesteps: { observe?(.timesteps($0)) },
                                        afterStep: { observe?(.latentAfterStep($0, $1)) })
    }
}

/// Image-to-video (official `WanI2V.generate`, wan/image2video.py): the video size from max_area and the image's
/// aspect ratio, seed-for-seed PyTorch noise, the first-frame mask, y = concat(mask, VAE(bicubic image + zero frames)),
/// the image's CLIP features (from a CLIP vision model or given), the sampler with CFG around the i2v DiT, decode.
public final class ImageToVideo: DecodingPipeline, @unchecked Sendable {
    public typealias Event = ImagePipelineEvent
    public let text: TextConditioner
    public let dit: any DiTDenoiser
    /// The VAE on its backend: `WanVAE` (CPU) or `CUDAVAE` (GPU).
    public let vae: any VAECoding
    /// The CLIP vision tower; nil when the caller always passes precomputed CLIP features.
    /// The CLIP image tower on its backend: `CLIPVision` (CPU) or `CUDACLIP` (GPU).
    public let clip: (any CLIPImageEncoder)?

    public init(text: TextConditioner, dit: any DiTDenoiser, vae: any VAECoding, clip: (any CLIPImageEncoder)? = nil) throws {
        try ImageConditionedSampler.check(text: text, dit: dit, vae: vae, clip: clip, task: "i2v", name: "image-to-video")
        self.text = text; self.dit = dit; self.vae = vae; self.clip = clip
    }

    var sampler: ImageConditionedSampler {
        ImageConditionedSampler(text: text, dit: dit, vae: vae, clip: clip, lastFrame: false, defaultNegative: GenerationTask.imageToVideo.defaultNegativePrompt)
    }

    /// The video size (width, height) in pixels the official code makes of an image and max_area.
    public func videoSize(imageWidth: Int, imageHeight: Int, maxArea: Int) -> (width: Int, height: Int) {
        let s = vae.config.spatialFactor
        let lat = ImageConditioning.latentSize(imageHeight: imageHeight, imageWidth: imageWidth, maxArea: maxArea, vaeStride: s,
                                               patch: (dit.config.patchSize[1], dit.config.patchSize[2]))
        return (lat.width * s, lat.height * s)
    }

    /// Runs the sampling loop and returns the final latent [16, T, lat_h, lat_w]. `clipFeatures` [1, 257, 1280]
    /// replace the CLIP model's; `noise` replaces the seed's.
    public func sample(prompt: String, image: RGBImage, settings: ImageGenerationSettings, clipFeatures: Tensor? = nil,
                       noise: Tensor? = nil, progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       observe: ((Event) -> Void)? = nil) throws -> Tensor {
        try sampler.sample(prompt: prompt, images: [image], settings: settings, clipFeatures: clipFeatures, noise: noise,
                           progress: progress, isCancelled: isCancelled, observe: observe)
    }

    /// Hands the DiT's activations back before the decode (`DecodingPipeline`).
    public func releaseDenoiser() { dit.releaseActivations() }

    /// The whole job: the video [3, F, H, W] in [-1, 1].
    public func generate(prompt: String, image: RGBImage, settings: ImageGenerationSettings, clipFeatures: Tensor? = nil,
                         progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil) throws -> Tensor {
        let latent = try sample(prompt: prompt, image: image, settings: settings, clipFeatures: clipFeatures,
                                progress: progress, isCancelled: isCancelled)
        return try decodeVideo(latent, progress: progress, isCancelled: isCancelled)
    }
}

/// First-last-frame-to-video (official `WanFLF2V.generate`, wan/first_last_frame2video.py): as image-to-video, with
/// the last frame prepared as the official code does (center crop, see `ImageConditioning.officialLastFrame`), a
/// mask for the first and the last frame, y = concat(mask, VAE(first, zero frames, last)), the CLIP features of both
/// pictures [2, 257, 1280] and the flf2v DiT (img_emb.emb_pos).
public final class FirstLastFrameToVideo: DecodingPipeline, @unchecked Sendable {
    public typealias Event = ImagePipelineEvent
    public let text: TextConditioner
    public let dit: any DiTDenoiser
    /// The VAE on its backend: `WanVAE` (CPU) or `CUDAVAE` (GPU).
    public let vae: any VAECoding
    /// The CLIP image tower on its backend: `CLIPVision` (CPU) or `CUDACLIP` (GPU).
    public let clip: (any CLIPImageEncoder)?

    public init(text: TextConditioner, dit: any DiTDenoiser, vae: any VAECoding, clip: (any CLIPImageEncoder)? = nil) throws {
        try ImageConditionedSampler.check(text: text, dit: dit, vae: vae, clip: clip, task: "flf2v", name: "first-last-frame-to-video")
        self.text = text; self.dit = dit; self.vae = vae; self.clip = clip
    }

    var sampler: ImageConditionedSampler {
        ImageConditionedSampler(text: text, dit: dit, vae: vae, clip: clip, lastFrame: true, defaultNegative: GenerationTask.firstLastFrame.defaultNegativePrompt)
    }

    /// Runs the sampling loop and returns the final latent. `clipFeatures` [2, 257, 1280] (first, last) replace the
    /// CLIP model's. Use `ImageGenerationSettings.firstLastFrame` for the official defaults.
    public func sample(prompt: String, firstFrame: RGBImage, lastFrame: RGBImage, settings: ImageGenerationSettings,
                       clipFeatures: Tensor? = nil, noise: Tensor? = nil, progress: ((GenerationProgress) -> Void)? = nil,
                       isCancelled: (() -> Bool)? = nil, observe: ((Event) -> Void)? = nil) throws -> Tensor {
        try sampler.sample(prompt: prompt, images: [firstFrame, lastFrame], settings: settings, clipFeatures: clipFeatures,
                           noise: noise, progress: progress, isCancelled: isCancelled, observe: observe)
    }

    /// Hands the DiT's activations back before the decode (`DecodingPipeline`).
    public func releaseDenoiser() { dit.releaseActivations() }

    /// The whole job: the video [3, F, H, W] in [-1, 1].
    public func generate(prompt: String, firstFrame: RGBImage, lastFrame: RGBImage, settings: ImageGenerationSettings,
                         clipFeatures: Tensor? = nil, progress: ((GenerationProgress) -> Void)? = nil,
                         isCancelled: (() -> Bool)? = nil) throws -> Tensor {
        let latent = try sample(prompt: prompt, firstFrame: firstFrame, lastFrame: lastFrame, settings: settings,
                                clipFeatures: clipFeatures, progress: progress, isCancelled: isCancelled)
        return try decodeVideo(latent, progress: progress, isCancelled: isCancelled)
    }
}
