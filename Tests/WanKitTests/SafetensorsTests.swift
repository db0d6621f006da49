import Foundation
import XCTest
import WanKit

/// Writes a safetensors file from a header object (or raw header bytes) and a data section.
func writeSafetensors(header: Any? = nil, rawHeader: Data? = nil, declaredLength: UInt64? = nil, data: Data = Data(), truncateTo: Int? = nil) throws -> String {
    let headerBytes = try rawHeader ?? JSONSerialization.data(withJSONObject: header!)
    var file = Data()
    var n = (declaredLength ?? UInt64(headerBytes.count)).littleEndian
    file.append(Data(bytes: &n, count: 8))
    file.append(headerBytes)
    file.append(data)
    if let t = truncateTo { file = file.prefix(t) }
    let path = NSTemporaryDirectory() + "wankit-\(UUID().uuidString).safetensors"
    try file.write(to: URL(fileURLWithPath: path))
    return path
}

func floats(_ values: [Float]) -> Data { values.withUnsafeBufferPointer { Data(buffer: $0) } }

final class SafetensorsTests: XCTestCase {
    func expectError(_ path: String, file: StaticString = #filePath, line: UInt = #line, _ check: (WeightError) -> Bool) {
        do {
            _ = try SafetensorsFile(path: path)
            XCTFail("expected an error for \(path)", file: file, line: line)
        } catch let e as WeightError {
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(path) || e.description.contains("not found"), "message must name the file: \(e)", file: file, line: line)
        } catch {
            XCTFail("untyped error \(error)", file: file, line: line)
        }
    }

    func testValidFileReadsValuesAndDtypes() throws {
        var data = floats([1, 2, 3, 4, 5, 6])
        data.append(contentsOf: [0x00, 0x3C, 0x00, 0xC0] as [UInt8])  // f16 1.0, -2.0
        data.append(contentsOf: [0x80, 0x3F, 0x40, 0x40] as [UInt8])  // bf16 1.0, 3.0
        let path = try writeSafetensors(header: [
            "a": ["dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]],
            "h": ["dtype": "F16", "shape": [2], "data_offsets": [24, 28]],
            "b": ["dtype": "BF16", "shape": [2], "data_offsets": [28, 32]],
            "__metadata__": ["format": "pt"],
        ], data: data)
        let source = try SafetensorsSource(path: path)
        XCTAssertEqual(try source.float32("a").array, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try source.float32("a").shape, [2, 3])
        XCTAssertEqual(try source.float32("h").array, [1, -2])
        XCTAssertEqual(try source.float32("b").array, [1, 3])
        XCTAssertEqual(source.files[0].metadata["format"], "pt")
    }

    func testReleasingResidentPagesKeepsTheDataAndLeavesRSS() throws {
        let path = NSTemporaryDirectory() + "wankit-release-\(UUID().uuidString).bin"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let count = 64 << 20  // 64 MiB
        var bytes = [UInt8](repeating: 0, count: count)
        for i in stride(from: 0, to: count, by: 4096) { bytes[i] = UInt8(truncatingIfNeeded: i >> 12) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let file = try MappedFile(path: path)
        func rssBytes() -> Int {  // resident pages of this process (/proc/self/statm, second field)
            let text = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
            return (Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
        }
        var sum = 0
        for i in stride(from: 0, to: count, by: 4096) { sum &+= Int(file.base.load(fromByteOffset: i, as: UInt8.self)) }
        let touched = rssBytes()
        XCTAssertGreaterThanOrEqual(MappedFile.releaseAllResidentPages(), count)
        XCTAssertGreaterThan(touched - rssBytes(), count / 2, "the mapping's pages should leave the resident set")
        // The pages are still readable with the same contents (read again from the page cache).
        var again = 0
        for i in stride(from: 0, to: count, by: 4096) { again &+= Int(file.base.load(fromByteOffset: i, as: UInt8.self)) }
        XCTAssertEqual(again, sum)
        XCTAssertEqual(file.base.load(fromByteOffset: 5 * 4096, as: UInt8.self), 5)
    }

    func testMissingFile() {
        expectError("/nonexistent/wankit.safetensors") { if case .fileNotFound = $0 { return true }; return false }
    }

    func testFileShorterThanLengthField() throws {
        let path = NSTemporaryDirectory() + "wankit-short.safetensors"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: path))
        expectError(path) { if case .truncated = $0 { return true }; return false }
    }

    func testHeaderLengthBeyondFile() throws {
        let path = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [1], "data_offsets": [0, 4]]], declaredLength: 1 << 40, data: floats([1]))
        expectError(path) { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testHeaderNotJSON() throws {
        let path = try writeSafetensors(rawHeader: Data("{this is not json".utf8), data: Data(count: 8))
        // The message says where the JSON breaks (JSONSerialization's debug description), not only "not in the correct format".
        expectError(path) { if case .headerNotJSON(_, let d) = $0 { return d.contains("around character") }; return false }
        let arrayPath = try writeSafetensors(rawHeader: Data("[1,2,3]".utf8))
        expectError(arrayPath) { if case .headerNotJSON = $0 { return true }; return false }
    }

    func testTruncatedData() throws {
        let full = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [4], "data_offsets": [0, 16]]], data: floats([1, 2, 3, 4]))
        let size = try FileManager.default.attributesOfItem(atPath: full)[.size] as! Int
        let cut = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [4], "data_offsets": [0, 16]]], data: floats([1, 2, 3, 4]), truncateTo: size - 6)
        expectError(cut) { if case .offsetsOutOfRange = $0 { return true }; return false }
    }

    func testOffsetsOutOfRange() throws {
        let path = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [2], "data_offsets": [1000, 1008]]], data: floats([1, 2]))
        expectError(path) { if case .offsetsOutOfRange = $0 { return true }; return false }
        let reversed = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [0], "data_offsets": [8, 4]]], data: floats([1, 2]))
        expectError(reversed) { if case .offsetsOutOfRange = $0 { return true }; return false }
        let negative = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [1], "data_offsets": [-4, 0]]], data: floats([1, 2]))
        expectError(negative) { if case .offsetsOutOfRange = $0 { return true }; return false }
    }

    func testOverlappingTensors() throws {
        let path = try writeSafetensors(header: [
            "a": ["dtype": "F32", "shape": [2], "data_offsets": [0, 8]],
            "b": ["dtype": "F32", "shape": [2], "data_offsets": [4, 12]],
        ], data: floats([1, 2, 3]))
        expectError(path) { if case .overlapping = $0 { return true }; return false }
    }

    func testUnknownDType() throws {
        let path = try writeSafetensors(header: ["a": ["dtype": "F4_WEIRD", "shape": [2], "data_offsets": [0, 8]]], data: floats([1, 2]))
        expectError(path) { if case .unknownDType(_, "a", "F4_WEIRD") = $0 { return true }; return false }
    }

    func testShapeByteCountMismatch() throws {
        let path = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [3], "data_offsets": [0, 8]]], data: floats([1, 2]))
        expectError(path) { if case .byteCountMismatch(_, "a", [3], "F32", 12, 8) = $0 { return true }; return false }
    }

    func testMalformedEntries() throws {
        let noShape = try writeSafetensors(header: ["a": ["dtype": "F32", "data_offsets": [0, 4]]], data: floats([1]))
        expectError(noShape) { if case .badEntry = $0 { return true }; return false }
        let negDim = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [-1], "data_offsets": [0, 4]]], data: floats([1]))
        expectError(negDim) { if case .badEntry = $0 { return true }; return false }
        let hugeShape = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]]], data: floats([1]))
        expectError(hugeShape) { if case .badEntry = $0 { return true }; return false }
        let fractional = try writeSafetensors(header: ["a": ["dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]]], data: floats([1]))
        expectError(fractional) { if case .badEntry = $0 { return true }; return false }
    }

    func testStrictBindingNamesKeyAndShapes() throws {
        let path = try writeSafetensors(header: [
            "w": ["dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]],
            "extra": ["dtype": "F32", "shape": [1], "data_offsets": [16, 20]],
        ], data: floats([1, 2, 3, 4, 5]))
        let binder = WeightBinder(try SafetensorsSource(path: path))
        XCTAssertThrowsError(try binder.tensor("w", [4, 1])) { error in
            XCTAssertEqual(error as? WeightError, .shapeMismatch(source: path, key: "w", expected: [4, 1], found: [2, 2]))
        }
        XCTAssertThrowsError(try binder.tensor("missing", [1])) { error in
            XCTAssertEqual(error as? WeightError, .missingKey(source: path, key: "missing", expectedShape: [1]))
        }
        XCTAssertEqual(try binder.tensor("w", [2, 2]).array, [1, 2, 3, 4])
        XCTAssertThrowsError(try binder.finish()) { error in
            XCTAssertEqual(error as? WeightError, .unexpectedKeys(source: path, keys: ["extra"]))
        }
    }

    func testDuplicateKeyAcrossFiles() throws {
        let a = try writeSafetensors(header: ["w": ["dtype": "F32", "shape": [1], "data_offsets": [0, 4]]], data: floats([1]))
        let b = try writeSafetensors(header: ["w": ["dtype": "F32", "shape": [1], "data_offsets": [0, 4]]], data: floats([2]))
        XCTAssertThrowsError(try SafetensorsSource(paths: [a, b])) { error in
            guard case .duplicateKey("w", _, _) = error as? WeightError else { return XCTFail("\(error)") }
        }
    }

    func testRandomGarbageNeverCrashes() throws {
        var generator = SystemRandomNumberGenerator()
        for trial in 0..<200 {
            let n = Int.random(in: 0..<512, using: &generator)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if trial % 2 == 0 && n >= 8 {  // plausible length prefix
                let len = UInt64(max(0, n - 8 - Int.random(in: 0..<8)))
                withUnsafeBytes(of: len.littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
            }
            let path = NSTemporaryDirectory() + "wankit-garbage-\(trial).safetensors"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do { _ = try SafetensorsFile(path: path) } catch is WeightError {} catch { XCTFail("untyped error \(error)") }
        }
    }

    /// The tensors a DiT configuration is read from must have the official ranks: a 0-d blocks.0.ffn.0.weight or a
    /// patch of extent 0 is a clear badConfig naming the tensor, where inference used to read past the end of the
    /// shape (garbage widths in release builds, a trap in checked ones) or divide by the patch later.
    func testDiTConfigInferenceRefusesMisshapenTensors() throws {
        func source(_ overrides: [String: [Int]]) throws -> SafetensorsSource {
            var shapes: [String: [Int]] = ["patch_embedding.weight": [4, 2, 1, 2, 2], "head.head.weight": [8, 4],
                                           "blocks.0.ffn.0.weight": [8, 4], "time_embedding.0.weight": [4, 6],
                                           "text_embedding.0.weight": [4, 3]]
            for (k, v) in overrides { shapes[k] = v }
            var header: [String: Any] = [:], offset = 0
            for (k, s) in shapes.sorted(by: { $0.key < $1.key }) {
                let bytes = 4 * s.reduce(1, *)
                header[k] = ["dtype": "F32", "shape": s, "data_offsets": [offset, offset + bytes]]
                offset += bytes
            }
            return try SafetensorsSource(path: try writeSafetensors(header: header, data: Data(count: offset)))
        }
        XCTAssertEqual(try WanDiTConfig(inferringFrom: source([:])).ffnDim, 8)
        for (key, shape) in [("blocks.0.ffn.0.weight", [Int]()), ("time_embedding.0.weight", [24]), ("text_embedding.0.weight", [4, 3, 1]),
                             ("head.head.weight", []), ("patch_embedding.weight", [4, 2, 1, 0, 2])] {
            let s = try source([key: shape])
            XCTAssertThrowsError(try WanDiTConfig(inferringFrom: s), "\(key) \(shape)") { e in
                guard case .badConfig(let label, let detail) = e as? WeightError else { return XCTFail("\(key): \(e)") }
                XCTAssertEqual(label, s.label)
                XCTAssertTrue(detail.contains(key), "\(e)")
            }
        }
    }

    func testDiTBindingRejectsWrongModel() throws {
        // The t2v weights cannot be bound as an i2v model: the error names the missing image-projection tensor.
        let path = goldenDirectory + "/weights/dit_t2v.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("golden data not found") }
        let source = try SafetensorsSource(path: path)
        var config = try WanDiTConfig(inferringFrom: source)
        XCTAssertEqual(config.dim, 96)
        XCTAssertEqual(config.textDim, 32)
        XCTAssertEqual(config.numLayers, 2)
        XCTAssertEqual(config.modelType, "t2v")
        config.modelType = "i2v"
        config.inDim = 36
        XCTAssertThrowsError(try WanDiT(config: config, weights: source)) { error in
            XCTAssertTrue("\(error)".contains("patch_embedding.weight"), "\(error)")
        }
    }
}
