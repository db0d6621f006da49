import Foundation
import WanTensor
import WanModels
import WanWeights

/// `--precision` of the CUDA backend: bf16 (weights and the activations fed to matrix products and attention in
/// bf16, accumulation, norms, modulation, the residual stream, the time embedding and the head in f32: as the
/// official code computes under bf16 autocast) or f32 (everything in f32, TF32 off: the golden tolerances).
public enum CUDAPrecision: String, Sendable, CaseIterable {
    case f32, bf16
    /// The type of activations that feed products and attention.
    public var activation: DeviceDType { self == .f32 ? .f32 : .bf16 }
}

/// The device memory one forward pass of the DiT uses, planned on the host: one allocation holding every region of
/// the model's `DiTForwardLayout` (the residual stream, the block's activations reused by every block, the FFN
/// hidden layer for a chunk of rows, the patch and head buffers, e0 and the modulation), plus, for i2v/flf2v, the
/// text attention's output the GPU's accumulating attention takes from the pool (counted so the pre-flight sees it).
public struct CUDADiTPlan: Equatable {
    public let layout: DiTForwardLayout
    public let precision: CUDAPrecision
    public let workspace: WorkspacePlan
    public var tokens: Int { layout.tokens }
    /// FFN rows per chunk: all tokens when the hidden layer fits `ffnBudgetBytes`, else a multiple of 256.
    public var ffnChunkRows: Int { layout.ffnChunkRows }

    /// Bytes of the largest e4m3 copy of a product's input that fp8 products quantise (`CUDAComputeBackend.fp8Products`,
    /// from the pool while the product runs): rows x in-features of the q/k/v/o and ffn.0 inputs ([L, dim]), ffn.2's
    /// chunk ([ffnChunkRows, ffn_dim]) and the text embedding's ([text_len, text_dim]).
    public func fp8InputBytes(_ c: WanDiTConfig) -> Int {
        max(tokens * c.dim, ffnChunkRows * c.ffnDim, c.textLen * c.textDim)
    }

    /// Bytes the FFN hidden layer of one chunk may take.
    public static let ffnBudgetBytes = 512 << 20

    public static func ffnChunkRows(tokens: Int, ffnDim: Int, elementSize: Int, budget: Int = ffnBudgetBytes) -> Int {
        let perRow = max(1, ffnDim * elementSize)
        if tokens * perRow <= budget { return max(tokens, 1) }
        return max(256, budget / perRow / 256 * 256)
    }

    public init(config c: WanDiTConfig, tokens L: Int, patchLength: Int, precision: CUDAPrecision) {
        self.precision = precision
        let act = precision.activation
        layout = DiTForwardLayout(config: c, tokens: L, patchLength: patchLength, activation: act,
                                  ffnChunkRows: Self.ffnChunkRows(tokens: L, ffnDim: c.ffnDim, elementSize: act.size))
        var w = WorkspacePlan()
        for r in layout.regions { w.add(r.name, bytes: r.bytes) }
        if c.hasImageInput { w.add("attn", bytes: act.size * L * c.dim) }
        // The time embedding's vectors, the head's modulation and the rope grid are small pool buffers (the reserve).
        workspace = w
    }

    /// Device bytes of the weights as uploaded (as `CUDADiT` uploads them): products and their biases in the
    /// activation type except the patch embedding, time embedding, time projection and head (f32, as the official
    /// code runs them under autocast) and the image projection's last bias (an f32 output); norms and modulations f32.
    /// Every matrix counted as dequantised on the host (see `weightBytes(_:precision:weights:)` for checkpoints whose
    /// matrices stay compact on the GPU).
    public static func weightBytes(_ c: WanDiTConfig, precision: CUDAPrecision) -> Int {
        weightBytes(c, precision: precision, compactBytes: { _ in nil })
    }

    /// Device bytes of the weights of checkpoint `weights` as `CUDADiT` uploads them: under bf16, matrices stored as
    /// fp8 or in the ggml blocks of `CompactWeightFormat` count their stored bytes, plus the bf16 scratch matrix
    /// (the largest of them) they are expanded into before each product; everything else as
    /// `weightBytes(_:precision:)`. Reads the headers only (nothing is dequantised).
    public static func weightBytes(_ c: WanDiTConfig, precision: CUDAPrecision, weights source: WeightSource) -> Int {
        weightBytes(c, precision: precision, compactBytes: compactBytes(in: source))
    }

    /// The stored bytes of each matrix of `source` that stays compact on the GPU under bf16 (fp8, ggml blocks), nil
    /// for the others: the `compactBytes` of the weight estimates. Only fp8 and ggml blocks (reported as u8) are
    /// opened (headers only).
    static func compactBytes(in source: WeightSource?) -> (String) -> Int? {
        { name in
            guard let source, let info = source.info(name), [.f8e4m3, .f8e5m2, .u8].contains(info.dtype),
                  let stored = try? source.stored(name), CompactWeightFormat.of(stored, weightType: .bf16) != nil else { return nil }
            return stored.byteCount
        }
    }

    /// Device bytes of the weights when `compactBytes(name)` gives the device bytes of each bf16-product matrix
    /// (`….weight`) that stays compact on the GPU (nil: dequantised on the host to bf16): those bytes, the other
    /// tensors as `weightBytes(_:precision:)`, and the bf16 scratch matrix of the largest compact one.
    public static func weightBytes(_ c: WanDiTConfig, precision: CUDAPrecision, compactBytes: (String) -> Int?) -> Int {
        let bytes = weightBytesAndScratch(c, precision: precision, compactBytes: compactBytes)
        return bytes.uploaded + bytes.scratch
    }

    /// The bf16 scratch matrix compact weights are expanded into (part of `weightBytes(_:precision:compactBytes:)`).
    public static func dequantScratchBytes(_ c: WanDiTConfig, precision: CUDAPrecision, compactBytes: (String) -> Int?) -> Int {
        weightBytesAndScratch(c, precision: precision, compactBytes: compactBytes).scratch
    }

    static func weightBytesAndScratch(_ c: WanDiTConfig, precision: CUDAPrecision, compactBytes: (String) -> Int?) -> (uploaded: Int, scratch: Int) {
        var total = 0, largestCompact = 0
        let shapes = c.parameterShapes()
        // The products: every `….weight` of two or more dimensions (the modulations are named without a suffix).
        let products = Set(shapes.compactMap { $0.name.hasSuffix(".weight") && $0.shape.count >= 2 ? String($0.name.dropLast(7)) : nil })
        for (name, shape) in shapes {
            let count = shape.reduce(1, *)
            if name == "img_emb.emb_pos" { continue }  // added on the host
            guard let dot = name.lastIndex(of: "."), products.contains(String(name[..<dot])) else {
                total += 4 * count  // norms, LayerNorm biases, modulations: f32
                continue
            }
            let types = c.matrixKind(String(name[..<dot])).types(activation: precision.activation)
            if name.hasSuffix(".bias") {
                total += count * types.output.size
            } else if types.weight == .bf16, let compact = compactBytes(name) {
                total += compact
                largestCompact = max(largestCompact, count)
            } else {
                total += count * types.weight.size
            }
        }
        return (total, 2 * largestCompact)
    }

    /// Device bytes of one prepared conditioning (`WanDiTConfig.conditioningBytes`): the text embedded at text_len
    /// rows and every block's text keys and values, plus the image tokens with theirs for i2v/flf2v.
    public static func contextBytes(_ c: WanDiTConfig, precision: CUDAPrecision, imageRows: Int = 0) -> Int {
        c.conditioningBytes(textKeys: c.textKeys(textRows: c.textLen, collapsed: false), imageRows: imageRows, activation: precision.activation)
    }
}
