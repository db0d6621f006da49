import Foundation
import XCTest
import WanKit

// MARK: helpers

/// Little-endian byte building.
struct Bytes {
    var data = Data()
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { var x = v.littleEndian; data.append(Data(bytes: &x, count: 2)) }
    mutating func u32(_ v: UInt32) { var x = v.littleEndian; data.append(Data(bytes: &x, count: 4)) }
    mutating func u64(_ v: UInt64) { var x = v.littleEndian; data.append(Data(bytes: &x, count: 8)) }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func f16(_ v: Float) { u16(Float16(v).bitPattern) }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); data.append(contentsOf: Array(s.utf8)) }
    mutating func bytes(_ b: [UInt8]) { data.append(contentsOf: b) }
}

/// One tensor for `writeGGUF`: dims fastest-varying first, raw block data.
struct GGUFTensorSpec {
    var name: String
    var ne: [UInt64]
    var type: UInt32
    var data: Data
    var offsetOverride: UInt64? = nil
}

/// Writes a GGUF v3 file (alignment 32). `metadata` entries are raw (key, type, value bytes).
func writeGGUF(tensors: [GGUFTensorSpec], metadata: [(String, UInt32, Data)] = [], tensorCount: UInt64? = nil,
               kvCount: UInt64? = nil, truncateTo: Int? = nil) throws -> String {
    var b = Bytes()
    b.bytes(Array("GGUF".utf8)); b.u32(3)
    b.u64(tensorCount ?? UInt64(tensors.count)); b.u64(kvCount ?? UInt64(metadata.count))
    for (k, t, v) in metadata { b.str(k); b.u32(t); b.data.append(v) }
    var offset: UInt64 = 0
    var offsets: [UInt64] = []
    for t in tensors {
        offsets.append(offset)
        offset += UInt64((t.data.count + 31) / 32 * 32)
    }
    for (i, t) in tensors.enumerated() {
        b.str(t.name); b.u32(UInt32(t.ne.count)); for d in t.ne { b.u64(d) }
        b.u32(t.type); b.u64(t.offsetOverride ?? offsets[i])
    }
    while b.data.count % 32 != 0 { b.u8(0) }
    for t in tensors {
        b.data.append(t.data)
        while b.data.count % 32 != 0 { b.u8(0) }
    }
    var file = b.data
    if let n = truncateTo { file = file.prefix(n) }
    let path = NSTemporaryDirectory() + "wankit-\(UUID().uuidString).gguf"
    try file.write(to: URL(fileURLWithPath: path))
    return path
}

func f32Data(_ v: [Float]) -> Data { v.withUnsafeBufferPointer { Data(buffer: $0) } }

/// Dequantises one crafted block of `type` through the GGUF reader and `StoredTensor`.
func dequantizeBlock(_ type: GGMLType, _ block: Data, elements: Int) throws -> [Float] {
    let path = try writeGGUF(tensors: [GGUFTensorSpec(name: "w", ne: [UInt64(elements), 1], type: type.rawValue, data: block)])
    let s = try GGUFSource(path: path)
    let st = try s.stored("w")
    XCTAssertEqual(st.type, .ggml(type))
    XCTAssertEqual(st.shape, [1, elements])
    var out = [Float](repeating: .nan, count: elements)
    out.withUnsafeMutableBufferPointer { st.dequantizeRows(0..<1, into: $0.baseAddress!) }
    // Any element range gives the same values as the whole row.
    var part = [Float](repeating: .nan, count: 7)
    part.withUnsafeMutableBufferPointer { st.dequantize(elements: 3..<10, into: $0.baseAddress!) }
    XCTAssertEqual(part, Array(out[3..<10]))
    XCTAssertEqual(try s.float32("w").array, out)
    return out
}

func expectThrows<E: Error & Equatable>(_ type: E.Type, file: StaticString = #filePath, line: UInt = #line,
                                        _ body: () throws -> Void, _ check: (E) -> Bool) {
    do {
        try body()
        XCTFail("expected a \(E.self)", file: file, line: line)
    } catch let e as E {
        XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
    } catch {
        XCTFail("untyped or other error: \(error)", file: file, line: line)
    }
}

final class LayoutTests: XCTestCase {
    // MARK: golden cases

    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try assertGoldenCase(name, runner: Self.runner, file: file, line: line)
    }

    func testGoldenFP8Scaled() throws { try check("weights_dit_t2v_fp8_scaled") }
    func testGoldenSharded() throws { try check("weights_dit_t2v_sharded") }
    func testGoldenDiffusers() throws { try check("weights_dit_t2v_diffusers") }
    func testGoldenQ8_0() throws { try check("weights_dit_t2v_q8_0") }
    func testGoldenQ4_0() throws { try check("weights_dit_t2v_q4_0") }
    func testGoldenQ4_K_M() throws { try check("weights_dit_t2v256_q4_k_m") }
    func testGoldenEveryWeightsCase() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        for name in try Self.runner.caseNames() where name.hasPrefix("weights_dit_t2v") { try check(name) }
    }

    func testOpenerDetectsGoldenLayouts() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        let w = goldenDirectory + "/weights/"
        let expected: [(String, String)] = [
            ("dit_t2v.safetensors", "official"), ("dit_t2v_comfy_f16.safetensors", "comfy-prefix"),
            ("dit_t2v_fp8_scaled.safetensors", "comfy-fp8-scaled"), ("dit_t2v_sharded", "official-sharded"),
            ("dit_t2v_sharded/diffusion_pytorch_model.safetensors.index.json", "official-sharded"),
            ("dit_t2v_diffusers", "diffusers"), ("dit_t2v_diffusers/transformer", "diffusers"),
            ("dit_t2v_diffusers/transformer/diffusion_pytorch_model.safetensors", "diffusers"),
            ("dit_t2v_q8_0.gguf", "gguf"),
        ]
        let reference = try SafetensorsSource(path: w + "dit_t2v.safetensors")
        for (p, layout) in expected {
            let d = try openDiTWeights(path: w + p)
            XCTAssertEqual(d.layout, layout, p)
            XCTAssertEqual(Set(d.source.names), Set(reference.names), p)
        }
        let diffusers = try openDiTWeights(path: w + "dit_t2v_diffusers")
        XCTAssertEqual(diffusers.arguments?["num_heads"] as? Int, 3)
        XCTAssertEqual(diffusers.arguments?["dim"] as? Int, 96)
        let sharded = try openDiTWeights(path: w + "dit_t2v_sharded")
        XCTAssertEqual((sharded.arguments?["num_heads"] as? NSNumber)?.intValue, 3)
        XCTAssertNil(sharded.arguments?["_class_name"])
        // fp8_scaled: the scale is applied and visible through `stored`; the marker is gone.
        let fp8 = try openDiTWeights(path: w + "dit_t2v_fp8_scaled.safetensors")
        XCTAssertFalse(fp8.source.names.contains("scaled_fp8"))
        XCTAssertFalse(fp8.source.names.contains { $0.hasSuffix("scale_weight") })
        let st = try fp8.source.stored("blocks.0.ffn.0.weight")
        XCTAssertEqual(st.type, .dtype(.f8e4m3))
        XCTAssertNotNil(st.scale)
        // The GGUF patch embedding keeps its 5 dims.
        let q = try openDiTWeights(path: w + "dit_t2v_q8_0.gguf")
        XCTAssertEqual(q.source.info("patch_embedding.weight")?.shape, [96, 16, 1, 2, 2])
        XCTAssertEqual(try q.source.stored("blocks.0.ffn.0.weight").type, .ggml(.q8_0))
    }

    // MARK: dequantisation, one crafted block per type

    func testQ8_0() throws {
        var b = Bytes(); b.f16(0.5); for i in 0..<32 { b.u8(UInt8(bitPattern: Int8(i - 16))) }
        let y = try dequantizeBlock(.q8_0, b.data, elements: 32)
        XCTAssertEqual(y, (0..<32).map { 0.5 * Float($0 - 16) })
    }

    func testQ4_0() throws {
        var b = Bytes(); b.f16(2); for j in 0..<16 { b.u8(UInt8(j) | UInt8(15 - j) << 4) }
        let y = try dequantizeBlock(.q4_0, b.data, elements: 32)
        // element j = 2*(j-8); element 16+j = 2*((15-j)-8)
        XCTAssertEqual(Array(y[0..<4]), [-16, -14, -12, -10])
        XCTAssertEqual(Array(y[16..<20]), [14, 12, 10, 8])
        XCTAssertEqual(y, (0..<16).map { 2 * Float($0 - 8) } + (0..<16).map { 2 * Float(7 - $0) })
    }

    func testQ4_1() throws {
        var b = Bytes(); b.f16(1); b.f16(0.5); for j in 0..<16 { b.u8(UInt8(j) | UInt8(15 - j) << 4) }
        let y = try dequantizeBlock(.q4_1, b.data, elements: 32)
        XCTAssertEqual(y, (0..<16).map { Float($0) + 0.5 } + (0..<16).map { Float(15 - $0) + 0.5 })
    }

    func testQ5_0() throws {
        // qh: bits 16..31 set = the 5th bit of elements 16..31.
        var b = Bytes(); b.f16(1); b.u32(0xFFFF_0000); for j in 0..<16 { b.u8(UInt8(j) | UInt8(j) << 4) }
        let y = try dequantizeBlock(.q5_0, b.data, elements: 32)
        // element j = j - 16; element 16+j = (j + 16) - 16 = j
        XCTAssertEqual(y, (0..<16).map { Float($0 - 16) } + (0..<16).map { Float($0) })
    }

    func testQ5_1() throws {
        var b = Bytes(); b.f16(0.5); b.f16(1); b.u32(0x0000_FFFF); for j in 0..<16 { b.u8(UInt8(j) | UInt8(j) << 4) }
        let y = try dequantizeBlock(.q5_1, b.data, elements: 32)
        // element j = 0.5*(j+16) + 1; element 16+j = 0.5*j + 1
        XCTAssertEqual(y, (0..<16).map { 0.5 * Float($0 + 16) + 1 } + (0..<16).map { 0.5 * Float($0) + 1 })
    }

    func testQ8_K() throws {
        var b = Bytes(); b.f32(0.25); for i in 0..<256 { b.u8(UInt8(bitPattern: Int8(i - 128))) }
        for _ in 0..<16 { b.u16(0) }
        let y = try dequantizeBlock(.q8_K, b.data, elements: 256)
        XCTAssertEqual(y, (0..<256).map { 0.25 * Float($0 - 128) })
    }

    func testQ2_K() throws {
        // scales[s] = s | 1<<4 (scale s, min 1); every qs byte 0xE4 = 2-bit values 0,1,2,3 at shifts 0,2,4,6.
        var b = Bytes()
        for s in 0..<16 { b.u8(UInt8(s) | 0x10) }
        for _ in 0..<64 { b.u8(0xE4) }
        b.f16(1); b.f16(0.5)
        let y = try dequantizeBlock(.q2_K, b.data, elements: 256)
        // element e: sub-block s = e/16, 2-bit group j = (e % 128) / 32 -> q = j; value = s*q - 0.5
        XCTAssertEqual(y[0], -0.5)
        XCTAssertEqual(y[32], 2 * 1 - 0.5)        // s 2, q 1
        XCTAssertEqual(y[255], 15 * 3 - 0.5)      // s 15, q 3
        XCTAssertEqual(y, (0..<256).map { Float($0 / 16) * Float(($0 % 128) / 32) - 0.5 })
    }

    func testQ3_K() throws {
        // hmask: bit 0 set for all 32 bytes (elements 0..31 have the high bit: no -4), other bits clear (-4).
        // scales: 16 six-bit values s_j = low4 | high2<<4; low nibbles 1..8 / high nibbles 9..16 mod 16 and high bits 2
        // -> s_j - 32: use lows j+1 (j<8) / (j-7) (j>=8) with high bits 2 => 32 + lows - 32 = lows.
        var b = Bytes()
        for _ in 0..<32 { b.u8(0x01) }
        for _ in 0..<64 { b.u8(0xE4) }
        for j in 0..<8 { b.u8(UInt8(j + 1) | UInt8(j + 1) << 4) }   // scale j = j+1, scale 8+j = j+1
        for _ in 0..<4 { b.u8(0xAA) }                                // high 2 bits = 2 for all 16 scales
        b.f16(0.5)
        let y = try dequantizeBlock(.q3_K, b.data, elements: 256)
        func scale(_ s: Int) -> Float { Float(s % 8 + 1) }
        let expected: [Float] = (0..<256).map { e in
            let q = Float((e % 128) / 32) - (e < 32 ? 0 : 4)
            return 0.5 * scale(e / 16) * q
        }
        XCTAssertEqual(y[0], 0)                    // q 0, no offset
        XCTAssertEqual(y[32], 0.5 * 3 * (1 - 4))  // sub-block 2 (scale 3), q 1, offset 4
        XCTAssertEqual(y, expected)
    }

    /// Packed 6-bit scales of Q4_K/Q5_K: sc = 1…8, min = 1 for every sub-block.
    func kScales() -> [UInt8] {
        [1, 2, 3, 4, 1, 1, 1, 1, 0x15, 0x16, 0x17, 0x18]
    }

    func testQ4_K() throws {
        var b = Bytes(); b.f16(1); b.f16(0.5); b.bytes(kScales())
        for _ in 0..<128 { b.u8(0x53) }  // low nibble 3, high nibble 5
        let y = try dequantizeBlock(.q4_K, b.data, elements: 256)
        // sub-block s = e/32 has scale s+1, min 1; its values are low nibbles when s is even, high when odd
        XCTAssertEqual(y[0], 1 * 3 - 0.5)
        XCTAssertEqual(y[32], 2 * 5 - 0.5)
        XCTAssertEqual(y[255], 8 * 5 - 0.5)
        XCTAssertEqual(y, (0..<256).map { e in let s = e / 32; return Float(s + 1) * Float(s % 2 == 0 ? 3 : 5) - 0.5 })
    }

    func testQ5_K() throws {
        var b = Bytes(); b.f16(1); b.f16(0.5); b.bytes(kScales())
        for _ in 0..<32 { b.u8(0b0000_0101) }  // 5th bit for sub-blocks 0 and 2
        for _ in 0..<128 { b.u8(0x53) }
        let y = try dequantizeBlock(.q5_K, b.data, elements: 256)
        XCTAssertEqual(y[0], 1 * 19 - 0.5)
        XCTAssertEqual(y[64], 3 * 19 - 0.5)
        XCTAssertEqual(y[32], 2 * 5 - 0.5)
        XCTAssertEqual(y, (0..<256).map { e in
            let s = e / 32
            let q = (s % 2 == 0 ? 3 : 5) + (s == 0 || s == 2 ? 16 : 0)
            return Float(s + 1) * Float(q) - 0.5
        })
    }

    func testQ6_K() throws {
        // ql 0x21 (low 1, high 2), qh 0xE4 (2-bit fields 0,1,2,3), scales i-8, d 0.25
        var b = Bytes()
        for _ in 0..<128 { b.u8(0x21) }
        for _ in 0..<64 { b.u8(0xE4) }
        for i in 0..<16 { b.u8(UInt8(bitPattern: Int8(i - 8))) }
        b.f16(0.25)
        let y = try dequantizeBlock(.q6_K, b.data, elements: 256)
        // group g = (e%128)/32: q = (1|0<<4)-32, (1|1<<4)-32, (2|2<<4)-32, (2|3<<4)-32 = -31, -15, 2, 18
        let qv: [Float] = [-31, -15, 2, 18]
        let expected: [Float] = (0..<256).map { e in
            let n = e / 128, r = e % 128, l = r % 32, g = r / 32
            let sc = Float(n * 8 + l / 16 + 2 * g - 8)
            return 0.25 * sc * qv[g]
        }
        XCTAssertEqual(y[0], 0.25 * -8 * -31)
        XCTAssertEqual(y, expected)
    }

    func testPlainTypesAndOrigShape() throws {
        var h = Bytes(); for v: Float in [1, -2, 0.5, 3] { h.f16(v) }
        var bf = Bytes(); for v: Float in [1, -2, 0.5, 3] { bf.u16(UInt16(v.bitPattern >> 16)) }
        // orig_shape: a [2,1,2] tensor stored as 2-D [2,2] (ne [2,2]).
        var orig = Bytes(); orig.u32(5); orig.u64(3); orig.u32(2); orig.u32(1); orig.u32(2)
        let path = try writeGGUF(tensors: [
            GGUFTensorSpec(name: "a", ne: [2, 2], type: 1, data: h.data),
            GGUFTensorSpec(name: "b", ne: [4], type: 30, data: bf.data),
            GGUFTensorSpec(name: "c", ne: [2, 2], type: 0, data: f32Data([1, 2, 3, 4])),
        ], metadata: [("comfy.gguf.orig_shape.c", 9, orig.data)])
        let s = try GGUFSource(path: path)
        XCTAssertEqual(try s.float32("a").array, [1, -2, 0.5, 3])
        XCTAssertEqual(try s.float32("b").array, [1, -2, 0.5, 3])
        XCTAssertEqual(s.info("a")?.shape, [2, 2])
        XCTAssertEqual(s.info("c")?.shape, [2, 1, 2])
        XCTAssertEqual(try s.float32("c").shape, [2, 1, 2])
        XCTAssertEqual(try s.stored("a").type, .dtype(.f16))
    }

    func testStoredRowsOfMultiRowQ8() throws {
        // 3 rows of 64 (2 blocks each): row r block k has d = r+1, q[i] = i + 32k - 32.
        var b = Bytes()
        for r in 0..<3 { for k in 0..<2 { b.f16(Float(r + 1)); for i in 0..<32 { b.u8(UInt8(bitPattern: Int8(i + 32 * k - 32))) } } }
        let path = try writeGGUF(tensors: [GGUFTensorSpec(name: "w", ne: [64, 3], type: 8, data: b.data)])
        let st = try GGUFSource(path: path).stored("w")
        XCTAssertEqual(st.shape, [3, 64]); XCTAssertEqual(st.rowLength, 64); XCTAssertEqual(st.rowCount, 3)
        XCTAssertEqual(st.bytesPerRow, 68)
        var out = [Float](repeating: 0, count: 128)
        out.withUnsafeMutableBufferPointer { st.dequantizeRows(1..<3, into: $0.baseAddress!) }
        XCTAssertEqual(out, (1..<3).flatMap { r in (0..<64).map { Float(r + 1) * Float($0 - 32) } })
    }

    // MARK: hostile GGUF

    func validTensors() -> [GGUFTensorSpec] {
        var b = Bytes(); b.f16(1); for i in 0..<32 { b.u8(UInt8(i)) }
        return [GGUFTensorSpec(name: "blocks.0.w", ne: [32, 1], type: 8, data: b.data),
                GGUFTensorSpec(name: "bias", ne: [4], type: 0, data: f32Data([1, 2, 3, 4]))]
    }

    func testGGUFCountsPastTheEnd() throws {
        let p1 = try writeGGUF(tensors: validTensors(), tensorCount: 1 << 40)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p1) }) { if case .countTooLarge = $0 { return true }; return false }
        let p2 = try writeGGUF(tensors: validTensors(), kvCount: UInt64.max)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p2) }) { if case .countTooLarge = $0 { return true }; return false }
        var arr = Bytes(); arr.u32(4); arr.u64(1 << 50)
        let p3 = try writeGGUF(tensors: validTensors(), metadata: [("x", 9, arr.data)])
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p3) }) { if case .countTooLarge = $0 { return true }; return false }
    }

    func testGGUFStringPastTheEnd() throws {
        var s = Bytes(); s.u64(1 << 40)
        let p = try writeGGUF(tensors: validTensors(), metadata: [("name", 8, s.data)])
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) { if case .stringTooLong = $0 { return true }; return false }
    }

    func testGGUFTensorOffsetPastTheEnd() throws {
        var t = validTensors(); t[1].offsetOverride = 1 << 33
        let p = try writeGGUF(tensors: t)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) {
            if case .offsetOutOfRange(_, let name, _, _, _) = $0 { return name == "bias" }; return false
        }
    }

    func testGGUFUnknownType() throws {
        var t = validTensors(); t[0].type = 200
        let p = try writeGGUF(tensors: t)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) { if case .unknownType(_, _, 200) = $0 { return true }; return false }
        // Known to ggml but not dequantisable: refused when opened as a source.
        var t2 = validTensors(); t2[0].type = GGMLType.iq2_xxs.rawValue; t2[0].ne = [256, 1]
        t2[0].data = Data(count: GGMLType.iq2_xxs.typeSize)
        let p2 = try writeGGUF(tensors: t2)
        expectThrows(GGUFError.self, { _ = try GGUFSource(path: p2) }) { if case .unsupportedType = $0 { return true }; return false }
    }

    func testGGUFTypeSizeDisagreement() throws {
        // Q8_0 with a row of 30 elements: not whole blocks.
        var t = validTensors(); t[0].ne = [30, 1]
        let p = try writeGGUF(tensors: t)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) { if case .typeSizeMismatch = $0 { return true }; return false }
        // Q8_0 claiming 4 blocks where the writer gave it 1: runs into the next tensor.
        var t2 = validTensors(); t2[0].ne = [128, 1]
        t2[1].ne = [64]; t2[1].data = f32Data([Float](repeating: 1, count: 64))
        let p2 = try writeGGUF(tensors: t2)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p2) }) { if case .typeSizeMismatch = $0 { return true }; return false }
    }

    func testGGUFAbsurdDims() throws {
        var t = validTensors(); t[0].ne = [32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        let p = try writeGGUF(tensors: t)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) { if case .badDims = $0 { return true }; return false }
        var t2 = validTensors(); t2[0].ne = [32, UInt64(1) << 62]
        let p2 = try writeGGUF(tensors: t2)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p2) }) { if case .badDims = $0 { return true }; return false }
    }

    func testGGUFTruncated() throws {
        let whole = try Data(contentsOf: URL(fileURLWithPath: try writeGGUF(tensors: validTensors())))
        // Cut inside the header counts.
        let p = try writeGGUF(tensors: validTensors(), truncateTo: 20)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p) }) { if case .truncated = $0 { return true }; return false }
        // Cut inside the data: the last tensor lies outside.
        let p2 = try writeGGUF(tensors: validTensors(), truncateTo: whole.count - 20)
        expectThrows(GGUFError.self, { _ = try GGUFFile(path: p2) }) { if case .offsetOutOfRange = $0 { return true }; return false }
        // Every prefix of a valid file throws a typed error or opens, never crashes.
        for n in 0..<whole.count {
            let path = NSTemporaryDirectory() + "wankit-prefix-\(n).gguf"
            try whole.prefix(n).write(to: URL(fileURLWithPath: path))
            do { _ = try GGUFSource(path: path) } catch is GGUFError {} catch { XCTFail("prefix \(n): \(error)") }
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    func testGGUFRandomCorruptionNeverCrashes() throws {
        let whole = try Data(contentsOf: URL(fileURLWithPath: try writeGGUF(tensors: validTensors(), metadata: [("general.architecture", 8, { var b = Bytes(); b.str("wan"); return b.data }())])))
        var rng = SystemRandomNumberGenerator()
        let path = NSTemporaryDirectory() + "wankit-fuzz-\(UUID().uuidString).gguf"
        for _ in 0..<400 {
            var d = whole
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let i = Int.random(in: 4..<d.count, using: &rng)
                d[i] = UInt8.random(in: 0...255, using: &rng)
            }
            try d.write(to: URL(fileURLWithPath: path))
            do {
                let s = try GGUFSource(path: path)
                for n in s.names { _ = try s.float32(n) }
            } catch is GGUFError {} catch is WeightError {} catch { XCTFail("\(error)") }
        }
        try? FileManager.default.removeItem(atPath: path)
    }

    // MARK: sharded folders

    func makeShardFolder(index: [String: String], shards: [String: [String]]) throws -> String {
        let folder = NSTemporaryDirectory() + "wankit-shards-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (file, keys) in shards {
            var header: [String: Any] = [:]
            for (i, k) in keys.enumerated() { header[k] = ["dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]] }
            let p = try writeSafetensors(header: header, data: f32Data(keys.map { _ in 1 }))
            try FileManager.default.moveItem(atPath: p, toPath: folder + "/" + file)
        }
        let json = try JSONSerialization.data(withJSONObject: ["metadata": ["total_size": 8], "weight_map": index])
        try json.write(to: URL(fileURLWithPath: folder + "/diffusion_pytorch_model.safetensors.index.json"))
        return folder
    }

    func testShardedIndexNamesMissingShard() throws {
        let f = try makeShardFolder(index: ["a": "s-00001-of-00002.safetensors", "b": "s-00002-of-00002.safetensors"],
                                    shards: ["s-00001-of-00002.safetensors": ["a"]])
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: f) }) {
            if case .missingShard(_, let s) = $0 { return s == "s-00002-of-00002.safetensors" }; return false
        }
    }

    func testShardedKeyInTwoShards() throws {
        let f = try makeShardFolder(index: ["a": "s1.safetensors", "b": "s2.safetensors"],
                                    shards: ["s1.safetensors": ["a", "b"], "s2.safetensors": ["b"]])
        expectThrows(WeightError.self, { _ = try openDiTWeights(path: f) }) {
            if case .duplicateKey(let k, _, _) = $0 { return k == "b" }; return false
        }
    }

    func testShardedKeyMissingFromItsShard() throws {
        let f = try makeShardFolder(index: ["a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"],
                                    shards: ["s1.safetensors": ["a"], "s2.safetensors": ["b", "c"]])
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: f) }) {
            if case .keyNotInShard(_, let k, let s) = $0 { return k == "b" && s == "s1.safetensors" }; return false
        }
    }

    func testShardedIndexNotJSON() throws {
        let f = try makeShardFolder(index: ["a": "s1.safetensors"], shards: ["s1.safetensors": ["a"]])
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: f + "/diffusion_pytorch_model.safetensors.index.json"))
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: f) }) { if case .badJSON = $0 { return true }; return false }
    }

    // MARK: fp8_scaled

    func fp8File(scaleShape: [Int], prefix: String = "", markerPrefixed: Bool = true) throws -> String {
        // weight [2,2] fp8 e4m3fn: 0x38 = 1.0, 0x40 = 2.0, 0xB8 = -1.0, 0x00 = 0
        let scaleBytes = scaleShape.reduce(1, *) * 4
        let header: [String: Any] = [
            prefix + "m.weight": ["dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]],
            prefix + "m.scale_weight": ["dtype": "F32", "shape": scaleShape, "data_offsets": [4, 4 + scaleBytes]],
            prefix + "m.bias": ["dtype": "BF16", "shape": [2], "data_offsets": [4 + scaleBytes, 8 + scaleBytes]],
            (markerPrefixed ? prefix : "") + "scaled_fp8": ["dtype": "F8_E4M3", "shape": [0], "data_offsets": [8 + scaleBytes, 8 + scaleBytes]],
        ]
        var d = Data([0x38, 0x40, 0xB8, 0x00])
        d.append(f32Data([Float](repeating: 0.5, count: scaleShape.reduce(1, *))))
        var b = Bytes(); b.u16(0x3F80); b.u16(0xC000)  // bf16 1, -2
        d.append(b.data)
        return try writeSafetensors(header: header, data: d)
    }

    func testFP8ScaledValuesAndMarker() throws {
        for (shape, prefix, markerPrefixed) in [([Int](), "", true), ([1], "model.diffusion_model.", true), ([], "model.diffusion_model.", false)] {
            let w = try openDiTWeights(path: try fp8File(scaleShape: shape, prefix: prefix, markerPrefixed: markerPrefixed))
            XCTAssertEqual(w.layout, "comfy-fp8-scaled")
            XCTAssertEqual(Set(w.source.names), ["m.weight", "m.bias"])
            XCTAssertEqual(try w.source.float32("m.weight").array, [0.5, 1, -0.5, 0])
            XCTAssertEqual(try w.source.float32("m.bias").array, [1, -2])
            let st = try w.source.stored("m.weight")
            XCTAssertEqual(st.scale, 0.5)
            var row = [Float](repeating: 0, count: 2)
            row.withUnsafeMutableBufferPointer { st.dequantizeRows(1..<2, into: $0.baseAddress!) }
            XCTAssertEqual(row, [-0.5, 0])
            // Strict binding does not see the marker or the scale.
            let binder = WeightBinder(w.source)
            _ = try binder.tensor("m.weight", [2, 2]); _ = try binder.tensor("m.bias", [2])
            XCTAssertNoThrow(try binder.finish())
        }
    }

    func testFP8ScaleOfWrongShape() throws {
        let p = try fp8File(scaleShape: [2])
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: p) }) {
            if case .badScale(_, let k, let shape, _) = $0 { return k == "m.scale_weight" && shape == [2] }; return false
        }
    }

    // MARK: diffusers names, opener errors

    func testDiffusersNames() {
        let pairs = [
            ("condition_embedder.time_embedder.linear_1.weight", "time_embedding.0.weight"),
            ("condition_embedder.time_embedder.linear_2.bias", "time_embedding.2.bias"),
            ("condition_embedder.time_proj.weight", "time_projection.1.weight"),
            ("condition_embedder.text_embedder.linear_1.weight", "text_embedding.0.weight"),
            ("condition_embedder.text_embedder.linear_2.weight", "text_embedding.2.weight"),
            ("condition_embedder.image_embedder.norm1.weight", "img_emb.proj.0.weight"),
            ("condition_embedder.image_embedder.ff.net.0.proj.weight", "img_emb.proj.1.weight"),
            ("condition_embedder.image_embedder.ff.net.2.bias", "img_emb.proj.3.bias"),
            ("condition_embedder.image_embedder.norm2.bias", "img_emb.proj.4.bias"),
            ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
            ("blocks.12.attn1.to_q.weight", "blocks.12.self_attn.q.weight"),
            ("blocks.0.attn1.to_out.0.bias", "blocks.0.self_attn.o.bias"),
            ("blocks.0.attn1.norm_k.weight", "blocks.0.self_attn.norm_k.weight"),
            ("blocks.3.attn2.to_v.weight", "blocks.3.cross_attn.v.weight"),
            ("blocks.3.attn2.add_k_proj.weight", "blocks.3.cross_attn.k_img.weight"),
            ("blocks.3.attn2.add_v_proj.bias", "blocks.3.cross_attn.v_img.bias"),
            ("blocks.3.attn2.norm_added_k.weight", "blocks.3.cross_attn.norm_k_img.weight"),
            ("blocks.1.norm2.weight", "blocks.1.norm3.weight"),
            ("blocks.1.ffn.net.0.proj.weight", "blocks.1.ffn.0.weight"),
            ("blocks.1.ffn.net.2.bias", "blocks.1.ffn.2.bias"),
            ("blocks.1.scale_shift_table", "blocks.1.modulation"),
            ("scale_shift_table", "head.modulation"),
            ("proj_out.weight", "head.head.weight"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ]
        for (d, o) in pairs { XCTAssertEqual(DiffusersWan.officialName(d), o) }
        let args = try? DiffusersWan.officialArguments(["num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
                                                        "out_channels": 16, "ffn_dim": 13824, "num_layers": 40, "text_dim": 4096,
                                                        "qk_norm": "rms_norm_across_heads", "image_dim": 1280], path: "config.json")
        XCTAssertEqual(args?["dim"] as? Int, 5120)
        XCTAssertEqual(args?["num_heads"] as? Int, 40)
        XCTAssertEqual(args?["in_dim"] as? Int, 36)
        XCTAssertEqual(args?["qk_norm"] as? Bool, true)
    }

    /// A config.json beside the weights that cannot describe a model (num_heads 0, a negative layer count, a patch
    /// of extent 0, a dim that does not split into even heads): a badConfig naming the value, where num_heads 0 used to
    /// divide by zero (SIGFPE) in the DiT constructor and in `wan info`.
    func testConfigThatCannotDescribeAModel() throws {
        let weights = goldenDirectory + "/weights/dit_t2v.safetensors"
        guard FileManager.default.fileExists(atPath: weights) else { throw XCTSkip("golden data not found") }
        let cases: [(String, Any, String)] = [("num_heads", 0, "num_heads 0"), ("num_layers", -1, "num_layers -1"),
                                             ("patch_size", [1, 0, 2], "patch_size [1, 0, 2]"), ("dim", 97, "dim 97"),
                                             ("eps", 2.0, "eps 2.0")]
        for (key, value, named) in cases {
            let folder = NSTemporaryDirectory() + "wankit-config-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: folder + "/diffusion_pytorch_model.safetensors", withDestinationPath: weights)
            try JSONSerialization.data(withJSONObject: ["model_type": "t2v", key: value]).write(to: URL(fileURLWithPath: folder + "/config.json"))
            let w = try openDiTWeights(path: folder)
            expectThrows(WeightError.self, { _ = try WanDiT(weights: w.source, arguments: w.arguments) }) {
                guard case .badConfig(let s, let detail) = $0 else { return false }
                return s.contains(folder) && detail.contains(named) && detail.contains("config.json")
            }
        }
    }

    /// A diffusers config whose head count times head width overflows: a clear error, where the product trapped.
    func testDiffusersConfigWithOverflowingDim() {
        expectThrows(LayoutError.self, {
            _ = try DiffusersWan.officialArguments(["num_attention_heads": 1 << 62, "attention_head_dim": 128], path: "x/config.json")
        }) { if case .badDiffusersConfig("x/config.json", let d) = $0 { return d.contains("num_attention_heads") }; return false }
    }

    func testOpenerErrors() throws {
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: "/nonexistent/wan.safetensors") }) {
            if case .notFound = $0 { return true }; return false
        }
        let empty = NSTemporaryDirectory() + "wankit-empty-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: empty) }) { if case .unknownLayout = $0 { return true }; return false }
        let diffusers = NSTemporaryDirectory() + "wankit-diff-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: diffusers + "/transformer", withIntermediateDirectories: true)
        try Data(#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 8}"#.utf8)
            .write(to: URL(fileURLWithPath: diffusers + "/transformer/config.json"))
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: diffusers) }) { if case .notFound = $0 { return true }; return false }
        let pth = NSTemporaryDirectory() + "wankit-\(UUID().uuidString).pth"
        try Data([0x80, 0x02]).write(to: URL(fileURLWithPath: pth))
        expectThrows(LayoutError.self, { _ = try openDiTWeights(path: pth) }) { if case .unknownLayout = $0 { return true }; return false }
    }
}

/// Every ggml block type WanKit dequantises, on random blocks (finite f16 scales), against llama.cpp's own Python
/// reader: Tests/Variants/ggml (scripts/variants/ggml.py writes the GGUF file with gguf-py's writer and the values of
/// `gguf.quants.dequantize`). Catches a misread scale packing or nibble order that hand-built blocks might share with
/// the reader they test.
final class GGMLReferenceTests: XCTestCase {
    func testEveryBlockTypeMatchesGGUFPy() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Variants/ggml")
        let gguf = try GGUFSource(path: folder.appendingPathComponent("ggml_types.gguf").path)
        let expected = try SafetensorsSource(paths: [folder.appendingPathComponent("ggml_types_expected.safetensors").path])
        var types: Set<String> = []
        for name in expected.names.sorted() {
            let stored = try gguf.stored(name)
            guard case .ggml(let type) = stored.type else { XCTFail("\(name): stored as \(stored.type)"); continue }
            types.insert(type.description)
            let got = try gguf.float32(name), want = try expected.float32(name)
            XCTAssertEqual(got.shape, want.shape, name)
            var worst: Float = 0, largest: Float = 0
            for (a, b) in zip(got.array, want.array) { worst = max(worst, abs(a - b)); largest = max(largest, abs(b)) }
            // Both compute d * scale * q (- dmin * m) in f32; only the order of those products may differ.
            XCTAssertLessThanOrEqual(worst, 2e-7 * largest, "\(name) (\(type)): max |diff| \(worst), max |value| \(largest)")
        }
        XCTAssertEqual(types, ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
    }
}
