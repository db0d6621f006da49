import Foundation
import XCTest
import WanKit

/// Linear layers on compact weights (kept as stored, dequantised tile by tile inside the GEMM) against the float32
/// Linear on the same weights dequantised whole.
final class CompactWeightsTests: XCTestCase {
    /// Owns the bytes a hand-made StoredTensor points at.
    final class Bytes {
        let pointer: UnsafeMutableRawPointer
        let count: Int
        init(_ bytes: [UInt8]) {
            count = bytes.count
            pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
            bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: count) }
        }
        deinit { pointer.deallocate() }
    }

    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 11
        }
        mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 20) }
        /// Uniform in [-1, 1).
        mutating func float() -> Float { Float(next() >> 29) / Float(1 << 24) * 2 - 1 }
    }

    static func f16Bytes(_ v: Float) -> [UInt8] {
        let b = Float16(v).bitPattern
        return [UInt8(b & 0xFF), UInt8(b >> 8)]
    }

    /// Random stored weights [rows, cols] of `type` (valid blocks with sane scales for ggml types).
    static func makeStored(_ type: StorageType, rows: Int, cols: Int, scale: Float? = nil, amplitude a: Float = 1, seed: UInt64) -> StoredTensor {
        var rng = Rng(state: seed)
        let n = rows * cols
        var bytes: [UInt8] = []
        switch type {
        case .dtype(.f16):
            for _ in 0..<n { bytes += f16Bytes(a * rng.float()) }
        case .dtype(.bf16):
            for _ in 0..<n { let b = (a * rng.float()).bitPattern >> 16; bytes += [UInt8(b & 0xFF), UInt8(b >> 8)] }
        case .dtype(.f8e4m3):
            for _ in 0..<n {
                var b = rng.byte()
                if b & 0x7F == 0x7F { b ^= 0x01 }  // no NaN
                bytes.append(b)
            }
        case .dtype(.f32):
            for _ in 0..<n { let b = rng.float().bitPattern; bytes += [0, 8, 16, 24].map { UInt8(truncatingIfNeeded: b >> UInt32($0)) } }
        case .ggml(let g):
            precondition(cols % g.blockSize == 0)
            for _ in 0..<(n / g.blockSize) {
                switch g {
                case .q8_0:
                    bytes += f16Bytes(a * (0.01 + 0.02 * abs(rng.float())))
                    for _ in 0..<32 { bytes.append(rng.byte()) }
                case .q4_0:
                    bytes += f16Bytes(a * (0.05 + 0.1 * abs(rng.float())))
                    for _ in 0..<16 { bytes.append(rng.byte()) }
                case .q4_K:
                    bytes += f16Bytes(a * (0.002 + 0.01 * abs(rng.float()))) + f16Bytes(a * (0.002 + 0.01 * abs(rng.float())))
                    for _ in 0..<(12 + 128) { bytes.append(rng.byte()) }
                case .q5_K:
                    bytes += f16Bytes(a * (0.002 + 0.01 * abs(rng.float()))) + f16Bytes(a * (0.002 + 0.01 * abs(rng.float())))
                    for _ in 0..<(12 + 32 + 128) { bytes.append(rng.byte()) }
                case .q6_K:
                    for _ in 0..<(128 + 64 + 16) { bytes.append(rng.byte()) }
                    bytes += f16Bytes(a * (0.0005 + 0.001 * abs(rng.float())))
                default:
                    preconditionFailure("no generator for \(g)")
                }
            }
        default:
            preconditionFailure("no generator for \(type)")
        }
        let owner = Bytes(bytes)
        return StoredTensor(name: "w", type: type, shape: [rows, cols], data: UnsafeRawPointer(owner.pointer), byteCount: bytes.count,
                            scale: scale, owner: owner)
    }

    /// max |compact - float32| <= 1e-5 · max |float32| for a Linear with and without bias and epilogue.
    func check(_ type: StorageType, scale: Float? = nil, rows: Int = 600, cols: Int = 512, m: Int = 9,
               file: StaticString = #filePath, line: UInt = #line) {
        let stored = Self.makeStored(type, rows: rows, cols: cols, scale: scale, seed: UInt64(rows * 31 + cols))
        let matrix = LinearWeight(stored)
        XCTAssertTrue(matrix.isCompact, "\(type) must stay compact", file: file, line: line)
        var rng = Rng(state: 77)
        let bias = Tensor(shape: [rows], values: (0..<rows).map { _ in rng.float() })
        let x = Tensor(shape: [m, cols], values: (0..<(m * cols)).map { _ in rng.float() })
        let dense = stored.float32()
        XCTAssertTrue(dense.array.allSatisfy(\.isFinite), "\(type) dequantised to non-finite values", file: file, line: line)
        for (withBias, epilogue) in [(true, Epilogue.none), (false, .geluTanh), (true, .silu)] {
            let compact = Linear(matrix, bias: withBias ? bias : nil)
            let reference = Linear(weight: dense, bias: withBias ? bias : nil)
            for rowsIn in [m, 1] {
                let a = Tensor(zeros: [rowsIn, rows]), b = Tensor(zeros: [rowsIn, rows])
                compact(x.data, rows: rowsIn, into: a.data, epilogue: epilogue)
                reference(x.data, rows: rowsIn, into: b.data, epilogue: epilogue)
                var maxDiff: Float = 0, maxRef: Float = 0
                for i in 0..<a.count { maxDiff = max(maxDiff, abs(a.data[i] - b.data[i])); maxRef = max(maxRef, abs(b.data[i])) }
                XCTAssertGreaterThan(maxRef, 0, file: file, line: line)
                XCTAssertLessThanOrEqual(maxDiff, 1e-5 * maxRef, "\(type) m=\(rowsIn) bias=\(withBias) \(epilogue): max diff \(maxDiff) of \(maxRef)",
                                         file: file, line: line)
            }
        }
        // Rows dequantised by the tile path are the rows of the whole-matrix dequantisation.
        let r = min(rows - 1, 100) ..< min(rows, 137)
        let tile = UnsafeMutablePointer<Float>.allocate(capacity: r.count * cols)
        defer { tile.deallocate() }
        matrix.dequantizeRows(r, into: tile)
        for i in 0..<(r.count * cols) where tile[i] != dense.data[r.lowerBound * cols + i] {
            XCTFail("\(type): row tile differs at \(i)", file: file, line: line); break
        }
    }

    func testF16() { check(.dtype(.f16)) }
    func testBF16() { check(.dtype(.bf16)) }
    func testFP8() { check(.dtype(.f8e4m3)) }
    func testFP8Scaled() { check(.dtype(.f8e4m3), scale: 0.0173) }
    func testQ8_0() { check(.ggml(.q8_0)) }
    func testQ4_0() { check(.ggml(.q4_0)) }
    func testQ4_K() { check(.ggml(.q4_K)) }
    func testQ5_K() { check(.ggml(.q5_K)) }
    func testQ6_K() { check(.ggml(.q6_K)) }
    /// Tall and wide shapes: several chunks and tiles, an uneven last tile, one output row per worker.
    func testShapes() {
        check(.ggml(.q4_K), rows: 1000, cols: 1536, m: 33)
        check(.dtype(.f16), rows: 17, cols: 3000, m: 5)
        check(.dtype(.bf16), rows: 2051, cols: 64, m: 3)
    }

    /// A misaligned float32 tensor cannot be viewed: it stays compact (converted per tile) and computes the same.
    func testUnalignedF32() {
        let s = Self.makeStored(.dtype(.f32), rows: 300, cols: 260, seed: 3)
        let shifted = Bytes([0] + [UInt8](UnsafeRawBufferPointer(start: s.data, count: s.byteCount)))
        let unaligned = StoredTensor(name: "w", type: .dtype(.f32), shape: [300, 260], data: UnsafeRawPointer(shifted.pointer + 1),
                                     byteCount: s.byteCount, owner: shifted)
        XCTAssertTrue(LinearWeight(unaligned).isCompact)
        XCTAssertFalse(LinearWeight(s).isCompact, "aligned float32 is a view")
        let x = Tensor(shape: [4, 260], values: (0..<1040).map { Float($0 % 13) * 0.1 })
        let a = Linear(LinearWeight(unaligned), bias: nil)(x), b = Linear(LinearWeight(s), bias: nil)(x)
        let scale = b.array.map(abs).max()!
        for i in 0..<a.count { XCTAssertEqual(a.data[i], b.data[i], accuracy: 1e-5 * scale) }
    }

    /// Binding from a file: compact types stay in the mapping, aligned float32 is a zero-copy view, and the binder
    /// checks shapes and marks keys used.
    func testBindingFromFile() throws {
        let rows = 64, cols = 32
        var data = Data()
        var rng = Rng(state: 5)
        let f32 = (0..<(rows * cols)).map { _ in rng.float() }
        data.append(floats(f32))
        for v in f32 { data.append(contentsOf: Self.f16Bytes(v)) }
        let header: [String: Any] = [
            "a.weight": ["dtype": "F32", "shape": [rows, cols], "data_offsets": [0, rows * cols * 4]],
            "b.weight": ["dtype": "F16", "shape": [rows, cols], "data_offsets": [rows * cols * 4, rows * cols * 6]],
        ]
        var h = try JSONSerialization.data(withJSONObject: header)
        while (8 + h.count) % 8 != 0 { h.append(0x20) }
        let path = try writeSafetensors(rawHeader: h, data: data)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let source = try SafetensorsSource(path: path)

        let wrong = WeightBinder(source)
        XCTAssertThrowsError(try wrong.stored("b.weight", [cols, rows])) { e in
            guard case WeightError.shapeMismatch = e else { return XCTFail("expected shapeMismatch, got \(e)") }
        }
        XCTAssertThrowsError(try wrong.stored("c.weight", [rows, cols])) { e in
            guard case WeightError.missingKey = e else { return XCTFail("expected missingKey, got \(e)") }
        }

        let binder = WeightBinder(source)
        let a = try Linear(binder, "a", in: cols, out: rows, bias: false)
        XCTAssertThrowsError(try binder.finish(), "b.weight is not used yet")
        let b = try Linear(binder, "b", in: cols, out: rows, bias: false)
        XCTAssertNoThrow(try binder.finish())
        XCTAssertFalse(a.matrix.isCompact)
        let base = source.files[0].pointer(source.info("a.weight")!)
        XCTAssertEqual(UnsafeRawPointer(a.matrix.float32!.data), base, "aligned float32 must be a view into the mapping")
        XCTAssertTrue(b.matrix.isCompact)
        XCTAssertEqual(b.matrix.storageDescription, "F16")
        XCTAssertEqual(b.matrix.byteCount, rows * cols * 2)
        let x = Tensor(shape: [3, cols], values: (0..<(3 * cols)).map { _ in rng.float() })
        let ya = a(x), yb = b(x), yr = Linear(weight: b.weight, bias: nil)(x)
        for i in 0..<ya.count {
            XCTAssertEqual(yb.data[i], yr.data[i], accuracy: 1e-5)
            XCTAssertEqual(ya.data[i], yb.data[i], accuracy: 2e-2)  // f16 rounding of the same weights
        }
    }

    /// A DiT bound to compact weights gives the result of the same DiT bound to their float32 dequantisation.
    func testDiTOnCompactWeights() throws {
        var config = WanDiTConfig.presets["t2v-1.3B"]!
        config.dim = 256; config.numHeads = 2; config.ffnDim = 512; config.numLayers = 1; config.textDim = 256; config.freqDim = 256
        let shapes = config.parameterShapes()
        final class Compact: WeightSource, @unchecked Sendable {
            let tensors: [String: StoredTensor]
            init(_ t: [String: StoredTensor]) { tensors = t }
            var label: String { "compact" }
            var names: [String] { Array(tensors.keys) }
            func info(_ name: String) -> TensorInfo? {
                tensors[name].map { TensorInfo(name: name, dtype: .f32, shape: $0.shape, offset: 0, byteCount: $0.byteCount) }
            }
            func float32(_ name: String) throws -> Tensor { tensors[name]!.float32() }
            func stored(_ name: String) throws -> StoredTensor { tensors[name]! }
        }
        var compact: [String: StoredTensor] = [:], dense: [String: StoredTensor] = [:]
        for (i, (name, shape)) in shapes.enumerated() {
            let quantise = name.hasPrefix("blocks.") && name.hasSuffix(".weight") && shape.count == 2
            let cols = shape.last!, rows = shape.count == 1 ? 1 : shape.dropLast().reduce(1, *)
            // Sane magnitudes (about PyTorch's init) so that the two runs are compared, not amplified noise.
            let isNorm = shape.count == 1 && name.contains("norm")
            var s = Self.makeStored(quantise ? .ggml(.q4_K) : .dtype(.f16), rows: rows, cols: cols,
                                    amplitude: isNorm ? 1 : quantise ? 0.1 / Float(cols).squareRoot() : 1 / Float(cols).squareRoot(), seed: UInt64(i + 1))
            s = StoredTensor(name: name, type: s.type, shape: shape, data: s.data, byteCount: s.byteCount, owner: s.owner)
            compact[name] = s
            let f = s.float32()
            dense[name] = StoredTensor(name: name, type: .dtype(.f32), shape: shape, data: UnsafeRawPointer(f.data), byteCount: f.count * 4, owner: f)
        }
        let a = try WanDiT(config: config, weights: Compact(compact)), b = try WanDiT(config: config, weights: Compact(dense))
        let r = RandomWeights(shapes: [("x", [16, 1, 4, 6]), ("c", [5, config.textDim])], seed: 9)
        let input = DiTInput(x: try r.float32("x"), t: 500, context: try r.float32("c"))
        let ya = try a.forward(input), yb = try b.forward(input)
        let d = ya.array.withUnsafeBufferPointer { g in yb.array.withUnsafeBufferPointer { Comparison(got: g, expected: $0) } }
        XCTAssertLessThan(d.relL2, 1e-5, "\(d)")
    }
}
