import WanTensor

/// A prepared conditioning (text, and CLIP image tokens for i2v/flf2v) of one `DiTDenoiser`, reused across the steps
/// of a sampling loop. Only the model that prepared it can use it.
public protocol DiTConditioning: AnyObject {}

/// What the pipelines and the conformance runner need from a Wan DiT (t2v, i2v, flf2v), whichever backend runs it:
/// `WanDiT` on the CPU, `CUDADiT` on an NVIDIA GPU. Inputs and outputs are host tensors in the official layouts.
public protocol DiTDenoiser: AnyObject {
    var config: WanDiTConfig { get }
    /// Where the model runs, for logs: "cpu", "cuda:0 NVIDIA H100 (bf16)".
    var backendDescription: String { get }
    /// Embeds the text (padded to text_len as the official code does) and, for image models, the CLIP features.
    func prepareConditioning(text: Tensor, clipFeatures: Tensor?) throws -> DiTConditioning
    /// One forward pass: x [C, F, H, W] (y beside it for i2v/flf2v) at timestep t -> the velocity [out, F, H, W].
    func velocity(x: Tensor, y: Tensor?, t: Float, conditioning: DiTConditioning) throws -> Tensor
    /// One forward pass from a golden-case input; `trace` receives the official modules' intermediates.
    func forward(_ input: DiTInput, trace: ((String, Tensor) -> Void)?) throws -> Tensor
    /// Hands back the memory of the forward's activations (the weights stay): the pipelines call it when sampling is
    /// done, before the VAE decode needs the room.
    func releaseActivations()
}

extension DiTDenoiser {
    public func releaseActivations() {}
}
