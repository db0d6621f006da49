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
    /// for VACE-1.3B, every fifth for VACE-14B); a config that says otherwise overrides it.
    public init(inferringFrom source: WeightSource) throws {
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
        } else {
            throw WeightError.badConfig(source: source.label, detail: "\(count) vace blocks for \(d.numLayers) layers: give vace_layers in the config")
        }
        self.init(dit: d, vaceLayers: layers, vaceInDim: pe[1])
    }
}

/// The Wan2.1 VACE diffusion transformer (official `VaceWanModel`): a t2v `WanDiT` plus vace blocks that turn the
/// patch-embedded vace_context into hints added to the residual stream after the main blocks listed in vace_layers.
/// As in `WanDiT`, each video runs on its real tokens only: in the official model the padded tokens of x and of the
/// vace context are masked as keys in every self-attention and every other step is per row, so they cannot reach a
/// real row.
public final class WanVACEDiT: @unchecked Sendable {
    public let config: WanVACEConfig
    /// The main model (bound from every key outside vace_*).
    public let main: WanDiT
    /// The vace blocks as the blocks of a second `WanDiT` (its embeddings and head are the main model's tensors).
    let vace: WanDiT
    let vacePatchWeight, vacePatchBias: Tensor  // [dim, vace_in_dim*pt*ph*pw], [dim]
    let beforeProj: [Linear?]
    let afterProj: [Linear]
    /// Main block index -> hint index (official vace_layers_mapping).
    let hintOfBlock: [Int: Int]

    /// Binds the model by the official names. Strict: every key of the source must be used by the main model or the
    /// vace branch, with the expected shape.
    public init(config c: WanVACEConfig, weights source: WeightSource) throws {
        let d = c.dit.dim, n = c.vaceLayers.count
        let (mainConfig, vaceConfig) = try Self.branchConfigs(c, label: source.label)
        config = c
        // Shared tensors (embeddings, head) are read once and given to both models.
        let (mainView, vaceView, vaceMap) = Self.branchWeights(source)

        let b = WeightBinder(source)
        let patchVolume = c.dit.patchSize.reduce(1, *)
        vacePatchWeight = try b.tensor("vace_patch_embedding.weight", [d, c.vaceInDim] + c.dit.patchSize).reshaped([d, c.vaceInDim * patchVolume])
        vacePatchBias = try b.tensor("vace_patch_embedding.bias", [d])
        beforeProj = try (0..<n).map { k in c.vaceLayers[k] == 0 ? try Linear(b, "vace_blocks.\(k).before_proj", in: d, out: d) : nil }
        afterProj = try (0..<n).map { k in try Linear(b, "vace_blocks.\(k).after_proj", in: d, out: d) }
        main = try WanDiT(config: mainConfig, weights: mainView)
        do {
            vace = try WanDiT(config: vaceConfig, weights: vaceView)
        } catch let e as WeightError {
            throw Self.renamed(e, map: vaceMap)
        }
        for name in mainView.names { b.ignore(name) }
        for name in vaceMap.values { b.ignore(name) }
        try b.finish()
        var mapping: [Int: Int] = [:]
        for (k, layer) in c.vaceLayers.enumerated() { mapping[layer] = k }
        hintOfBlock = mapping
    }

    /// Loads a VACE DiT, inferring the configuration from its shapes; `arguments` (the official constructor
    /// arguments) override what was inferred.
    public convenience init(weights source: WeightSource, arguments: [String: Any]? = nil) throws {
        var config = try WanVACEConfig(inferringFrom: source)
        if let arguments { config.apply(officialArguments: arguments) }
        try self.init(config: config, weights: source)
    }

    /// The configurations of the two models a VACE DiT runs (after checking `c`): the main model (model_type "vace")
    /// and the vace branch (a t2v model whose blocks are the vace blocks and whose input is vace_context).
    public static func branchConfigs(_ c: WanVACEConfig, label: String) throws -> (main: WanDiTConfig, vace: WanDiTConfig) {
        guard c.vaceLayers.contains(0) else { throw WeightError.badConfig(source: label, detail: "vace_layers \(c.vaceLayers) must contain 0") }
        guard c.vaceLayers.allSatisfy({ (0..<c.dit.numLayers).contains($0) }) else {
            throw WeightError.badConfig(source: label, detail: "vace_layers \(c.vaceLayers) must lie in 0..<\(c.dit.numLayers)")
        }
        guard c.dit.patchSize.count == 3 else { throw WeightError.badConfig(source: label, detail: "patch_size must have 3 entries") }
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

    /// The text conditioning of the main and the vace blocks (see `WanDiT.prepare`): reuse it for every step.
    public func prepare(context: Tensor) throws -> VACEContext {
        VACEContext(model: self, main: try main.prepare(context: context), vace: try vace.prepare(context: context))
    }

    // MARK: forward

    /// One video: `x` [16, F, H, W], `vaceContext` [vace_in_dim, F, H, W] (official `vace_latent`: inactive +
    /// reactive latents and the 64 mask channels), `context` [L, text_dim]; `scale` is vace_context_scale.
    public func forward(x: Tensor, t: Float, context: Tensor, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        try forward(x: x, t: t, context: try prepare(context: context), vaceContext: vaceContext, scale: scale, trace: trace)
    }

    /// One video with a prepared context. Hints are made when first needed (vace block n runs just before main block
    /// vace_layers[n] needs it), so at most the hints not yet added are held.
    public func forward(x: Tensor, t: Float, context prepared: VACEContext, vaceContext: Tensor, scale: Float = 1,
                        trace: ((String, Tensor) -> Void)? = nil) throws -> Tensor {
        guard prepared.model === self else { throw DiTInputError(description: "the context was prepared by another model") }
        let c = config.dit, d = c.dim
        guard vaceContext.rank == 4, vaceContext.shape[0] == config.vaceInDim else {
            throw DiTInputError(description: "vace_context must be [\(config.vaceInDim), F, H, W], got \(vaceContext.shape)")
        }
        guard x.rank == 4, Array(vaceContext.shape[1...]) == Array(x.shape[1...]) else {
            throw DiTInputError(description: "vace_context \(vaceContext.shape) must match x \(x.shape) in F, H, W")
        }
        let layers = config.vaceLayers
        let lastBeforeProj = layers.lastIndex(of: 0) ?? -1
        let needed = Set(hintOfBlock.values)
        var x0: Tensor? = nil      // the patch tokens of x, for before_proj
        var cTokens: Tensor? = nil // the vace stream c
        var done = 0
        var hints: [Int: Tensor] = [:]
        let vaceTrace = trace.map { t in { (name: String, v: Tensor) in t("vace_" + name, v) } }
        let hook: WanDiT.BlockHook = { [self] stage, xs, s in
            let grid = s.grid, xt = xs.storage
            let L = xt.shape[0]
            if stage < 0 {
                let copy = Tensor(uninitialized: [L, d])
                copy.data.update(from: xt.data, count: L * d)
                x0 = copy
                cTokens = patchEmbed(vaceContext, grid: grid, tokens: L)
                vaceTrace?("patch_tokens", cTokens!)
                return
            }
            guard let n = hintOfBlock[stage] else { return }
            while done <= n {
                let k = done
                var cur = cTokens!
                if let bp = beforeProj[k] {
                    let next = bp(cur)
                    let base = x0!
                    for i in 0..<(L * d) { next.data[i] += base.data[i] }
                    cur = next
                    cTokens = next
                }
                try vace.runBlock(k, x: try vace.backend.upload(cur, rows: L, cols: d), scratch: s, context: prepared.vace, trace: vaceTrace)
                if needed.contains(k) {
                    let hint = afterProj[k](cur)
                    vaceTrace?("hint\(k)", hint)
                    hints[k] = hint
                }
                done += 1
                if k >= lastBeforeProj { x0 = nil }
            }
            let h = hints.removeValue(forKey: n)!
            for i in 0..<(L * d) { xt.data[i] += h.data[i] * scale }
        }
        return try main.forward(x: x, y: nil, t: t, context: prepared.main, trace: trace, hook: hook)
    }

    /// vace_patch_embedding (a Conv3d with stride = kernel = patch size) as tokens [L, dim].
    func patchEmbed(_ v: Tensor, grid: (f: Int, h: Int, w: Int), tokens L: Int) -> Tensor {
        let c = config.dit, d = c.dim
        let patchLen = v.shape[0] * c.patchSize.reduce(1, *)
        let patches = WanDiT.patchRows(v, patchSize: c.patchSize, grid: grid)
        let out = Tensor(uninitialized: [L, d])
        GEMM.shared.linear(m: L, k: patchLen, n: d, src: patches.data, weight: vacePatchWeight.data, bias: vacePatchBias.data, dst: out.data)
        return out
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

extension VACEContext: DiTConditioning {}

extension WanVACEDiT: VACEDenoiser {
    public var backendDescription: String { "cpu" }

    public func prepareConditioning(text: Tensor) throws -> DiTConditioning { try prepare(context: text) }

    public func velocity(x: Tensor, t: Float, conditioning: DiTConditioning, vaceContext: Tensor, scale: Float) throws -> Tensor {
        guard let prepared = conditioning as? VACEContext else {
            throw DiTInputError(description: "the conditioning was prepared by another backend's model")
        }
        return try forward(x: x, t: t, context: prepared, vaceContext: vaceContext, scale: scale)
    }
}

/// A prepared conditioning of a `WanVACEDiT` (text keys and values of the main and the vace blocks).
public final class VACEContext: @unchecked Sendable {
    let model: WanVACEDiT
    public let main: DiTContext
    let vace: DiTContext
    init(model: WanVACEDiT, main: DiTContext, vace: DiTContext) { self.model = model; self.main = main; self.vace = vace }
}

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
