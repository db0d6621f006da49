import Foundation
import WanTensor
import XCTest
import WanCUDA
import WanWeights

/// The kernels of Kernels/dequant.cu themselves (`dequant_fp8_e4m3_bf16` ... `dequant_q3_k_bf16`), compiled as C++ for
/// this CPU and run through KernelSourcesOnTheCPU (256 threads a block, the grid `CUDAOps.dequantize` launches, or a
/// smaller one for the grid-stride loop), against the host dequantisation the CPU path uses: random stored bytes of each
/// `CompactWeightFormat` (fp8 without NaN/Inf patterns; ggml block scales random finite halves of either sign, subnormal
/// and zero ones included; the fp8 per-tensor scale includes a float32 subnormal) expanded by `StoredTensor.dequantize`
/// (`FloatConversion` / `GGMLDequant`, then `* scale`) and rounded by `BFloat16.from`. The kernel's bf16 must be the
/// same bits, element for element (what `CompactWeightFormat` promises: the compact upload gives the host-dequantised
/// upload's products); the driver names the first differing element of a case. Also every fp8 byte (NaN and Inf
/// patterns included: a NaN only has to come out as a NaN), and `CompactWeightFormat.hostDequantize` (the CUDA emulator's
/// twin of the kernels) against the same host reference. Shapes: several rows, an odd row count, one block, a count
/// whose grid's last block is partial, a grid smaller than the count (the loop's last sweep partial).
/// (`DequantSourceOnTheCPUTests` runs the same file with one thread walking the loops; this runs it under the CUDA
/// execution model with the launches' grids, AddressSanitizer and the matrix shapes.)
///
/// AddressSanitizer only: the stored bytes and the output are buffers of exactly their size, so a kernel that reads a
/// block past the end or writes past n stops the run. No ThreadSanitizer variant: the dequant kernels use no shared
/// memory and no warp exchange (each thread writes its own elements of a grid-stride loop), so there is no race to look for.
final class DequantKernelSourcesOnTheCPUTests: XCTestCase {
    static let driver = """
        // Runs the kernels of Kernels/dequant.cu compiled for the CPU on the cases of cases.txt (one a line: index, kernel,
        // rows, cols, the scale's float32 bits in hex, grid blocks), stored_<index>.bin the stored bytes, want_<index>.bin
        // the host's bf16; prints one line per case (the first differing element where any differs) and
        // "max_rel <fraction of differing values, worst case>" last.
        #include "kernel_host.h"
        typedef unsigned char u8;
        extern "C" void dequant_fp8_e4m3_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_fp8_e5m2_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q8_0_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q4_0_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q4_1_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q5_0_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q5_1_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q2_k_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q3_k_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q4_k_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q5_k_bf16(bf16*, const u8*, float, long);
        extern "C" void dequant_q6_k_bf16(bf16*, const u8*, float, long);
        typedef void (*Kernel)(bf16*, const u8*, float, long);
        static const Kernel kernels[] = {dequant_fp8_e4m3_bf16, dequant_fp8_e5m2_bf16, dequant_q8_0_bf16, dequant_q4_0_bf16,
                                         dequant_q4_k_bf16, dequant_q5_k_bf16, dequant_q6_k_bf16, dequant_q4_1_bf16,
                                         dequant_q5_0_bf16, dequant_q5_1_bf16, dequant_q2_k_bf16, dequant_q3_k_bf16};
        static const char* names[] = {"dequant_fp8_e4m3_bf16", "dequant_fp8_e5m2_bf16", "dequant_q8_0_bf16", "dequant_q4_0_bf16",
                                      "dequant_q4_k_bf16", "dequant_q5_k_bf16", "dequant_q6_k_bf16", "dequant_q4_1_bf16",
                                      "dequant_q5_0_bf16", "dequant_q5_1_bf16", "dequant_q2_k_bf16", "dequant_q3_k_bf16"};

        // The whole file, in a buffer of exactly its size (AddressSanitizer stops a read past it).
        static std::vector<u8> read_file(const char* name) {
            FILE* f = std::fopen(name, "rb");
            if (!f) { std::printf("cannot open %s\\n", name); std::exit(4); }
            std::fseek(f, 0, SEEK_END);
            const long size = std::ftell(f);
            std::fseek(f, 0, SEEK_SET);
            std::vector<u8> data(size);
            if (size > 0 && std::fread(data.data(), 1, size, f) != (size_t)size) { std::printf("cannot read %s\\n", name); std::exit(4); }
            std::fclose(f);
            return data;
        }

        static bool is_nan(bf16 b) { return (b & 0x7fff) > 0x7f80; }

        int main() {
            FILE* list = std::fopen("cases.txt", "r");
            if (!list) { std::printf("no cases.txt\\n"); return 4; }
            double worst = 0;
            int index, k, cases = 0;
            long rows, cols;
            unsigned scale_bits, grid;
            while (std::fscanf(list, "%d %d %ld %ld %x %u", &index, &k, &rows, &cols, &scale_bits, &grid) == 6) {
                ++cases;
                char path[64];
                std::snprintf(path, sizeof path, "stored_%d.bin", index);
                const std::vector<u8> w = read_file(path);
                std::snprintf(path, sizeof path, "want_%d.bin", index);
                const std::vector<u8> want_bytes = read_file(path);
                const long n = rows * cols;
                const float scale = __uint_as_float(scale_bits);
                if ((long)want_bytes.size() != 2 * n) { std::printf("case %d: want_%d.bin has %zu bytes, not %ld\\n", index, index, want_bytes.size(), 2 * n); worst = INFINITY; continue; }
                std::vector<bf16> want(n), out(n, (bf16)0xdead);  // 0xdead: never written
                std::memcpy(want.data(), want_bytes.data(), 2 * n);
                launch(grid, 1, [&] { kernels[k](out.data(), w.data(), scale, n); });
                long differ = 0, first = -1;
                for (long i = 0; i < n; ++i) {
                    if (out[i] == want[i] || (is_nan(out[i]) && is_nan(want[i]))) continue;  // a NaN only has to stay a NaN
                    if (first < 0) first = i;
                    ++differ;
                }
                std::printf("%s %ldx%ld scale %.9g grid %u (%zu stored bytes): ", names[k], rows, cols, scale, grid, w.size());
                if (differ == 0) std::printf("all %ld bf16 values bit-identical to the host's\\n", n);
                else std::printf("%ld of %ld differ, the first at row %ld col %ld (element %ld): kernel 0x%04x (%.9g), host 0x%04x (%.9g)%s\\n",
                                 differ, n, first / cols, first % cols, first, out[first], bf(out[first]), want[first], bf(want[first]),
                                 out[first] == 0xdead ? " (never written)" : "");
                worst = std::fmax(worst, (double)differ / n);
            }
            std::fclose(list);
            if (cases == 0) { std::printf("no case in cases.txt\\n"); worst = INFINITY; }
            std::printf("max_rel %.3e\\n", worst);
            return 0;
        }

        """

    /// splitmix64: the same bytes on every run.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 24) }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    struct Case {
        let format: CompactWeightFormat
        let rows: Int, cols: Int
        let scale: Float
        var grid: Int? = nil  // nil: CUDAOps.dequantize's (one thread a value, at most 65535 blocks)
        var everyByte = false  // fp8: every byte value (NaN and Inf patterns included), cycled

        var count: Int { rows * cols }
        var blocks: Int { grid ?? min(max((count + 255) / 256, 1), 65535) }
        var label: String { "\(format) \(rows)x\(cols) scale \(scale) grid \(blocks)\(everyByte ? " every byte" : "")" }
    }

    static let cases: [Case] = {
        var cases: [Case] = []
        for format in [CompactWeightFormat.fp8E4M3, .fp8E5M2] {
            cases += [
                Case(format: format, rows: 5, cols: 96, scale: 0.0137),  // 480 values: the second block partial
                Case(format: format, rows: 64, cols: 320, scale: 2.5),
                Case(format: format, rows: 9, cols: 1000, scale: 1),  // odd rows; scale 1 (the host skips the multiply)
                Case(format: format, rows: 3, cols: 77, scale: 1.0e-39),  // a float32 subnormal scale: subnormal products
                Case(format: format, rows: 1, cols: 200, scale: 3.0e4),  // one partial block
                Case(format: format, rows: 17, cols: 1024, scale: 0.0625, grid: 5),  // the grid-stride loop, last sweep partial
                Case(format: format, rows: 4, cols: 256, scale: 0.0137, everyByte: true),
                Case(format: format, rows: 2, cols: 256, scale: 1, everyByte: true),
            ]
        }
        for format in [CompactWeightFormat.q8_0, .q4_0, .q4_1, .q5_0, .q5_1] {
            cases += [
                Case(format: format, rows: 1, cols: 32, scale: 1),  // one block
                Case(format: format, rows: 5, cols: 96, scale: 1),  // 480 values: the second grid block partial
                Case(format: format, rows: 9, cols: 224, scale: 1),  // odd rows
                Case(format: format, rows: 16, cols: 2048, scale: 1),
                Case(format: format, rows: 7, cols: 160, scale: 0.37),  // a per-tensor scale as well
                Case(format: format, rows: 13, cols: 640, scale: 1, grid: 3),  // the grid-stride loop, last sweep partial
            ]
        }
        for format in [CompactWeightFormat.q2_K, .q3_K, .q4_K, .q5_K, .q6_K] {
            cases += [
                Case(format: format, rows: 1, cols: 256, scale: 1),  // one super-block
                Case(format: format, rows: 3, cols: 512, scale: 1),
                Case(format: format, rows: 9, cols: 768, scale: 1),  // odd rows
                Case(format: format, rows: 16, cols: 1536, scale: 1),
                Case(format: format, rows: 5, cols: 256, scale: 0.37),  // a per-tensor scale as well
                Case(format: format, rows: 16, cols: 1024, scale: 1, grid: 5),  // the grid-stride loop, last sweep partial
            ]
        }
        return cases
    }()

    /// A random finite half of either sign: exponent 0 (zero or subnormal) a quarter of the time, else 1...30.
    static func randomHalf(_ random: inout Random) -> UInt16 {
        let sign: UInt16 = random.below(2) == 0 ? 0 : 0x8000
        let exponent = UInt16(random.below(4) == 0 ? 0 : 1 + random.below(30))
        let mantissa = random.below(16) == 0 ? 0 : UInt16(random.below(1024))
        return sign | exponent << 10 | mantissa
    }

    /// Random stored bytes of `c` (fp8: no NaN/Inf patterns unless `everyByte`; ggml: random bytes, the f16 block
    /// scales random finite halves).
    static func storedBytes(_ c: Case, _ random: inout Random) -> [UInt8] {
        let bytes = c.format.bytes(elements: c.count)!
        var data = (0..<bytes).map { _ in random.byte() }
        switch c.format {
        case .fp8E4M3:
            if c.everyByte { data = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 97) } }  // 97 odd: every byte, shuffled
            else { for i in data.indices where data[i] & 0x7f == 0x7f { data[i] ^= 1 } }  // S.1111.111: NaN
        case .fp8E5M2:
            if c.everyByte { data = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 97) } }
            else { for i in data.indices where data[i] & 0x7c == 0x7c { data[i] ^= 0x40 } }  // exponent 11111: Inf/NaN
        default: break
        }
        let halves = c.format.halfFieldOffsets
        for block in 0..<(c.count / c.format.blockSize) {
            for offset in halves {
                let h = randomHalf(&random)
                data[block * c.format.blockBytes + offset] = UInt8(h & 0xff)
                data[block * c.format.blockBytes + offset + 1] = UInt8(h >> 8)
            }
        }
        return data
    }

    /// The host's bf16 of the stored matrix: `StoredTensor.dequantize` of a [rows, cols] tensor with the per-tensor
    /// scale (nil for 1, as a GGUF tensor has none), then `BFloat16.from` (round to nearest even) as the upload packs.
    static func hostBF16(_ c: Case, _ bytes: [UInt8]) -> [UInt16] {
        var values = [Float](repeating: 0, count: c.count)
        bytes.withUnsafeBytes { raw in
            let stored = StoredTensor(name: "w", type: c.format.storageType, shape: [c.rows, c.cols], data: raw.baseAddress!,
                                      byteCount: bytes.count, scale: c.scale == 1 ? nil : c.scale, owner: nil)
            values.withUnsafeMutableBufferPointer { stored.dequantize(elements: 0..<c.count, into: $0.baseAddress!) }
        }
        return values.map(BFloat16.from)
    }

    /// The first differing element of two bf16 arrays (a NaN matches a NaN), or nil.
    static func firstDifference(_ a: [UInt16], _ b: [UInt16]) -> Int? {
        func nan(_ x: UInt16) -> Bool { x & 0x7fff > 0x7f80 }
        if a.count != b.count { return min(a.count, b.count) }
        return a.indices.first { a[$0] != b[$0] && !(nan(a[$0]) && nan(b[$0])) }
    }

    func testDequantKernelSourcesEqualTheHostDequantisationBitForBit() throws {
        var random = Random(state: 0x5eed_dec0de)
        var files: [String: Data] = [:]
        var list = ""
        let kernels = ["dequant_fp8_e4m3_bf16", "dequant_fp8_e5m2_bf16", "dequant_q8_0_bf16", "dequant_q4_0_bf16",
                       "dequant_q4_k_bf16", "dequant_q5_k_bf16", "dequant_q6_k_bf16", "dequant_q4_1_bf16",
                       "dequant_q5_0_bf16", "dequant_q5_1_bf16", "dequant_q2_k_bf16", "dequant_q3_k_bf16"]  // the driver's order
        XCTAssertEqual(Set(kernels), Set(CompactWeightFormat.allCases.map(\.kernel)))
        for (index, c) in Self.cases.enumerated() {
            XCTAssertEqual(CompactWeightFormat(c.format.storageType), c.format)
            XCTAssertEqual(c.cols % c.format.blockSize, 0, c.label)
            let bytes = Self.storedBytes(c, &random)
            let want = Self.hostBF16(c, bytes)
            // The emulator's twin (CUDADequant.swift) must give the same bits as the host path.
            var twin = [UInt16](repeating: 0, count: c.count)
            bytes.withUnsafeBytes { raw in
                twin.withUnsafeMutableBufferPointer {
                    CompactWeightFormat.hostDequantize(c.format, data: raw.baseAddress!, count: c.count, scale: c.scale, into: $0.baseAddress!)
                }
            }
            if let i = Self.firstDifference(twin, want) {
                XCTFail("\(c.label): hostDequantize differs from StoredTensor.dequantize at element \(i): \(twin[i]) vs \(want[i])")
            }
            files["stored_\(index).bin"] = Data(bytes)
            files["want_\(index).bin"] = want.withUnsafeBytes { Data($0) }
            let kernel = try XCTUnwrap(kernels.firstIndex(of: c.format.kernel))
            list += "\(index) \(kernel) \(c.rows) \(c.cols) \(String(c.scale.bitPattern, radix: 16)) \(c.blocks)\n"
        }
        files["cases.txt"] = Data(list.utf8)
        let output = try KernelSourcesOnTheCPU.buildAndRun(modules: ["dequant.cu"], driver: Self.driver, files: files)
        XCTAssertEqual(output.split(separator: "\n").filter { $0.contains("bit-identical") }.count, Self.cases.count, output)
        XCTAssertEqual(KernelSourcesOnTheCPU.maxRel(output), 0, output)
    }
}
