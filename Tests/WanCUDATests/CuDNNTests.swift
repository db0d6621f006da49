import Foundation
import XCTest
import WanCUDA
import WanTensor

/// cuDNN's fused attention (`CuDNNAttention`): on the CPU emulator `auto` must choose the own kernel and `cudnn` must
/// fail with a clear error; where the real libcudnn.so.9 is installed (not in CI: the wheel is 700 MB; a visible skip
/// there), the library loads and every tensor and operation descriptor of the SDPA graph finalizes. The operation
/// graph and plans need a handle, which needs a GPU: `wan bench attention --device cuda` checks those.
final class CuDNNTests: XCTestCase {
    /// Random bf16 values in [-amplitude, amplitude].
    func randomBF16(_ count: Int, seed: UInt64, amplitude: Float = 2) -> [UInt16] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return BFloat16.from((Float(state >> 40) / Float(1 << 24) * 2 - 1) * amplitude)
        }
    }

    func testEmulatorHasNoCuDNNAndAutoRunsTheKernel() throws {
        do { _ = try NVRTC.load() } catch { throw XCTSkip("NVRTC not available (the emulator compiles the kernels): \(error)") }
        CUDAEmulator.install()
        defer { CUDAEmulator.uninstall() }
        CUDAEmulator.refusals = []
        XCTAssertThrowsError(try CuDNN.load()) { error in
            XCTAssertTrue("\(error)".contains("libcudnn.so.9"), "\(error)")
            XCTAssertTrue("\(error)".contains("emulator"), "\(error)")
        }
        let context = try CUDAContext()
        let ops = try CUDAOps(context: context)
        let (batch, lq, lk, heads, d) = (2, 37, 53, 2, 64)
        let q = try context.allocate(bytes: 2 * batch * lq * heads * d), k = try context.allocate(bytes: 2 * batch * lk * heads * d)
        let v = try context.allocate(bytes: 2 * batch * lk * heads * d), kLens = try context.allocate(bytes: 4 * batch)
        try q.upload(randomBF16(batch * lq * heads * d, seed: 1))
        try k.upload(randomBF16(batch * lk * heads * d, seed: 2))
        try v.upload(randomBF16(batch * lk * heads * d, seed: 3))
        try kLens.upload([Int32(lk), 20])
        var outputs: [[UInt16]] = []
        for backend in [AttentionBackend.kernel, .auto] {
            ops.attentionBackend = backend
            let out = try context.allocate(bytes: 2 * batch * lq * heads * d)
            try ops.attention(.bf16, out: out.pointer, q: q.pointer, k: k.pointer, v: v.pointer, kLens: kLens.pointer, batch: batch,
                              lq: lq, lk: lk, heads: heads, headDim: d, scale: 0.125)
            outputs.append(try out.download(count: batch * lq * heads * d, as: UInt16.self))
        }
        XCTAssertEqual(outputs[0], outputs[1], "auto on the emulator runs the kernel")
        XCTAssertEqual(ops.attentionUsed[CuDNNAttention.Shape(batch: batch, lq: lq, lk: lk, heads: heads, headDim: d, masked: true)], .kernel)
        ops.attentionBackend = .cudnn
        let out = try context.allocate(bytes: 2 * batch * lq * heads * d)
        XCTAssertThrowsError(try ops.attention(.bf16, out: out.pointer, q: q.pointer, k: k.pointer, v: v.pointer, batch: batch,
                                               lq: lq, lk: lk, heads: heads, headDim: d, scale: 0.125)) { error in
            XCTAssertTrue("\(error)".contains("libcudnn.so.9"), "cudnn asked for explicitly fails by name: \(error)")
        }
        XCTAssertEqual(CUDAEmulator.refusals, [])
    }

    func testAttentionBackendNames() {
        XCTAssertEqual(AttentionBackend(rawValue: "auto"), .auto)
        XCTAssertEqual(AttentionBackend(rawValue: "cudnn"), .cudnn)
        XCTAssertEqual(AttentionBackend(rawValue: "kernel"), .kernel)
        XCTAssertNil(AttentionBackend(rawValue: "flash"))
    }

    /// The six libcuda entry points cuDNN's runtime-compiled engine library links (it is loaded at the first
    /// finalize, and its loading fails on a machine without libcuda.so.1): stubs that report no device.
    static let libcudaStub = """
        int cuGetErrorString(int e, const char **s) { *s = "no device (WanKit test stub)"; return 0; }
        int cuModuleGetFunction(void *f, void *m, const char *n) { return 100; }
        int cuModuleLoadData(void *m, const void *i) { return 100; }
        int cuModuleUnload(void *m) { return 100; }
        int cuTensorMapEncodeIm2col(void) { return 100; }
        int cuTensorMapEncodeTiled(void) { return 100; }
        """

    /// Loads the real cuDNN in a child process (this test binary again, only `testChildFinalizesDescriptors`), with
    /// a stub libcuda.so.1 on LD_LIBRARY_PATH where the machine has none, so nothing here sees the stub.
    func testLibraryLoadsAndSDPADescriptorsFinalize() throws {
        var environment = ProcessInfo.processInfo.environment
        environment["WANKIT_CUDA_EMULATOR"] = nil
        guard let path = CuDNN.locate() else {
            throw XCTSkip("libcudnn.so.9 not found (WANKIT_CUDNN, the loader, CUDA folders, Python site-packages): CI does not install cuDNN; "
                          + "to run this: pip download nvidia-cudnn-cu12, unzip, WANKIT_CUDNN=<wheel>/nvidia/cudnn/lib/libcudnn.so.9")
        }
        environment["WANKIT_CUDNN"] = path
        environment["WANKIT_CUDNN_CHILD"] = "1"
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-cudnn-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        if dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) == nil {
            let paths = (environment["PATH"] ?? "").split(separator: ":").map(String.init)
            guard let cc = ["cc", "gcc", "clang"].lazy.flatMap({ name in paths.map { "\($0)/\(name)" } })
                .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw XCTSkip("no libcuda.so.1 and no C compiler to build a stub of it (cuDNN's engine library links libcuda.so.1)")
            }
            let source = scratch.appendingPathComponent("stub.c")
            try Self.libcudaStub.write(to: source, atomically: true, encoding: .utf8)
            let build = Process()
            build.executableURL = URL(fileURLWithPath: cc)
            build.arguments = ["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", scratch.appendingPathComponent("libcuda.so.1").path, source.path]
            try build.run()
            build.waitUntilExit()
            XCTAssertEqual(build.terminationStatus, 0, "building the libcuda stub")
            environment["LD_LIBRARY_PATH"] = scratch.path + (environment["LD_LIBRARY_PATH"].map { ":" + $0 } ?? "")
        }
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let child = Process()
        child.executableURL = URL(fileURLWithPath: exe)
        child.arguments = ["WanCUDATests.CuDNNTests/testChildFinalizesDescriptors"]
        child.environment = environment
        let out = Pipe()
        child.standardOutput = out
        child.standardError = out
        try child.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        let report = text.split(separator: "\n").filter { $0.hasPrefix("cudnn-check:") }.joined(separator: "\n")
        print(report)
        XCTAssertEqual(child.terminationStatus, 0, "the child check failed:\n\(text.suffix(4000))")
        XCTAssertTrue(text.contains("cudnn-check: loaded"), text.suffix(4000).description)
        XCTAssertTrue(text.contains("cudnn-check: unmasked 10 operations"), text.suffix(4000).description)
        XCTAssertTrue(text.contains("cudnn-check: masked 16 operations"), text.suffix(4000).description)
        XCTAssertTrue(text.contains("cudnn-check: without stats 8 operations"), text.suffix(4000).description)
        XCTAssertTrue(text.contains("cudnn-check: no handle without a GPU"), text.suffix(4000).description)
    }

    /// Run only as the child of `testLibraryLoadsAndSDPADescriptorsFinalize` (a skip otherwise).
    func testChildFinalizesDescriptors() throws {
        guard ProcessInfo.processInfo.environment["WANKIT_CUDNN_CHILD"] == "1" else {
            throw XCTSkip("runs only as the child process of testLibraryLoadsAndSDPADescriptorsFinalize")
        }
        let cudnn = try CuDNN.load()
        print("cudnn-check: loaded cuDNN \(cudnn.versionString) from \(cudnn.path)")
        // The DiT's shapes: 1.3B self-attention at 480P, 14B at 720P, cross-attention to 512 text rows; a masked batch.
        for shape in [CuDNNAttention.Shape(batch: 1, lq: 32760, lk: 32760, heads: 12, headDim: 128, masked: false),
                      CuDNNAttention.Shape(batch: 1, lq: 75600, lk: 75600, heads: 40, headDim: 128, masked: false),
                      CuDNNAttention.Shape(batch: 1, lq: 32760, lk: 512, heads: 12, headDim: 128, masked: false),
                      CuDNNAttention.Shape(batch: 2, lq: 1000, lk: 600, heads: 3, headDim: 64, masked: true)] {
            let ops = try CuDNNAttention.operations(cudnn, shape)
            print("cudnn-check: \(shape.masked ? "masked" : "unmasked") \(ops.kinds.count) operations finalized for \(shape): \(ops.kinds.joined(separator: ", "))")
        }
        let plain = try CuDNNAttention.operations(cudnn, CuDNNAttention.Shape(batch: 1, lq: 32760, lk: 32760, heads: 12, headDim: 128, masked: false),
                                                  virtualStats: false)
        print("cudnn-check: without stats \(plain.kinds.count) operations finalized: \(plain.kinds.joined(separator: ", "))")
        // A handle needs a GPU: cudnnCreate must fail, by name, not crash.
        do {
            let context = try CUDAContext()
            _ = try CuDNNAttention(context: context)
            print("cudnn-check: a handle was created (this machine has a GPU)")
        } catch {
            print("cudnn-check: no handle without a GPU: \(error)")
        }
    }
}
