import ArgumentParser
import Foundation
import WanKit
import CDNNL
#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Speed and memory benchmarks.", subcommands: [BenchDiT.self, BenchAttention.self, BenchVAE.self, BenchT2V.self, BenchI2V.self, BenchT5.self, BenchCLIP.self])
}

/// Peak resident set size of this process, in bytes.
func peakRSSBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

struct BenchDiT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dit",
        abstract: "DiT step time (classifier-free guidance: conditional + unconditional pass) with the real Wan2.1-T2V-1.3B shapes and random weights.")

    @Option(help: "Video size WxH (default: 832x480 with 1 frame and 256x256 with 5 frames).") var size: String?
    @Option(help: "Frame count (4n+1).") var frames: Int?
    @Option(help: "Benchmark a DiT file or folder (any layout openDiTWeights reads: safetensors f32/f16/bf16/fp8(_scaled), sharded, diffusers, GGUF; weights stay mapped) instead of random weights.") var weights: String?
    @Option(help: "Model preset for random weights: t2v-1.3B, t2v-14B, i2v-14B, flf2v-14B.") var preset: String = "t2v-1.3B"
    @Option(help: "Timed steps per shape (after one warm-up pass).") var steps: Int = 1
    @Flag(help: "One JSON object per line instead of text.") var json = false
    @Flag(help: "Print where the time goes (per op kind) after each shape.") var profile = false
    @Option(help: "Override the layer count of the preset (quick experiments).") var layers: Int?
    @Option(help: "Prompt length in tokens (1-512; the default is the longest prompt, the slowest case).") var promptTokens: Int = 512
    @Option(help: "cpu, cuda or auto (cuda: weights uploaded once, peak GPU memory and TFLOP/s reported).") var device: String = "cpu"
    @Option(help: "bf16 or f32 (TF32 off on a GPU). Default: bf16 on a GPU; on the CPU bf16 products where it has AVX512-BF16 (as wan generate), else f32.") var precision: String?
    @Flag(help: "With --device cuda (bf16, compute capability 8.9+): matrices stored as fp8 e4m3 run as cuBLASLt fp8 products (activations quantised to e4m3 per tensor).") var fp8Products = false
    @Flag(help: "With random weights: store the matrices as fp8 e4m3 with a per-tensor scale, as an fp8_scaled file (they stay compact: dequantised tile by tile on the CPU, on the GPU see --fp8-products).") var fp8Weights = false
    @Option(help: "With --device cuda: the bf16 attention: kernel (WanKit's flash attention), kernel2 (its second version, attention2.cu: head dims 64 and 128), cudnn (cuDNN's fused attention) or auto (where cuDNN has a plan for the shape, the fastest of kernel, kernel2 and cudnn on its first call, else the kernel); default $WANKIT_ATTENTION, else kernel.") var attention: String?

    func run() throws {
        var shapes: [(w: Int, h: Int, f: Int)] = [(832, 480, 1), (256, 256, 5)]
        if let size {
            let s = try parseSize(size, multipleOf: 16)
            shapes = [(s.width, s.height, frames ?? 1)]
        } else if let frames {
            shapes = shapes.map { ($0.w, $0.h, frames) }
        }
        for s in shapes where (s.f - 1) % 4 != 0 || s.f < 1 {
            throw ValidationError("--frames must be 4n+1 (1, 5, 9, …, 81), got \(s.f)")
        }
        if fp8Weights && weights != nil { throw ValidationError("--fp8-weights is for random weights; --weights files keep their stored types") }
        if let gpu = try CUDABackend.resolve(device, command: "bench dit") {
            try runCUDA(gpu: gpu, shapes: shapes)
            return
        }
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        CUDABackend.noteGPUOnly(fp8Products ? ["--fp8-products"] : [], command: "bench dit")
        let t0 = now()
        let products = try CUDABackend.cpuPlacement(precision).products
        let dit: WanDiT
        if let weights {
            let opened = try openDiTWeights(path: weights)
            dit = try WanDiT(weights: opened.source, arguments: opened.arguments, products: products)
            log("loaded \(weights) (\(opened.layout)): \(dit.config) in \(String(format: "%.1f", now() - t0)) s, RSS \(String(format: "%.2f", Double(currentRSSBytes()) / 1e9)) GB")
            for line in try compactGEMMReport(opened.source, config: dit.config, m: 1560) { print(line) }
        } else {
            guard var config = WanDiTConfig.presets[preset] else {
                throw ValidationError("unknown preset \(preset); one of \(WanDiTConfig.presets.keys.sorted().joined(separator: ", "))")
            }
            if let layers { config.numLayers = layers }
            let random = RandomWeights(shapes: config.parameterShapes())
            // --fp8-weights: the matrices stored as e4m3 with per-tensor scales, dequantised tile by tile as from an fp8_scaled file.
            dit = try WanDiT(config: config, weights: fp8Weights ? FP8ScaledSource(random) : random, products: products)
            log("random \(preset) weights (\(config.parameterCount / 1_000_000)M parameters\(fp8Weights ? ", matrices as fp8 e4m3" : "")) made in \(String(format: "%.1f", now() - t0)) s")
        }
        let c = dit.config
        let sgemmRate = Self.sgemmGFlops(m: 1560, k: c.dim, n: c.ffnDim)
        for s in shapes {
            let lat = (f: (s.f - 1) / 4 + 1, h: s.h / 8, w: s.w / 8)
            let tokens = lat.f / c.patchSize[0] * (lat.h / c.patchSize[1]) * (lat.w / c.patchSize[2])
            let x = try RandomWeights(shapes: [("x", [16, lat.f, lat.h, lat.w])], seed: 1).float32("x")
            guard (1...c.textLen).contains(promptTokens) else { throw ValidationError("--prompt-tokens must be 1...\(c.textLen)") }
            let rand = RandomWeights(shapes: [("c", [promptTokens, c.textDim]), ("u", [promptTokens, c.textDim]), ("y", [c.inDim - 16, lat.f, lat.h, lat.w]),
                                              ("clip", [c.modelType == "flf2v" ? 2 : 1, 257, 1280])], seed: 2)
            let y = c.hasImageInput ? try rand.float32("y") : nil
            let clip = c.hasImageInput ? try rand.float32("clip") : nil
            // The conditioning is prepared once per prompt, as a sampling loop does; a step is the two DiT passes.
            let cond = try dit.prepare(context: try rand.float32("c"), clipFeatures: clip)
            let uncond = try dit.prepare(context: try rand.float32("u"), clipFeatures: clip)
            _ = try dit.forward(x: x, y: y, t: 999, context: cond)  // warm-up: primitive creation, first touch of mapped weights
            Profile.enabled = profile
            Profile.reset()
            let start = now()
            for _ in 0..<steps {
                _ = try dit.forward(x: x, y: y, t: 999, context: cond)
                _ = try dit.forward(x: x, y: y, t: 999, context: uncond)
            }
            let perStep = (now() - start) / Double(steps)
            let flops = 2 * Self.forwardFlops(c, tokens: tokens, contextKeys: promptTokens + (promptTokens < c.textLen ? 1 : 0))
            let gflops = flops / perStep / 1e9
            let rss = peakRSSBytes()
            if json {
                let obj: [String: Any] = ["size": "\(s.w)x\(s.h)", "frames": s.f, "tokens": tokens, "seconds_per_step": perStep,
                                          "device": "cpu", "precision": products == .bf16 ? "bf16" : "f32",
                                          "gflops": gflops, "sgemm_gflops": sgemmRate, "ratio": gflops / sgemmRate, "peak_rss_bytes": rss]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(String(format: "dit %@ %dx%dx%d (%d tokens, cfg, %@ products): %.2f s/step, %.1f GFLOP/s, sgemm %.1f GFLOP/s, ratio %.2f, peak RSS %.2f GB",
                             c.modelType, s.w, s.h, s.f, tokens, products == .bf16 ? "bf16" : "f32", perStep, gflops, sgemmRate, gflops / sgemmRate, Double(rss) / 1e9))
            }
            if profile { for line in Profile.report() { print("  " + line) } }
            Profile.enabled = false
            fflush(stdout)
        }
    }

    /// FLOPs (2 per multiply-add) of the GEMMs and attention that one forward pass with a prepared context performs
    /// (the text embedding and cross-attention keys/values belong to the preparation; elementwise work not counted).
    static func forwardFlops(_ c: WanDiTConfig, tokens L: Int, contextKeys: Int) -> Double {
        let d = Double(c.dim), l = Double(L), f = Double(c.ffnDim), text = Double(contextKeys)
        let img = c.hasImageInput ? Double(c.modelType == "flf2v" ? 514 : 257) : 0
        var perLayer = 4 * 2 * l * d * d          // self-attention q, k, v, o
        perLayer += 2 * 2 * l * l * d             // scores and values
        perLayer += 2 * 2 * l * d * d             // cross q, o
        perLayer += 2 * 2 * l * (text + img) * d  // cross scores and values
        perLayer += 2 * 2 * l * d * f             // ffn
        var total = Double(c.numLayers) * perLayer
        total += 2 * l * Double(c.inDim * c.patchSize.reduce(1, *)) * d
        total += 2 * l * d * Double(c.outDim * c.patchSize.reduce(1, *))
        return total
    }

    /// Best rate of a plain oneDNN sgemm (all cores) of the FFN's shape.
    static func sgemmGFlops(m: Int, k: Int, n: Int) -> Double {
        let a = Tensor(zeros: [m, k]), b = Tensor(zeros: [n, k]), c = Tensor(zeros: [m, n])
        for i in 0..<a.count { a.data[i] = Float(i % 7) * 0.1 }
        for i in 0..<b.count { b.data[i] = Float(i % 5) * 0.1 }
        var best = 0.0
        omp_set_num_threads(Int32(Parallel.workers))  // oneDNN's own OpenMP threading, as a plain caller gets it
        for _ in 0..<8 {
            let t = now()
            GEMM.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.data, lda: k, b: b.data, ldb: k, beta: 0, c: c.data, ldc: n)
            best = max(best, 2 * Double(m) * Double(n) * Double(k) / (now() - t) / 1e9)
        }
        return best
    }
}

struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "attention", abstract: "Tiled attention kernel rate (GFLOP/s).")
    @Option(help: "Query and key count (CPU default 1560).") var tokens: Int?
    @Option(help: "Heads (CPU default 12).") var heads: Int?
    @Option(help: "Head dim.") var headDim: Int = 128
    @Option(help: "Query tile.") var queryTile: Int = Attention.queryTile
    @Option(help: "Key tile.") var keyTile: Int = Attention.keyTile
    @Option(help: "cpu or cuda (cuda: bf16 on the GPU, the own kernel and cuDNN's fused attention timed at the 1.3B 480P and 14B 720P shapes unless --tokens/--heads are given).") var device: String = "cpu"
    @Option(help: "With --device cuda: both (default: kernel and cudnn), all (kernel, kernel2 and cudnn), kernel, kernel2, cudnn or auto.") var attention: String = "both"
    @Option(help: "With --device cuda: timed runs per backend and shape (after one warm-up).") var repeats: Int = 3
    @Flag(help: "With --device cuda: one JSON object per line.") var json = false
    @Option(help: "With --device cpu: f32, or bf16 (the products' inputs rounded to bf16, f32 accumulation; native on AVX512-BF16 CPUs).") var precision: String = "f32"

    func run() throws {
        if device.lowercased() != "cpu", let gpu = try CUDABackend.resolve(device, command: "bench attention") {
            try runCUDA(gpu: gpu)
            return
        }
        Attention.queryTile = queryTile
        Attention.keyTile = keyTile
        let tokens = self.tokens ?? 1560, heads = self.heads ?? 12
        let d = heads * headDim
        let r = RandomWeights(shapes: [("q", [tokens, d]), ("k", [tokens, d]), ("v", [tokens, d])], seed: 3)
        let q = try r.float32("q"), k = try r.float32("k"), v = try r.float32("v")
        let out = Tensor(zeros: [tokens, d])
        let type = try cpuProductType(precision)
        var best = 0.0
        for _ in 0..<3 {
            let t = now()
            Attention.run(type, q: q.data, ldq: d, queries: tokens, k: k.data, ldk: d, v: v.data, ldv: d, keys: tokens,
                          heads: heads, headDim: headDim, scale: 1 / Float(headDim).squareRoot(), out: out.data, ldo: d)
            best = max(best, 4 * Double(tokens) * Double(tokens) * Double(d) / (now() - t) / 1e9)
        }
        print(String(format: "attention %d tokens, %d heads of %d, tiles %dx%d, %@: %.1f GFLOP/s", tokens, heads, headDim, queryTile, keyTile,
                     type == .f32 ? "f32" : "bf16", best))
    }
}

/// `--precision` on the CPU: f32 or bf16 (the products' inputs in bf16).
func cpuProductType(_ text: String) throws -> ProductType {
    switch text.lowercased() {
    case "f32": return .f32
    case "bf16": return .bf16
    default: throw ValidationError("--precision must be bf16 or f32, got \(text)")
    }
}
