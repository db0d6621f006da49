import Foundation
import XCTest
import WanKit

/// `--device auto|cpu|cuda` on `wan generate`, and the DiT on the GPU through the pipelines. Without a GPU the GPU
/// path runs on `CUDAEmulator` (WANKIT_CUDA_EMULATOR=1: the driver and cuBLASLt emulated on the CPU, the kernels
/// compiled by NVRTC for real), which checks the host side end to end.
extension CLITests {
    static var machineHasGPU: Bool { (try? ComputeDevice.cuda.resolve())?.isCUDA ?? false }

    func imageArgs(_ output: String) throws -> [String] {
        try tinyModelArgs() + ["--prompt", "a red kite over the sea", "--size", "48x32", "--frames", "1", "--steps", "2",
                               "--seed", "11", "--output", output]
    }

    /// On the CPU, bf16 products are the default where the CPU has AVX512-BF16 (one line says so), f32 elsewhere;
    /// `--precision` chooses; the two pictures differ by a few levels.
    func testCPUProductsAreBF16ByDefaultWhereNative() throws {
        let dir = try temporaryFolder()
        let note = "run on the CPU with bf16 products"
        try XCTSkipUnless(GEMM.supportsBF16, "oneDNN has no bf16 products on this CPU (AVX2 only); the refusal is checked under ONEDNN_MAX_CPU_ISA=AVX2 on CPUs that have them")
        let byDefault = try run(["generate"] + imageArgs(dir + "/default.png") + ["--device", "cpu"])
        XCTAssertEqual(byDefault.status, 0, byDefault.stderr)
        XCTAssertEqual(byDefault.stderr.contains(note), GEMM.nativeBF16, byDefault.stderr)
        let bf16 = try run(["generate"] + imageArgs(dir + "/bf16.png") + ["--device", "cpu", "--precision", "bf16"])
        XCTAssertEqual(bf16.status, 0, bf16.stderr)
        XCTAssertTrue(bf16.stderr.contains(note), bf16.stderr)
        let f32 = try run(["generate"] + imageArgs(dir + "/f32.png") + ["--device", "cpu", "--precision", "f32"])
        XCTAssertEqual(f32.status, 0, f32.stderr)
        XCTAssertFalse(f32.stderr.contains(note), f32.stderr)
        let a = try MediaReader.image(dir + "/bf16.png"), b = try MediaReader.image(dir + "/f32.png")
        XCTAssertEqual(a.pixels.count, b.pixels.count)
        let diffs = zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }
        XCTAssertLessThanOrEqual(diffs.max() ?? 255, 8)
        XCTAssertGreaterThan(diffs.reduce(0, +), 0, "bf16 products must change some pixel")
        let bad = try run(["generate"] + imageArgs(dir + "/x.png") + ["--device", "cpu", "--precision", "f16"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--precision must be bf16 or f32"), bad.stderr)
        // A CPU whose oneDNN has no bf16 products (AVX2 only; oneDNN limited to AVX2 here): f32 by default, a clear
        // refusal of --precision bf16, never a crash.
        let avx2 = ["ONEDNN_MAX_CPU_ISA": "AVX2"]
        let plain = try run(["generate"] + imageArgs(dir + "/avx2.png") + ["--device", "cpu"], environment: avx2)
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertFalse(plain.stderr.contains(note), plain.stderr)
        let c = try MediaReader.image(dir + "/avx2.png")
        XCTAssertLessThanOrEqual(zip(c.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 255, 1, "f32 on AVX2 kernels is f32")
        let refused = try run(["generate"] + imageArgs(dir + "/avx2-bf16.png") + ["--device", "cpu", "--precision", "bf16"], environment: avx2)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("needs AVX-512"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/avx2-bf16.png"))
    }

    func testAutoSaysInOneLineWhyItRunsOnTheCPU() throws {
        let dir = try temporaryFolder()
        let r = try run(["generate"] + imageArgs(dir + "/a.png") + ["--device", "auto"])
        XCTAssertEqual(r.status, 0, r.stderr)
        if Self.machineHasGPU {
            XCTAssertTrue(r.stderr.contains(" on cuda:"), r.stderr)
        } else {
            let notes = r.stderr.split(separator: "\n").filter { $0.contains("running on the CPU (no GPU: ") }
            XCTAssertEqual(notes.count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains(" on cpu"), r.stderr)
        }
        let cpu = try run(["generate"] + imageArgs(dir + "/b.png") + ["--device", "cpu"])
        XCTAssertEqual(cpu.status, 0, cpu.stderr)
        XCTAssertFalse(cpu.stderr.contains("no GPU"), cpu.stderr)
        XCTAssertFalse(cpu.stderr.contains("--fp8-products"), cpu.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/a.png")).isEmpty, false)
        // A GPU-only flag on the CPU runs, and says in one line that it has no effect there.
        let fp8 = try run(["generate"] + imageArgs(dir + "/c.png") + ["--device", "cpu", "--fp8-products"])
        XCTAssertEqual(fp8.status, 0, fp8.stderr)
        XCTAssertEqual(fp8.stderr.split(separator: "\n").filter { $0.contains("--fp8-products has no effect on the CPU") }.count, 1, fp8.stderr)
    }

    func testCUDAWithoutAGPUIsAOneLineErrorAndNoOutput() throws {
        if Self.machineHasGPU { throw XCTSkip("this machine has a GPU: --device cuda runs") }
        let dir = try temporaryFolder()
        let r = try run(["generate"] + imageArgs(dir + "/a.png") + ["--device", "cuda"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("--device cuda cannot run: "), r.stderr)
        XCTAssertTrue(r.stderr.contains("use --device cpu"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        let bad = try run(["generate"] + imageArgs(dir + "/b.png") + ["--device", "tpu"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--device must be auto, cpu or cuda"), bad.stderr)
    }

    /// The whole text-to-image job with the DiT on the (emulated) GPU at f32 gives the CPU's picture.
    func testGenerateWithTheDiTOnTheGPUMatchesTheCPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let dir = try temporaryFolder()
        let gpu = try run(["generate"] + imageArgs(dir + "/gpu.png") + ["--device", "cuda", "--precision", "f32"],
                          environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertEqual(gpu.status, 0, gpu.stderr)
        XCTAssertTrue(gpu.stderr.contains("on cuda:0 WanKit CUDA emulator (CPU) (f32)"), gpu.stderr)
        XCTAssertTrue(gpu.stderr.contains("umT5 on cuda:0"), gpu.stderr)
        XCTAssertTrue(gpu.stderr.contains("VAE on cuda:0"), gpu.stderr)
        let cpu = try run(["generate"] + imageArgs(dir + "/cpu.png") + ["--device", "cpu", "--precision", "f32"])
        XCTAssertEqual(cpu.status, 0, cpu.stderr)
        let a = try MediaReader.image(dir + "/gpu.png"), b = try MediaReader.image(dir + "/cpu.png")
        XCTAssertEqual(a.pixels.count, b.pixels.count)
        // f32 on both sides (rel_l2 ~5e-7 on the latents): the 8-bit pixels differ by at most one level.
        let worst = zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 255
        XCTAssertLessThanOrEqual(worst, 1)
        // bf16 on the GPU: the same picture within a few levels.
        let bf16 = try run(["generate"] + imageArgs(dir + "/bf16.png") + ["--device", "cuda"], environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertEqual(bf16.status, 0, bf16.stderr)
        XCTAssertTrue(bf16.stderr.contains("(bf16)"), bf16.stderr)
    }

    /// A VACE job (a reference image) with the DiT, umT5 and the VAE on the (emulated) GPU at f32 gives the CPU's
    /// picture.
    func testVACEOnTheGPUMatchesTheCPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let args = ["generate", "--dit", Self.weights + "/dit_vace.safetensors"] + textArgs() +
            ["--ref", dir + "/first.png", "--prompt", "a cat", "--size", "48x32", "--frames", "1", "--steps", "2", "--seed", "2"]
        let gpu = try run(args + ["--output", dir + "/gpu.png", "--device", "cuda", "--precision", "f32"], environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertEqual(gpu.status, 0, gpu.stderr)
        XCTAssertTrue(gpu.stderr.contains("on cuda:0 WanKit CUDA emulator (CPU) (f32)"), gpu.stderr)
        let cpu = try run(args + ["--output", dir + "/cpu.png", "--device", "cpu", "--precision", "f32"])
        XCTAssertEqual(cpu.status, 0, cpu.stderr)
        let a = try MediaReader.image(dir + "/gpu.png"), b = try MediaReader.image(dir + "/cpu.png")
        XCTAssertEqual(a.pixels.count, b.pixels.count)
        let worst = zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 255
        XCTAssertLessThanOrEqual(worst, 1)
    }
}

/// The library's device placement.
final class DevicePlacementTests: XCTestCase {
    func testTokensOfAJob() {
        XCTAssertEqual(DiTPlacement.tokens(.t2v1_3B, width: 832, height: 480, frames: 81), 32760)
        XCTAssertEqual(DiTPlacement.tokens(.t2v14B, width: 1280, height: 720, frames: 81), 75600)
        XCTAssertEqual(DiTPlacement.tokens(.t2v1_3B, width: 832, height: 480, frames: 1), 1560)
    }

    /// The VAE joins the GPU only when its weights, buffers and the causal state of the frame size fit in what is free.
    func testTheVAEGoesToTheCPUWhenItsStateCannotFitOnTheGPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let path = goldenDirectory + "/weights/pipe_vae.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("golden data not found") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        let (placement, _) = try DiTPlacement.resolve(.cuda, precision: .f32)
        let small = try ModelLoader.vae(path, on: placement, width: 48, height: 32)
        XCTAssertTrue(small.vae is CUDAVAE)
        XCTAssertNil(small.note)
        // 16384 x 16384: terabytes of causal state for an 80 GiB (emulated) GPU.
        let huge = try ModelLoader.vae(path, on: placement, width: 16384, height: 16384)
        XCTAssertTrue(huge.vae is WanVAE)
        XCTAssertTrue(huge.note?.hasPrefix("the VAE runs on the CPU: at 16384x16384 it needs") ?? false, huge.note ?? "no note")
    }

    func testVACEAndThePlainDiTAreDenoisersOnTheGPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let weights = goldenDirectory + "/weights"
        guard FileManager.default.fileExists(atPath: weights + "/dit_vace.safetensors") else { throw XCTSkip("golden data not found") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        let (placement, note) = try DiTPlacement.resolve(.cuda, precision: .f32)
        XCTAssertNil(note)
        XCTAssertTrue(placement.isGPU)
        // A VACE checkpoint on the GPU is a CUDAVACE, through anyDiT as through vaceDiT.
        let vacePath = weights + "/dit_vace.safetensors"
        guard case .vace(let anyVACE) = try ModelLoader.anyDiT(vacePath, on: placement, width: 32, height: 32, frames: 5, references: 1) else {
            return XCTFail("not a VACE DiT")
        }
        XCTAssertTrue(anyVACE is CUDAVACE)
        let vace = try ModelLoader.vaceDiT(vacePath, on: placement, width: 32, height: 32, frames: 5, references: 1)
        XCTAssertTrue(vace is CUDAVACE)
        XCTAssertTrue(vace.backendDescription.hasPrefix("cuda:0 "), vace.backendDescription)
        let vaceCPU = try ModelLoader.vaceDiT(vacePath, on: .cpu, width: 32, height: 32, frames: 5)
        XCTAssertTrue(vaceCPU is WanVACEDiT)
        XCTAssertThrowsError(try ModelLoader.vaceDiT(weights + "/pipe_dit_t2v.safetensors", on: placement, width: 32, height: 32, frames: 5))
        let vaceText = Tensor(zeros: [3, vace.config.dit.textDim])
        let vx = Tensor(zeros: [vace.config.dit.inDim, 2, 4, 6])
        let vc = Tensor(shape: [vace.config.vaceInDim, 2, 4, 6], values: (0..<(vace.config.vaceInDim * 48)).map { Float($0 % 7) * 0.1 })
        let cpuConditioning = try vaceCPU.prepareConditioning(text: vaceText)
        XCTAssertThrowsError(try vace.velocity(x: vx, t: 500, conditioning: cpuConditioning, vaceContext: vc, scale: 1))
        let vaceGPUOut = try vace.velocity(x: vx, t: 500, conditioning: try vace.prepareConditioning(text: vaceText), vaceContext: vc, scale: 1)
        let vaceCPUOut = try vaceCPU.velocity(x: vx, t: 500, conditioning: cpuConditioning, vaceContext: vc, scale: 1)
        XCTAssertEqual(vaceGPUOut.shape, vaceCPUOut.shape)
        XCTAssertLessThan(Comparison(got: UnsafeBufferPointer(vaceGPUOut.buffer), expected: UnsafeBufferPointer(vaceCPUOut.buffer)).relL2, 1e-5)
        vace.releaseActivations()
        guard case .plain(let dit) = try ModelLoader.anyDiT(weights + "/pipe_dit_t2v.safetensors", on: placement, width: 48, height: 32, frames: 5) else {
            return XCTFail("not a plain DiT")
        }
        XCTAssertTrue(dit is CUDADiT)
        XCTAssertTrue(dit.backendDescription.hasPrefix("cuda:0 "), dit.backendDescription)
        // A conditioning made by the CPU model is refused by the GPU model.
        let cpu = try ModelLoader.dit(weights + "/pipe_dit_t2v.safetensors")
        let text = Tensor(zeros: [3, cpu.config.textDim])
        let foreign = try cpu.prepareConditioning(text: text, clipFeatures: nil)
        let x = Tensor(zeros: [cpu.config.inDim, 2, 4, 6])
        XCTAssertThrowsError(try dit.velocity(x: x, y: nil, t: 500, conditioning: foreign))
        let own = try dit.prepareConditioning(text: text, clipFeatures: nil)
        let gpuOut = try dit.velocity(x: x, y: nil, t: 500, conditioning: own)
        let cpuOut = try cpu.velocity(x: x, y: nil, t: 500, conditioning: foreign)
        XCTAssertEqual(gpuOut.shape, cpuOut.shape)
        XCTAssertLessThan(Comparison(got: UnsafeBufferPointer(gpuOut.buffer), expected: UnsafeBufferPointer(cpuOut.buffer)).relL2, 1e-5)
    }
}

extension CLITests {
    /// `auto` with a GPU that cannot take the model (here: head_dim 256, over the 128 the GPU attention kernels take)
    /// runs on the CPU and says why in one line; `cuda` refuses with the reason and writes nothing.
    func testAutoFallsBackToTheCPUWhenTheGPUCannotTakeTheDiT() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let dir = try temporaryFolder()
        // A one-layer DiT of one head of 256 (text_dim 32 as the tiny umT5's), small random weights.
        let config = WanDiTConfig(dim: 256, ffnDim: 64, textDim: 32, numHeads: 1, numLayers: 1)
        var header: [String: Any] = [:]
        var data = Data()
        var rng = SystemRandomNumberGenerator()
        for (name, shape) in config.parameterShapes() {
            let count = shape.reduce(1, *)
            header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [data.count, data.count + 4 * count]]
            data.append(floats((0..<count).map { _ in Float.random(in: -0.02...0.02, using: &rng) }))
        }
        let dit = dir + "/dit256.safetensors"
        try FileManager.default.moveItem(atPath: try writeSafetensors(header: header, data: data), toPath: dit)
        let sidecar: [String: Any] = ["model": "dit256", "class": "WanModel", "layout": "official",
                                      "config": ["model_type": "t2v", "dim": 256, "ffn_dim": 64, "text_dim": 32, "num_heads": 1,
                                                 "num_layers": 1, "in_dim": 16, "out_dim": 16, "freq_dim": 256]]
        try JSONSerialization.data(withJSONObject: sidecar).write(to: URL(fileURLWithPath: dir + "/dit256.json"))
        var args = try tinyModelArgs()
        args[1] = dit
        let common = args + ["--prompt", "a kite", "--size", "48x32", "--frames", "1", "--steps", "1", "--seed", "3"]
        let auto = try run(["generate"] + common + ["--output", dir + "/auto.png", "--device", "auto"], environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertEqual(auto.status, 0, auto.stderr)
        XCTAssertTrue(auto.stderr.contains("note: running on the CPU: the GPU could not take the DiT (") && auto.stderr.contains("head_dim 256"), auto.stderr)
        XCTAssertTrue(auto.stderr.contains(" on cpu"), auto.stderr)
        let cuda = try run(["generate"] + common + ["--output", dir + "/cuda.png", "--device", "cuda"], environment: ["WANKIT_CUDA_EMULATOR": "1"])
        XCTAssertNotEqual(cuda.status, 0)
        XCTAssertTrue(cuda.stderr.contains("head_dim 256"), cuda.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/cuda.png"))
    }
}

extension CLITests {
    /// Image-to-video and video-to-video with their models on the (emulated) GPU: the VAE encodes the conditioning
    /// there too; playable MP4s of the expected size and length. (FLF2V on the GPU: the dit_flf2v case.)
    func testImageToVideoAndVideoToVideoOnTheGPU() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        try requireTinyModels()
        let dir = try temporaryFolder()
        try writeInputs(dir)
        let gpu = ["--device", "cuda", "--precision", "f32"], emulator = ["WANKIT_CUDA_EMULATOR": "1"]
        let features = try writeClipFeatures(images: 1)
        var output = dir + "/i2v.mp4"
        var r = try run(["generate", "--dit", Self.weights + "/pipe_dit_i2v.safetensors"] + textArgs() + gpu +
                        ["--image", dir + "/first.png", "--clip-features", features, "--prompt", "a cat", "--size", "48x32", "--frames", "5",
                         "--steps", "2", "--seed", "3", "--output", output], environment: emulator)
        try assertPlayable(output, frames: 5, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("on cuda:0") && r.stderr.contains("VAE on cuda:0"), r.stderr)
        output = dir + "/v2v.mp4"
        r = try run(["generate"] + tinyModelArgs() + gpu + ["--video", dir + "/src.mp4", "--strength", "0.5", "--prompt", "a cat",
                                                            "--steps", "2", "--seed", "3", "--output", output], environment: emulator)
        try assertPlayable(output, frames: 9, width: 32, height: 32, r)
        XCTAssertTrue(r.stderr.contains("VAE on cuda:0"), r.stderr)
    }
}

/// Prompts prepared before the encoder is released (how `wan generate` frees umT5 before loading the DiT).
final class TextConditionerPrepareTests: XCTestCase {
    func testPreparedPromptsOutliveTheReleasedEncoder() throws {
        let weights = goldenDirectory + "/weights"
        guard FileManager.default.fileExists(atPath: weights + "/pipe_t5.safetensors") else { throw XCTSkip("golden data not found") }
        let text = TextConditioner(tokenizer: try ModelLoader.tokenizer(goldenDirectory + "/tokenizer"),
                                   encoder: try ModelLoader.t5(weights + "/pipe_t5.safetensors"))
        let direct = try text.encode("a red kite over the sea")
        try text.prepare(["a red kite over the sea", "rain"], releasingEncoder: true)
        XCTAssertNil(text.encoder)
        XCTAssertEqual(text.encoderConfig.dim, 32)
        let again = try text.encode("a red kite over the sea")
        XCTAssertEqual(again.ids, direct.ids)
        XCTAssertEqual(Array(again.embedding.buffer), Array(direct.embedding.buffer))
        XCTAssertEqual(try text.encode("rain").embedding.shape[1], 32)
        XCTAssertThrowsError(try text.encode("a prompt never prepared")) { XCTAssertTrue("\($0)".contains("released"), "\($0)") }
    }
}

extension DevicePlacementTests {
    /// The library's text-to-video loader places every part: on the (emulated) GPU the DiT, umT5 and the VAE there.
    func testTextToVideoLoaderPlacesEveryPart() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        let w = goldenDirectory + "/weights"
        guard FileManager.default.fileExists(atPath: w + "/pipe_dit_t2v.safetensors") else { throw XCTSkip("golden data not found") }
        let files = ModelFiles(dit: w + "/pipe_dit_t2v.safetensors", t5: w + "/pipe_t5.safetensors", vae: w + "/pipe_vae.safetensors",
                               tokenizer: goldenDirectory + "/tokenizer")
        let byDefault = try ModelLoader.textToVideo(files)
        XCTAssertTrue(byDefault.dit is WanDiT && byDefault.text.encoder is UMT5Encoder && byDefault.vae is WanVAE)
        // The default is the CLI's: bf16 products where the CPU runs them natively.
        XCTAssertEqual(byDefault.dit.backendDescription, GEMM.nativeBF16 ? "cpu (bf16 products)" : "cpu")
        let cpu = try ModelLoader.textToVideo(files, on: .cpu)
        XCTAssertEqual(cpu.dit.backendDescription, "cpu")
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        let (placement, _) = try DiTPlacement.resolve(.cuda, precision: .f32)
        let gpu = try ModelLoader.textToVideo(files, on: placement, width: 48, height: 32, frames: 5)
        XCTAssertTrue(gpu.dit is CUDADiT && gpu.text.encoder is CUDAUMT5 && gpu.vae is CUDAVAE)
        var settings = GenerationSettings()
        settings.width = 48; settings.height = 32; settings.frames = 5; settings.steps = 2; settings.seed = 5
        let a = try gpu.sample(prompt: "a kite", settings: settings), b = try cpu.sample(prompt: "a kite", settings: settings)
        XCTAssertLessThan(Comparison(got: UnsafeBufferPointer(a.buffer), expected: UnsafeBufferPointer(b.buffer)).relL2, 1e-5)
    }
}
