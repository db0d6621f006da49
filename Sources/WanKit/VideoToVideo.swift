import Foundation
import WanTensor
import WanModels
import WanSampling

/// Video-to-video, WanKit's own (the official Wan2.1 code has no such task; this is the SDEdit form diffusion users
/// know): the source video is VAE-encoded, noised to the schedule's sigma at the start step that `strength` picks,
/// and denoised over the remaining steps by the text-to-video sampler with the same t2v model, solver and CFG.
///
/// - strength in (0, 1]: start step k = round(steps * (1 - strength)) (half to even), which must leave a step
///   (k < steps).
/// - k = 0 (strength 1) is text-to-video: the sampler starts from the pure seeded noise, as the official t2v code
///   does (its first sigma after the shift is 0.9998, not 1, and it does not mix anything in).
/// - k > 0: x = (1 - sigma_k) * latent + sigma_k * noise (flow matching's straight path) with sigma_k the solver's
///   own sigma table after the shift, then steps k..<steps; a multistep solver starts there at first order.
public final class VideoToVideo: @unchecked Sendable {
    public let textToVideo: TextToVideo
    public var vae: any VAECoding { textToVideo.vae }

    public init(text: TextConditioner, dit: any DiTDenoiser, vae: any VAECoding) throws {
        textToVideo = try TextToVideo(text: text, dit: dit, vae: vae)
    }

    /// The step sampling starts at for `strength` with `steps` steps.
    public static func startStep(strength: Double, steps: Int) throws -> Int {
        guard strength > 0, strength <= 1 else {
            throw GenerationError.invalidSettings("strength must be in (0, 1] (1 = pure noise, as text-to-video), got \(strength)")
        }
        let k = Int((Double(steps) * (1 - strength)).rounded(.toNearestOrEven))
        guard k < steps else {
            throw GenerationError.invalidSettings("strength \(strength) with \(steps) steps leaves no step to run: raise the strength or the steps")
        }
        return k
    }

    /// Runs the sampling from the noised source latent; returns the final latent [16, T, H/8, W/8]. The source is used
    /// at the settings' size and frame count (see `RGBVideo.tensor(frames:height:width:)`). `noise` replaces the
    /// seed's.
    public func sample(prompt: String, video: RGBVideo, strength: Double, settings s: GenerationSettings, noise: Tensor? = nil,
                       progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       observe: ((TextToVideo.Event) -> Void)? = nil) throws -> Tensor {
        try s.validate()
        let k = try Self.startStep(strength: strength, steps: s.steps)
        let shape = s.latentShape
        var start = try PipelineCore.startingNoise(noise, shape: shape, seed: s.seed)
        if k > 0 {
            let source = try video.tensor(frames: s.frames, height: s.height, width: s.width)
            progress?(GenerationProgress(stage: .encodingVideo, step: 0, total: 1, secondsPerStep: 0, secondsLeft: 0))
            let began = DispatchTime.now().uptimeNanoseconds
            let latent = try vae.encode(source)
            progress?(GenerationProgress(stage: .encodingVideo, step: 1, total: 1,
                                         secondsPerStep: Double(DispatchTime.now().uptimeNanoseconds - began) * 1e-9, secondsLeft: 0))
            let sigma = FlowSchedule.make(s.solver, steps: s.steps, shift: s.shift).sigmas[k]
            let mixed = Tensor(uninitialized: shape)
            for i in 0..<mixed.count { mixed.data[i] = (1 - sigma) * latent.data[i] + sigma * start.data[i] }
            start = mixed
        }
        if isCancelled?() == true { throw GenerationError.cancelled }
        return try textToVideo.denoise(prompt: prompt, settings: s, from: start, startStep: k, progress: progress,
                                       isCancelled: isCancelled, observe: observe)
    }

    /// Decodes a latent, streaming chunks of frames ([3, n, H, W] in [-1, 1], index of the first frame).
    public func decode(_ latent: Tensor, progress: ((GenerationProgress) -> Void)? = nil, isCancelled: (() -> Bool)? = nil,
                       onFrames: (Tensor, Int) throws -> Void) throws {
        try textToVideo.decode(latent, progress: progress, isCancelled: isCancelled, onFrames: onFrames)
    }
}
