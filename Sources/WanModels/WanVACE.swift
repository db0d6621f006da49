import Foundation
import WanTensor
import WanWeights

/// Constructor arguments of the official `VaceWanModel` (wan/modules/vace_model.py): the `WanModel` ones plus
/// `vace_layers` (main blocks that receive a hint, in hint order) and `vace_in_dim` (channels of vace_context).
public struct WanVACEConfig: Sendable, Equatable, CustomStringConvertible {
    /// The main model (model_type "vace").
    public var dit: WanDiTConfig
    /// Main block of each vace block: vace block n makes hint n, added after main block vaceLayers[n].
    public var vaceLayers: [Int]
    public var vaceInDim: Int

    public init(dit: WanDiTConfig, vaceLayers: [Int]? = nil, vaceInDim: Int? = nil) {
        self.dit = dit
        self.vaceLayers = vaceLayers ?? Array(stride(from: 0, to: dit.numLayers, by: 2))
        self.vaceInDim = vaceInDim ?? dit.inDim
    }

    /// Wan2.1-VACE-1.3B.
    public static let vace1_3B: WanVACEConfig = {
        var d = WanDiTConfig.t2v1_3B; d.modelType = "vace"
        return WanVACEConfig(dit: d, vaceLayers: Array(stride(from: 0, to: 30, by: 2)), vaceInDim: 96)
    }()
    /// Wan2.1-VACE-14B.
    public static let vace14B: WanVACEConfig = {
        var d = WanDiTConfig.t2v14B; d.modelType = "vace"
        return WanVACEConfig(dit: d, vaceLayers: Array(stride(from: 0, to: 40, by: 5)), vaceInDim: 96)
    }()

    public var description: String { "\(dit), vace layers \(vaceLayers), vace in \(vaceInDim)" }

    /// The vace branch's buffers in one forward pass of `tokens` tokens, beside the main model's `DiTForwardLayout`
    /// (all f32): the main patch tokens x0 (before_proj's residual, held until the last before_proj), the vace stream
    /// c, vace_context's patches, the hint's gate (vace_context_scale per channel) and the current hint (hints are
    /// made when their main block needs them, so one is held). What `VACETransformer.forward` allocates and the
    /// memory pre-flights count.
    public func streamLayout(tokens L: Int) -> [DiTForwardLayout.Region] {
        let d = dit.dim
        return [DiTForwardLayout.Region(name: "x0", rows: L, cols: d, type: .f32),
                DiTForwardLayout.Region(name: "c", rows: L, cols: d, type: .f32),
                DiTForwardLayout.Region(name: "patches", rows: L, cols: vaceInDim * dit.patchSize.reduce(1, *), type: .f32),
                DiTForwardLayout.Region(name: "gate", rows: 1, cols: d, type: .f32),
                DiTForwardLayout.Region(name: "hint", rows: L, cols: d, type: .f32)]
    }

    /// Applies the official constructor arguments (snake_case keys); a null vace_layers / vace_in_dim takes the
    /// official default (every second layer / in_dim).
    public mutating func apply(officialArguments a: [String: Any]) {
        dit.apply(officialArguments: a)
        if let v = a["vace_layers"] as? [Any] { vaceLayers = v.compactMap { ($0 as? NSNumber)?.intValue } }
        else if a["vace_layers"] is NSNull { vaceLayers = Array(stride(from: 0, to: dit.numLayers, by: 2)) }
        if let v = (a["vace_in_dim"] as? NSNumber)?.intValue { vaceInDim = v }
        else if a["vace_in_dim"] is NSNull { vaceInDim = dit.inDim }
    }

    /// Infers the configuration from tensor shapes: the main model as `WanDiTConfig` does, vace_in_dim from
    /// vace_patch_embedding, and vace_layers evenly spaced from 0 with the count of vace_blocks (every second layer
    /// for VACE-1.3B, every fifth for VACE-14B); `arguments` (the official constructor arguments) override what was
    /// inferred, and must give vace_layers where the count of vace blocks does not settle them.
    public init(inferringFrom source: WeightSource, arguments: [String: Any]? = nil) throws {
        var d = try WanDiTConfig(inferringFrom: WanVACEDiT.mainWeights(source))
        d.modelType = "vace"
        guard let pe = source.info("vace_patch_embedding.weight")?.shape, pe.count == 5 else {
            throw WeightError.badConfig(source: source.label, detail: "no vace_patch_embedding.weight [dim, vace_in_dim, 1, 2, 2]: not a VACE DiT file")
        }
        let count = Set(source.names.compactMap(WanVACEDiT.vaceBlockIndex)).count
        guard count > 0 else { throw WeightError.badConfig(source: source.label, detail: "no vace_blocks.N.* tensors: not a VACE DiT file") }
        let layers: [Int]
        if d.numLayers % count == 0 {
            layers = Array(stride(from: 0, to: d.numLayers, by: d.numLayers / count))
        } else if (d.numLayers + 1) / 2 == count {
            layers = Array(stride(from: 0, to: d.numLayers, by: 2))
        } else if arguments?["vace_layers"] is [Any] {
            layers = []  // given by the arguments, applied below
        } else {
            throw WeightError.badConfig(source: source.label, detail: "\(count) vace blocks for \(d.numLayers) layers: give vace_layers in the config")
        }
        self.init(dit: d, vaceLayers: layers, vaceInDim: pe[1])
        if let arguments { apply(officialArguments: arguments) }
    }
}

/// The Wan2.1 VACE diffusion transformer (official `VaceWanModel`), written once against `ComputeBackend`
/// (`WanVACEDiT` on the CPU, `CUDAVACE` on a GPU): a t2v DiT plus vace blocks that turn the patch-embedded
/// vace_context into hints added to the residual stream after the main blocks listed in vace_layers. The vace blocks
/// are the blocks of a second `DiffusionTransformer` on the same backend (its patch embedding is
/// vace_patch_embedding; its text and time embeddings and head are the main model's). As in the DiT, each video runs
/// on its real tokens only: in the official model the padded tokens of x and of the vace context are masked as keys
/// in every self-attention and every other step is per row, so they cannot reach a real row.
public final class VACETransformer<B: ComputeBackend>: VACEDenoiser, @unchecked Sendable {
    public let config: WanVACEConfig
    /// The main model (bound from every key outside vace_*).
    public let main: DiffusionTransformer<B>
    /// The vace blocks as the blocks of a second DiT (its embeddings and head are the main model's).
    let vace: DiffusionTransformer<B>
    /// before_proj of the vace blocks that have one (vace_layers 0), after_proj of all: activation type in, f32 out.
    let beforeProj: [B.Matrix?]
    let afterProj: [B.Matrix]
    /// Main block index -> hint index (official vace_layers_mapping).
    let hintOfBlock: [Int: Int]

    public var backend: B { main.backend }

    /// Binds the model by the official names onto `backend`. Strict: every key of the source must be used by the
    /// main model or the vace branch, with the expected shape.
    public init(config c: WanVACEConfig, weights source: WeightSource, backend: B) throws {
        let d = c.dit.dim, n = c.vaceLayers.count
        let (mainConfig, vaceConfig) = try Self.branchConfigs(c, label: source.label)
        config = c
        let (mainView, vaceView, vaceMap) = Self.branchWeights(source)
        // The small tensors first, so a malformed file fails before anything large is bound or uploaded.
        let b = WeightBinder(source)
        _ = try b.tensor("vace_patch_embedding.weight", [d, c.vaceInDim] + c.dit.patchSize)  // bound by the vace branch
        _ = try b.tensor("vace_patch_embedding.bias", [d])
        let before = try (0..<n).map { k in c.vaceLayers[k] == 0 ? try Linear(b, "vace_blocks.\(k).before_proj", in: d, out: d) : nil }
        let after = try (0..<n).map { k in try Linear(b, "vace_blocks.\(k).after_proj", in: d, out: d) }
        main = try DiffusionTransformer(config: mainConfig, weights: mainView, backend: backend)
        do {
            vace = try DiffusionTransformer(config: vaceConfig, weights: vaceView, backend: backend, sharing: main)
        } catch let e as WeightError {
            throw Self.renamed(e, map: vaceMap)
        }
        for name in mainView.names { b.ignore(name) }
        for name in vaceMap.values { b.ignore(name) }
        try b.finish()
        beforeProj = try before.map { l in try l.map { try backend.matrix($0, kind: .activationToFloat32) } }
        afterProj = try after.map { try backend.matrix($0, kind: .activationToFloat32) }
        try backend.weightsLoaded()
        var mapping: [Int: Int] = [:]
        for (k, layer) in c.vaceLayers.enumerated() { mapping[layer] = k }
        hintOfBlock = mapping
    }

    /// The configurations of the two models a VACE DiT runs (after checking `c`): the main model (model_type "vace")
    /// and the vace branch (a t2v model whose blocks are the vace blocks and whose input is vace_context).
    public static func branchConfigs(_ c: WanVACEConfig, label: String) throws -> (main: WanDiTConfig, vace: WanDiTConfig) {
        try c.dit.validate(source: label)
        guard (1...WanDiTConfig.maxWidth).contains(c.vaceInDim) else {
            throw WeightError.badConfig(source: label, detail: "vace_in_dim \(c.vaceInDim) is not an integer from 1 to \(WanDiTConfig.maxWidth)")
        }
        guard c.vaceLayers.contains(0) else { throw WeightError.badConfig(source: label, detail: "vace_layers \(c.vaceLayers) must contain 0") }
        guard c.vaceLayers.allSatisfy({ (0..<c.dit.numLayers).contains($0) }) else {
            throw WeightError.badConfig(source: label, detail: "vace_layers \(c.vaceLayers) must lie in 0..<\(c.dit.numLayers)")
        }
        guard !c.dit.hasImageInput else { throw WeightError.badConfig(source: label, detail: "VACE models are text-to-video (model_type 'vace')") }
        var mainConfig = c.dit
        if mainConfig.modelType == "t2v" { mainConfig.modelType = "vace" }
        var vaceConfig = c.dit
        vaceConfig.modelType = "t2v"; vaceConfig.numLayers = c.vaceLayers.count; vaceConfig.inDim = c.vaceInDim
        return (mainConfig, vaceConfig)
    }

    /// The two views of a VACE checkpoint that bind as `WanDiT`s (both backends bind them): `main`, every key
    /// outside vace_* under its own name; `vace`, the vace branch (vace_blocks.N.* as blocks.N.* without before_proj
    /// and after_proj, vace_patch_embedding.* as patch_embedding.*, and the main model's text and time embeddings and
    /// head, read once for both views); `vaceNames`, the vace view's name -> the file's name (for `renamed`).
    /// vace_patch_embedding, before_proj and after_proj are bound from `source` itself.
    public static func branchWeights(_ source: WeightSource) -> (main: WeightSource, vace: WeightSource, vaceNames: [String: String]) {
        let cache = SharedTensors(source)
        let mainView = RenamedSource(source, label: source.label, cache: cache,
                                     map: Dictionary(uniqueKeysWithValues: source.names.filter { !$0.hasPrefix("vace_") }.map { ($0, $0) }))
        var vaceMap: [String: String] = [:]
        for name in source.names {
            if let i = Self.vaceBlockIndex(name) {
                let rest = String(name.dropFirst("vace_blocks.\(i).".count))
                if rest.hasPrefix("before_proj.") || rest.hasPrefix("after_proj.") { continue }
                vaceMap["blocks.\(i).\(rest)"] = name
            } else if name.hasPrefix("vace_patch_embedding.") {
                vaceMap[String(name.dropFirst("vace_".count))] = name
            } else if SharedTensors.isShared(name) {
                vaceMap[name] = name
            }
        }
        let vaceView = RenamedSource(source, label: source.label + " (vace branch)", cache: cache, map: vaceMap)
        return (mainView, vaceView, vaceMap)
    }

    /// The main model's tensors of a VACE checkpoint (every key outside vace_*): what a plain `WanDiT` binds.
    public static func mainWeights(_ source: WeightSource) -> WeightSource {
        RenamedSource(source, label: source.label, cache: nil,
                      map: Dictionary(uniqueKeysWithValues: source.names.filter { !$0.hasPrefix("vace_") }.map { ($0, $0) }))
    }

    static func vaceBlockIndex(_ name: String) -> Int? {
        guard name.hasPrefix("vace_blocks.") else { return nil }
        return Int(name.dropFirst("vace_blocks.".count).prefix { $0 != "." })
    }

    /// A binding error of the vace branch (`branchWeights(_:).vace`), with the file's names.
    public static func renamed(_ e: WeightError, map: [String: String]) -> WeightError {
        func name(_ k: String) -> String {
            if let m = map[k] { return m }
            if k.hasPrefix("blocks.") || k.hasPrefix("patch_embedding.") { return "vace_" + k }
            return k
        }
        switch e {
        case .missingKey(let s, let k, let shape): return .missingKey(source: s, key: name(k), expectedShape: shape)
        case .unexpectedKeys(let s, let keys): return .unexpectedKeys(source: s, keys: keys.map(name))
        case .shapeMismatch(let s, let k, let x, let f): return .shapeMismatch(source: s, key: name(k), expected: x, found: f)
        case .unsupportedDType(let s, let k, let t): return .unsupportedDType(source: s, key: name(k), dtype: t)
        default: return e
        }
    }

    // MARK: context

    /// The text conditioning of the main and the vace blocks (see `DiffusionTransformer.prepare`): reuse it for
    /// every step.
    public func prepare(context: Tensor) throws -> VACEPreparedConditioning<B> {
        VACEPreparedConditioning(model: self, main: try main.prepare(context: context), vace: try vace.prepare(context: context))
    }

    // MARK: forward

    /// One video: `x` [16, F, H, W], `vaceContext` [vace_in_dim, F, H, W] (official `vace_latent`: inactive +
    /// reactive latents and the 64 mask channels), `context` [L, text_dim]; `scale` is vace_context_scale. Traces the
    /// main model's names, the vace branch's prefixed vace_ and the hints as vace_hintN.
    public func forward(x: Tensor, t: Float, context: Tensor, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: x, t: t, context: try prepare(context: context), vaceContext: vaceContext, scale: scale, trace: trace)
    }

    /// One video with a prepared context. Hints are made when first needed (vace block n runs just before main block
    /// vace_layers[n] needs it), so at most the hints not yet added are held.
    public func forward(x: Tensor, t: Float, context prepared: VACEPreparedConditioning<B>, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let c = config.dit, d = c.dim, be = backend
        guard vaceContext.rank == 4, vaceContext.shape[0] == config.vaceInDim else {
            throw DiTInputError(description: "vace_context must be [\(config.vaceInDim), F, H, W], got \(vaceContext.shape)")
        }
        guard x.rank == 4, Array(vaceContext.shape[1...]) == Array(x.shape[1...]) else {
            throw DiTInputError(description: "vace_context \(vaceContext.shape) must match x \(x.shape) in F, H, W")
        }
        let lastBeforeProj = config.vaceLayers.lastIndex(of: 0) ?? -1
        let needed = Set(hintOfBlock.values)
        var x0: BackendTensor<B>? = nil      // the patch tokens of x, for before_proj
        var cTokens: BackendTensor<B>? = nil // the vace stream c (f32)
        var gate: BackendTensor<B>? = nil    // vace_context_scale per channel: the gate of the hint's residual add
        var done = 0
        var hints: [Int: BackendTensor<B>] = [:]
        let vaceTrace = trace.map { t in { (name: String, v: Tensor) in t("vace_" + name, v) } }
        func snapshot(_ t: BackendTensor<B>) throws -> Tensor { let h = try be.download(t); return h.reshaped(h.shape) }
        let hook: DiTBlockHook<B> = { [self] stage, xs, s in
            let L = s.tokens
            let layout = Dictionary(uniqueKeysWithValues: config.streamLayout(tokens: L).map { ($0.name, $0) })
            func buffer(_ name: String) throws -> BackendTensor<B> {
                let r = layout[name]!
                return try be.tensor(rows: r.rows, cols: r.cols, type: r.type)
            }
            // c as the input of a product in the activation type, in the scratch's normed rows (free between blocks).
            func cInput() throws -> BackendTensor<B> { try be.convert(cTokens!, into: s.normed); return s.normed }
            if stage < 0 {
                let copy = try buffer("x0")
                try be.convert(xs, into: copy)
                x0 = copy
                let patchRows = WanDiT.patchRows(vaceContext, patchSize: c.patchSize, grid: s.grid)
                let patches = try be.upload(patchRows, rows: L, cols: layout["patches"]!.cols)
                let tokens = try buffer("c")
                try be.linear(vace.outer.patchEmbedding, patches, into: tokens, activation: .none)
                cTokens = tokens
                if let vaceTrace { vaceTrace("patch_tokens", try snapshot(tokens)) }
                gate = try be.upload(Tensor(shape: [1, d], values: [Float](repeating: scale, count: d)), rows: 1, cols: layout["gate"]!.cols)
                return
            }
            guard let n = hintOfBlock[stage] else { return }
            while done <= n {
                let k = done
                if let bp = beforeProj[k] {
                    // c = before_proj(c) + x0
                    try be.linear(bp, try cInput(), into: cTokens!, activation: .none)
                    try be.addResidual(cTokens!, x0!)
                }
                try vace.runBlock(k, x: cTokens!, scratch: s, context: prepared.vace, trace: vaceTrace)
                if needed.contains(k) {
                    let hint = try buffer("hint")
                    try be.linear(afterProj[k], try cInput(), into: hint, activation: .none)
                    if let vaceTrace { vaceTrace("hint\(k)", try snapshot(hint)) }
                    hints[k] = hint
                }
                done += 1
                if k >= lastBeforeProj { x0 = nil }
            }
            try be.addResidual(xs, hints.removeValue(forKey: n)!, gate: gate)
        }
        return try main.forward(x: x, y: nil, t: t, context: prepared.main, trace: trace, hook: hook)
    }

    // MARK: VACEDenoiser

    public var backendDescription: String { backend.description }

    public func prepareConditioning(text: Tensor) throws -> DiTConditioning { try prepare(context: text) }

    public func velocity(x: Tensor, t: Float, conditioning: DiTConditioning, vaceContext: Tensor, scale: Float) throws -> Tensor {
        guard let prepared = conditioning as? VACEPreparedConditioning<B> else {
            throw DiTInputError(description: "the conditioning was prepared by another backend's model")
        }
        return try forward(x: x, t: t, context: prepared, vaceContext: vaceContext, scale: scale)
    }

    /// The forward passes' buffers and the backend's free pooled memory go back (the weights stay).
    public func releaseActivations() { backend.releaseActivations() }
}

/// The VACE DiT on the CPU.
public typealias WanVACEDiT = VACETransformer<CPUBackend>

extension VACETransformer where B == CPUBackend {
    /// Binds the model by the official names. Strict: every key of the source must be used by the main model or the
    /// vace branch, with the expected shape.
    public convenience init(config c: WanVACEConfig, weights source: WeightSource, products: ProductType = .f32) throws {
        try self.init(config: c, weights: source, backend: CPUBackend(products: products))
    }

    /// Loads a VACE DiT, inferring the configuration from its shapes; `arguments` (the official constructor
    /// arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil, products: ProductType = .f32) throws {
        try self.init(config: WanVACEConfig(inferringFrom: source, arguments: arguments), weights: source, products: products)
    }
}

/// What the VACE pipeline and the conformance runner need from a VACE DiT, whichever backend runs it: `WanVACEDiT`
/// on the CPU, `CUDAVACE` on an NVIDIA GPU (as `DiTDenoiser` is for the other DiTs). Host tensors in the official
/// layouts.
public protocol VACEDenoiser: AnyObject {
    var config: WanVACEConfig { get }
    /// Where the model runs, for logs: "cpu", "cuda:0 NVIDIA H100 (bf16)".
    var backendDescription: String { get }
    /// Embeds the text for the main and the vace blocks (reuse it for every step).
    func prepareConditioning(text: Tensor) throws -> DiTConditioning
    /// One forward pass: x [16, F, H, W] with vace_context [vace_in_dim, F, H, W] at timestep t -> the velocity.
    func velocity(x: Tensor, t: Float, conditioning: DiTConditioning, vaceContext: Tensor, scale: Float) throws -> Tensor
    /// One forward pass from a golden-case input; `trace` receives the official modules' intermediates (the vace
    /// branch's prefixed vace_, the hints as vace_hintN).
    func forward(x: Tensor, t: Float, context: Tensor, vaceContext: Tensor, scale: Float,
                 trace: ((String, Tensor) -> Void)?) throws -> Tensor
    /// Hands back the memory of the forward's activations (the weights stay) before the VAE decode needs the room.
    func releaseActivations()
}

extension VACEDenoiser {
    public func releaseActivations() {}
}

/// A prepared conditioning of a VACE DiT (the text keys and values of the main and the vace blocks).
public final class VACEPreparedConditioning<B: ComputeBackend>: DiTConditioning, @unchecked Sendable {
    let model: AnyObject
    public let main: PreparedDiTConditioning<B>
    let vace: PreparedDiTConditioning<B>
    init(model: AnyObject, main: PreparedDiTConditioning<B>, vace: PreparedDiTConditioning<B>) { self.model = model; self.main = main; self.vace = vace }
}

/// A prepared conditioning of a `WanVACEDiT`.
public typealias VACEContext = VACEPreparedConditioning<CPUBackend>

/// Tensors read once for both models of a VACE checkpoint (the embeddings and head that the vace branch's `WanDiT`
/// binds too), so they are not converted twice.
private final class SharedTensors: @unchecked Sendable {
    let base: WeightSource
    var f32: [String: Tensor] = [:]
    var stored: [String: StoredTensor] = [:]
    let lock = NSLock()
    init(_ base: WeightSource) { self.base = base }
    static let prefixes = ["text_embedding.", "time_embedding.", "time_projection.", "head."]
    static func isShared(_ name: String) -> Bool { prefixes.contains { name.hasPrefix($0) } }
    func float32(_ name: String) throws -> Tensor {
        guard Self.isShared(name) else { return try base.float32(name) }
        lock.lock(); defer { lock.unlock() }
        if let t = f32[name] { return t }
        let t = try base.float32(name); f32[name] = t; return t
    }
    func storedTensor(_ name: String) throws -> StoredTensor {
        guard Self.isShared(name) else { return try base.stored(name) }
        lock.lock(); defer { lock.unlock() }
        if let t = stored[name] { return t }
        let t = try base.stored(name); stored[name] = t; return t
    }
}

/// A view of a source under other names (view name -> source name).
private final class RenamedSource: WeightSource, @unchecked Sendable {
    let base: WeightSource
    let label: String
    let map: [String: String]
    let cache: SharedTensors?
    init(_ base: WeightSource, label: String, cache: SharedTensors?, map: [String: String]) {
        self.base = base; self.label = label; self.cache = cache; self.map = map
    }
    var names: [String] { Array(map.keys) }
    func info(_ name: String) -> TensorInfo? {
        guard let b = map[name], var i = base.info(b) else { return nil }
        i.name = name
        return i
    }
    func float32(_ name: String) throws -> Tensor {
        guard let b = map[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return try cache?.float32(b) ?? base.float32(b)
    }
    func stored(_ name: String) throws -> StoredTensor {
        guard let b = map[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return try cache?.storedTensor(b) ?? base.stored(b)
    }
}
