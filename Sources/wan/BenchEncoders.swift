import ArgumentParser
import Foundation
import WanKit
import WanCUDA
#if canImport(Glibc)
import Glibc
#endif

/// Writes a safetensors file tensor by tensor through one reused buffer (the process never holds the whole file),
/// values uniform in ±bound from a counter-based generator. Returns the file size.
/// Bytes per element of the dtypes `writeRandomSafetensors` writes.
func elementBytes(_ dtype: String) -> Int { dtype == "F32" ? 4 : dtype == "F8_E4M3" ? 1 : 2 }

/// Writes a safetensors file of random values (uniform in ±bound; a negative bound is the constant |bound|) in
/// F32, F16, BF16 or F8_E4M3 (random e4m3fn bytes, NaN patterns avoided: the bound goes in the `scale_weight`).
func writeRandomSafetensors(path: String, tensors: [(name: String, shape: [Int], dtype: String, bound: Float)], seed: UInt64) throws -> Int {
    var header: [String: Any] = ["__metadata__": ["format": "pt", "note": "random weights written by wan bench"]]
    var offset = 0
    for t in tensors {
        let bytes = t.shape.reduce(1, *) * elementBytes(t.dtype)
        header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + bytes]]
        offset += bytes
    }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while (8 + json.count) % 8 != 0 { json.append(0x20) }
    FileManager.default.createFile(atPath: path, contents: nil)
    guard let handle = FileHandle(forWritingAtPath: path) else { throw ValidationError("cannot write \(path)") }
    defer { try? handle.close() }
    var length = UInt64(json.count).littleEndian
    handle.write(Data(bytes: &length, count: 8))
    handle.write(json)
    let chunkElements = 1 << 24
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkElements * 4, alignment: 64)
    defer { buffer.deallocate() }
    for (ti, t) in tensors.enumerated() {
        let n = t.shape.reduce(1, *)
        var done = 0
        while done < n {
            let count = min(chunkElements, n - done)
            let base = seed &+ UInt64(ti) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(done)
            let wide = t.dtype == "F32"
            let bound = t.bound
            Parallel.forRanges(count, grain: 1 << 16) { range in
                for i in range {
                    var z = base &+ UInt64(i) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 31)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 29
                    let u = Float(UInt32(truncatingIfNeeded: z >> 40)) * (2.0 / 16777216.0) - 1
                    let v = bound < 0 ? -bound : u * bound  // negative bound: the constant |bound| (norm weights)
                    if t.dtype == "F8_E4M3" {
                        var b = UInt8(truncatingIfNeeded: z >> 32)
                        if b & 0x7F == 0x7F { b ^= 1 }
                        buffer.storeBytes(of: b, toByteOffset: i, as: UInt8.self)
                    } else if wide {
                        buffer.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self)
                    } else if t.dtype == "F16" {
                        buffer.storeBytes(of: Float16(v).bitPattern, toByteOffset: 2 * i, as: UInt16.self)
                    } else {
                        buffer.storeBytes(of: BFloat16.from(v), toByteOffset: 2 * i, as: UInt16.self)
                    }
                }
            }
            handle.write(Data(bytesNoCopy: buffer, count: count * elementBytes(t.dtype), deallocator: .none))
            done += count
        }
    }
    return 8 + json.count + offset
}

/// The CLIP ViT-H/14 vision tower in ComfyUI's clip_vision_h layout (transformers names), f16, with init bounds.
func randomCLIPTensors(_ c: CLIPVisionConfig = .vitH14) -> [(name: String, shape: [Int], dtype: String, bound: Float)] {
    let d = c.dim, m = c.mlpDim
    var tensors: [(name: String, shape: [Int], dtype: String, bound: Float)] = [
        ("vision_model.embeddings.class_embedding", [d], "F16", 0.03),
        ("vision_model.embeddings.patch_embedding.weight", [d, 3, c.patchSize, c.patchSize], "F16", 1 / Float(3 * c.patchSize * c.patchSize).squareRoot()),
        ("vision_model.embeddings.position_embedding.weight", [c.tokens, d], "F16", 0.03),
        ("vision_model.pre_layrnorm.weight", [d], "F16", -1), ("vision_model.pre_layrnorm.bias", [d], "F16", 0.01),
        ("vision_model.post_layernorm.weight", [d], "F16", -1), ("vision_model.post_layernorm.bias", [d], "F16", 0.01),
        ("visual_projection.weight", [c.outDim, d], "F16", 1 / Float(d).squareRoot()),
    ]
    for i in 0..<c.numLayers {
        let p = "vision_model.encoder.layers.\(i)."
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            tensors += [(p + "self_attn.\(n).weight", [d, d], "F16", 1 / Float(d).squareRoot()), (p + "self_attn.\(n).bias", [d], "F16", 0.01)]
        }
        tensors += [(p + "layer_norm1.weight", [d], "F16", -1), (p + "layer_norm1.bias", [d], "F16", 0.01),
                    (p + "layer_norm2.weight", [d], "F16", -1), (p + "layer_norm2.bias", [d], "F16", 0.01),
                    (p + "mlp.fc1.weight", [m, d], "F16", 1 / Float(d).squareRoot()), (p + "mlp.fc1.bias", [m], "F16", 0.01),
                    (p + "mlp.fc2.weight", [d, m], "F16", 1 / Float(m).squareRoot()), (p + "mlp.fc2.bias", [d], "F16", 0.01)]
    }
    return tensors
}

/// The umT5 checkpoint tensors in bf16 with init bounds (norm weights 1, embeddings ±1, matrices ±1/sqrt(fan_in)).
func randomUMT5Tensors(_ shapes: [(name: String, shape: [Int])]) -> [(name: String, shape: [Int], dtype: String, bound: Float)] {
    shapes.map { s in
        let norm = s.name.hasSuffix("norm1.weight") || s.name.hasSuffix("norm2.weight") || s.name == "norm.weight"
        let bound: Float = norm ? -1 : s.name.contains("pos_embedding") ? 0.5 : s.name == "token_embedding.weight" ? 1
            : 1 / Float(s.shape[1]).squareRoot()
        return (s.name, s.shape, "BF16", bound)
    }
}

/// Free bytes of the file system holding `path`.
func freeBytes(_ path: String) -> Int {
    var s = statvfs()
    guard statvfs(path, &s) == 0 else { return 0 }
    return Int(s.f_bavail) * Int(s.f_frsize)
}

func currentRSSBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let parts = text.split(separator: " ")
    guard parts.count > 1, let pages = Int(parts[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

struct BenchT5: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "t5",
        abstract: "umT5-XXL encoder: seconds per prompt and peak RSS (peak GPU memory with --device cuda), with a real-size bf16 checkpoint of random weights written to disk (mapped, as a real one is).")

    @Option(help: "Benchmark a real umT5 checkpoint (models_t5_umt5-xxl-enc-bf16.pth, safetensors or transformers folder) instead of writing random weights.") var weights: String?
    @Option(help: "Prompt length in tokens (1-512).") var tokens: Int = 512
    @Option(help: "Prompts encoded (timed one by one after loading).") var prompts: Int = 2
    @Option(help: "Folder for the temporary random checkpoint (needs 11.4 GB free).") var directory: String = NSTemporaryDirectory()
    @Option(help: "Override the layer count of the preset (quick experiments; the file shrinks too).") var layers: Int?
    @Flag(help: "Keep the pages of each layer's weights resident instead of handing them back to the page cache after use.") var keepPages = false
    @Flag(help: "Keep the temporary checkpoint (and reuse it when it exists).") var keepFile = false
    @Flag(help: "One JSON object per line instead of text.") var json = false
    @Flag(help: "Print where the time goes (per op kind).") var profile = false
    @Option(help: "cpu, cuda or auto (cuda: CUDAUMT5, weights uploaded once; seconds per prompt after a warm-up encode, peak GPU memory).") var device: String = "cpu"
    @Option(help: "bf16 (as the official encoder computes: the default on a GPU and on CPUs with AVX512-BF16, where the products take bf16 inputs) or f32.") var precision: String?
    @Flag(help: ArgumentHelp("Tiny random shapes (dim 128, vocab 1000, 2 layers unless --layers) that check the bench end to end; not a benchmark.", visibility: .hidden)) var tiny = false

    /// The random checkpoint's configuration: umT5-XXL (or the tiny test shapes), --layers applied.
    var randomConfig: UMT5Config {
        var config = UMT5Config.umt5XXL
        if tiny {
            config.vocab = 1000; config.dim = 128; config.dimAttn = 128; config.dimFfn = 320; config.numHeads = 2; config.numLayers = 2
        }
        if let layers { config.numLayers = layers }
        return config
    }

    func run() throws {
        guard (1...512).contains(tokens) else { throw ValidationError("--tokens must be 1...512") }
        if let layers, layers < 1 { throw ValidationError("--layers must be at least 1") }
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        // The device first (its one-line refusal before any checkpoint is written).
        let precision = try CUDABackend.precision(self.precision ?? "bf16")
        let products = try CUDABackend.cpuPlacement(self.precision).products
        let gpu = try CUDABackend.resolve(device, command: "bench t5")
        var path = weights
        var temporary: String? = nil
        if path == nil {
            let config = randomConfig
            let file = (directory as NSString).appendingPathComponent("wan-bench-umt5-xxl-\(tiny ? "tiny-" : "")\(config.numLayers)l-bf16.safetensors")
            let shapes = config.parameterShapes()
            let bytes = shapes.reduce(0) { $0 + $1.shape.reduce(1, *) * 2 }
            let exists = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int).flatMap { $0 } ?? 0 > bytes
            if !(keepFile && exists) {
                let free = freeBytes(directory)
                guard free > bytes + (1 << 30) else {
                    throw ValidationError(String(format: "%@ has %.1f GB free; the random umT5-XXL checkpoint needs %.1f GB (pass --directory or --weights)", directory, Double(free) / 1e9, Double(bytes) / 1e9))
                }
                let t0 = now()
                let written = try writeRandomSafetensors(path: file, tensors: randomUMT5Tensors(shapes), seed: 11)
                log(String(format: "wrote %@ (%.2f GB, %ld parameters) in %.1f s", file, Double(written) / 1e9, config.parameterCount, now() - t0))
            }
            path = file
            if !keepFile { temporary = file }
        }
        defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
        if let gpu { return try runCUDA(gpu: gpu, precision: precision, path: path!) }
        let t0 = now()
        let w = try openT5Weights(path: path!)
        let encoder = try UMT5Encoder(weights: w.source, arguments: w.arguments ?? [:], products: products)
        encoder.releasesMappedPages = !keepPages
        let loadSeconds = now() - t0
        log(String(format: "opened %@ (%@): %@ in %.2f s, RSS %.2f GB", path!, w.layout, encoder.config.description, loadSeconds, Double(currentRSSBytes()) / 1e9))
        let vocab = encoder.config.vocab
        Profile.enabled = profile
        for p in 0..<prompts {
            // A prompt: random ids (any token costs the same), `</s>` last.
            var ids = (0..<(tokens - 1)).map { i in 3 + (i &* 7919 &+ p &* 104729) % (vocab - 3) }
            ids.append(1)
            Profile.reset()
            let start = now()
            let out = try encoder.encode(tokens: [ids])
            let seconds = now() - start
            var sum = 0.0
            for i in 0..<out[0].count { sum += Double(abs(out[0].data[i])) }
            let rss = peakRSSBytes()
            if json {
                let obj: [String: Any] = ["model": "umt5-xxl", "tokens": tokens, "prompt": p, "seconds": seconds, "peak_rss_bytes": rss,
                                          "device": "cpu", "precision": products == .bf16 ? "bf16" : "f32",
                                          "layers": encoder.config.numLayers, "release_pages": !keepPages, "finite": sum.isFinite]
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "t5 %@ %d tokens (%@ products), prompt %d: %.2f s/prompt, peak RSS %.2f GB, current RSS %.2f GB%@", encoder.config.numLayers == 24 ? "umt5-xxl" : "umt5-xxl(\(encoder.config.numLayers) layers)",
                             tokens, products == .bf16 ? "bf16" : "f32", p + 1, seconds, Double(rss) / 1e9, Double(currentRSSBytes()) / 1e9, sum.isFinite ? "" : " (NON-FINITE OUTPUT)"))
            }
            if profile { for line in Profile.report() { print("  " + line) } }
            fflush(stdout)
        }
        Profile.enabled = false
    }
}

struct BenchCLIP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clip",
        abstract: "CLIP ViT-H/14 image encoder (Wan I2V): seconds per image and peak RSS (peak GPU memory with --device cuda), with a real-size f16 checkpoint of random weights in ComfyUI's clip_vision_h layout written to disk.")

    @Option(help: "Benchmark a real CLIP checkpoint (official .pth, clip_vision_h.safetensors or transformers folder).") var weights: String?
    @Option(help: "Input image size WxH (resized to 224x224 by the model).") var size: String = "832x480"
    @Option(help: "Images encoded (timed one by one after loading).") var images: Int = 2
    @Option(help: "Folder for the temporary random checkpoint.") var directory: String = NSTemporaryDirectory()
    @Flag(help: "One JSON object per line instead of text.") var json = false
    @Flag(help: "Print where the time goes (per op kind).") var profile = false
    @Option(help: "Override the layer count of ViT-H/14 (quick experiments; the file shrinks too).") var layers: Int?
    @Option(help: "cpu, cuda or auto (cuda: CUDACLIP, weights uploaded once; seconds per image after a warm-up encode, peak GPU memory).") var device: String = "cpu"
    @Option(help: "bf16 (the default on a GPU and on CPUs with AVX512-BF16, where the products take bf16 inputs) or f32.") var precision: String?
    @Flag(help: ArgumentHelp("Tiny random shapes (dim 128, 2 layers unless --layers) that check the bench end to end; not a benchmark.", visibility: .hidden)) var tiny = false

    /// The random checkpoint's configuration: ViT-H/14 (or the tiny test shapes), --layers applied.
    var randomConfig: CLIPVisionConfig {
        var config = CLIPVisionConfig.vitH14
        if tiny { config.dim = 128; config.numHeads = 2; config.outDim = 128; config.numLayers = 2 }
        if let layers { config.numLayers = layers }
        return config
    }

    func run() throws {
        let (width, height) = try parseSize(size)
        if let layers, layers < 1 { throw ValidationError("--layers must be at least 1") }
        let log: (String) -> Void = { msg in if !json { FileHandle.standardError.write((msg + "\n").data(using: .utf8)!) } }
        let precision = try CUDABackend.precision(self.precision ?? "bf16")
        let products = try CUDABackend.cpuPlacement(self.precision).products
        let gpu = try CUDABackend.resolve(device, command: "bench clip")
        var path = weights
        var temporary: String? = nil
        if path == nil {
            let config = randomConfig
            let tensors = randomCLIPTensors(config)
            let shape = config == .vitH14 ? "" : "-\(config.dim)d-\(config.numLayers)l"
            let file = (directory as NSString).appendingPathComponent("wan-bench-clip-vision-h\(shape)-f16.safetensors")
            let bytes = tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * 2 }
            guard freeBytes(directory) > bytes + (1 << 28) else { throw ValidationError("\(directory) lacks room for the \(bytes / 1_000_000) MB random checkpoint") }
            let t0 = now()
            let written = try writeRandomSafetensors(path: file, tensors: tensors, seed: 5)
            log(String(format: "wrote %@ (%.2f GB) in %.1f s", file, Double(written) / 1e9, now() - t0))
            path = file
            temporary = file
        }
        defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
        if let gpu { return try runCUDA(gpu: gpu, precision: precision, path: path!, width: width, height: height) }
        let t0 = now()
        let w = try openCLIPWeights(path: path!)
        let encoder = try CLIPVision(weights: w.source, arguments: w.arguments ?? [:], products: products)
        log(String(format: "opened %@ (%@): %@ in %.2f s", path!, w.layout, encoder.config.description, now() - t0))
        let image = Tensor(uninitialized: [3, 1, height, width])
        for i in 0..<image.count { image.data[i] = Float((i &* 2654435761) % 2001) / 1000 - 1 }
        Profile.enabled = profile
        for n in 0..<images {
            Profile.reset()
            let start = now()
            let out = try encoder.visual(image)
            let seconds = now() - start
            let rss = peakRSSBytes()
            if json {
                let obj: [String: Any] = ["model": "clip-vit-h-14", "size": size, "image": n, "seconds": seconds, "peak_rss_bytes": rss, "shape": out.shape,
                                          "device": "cpu", "precision": products == .bf16 ? "bf16" : "f32"]
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(String(format: "clip vit-h/14 %@ -> %@ (%@ products), image %d: %.2f s/image, peak RSS %.2f GB", size, "\(out.shape)",
                             products == .bf16 ? "bf16" : "f32", n + 1, seconds, Double(rss) / 1e9))
            }
            if profile { for line in Profile.report() { print("  " + line) } }
            fflush(stdout)
        }
        Profile.enabled = false
    }
}
