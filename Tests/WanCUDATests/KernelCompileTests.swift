import Foundation
import XCTest
import WanCUDA

/// The CUDA backend's checks that need no GPU: every kernel file compiles with NVRTC for sm_80 and sm_90 (NVRTC from
/// the toolkit, or the PyPI wheel that scripts/test.sh installs and names in WANKIT_NVRTC), the cache, device
/// selection and the error texts.
final class CUDAKernelCompileTests: XCTestCase {
    static let architectures = ["sm_80", "sm_90"]

    /// NVRTC, or a visible skip that says why it is missing.
    func nvrtcOrSkip() throws -> NVRTC {
        do { return try NVRTC.load() } catch let error as CUDAError {
            throw XCTSkip("NVRTC not available, the kernel compile check did not run: \(error)")
        }
    }

    func testEveryKernelFileCompilesForSM80AndSM90() throws {
        let nvrtc = try nvrtcOrSkip()
        let compiler = try KernelCompiler(nvrtc: nvrtc)
        XCTAssertFalse(compiler.sources.moduleNames.isEmpty, "no .cu files in \(compiler.sources.directory)")
        var compiled = 0
        for architecture in Self.architectures {
            for (module, result) in compiler.compileAll(architecture: architecture) {
                switch result {
                case .success(let kernel):
                    XCTAssertTrue(kernel.isCubin)
                    XCTAssertGreaterThan(kernel.image.count, 1000, "\(module) for \(architecture): empty cubin")
                    if !kernel.log.isEmpty { print("NVRTC warnings for \(module) (\(architecture)):\n\(kernel.log)") }
                    compiled += 1
                case .failure(let error):
                    XCTFail("\(error)")
                }
            }
        }
        print("CUDA kernels: \(compiled) compiles (\(compiler.sources.moduleNames.joined(separator: ", ")) for \(Self.architectures.joined(separator: ", "))) with NVRTC \(nvrtc.version) from \(nvrtc.path)")
    }

    func testEveryDeclaredKernelIsInItsFile() throws {
        let sources = try KernelSources.load()
        for (module, kernels) in KernelCatalog.kernels {
            let text = try XCTUnwrap(sources.modules[module], "\(module) is not among \(sources.moduleNames)")
            for kernel in kernels {
                XCTAssertTrue(text.contains("\(kernel)("), "\(module) has no kernel \(kernel)")
            }
        }
        XCTAssertEqual(Set(KernelCatalog.kernels.keys), Set(sources.moduleNames), "KernelCatalog and Kernels/ disagree")
    }

    func testCompileErrorsNameTheFileAndArchitecture() throws {
        let nvrtc = try nvrtcOrSkip()
        XCTAssertThrowsError(try nvrtc.compile(source: "extern \"C\" __global__ void k(float* x) { x[0] = y; }",
                                               name: "broken.cu", architecture: "sm_80")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("broken.cu") && text.contains("sm_80") && text.contains("\"y\""), text)
        }
    }

    func testCacheStoresAndReusesTheCubin() throws {
        let nvrtc = try nvrtcOrSkip()
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-cuda-cache-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let compiler = try KernelCompiler(nvrtc: nvrtc, cacheDirectory: cache)
        let first = try compiler.image(module: "elementwise.cu", architecture: "sm_80")
        XCTAssertFalse(first.fromCache)
        let second = try compiler.image(module: "elementwise.cu", architecture: "sm_80")
        XCTAssertTrue(second.fromCache)
        XCTAssertEqual(first.image, second.image)
        let files = try FileManager.default.contentsOfDirectory(atPath: cache)
        XCTAssertEqual(files.count, 1, "\(files)")
        XCTAssertTrue(files[0].hasPrefix("elementwise-sm_80-nvrtc\(nvrtc.version)-") && files[0].hasSuffix(".cubin"), files[0])
    }

    func testCacheKeyFollowsSourceArchitectureAndNVRTC() {
        let a = KernelSources(directory: "/x", modules: ["k.cu": "a"], headers: ["h.cuh": "h"])
        let b = KernelSources(directory: "/x", modules: ["k.cu": "b"], headers: ["h.cuh": "h"])
        let c = KernelSources(directory: "/x", modules: ["k.cu": "a"], headers: ["h.cuh": "h2"])
        let v13 = CUDAVersion(major: 13, minor: 0), v12 = CUDAVersion(major: 12, minor: 9)
        let key = a.cacheKey(module: "k.cu", architecture: "sm_90", nvrtc: v13)
        XCTAssertEqual(key, a.cacheKey(module: "k.cu", architecture: "sm_90", nvrtc: v13))
        XCTAssertNotEqual(key, b.cacheKey(module: "k.cu", architecture: "sm_90", nvrtc: v13))
        XCTAssertNotEqual(key, c.cacheKey(module: "k.cu", architecture: "sm_90", nvrtc: v13))
        XCTAssertNotEqual(key, a.cacheKey(module: "k.cu", architecture: "sm_80", nvrtc: v13))
        XCTAssertNotEqual(key, a.cacheKey(module: "k.cu", architecture: "sm_90", nvrtc: v12))
        XCTAssertTrue(key.hasPrefix("k-sm_90-nvrtc13.0-"))
    }

    func testAutoFallsBackToTheCPUWithOneLineReason() throws {
        XCTAssertEqual("\(try ComputeDevice.cpu.resolve())", "cpu")
        let resolved = try ComputeDevice.auto.resolve()
        switch resolved {
        case .cpu(let reason?):
            XCTAssertFalse(reason.contains("\n"), reason)
            XCTAssertTrue("\(resolved)".hasPrefix("cpu (no GPU: "), "\(resolved)")
            // Asking for CUDA explicitly is an error that names the missing piece and the fix.
            XCTAssertThrowsError(try ComputeDevice.cuda.resolve()) { error in
                XCTAssertTrue(error is CUDAError)
                XCTAssertTrue("\(error)".contains("--device cpu") || "\(error)".contains("update"), "\(error)")
            }
            print("device auto -> \(resolved)")
        case .cpu(nil):
            XCTFail("auto must say why it runs on the CPU")
        case .cuda:
            print("device auto -> \(resolved)")
        }
    }

    func testErrorTextsNameTheLibraryAndTheFix() {
        XCTAssertEqual("\(CUDAError.libraryNotFound(library: "libcuda.so.1", why: "no NVIDIA driver is installed", fix: "run on the CPU with --device cpu"))",
                       "libcuda.so.1 not found: no NVIDIA driver is installed; run on the CPU with --device cpu")
        XCTAssertEqual(ComputeDevice.shortReason(.libraryNotFound(library: "libcuda.so.1", why: "no NVIDIA driver is installed", fix: "run on the CPU with --device cpu")),
                       "libcuda.so.1 not found: no NVIDIA driver is installed")
        let old = CUDAError.driverTooOld(driver: CUDAVersion(encoded: 12020), needed: CUDAVersion(major: 12, minor: 8), neededBy: "libnvrtc.so.12 (NVRTC 12.8)")
        XCTAssertTrue("\(old)".hasPrefix("NVIDIA driver 12.2 is older than the 12.8 libnvrtc.so.12 (NVRTC 12.8) needs: update the driver"), "\(old)")
        let oom = CUDAError.outOfMemory(needed: 3 << 30, free: 1 << 30, total: 80 << 30)
        XCTAssertTrue("\(oom)".contains("needs 3.00 GiB, 1.00 GiB free of 80.00 GiB"), "\(oom)")
        XCTAssertEqual(CUDAVersion(encoded: 13000), CUDAVersion(major: 13, minor: 0))
        XCTAssertLessThan(CUDAVersion(encoded: 12080), CUDAVersion(major: 13, minor: 0))
    }
}
