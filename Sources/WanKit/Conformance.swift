import Foundation
import WanTensor
import WanWeights
import WanModels
import WanText

/// One golden case (format: ../shared/golden/README.md): a JSON file plus the safetensors holding its tensors.
public struct GoldenCase {
    public struct Tolerance { public var relL2: Double; public var maxAbs: Double }
    public let name: String
    public let component: String
    public let model: String?
    public let config: [String: Any]
    /// The case's inputs and outputs as in the JSON (a tensor is {"tensor": key, "shape", "dtype"}; anything else is
    /// a plain JSON value).
    public let inputs: [String: Any]
    public let outputs: [String: Any]
    public let outputNames: [String]
    private let tolerance: Tolerance
    private let tolerances: [String: Tolerance]
    /// The case's tensors (cases/<name>.safetensors), by key.
    public let tensors: SafetensorsSource

    public init(jsonPath: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: jsonPath))
        guard let d = try JSONText.object(with: data) as? [String: Any] else {
            throw DiTInputError(description: "\(jsonPath) is not a JSON object")
        }
        name = d["name"] as? String ?? URL(fileURLWithPath: jsonPath).deletingPathExtension().lastPathComponent
        component = d["component"] as? String ?? "?"
        model = d["model"] as? String
        config = d["config"] as? [String: Any] ?? [:]
        inputs = d["inputs"] as? [String: Any] ?? [:]
        outputs = d["outputs"] as? [String: Any] ?? [:]
        outputNames = outputs.keys.sorted()
        func tol(_ v: Any?) -> Tolerance? {
            guard let t = v as? [String: Any] else { return nil }
            return Tolerance(relL2: (t["rel_l2"] as? NSNumber)?.doubleValue ?? 0, maxAbs: (t["max_abs"] as? NSNumber)?.doubleValue ?? 0)
        }
        tolerance = tol(d["tolerance"]) ?? Tolerance(relL2: 0, maxAbs: 0)
        var per: [String: Tolerance] = [:]
        for (k, v) in d["tolerances"] as? [String: Any] ?? [:] { per[k] = tol(v) }
        tolerances = per
        tensors = try SafetensorsSource(path: String(jsonPath.dropLast(5)) + ".safetensors")
    }

    public func hasInput(_ name: String) -> Bool { inputs[name] != nil }
    public func int(_ name: String) -> Int? { (inputs[name] as? NSNumber)?.intValue }
    public func double(_ name: String) -> Double? { (inputs[name] as? NSNumber)?.doubleValue }

    private func tensor(_ spec: Any?, _ what: String) throws -> Tensor {
        guard let s = spec as? [String: Any], let key = s["tensor"] as? String else {
            throw DiTInputError(description: "case \(name): \(what) is not a tensor")
        }
        let t = try tensors.float32(key)
        if let shape = s["shape"] as? [Int], shape != t.shape { return t.reshaped(shape) }
        return t
    }
    public func input(_ name: String) throws -> Tensor { try tensor(inputs[name], "input \(name)") }
    public func expected(_ name: String) throws -> Tensor { try tensor(outputs[name], "output \(name)") }
    public func tolerance(for output: String) -> Tolerance { tolerances[output] ?? tolerance }
}

/// The result of one case.
public enum CaseResult: CustomStringConvertible {
    case pass(String, String)
    case fail(String, String)
    case skip(String, String)
    public var description: String {
        switch self {
        case .pass(let n, let d): return "PASS \(n) \(d)"
        case .fail(let n, let d): return "FAIL \(n) \(d)"
        case .skip(let n, let r): return "SKIP \(n): \(r)"
        }
    }
    public var isFailure: Bool { if case .fail = self { return true } else { return false } }
}

/// Runs golden cases against the engine. Components plug in through `run(_:)`'s dispatch; a case whose component
/// is not implemented is skipped with the reason.
public final class ConformanceRunner {
    public let root: String
    private var dits: [String: WanDiT] = [:]
    var vaes: [String: WanVAE] = [:]
    var t5Encoders: [String: UMT5TextEncoder] = [:]
    var clipEncoders: [String: CLIPImageEncoder] = [:]
    var vaceDiTs: [String: VACEDenoiser] = [:]
    private var factoryDiTs: [String: DiTDenoiser] = [:]
    var factoryVAEs: [String: VAECoding] = [:]

    /// Another backend for the DiT cases: made from the configuration and weights the CPU path binds (nil: the CPU
    /// `WanDiT`). With it set, cases of other components are skipped (they run on the CPU only).
    public var ditFactory: ((WanDiTConfig, WeightSource) throws -> DiTDenoiser)?
    /// Another backend for the VAE cases (component `vae` and the `weights` cases of VAE models), made from the
    /// configuration and weights the CPU path binds (nil: the CPU `WanVAE`). Cases no backend factory covers are
    /// skipped while a factory is set.
    public var vaeFactory: ((WanVAEConfig, WeightSource) throws -> VAECoding)?
    /// Another backend for the umT5 cases (component `t5`, the `weights` cases of umT5 models, and the text encoder of
    /// the pipeline cases), made from the configuration and weights the CPU path binds (nil: the CPU `UMT5Encoder`).
    public var t5Factory: ((UMT5Config, WeightSource) throws -> UMT5TextEncoder)?
    /// Another backend for the CLIP cases (component `clip`, the `weights` cases of CLIP towers, the image pipelines'
    /// tower), made from the configuration and weights the CPU path binds (nil: the CPU `CLIPVision`).
    public var clipFactory: ((CLIPVisionConfig, WeightSource) throws -> CLIPImageEncoder)?
    /// Another backend for the VACE DiT cases (class `VaceWanModel`), made from the configuration and weights the CPU
    /// path binds (nil: the CPU `WanVACEDiT`; skipped while only `ditFactory` is set).
    public var vaceFactory: ((WanVACEConfig, WeightSource) throws -> VACEDenoiser)?
    /// The product type of the CPU's DiT, VACE, umT5 and CLIP (`CPUBackend.products`; bf16 with `relL2Override`).
    public var cpuProducts: ProductType = .f32
    /// The backend's name in skip messages ("cuda").
    public var backendName = "cpu"
    /// When set, every output passes at this rel_l2 whatever the case file says, max_abs unchecked (the bf16 GPU
    /// path, which the f32 golden tolerances do not cover).
    public var relL2Override: Double?

    public init(goldenDirectory: String) { root = goldenDirectory }

    public var casesDirectory: String { (root as NSString).appendingPathComponent("cases") }
    public var weightsDirectory: String { (root as NSString).appendingPathComponent("weights") }

    /// Every case JSON in the folder, sorted by name.
    public func caseNames() throws -> [String] {
        let files = try FileManager.default.contentsOfDirectory(atPath: casesDirectory)
        return files.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    public func run(filter: String? = nil, report: (CaseResult) -> Void) throws -> (passed: Int, failed: Int, skipped: Int) {
        var counts = (passed: 0, failed: 0, skipped: 0)
        for name in try caseNames() where filter.map({ name.contains($0) }) ?? true {
            let result = run(caseNamed: name)
            switch result {
            case .pass: counts.passed += 1
            case .fail: counts.failed += 1
            case .skip: counts.skipped += 1
            }
            report(result)
        }
        return counts
    }

    public func run(caseNamed name: String) -> CaseResult {
        let path = (casesDirectory as NSString).appendingPathComponent(name + ".json")
        do {
            let c = try GoldenCase(jsonPath: path)
            if ditFactory != nil || vaeFactory != nil || t5Factory != nil || clipFactory != nil {
                let modelClass = c.component == "weights" ? try c.model.map(modelJSON)?["class"] as? String : nil
                // Pipelines run their DiT on the backend, the other parts on the CPU.
                let isDiT = c.component == "dit" || c.component == "pipeline"
                    || (Self.ditClasses.union(Self.vaceClasses)).contains(modelClass ?? "")
                let isVAE = c.component == "vae" || ["WanVAE_", "AutoencoderKLWan"].contains(modelClass ?? "")
                let isT5 = c.component == "t5" || ["T5Encoder", "UMT5EncoderModel"].contains(modelClass ?? "")
                let isCLIP = c.component == "clip" || ["VisionTransformer", "CLIPVisionModel"].contains(modelClass ?? "")
                if !(isDiT && ditFactory != nil) && !(isVAE && vaeFactory != nil) && !(isT5 && t5Factory != nil)
                    && !(isCLIP && clipFactory != nil) {
                    if ["tokenizer", "rng", "scheduler"].contains(c.component) {
                        return .skip(c.name, "component '\(c.component)' is host work, the same whatever the device (it runs with --device cpu)")
                    }
                    return .skip(c.name, "component '\(c.component)' is not on the \(backendName) backend yet (it runs with --device cpu)")
                }
            }
            switch c.component {
            case "dit":
                return try runDiT(c)
            case "weights":
                switch try c.model.map(modelJSON)?["class"] as? String {
                case "WanVAE_", "AutoencoderKLWan": return try runVAE(c)
                case "T5Encoder", "UMT5EncoderModel": return try runT5(c)
                case "VisionTransformer", "CLIPVisionModel": return try runCLIP(c)
                default: return try runDiT(c)
                }
            case "vae":
                return try runVAE(c)
            case "pipeline":
                return try runPipeline(c)
            case "scheduler":
                return try runScheduler(c)
            case "rng":
                return try runRNG(c)
            case "tokenizer":
                return try runTokenizer(c)
            case "t5":
                return try runT5(c)
            case "clip":
                return try runCLIP(c)
            default:
                return .skip(c.name, "component '\(c.component)' is not implemented yet")
            }
        } catch {
            return .fail(name, "error: \(error)")
        }
    }

    // MARK: models

    func modelJSON(_ model: String) throws -> [String: Any] {
        let path = (weightsDirectory as NSString).appendingPathComponent(model + ".json")
        guard FileManager.default.fileExists(atPath: path) else {
            throw DiTInputError(description: "the case names model '\(model)', but \(path) does not exist (each model a case names needs weights/<model>.json beside its files)")
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let object = try? JSONText.object(with: data), let json = object as? [String: Any] else {
            throw DiTInputError(description: "\(path) is not a JSON object")
        }
        return json
    }

    /// Model classes of the DiT cases: the official one and diffusers' (the VACE DiT apart: `vaceClasses`).
    static let ditClasses: Set<String> = ["WanModel", DiffusersWan.className]
    static let vaceClasses: Set<String> = ["VaceWanModel", DiffusersWan.vaceClassName]

    /// Layouts the DiT loader understands today (every layout `openDiTWeights` detects).
    static let supportedDiTLayouts: Set<String> = DiTWeights.layouts

    /// The DiT weights of `model` and its official arguments, or nil for a class not in `classes` or a layout the DiT
    /// loader does not take. The model JSON's config (official arguments) overrides what the files state, which
    /// overrides inference.
    func ditWeights(_ model: String, classes: Set<String> = ditClasses) throws
        -> (source: WeightSource, arguments: [String: Any])? {
        let json = try modelJSON(model)
        let layout = json["layout"] as? String ?? "official"
        guard let cls = json["class"] as? String, classes.contains(cls), Self.supportedDiTLayouts.contains(layout) else { return nil }
        let files = (json["files"] as? [String]) ?? [model + ".safetensors"]
        let weights = try openDiTWeights(paths: files.map { (weightsDirectory as NSString).appendingPathComponent($0) })
        var arguments = weights.arguments ?? [:]
        for (k, v) in json["config"] as? [String: Any] ?? [:] { arguments[k] = v }
        return (weights.source, arguments)
    }

    func dit(_ model: String) throws -> WanDiT? {
        if let m = dits[model] { return m }
        guard let weights = try ditWeights(model) else { return nil }
        let dit = try WanDiT(weights: weights.source, arguments: weights.arguments, products: cpuProducts)
        dits[model] = dit
        return dit
    }

    /// The DiT of `model` made by `ditFactory` (the same configuration and weights as `dit(_:)` binds), cached.
    func factoryDiT(_ model: String, _ factory: (WanDiTConfig, WeightSource) throws -> DiTDenoiser) throws -> DiTDenoiser? {
        if let m = factoryDiTs[model] { return m }
        guard let weights = try ditWeights(model) else { return nil }
        var config = try WanDiTConfig(inferringFrom: weights.source)
        config.apply(officialArguments: weights.arguments)
        let dit = try factory(config, weights.source)  // the model's init validates the configuration
        factoryDiTs[model] = dit
        return dit
    }

    /// The DiT of `model` on the runner's backend (`ditFactory`'s, else the CPU `WanDiT`).
    func denoiser(_ model: String) throws -> DiTDenoiser? {
        if let factory = ditFactory { return try factoryDiT(model, factory) }
        return try dit(model)
    }

    // MARK: dit

    func runDiT(_ c: GoldenCase) throws -> CaseResult {
        guard let model = c.model else { return .skip(c.name, "case names no model") }
        if Self.vaceClasses.contains(try modelJSON(model)["class"] as? String ?? "") {
            if ditFactory != nil && vaceFactory == nil { return .skip(c.name, "the VACE DiT is not on the \(backendName) backend yet") }
            return try runVACE(c, model: model)
        }
        guard let dit = try denoiser(model) else {
            let json = try modelJSON(model)
            return .skip(c.name, "\(json["class"] ?? "?") with layout '\(json["layout"] ?? "?")' is not implemented yet")
        }
        // Inputs as lists: x or x0, x1, …
        let batched = c.hasInput("x0")
        let count = batched ? (0..<64).prefix { c.hasInput("x\($0)") }.count : 1
        func item(_ base: String, _ i: Int) throws -> Tensor? {
            let key = batched ? base + "\(i)" : base
            if c.hasInput(key) { return try c.input(key) }
            return nil
        }
        let t = try c.input("t")
        var clipRows: [Tensor] = []
        if c.hasInput("clip_fea") {
            let clip = try c.input("clip_fea")
            let per = clip.shape[0] / count
            let rowElems = clip.count / clip.shape[0]
            for i in 0..<count {
                let part = Tensor(uninitialized: [per] + Array(clip.shape.dropFirst()))
                part.data.update(from: clip.data + i * per * rowElems, count: per * rowElems)
                clipRows.append(part)
            }
        }
        if let seqLen = c.int("seq_len") {
            // The official call asserts that every video fits in seq_len.
            for i in 0..<count {
                let x = try item("x", i)!
                let tokens = (x.shape[1] / dit.config.patchSize[0]) * (x.shape[2] / dit.config.patchSize[1]) * (x.shape[3] / dit.config.patchSize[2])
                if tokens > seqLen { return .fail(c.name, "video \(i) has \(tokens) tokens, more than seq_len \(seqLen)") }
            }
        }
        var got: [String: Tensor] = [:]
        for i in 0..<count {
            let input = DiTInput(x: try item("x", i)!, t: t.data[t.count == count ? i : 0],
                                 context: try item("context", i)!, y: try item("y", i),
                                 clipFeatures: clipRows.isEmpty ? nil : clipRows[i])
            let wanted = Set(c.outputNames)
            let out = try dit.forward(input, trace: i == 0 ? { name, tensor in if wanted.contains(name) { got[name] = tensor } } : nil)
            if batched { got["y\(i)"] = out } else { got["y"] = out; got["out"] = out }
        }
        return compare(c, got)
    }

    /// Compares every output of the case with `got` at the case's tolerances (integer outputs compare exactly as
    /// their float32 values, exact below 2^24).
    public func compare(_ c: GoldenCase, _ got: [String: Tensor]) -> CaseResult {
        var worst: (name: String, cmp: Comparison, ratio: Double)? = nil
        var failures: [String] = []
        for name in c.outputNames {
            guard let g = got[name] else { failures.append("\(name): not produced"); continue }
            guard let e = try? c.expected(name) else { failures.append("\(name): expected tensor unreadable"); continue }
            guard g.count == e.count else { failures.append("\(name): shape \(g.shape) vs expected \(e.shape)"); continue }
            let cmp = Comparison(got: UnsafeBufferPointer(g.buffer), expected: UnsafeBufferPointer(e.buffer))
            let tol = relL2Override.map { GoldenCase.Tolerance(relL2: $0, maxAbs: .infinity) } ?? c.tolerance(for: name)
            let ratio = max(cmp.relL2 / max(tol.relL2, 1e-30), cmp.maxAbs / max(tol.maxAbs, 1e-30))
            if !(cmp.relL2 <= tol.relL2 && cmp.maxAbs <= tol.maxAbs) {
                failures.append("\(name): \(cmp) (tolerance rel_l2=\(tol.relL2) max_abs=\(tol.maxAbs))")
            }
            if worst == nil || !(ratio <= worst!.ratio) { worst = (name, cmp, ratio) }
        }
        if !failures.isEmpty { return .fail(c.name, failures.joined(separator: "; ")) }
        guard let w = worst else { return .fail(c.name, "case has no outputs") }
        return .pass(c.name, "\(w.cmp) (worst: \(w.name))")
    }
}
