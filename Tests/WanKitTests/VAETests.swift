import Foundation
import XCTest
import WanKit

/// Writes a stored (uncompressed) zip archive, as torch.save does.
func writeZip(_ entries: [(name: String, data: [UInt8])], to path: String) throws {
    var out: [UInt8] = [], central: [UInt8] = []
    func u16(_ v: Int, _ a: inout [UInt8]) { a += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    func u32(_ v: Int, _ a: inout [UInt8]) { for i in 0..<4 { a.append(UInt8((v >> (8 * i)) & 0xFF)) } }
    for e in entries {
        let offset = out.count, name = Array(e.name.utf8)
        u32(0x0403_4B50, &out); u16(20, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0, &out)
        u32(0, &out); u32(e.data.count, &out); u32(e.data.count, &out); u16(name.count, &out); u16(0, &out)
        out += name; out += e.data
        u32(0x0201_4B50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central)
        u32(0, &central); u32(e.data.count, &central); u32(e.data.count, &central); u16(name.count, &central); u16(0, &central); u16(0, &central)
        u16(0, &central); u16(0, &central); u32(0, &central); u32(offset, &central)
        central += name
    }
    let cdOffset = out.count
    out += central
    u32(0x0605_4B50, &out); u16(0, &out); u16(0, &out); u16(entries.count, &out); u16(entries.count, &out)
    u32(central.count, &out); u32(cdOffset, &out); u16(0, &out)
    try Data(out).write(to: URL(fileURLWithPath: path))
}

/// Writes a stored zip archive in zip64 form (every size and offset in the extra field, a zip64 end-of-central-
/// directory record and locator), as torch.save writes checkpoints over 4 GB. Returns the bytes and where each
/// 64-bit field lies: "record" (the locator's record offset), "count", "cdSize", "cdOffset" (the record's), and
/// "size<i>", "stored<i>", "local<i>" (entry i's extra field).
func zip64Archive(_ entries: [(name: String, data: [UInt8])]) -> (bytes: [UInt8], fields: [String: Int]) {
    var out: [UInt8] = [], central: [UInt8] = [], fields: [String: Int] = [:]
    func u16(_ v: Int, _ a: inout [UInt8]) { a += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    func u32(_ v: Int, _ a: inout [UInt8]) { for i in 0..<4 { a.append(UInt8((v >> (8 * i)) & 0xFF)) } }
    func u64(_ v: Int, _ a: inout [UInt8]) { for i in 0..<8 { a.append(UInt8((v >> (8 * i)) & 0xFF)) } }
    var centralFields: [(String, Int)] = []
    for (i, e) in entries.enumerated() {
        let offset = out.count, name = Array(e.name.utf8)
        u32(0x0403_4B50, &out); u16(45, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0, &out)
        u32(0, &out); u32(0xFFFF_FFFF, &out); u32(0xFFFF_FFFF, &out); u16(name.count, &out); u16(20, &out)
        out += name; u16(1, &out); u16(16, &out); u64(e.data.count, &out); u64(e.data.count, &out)
        out += e.data
        u32(0x0201_4B50, &central); u16(45, &central); u16(45, &central); u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central)
        u32(0, &central); u32(0xFFFF_FFFF, &central); u32(0xFFFF_FFFF, &central); u16(name.count, &central); u16(28, &central); u16(0, &central)
        u16(0, &central); u16(0, &central); u32(0, &central); u32(0xFFFF_FFFF, &central)
        central += name; u16(1, &central); u16(24, &central)
        centralFields += [("size\(i)", central.count), ("stored\(i)", central.count + 8), ("local\(i)", central.count + 16)]
        u64(e.data.count, &central); u64(e.data.count, &central); u64(offset, &central)
    }
    let cdOffset = out.count
    for (k, o) in centralFields { fields[k] = cdOffset + o }
    out += central
    let record = out.count
    u32(0x0606_4B50, &out); u64(44, &out); u16(45, &out); u16(45, &out); u32(0, &out); u32(0, &out)
    fields["count"] = out.count + 8; u64(entries.count, &out); u64(entries.count, &out)
    fields["cdSize"] = out.count; u64(central.count, &out)
    fields["cdOffset"] = out.count; u64(cdOffset, &out)
    u32(0x0706_4B50, &out); u32(0, &out); fields["record"] = out.count; u64(record, &out); u32(1, &out)
    u32(0x0605_4B50, &out); u16(0, &out); u16(0, &out); u16(0xFFFF, &out); u16(0xFFFF, &out)
    u32(0xFFFF_FFFF, &out); u32(0xFFFF_FFFF, &out); u16(0, &out)
    return (out, fields)
}

/// A pickle (protocol 2) of {"w": _rebuild_tensor_v2(storage(FloatStorage, "0", numel), offset, shape, stride, False,
/// OrderedDict())}; `shape` and `stride` default to (n,) and (1,). Integers beyond 32 bits are written as LONG1.
func stateDictPickle(storageElements: Int, shape: Int, global: String = "torch._utils\n_rebuild_tensor_v2\n",
                     offset: Int = 0, dims: [Int]? = nil, strides: [Int]? = nil) -> [UInt8] {
    var p: [UInt8] = [0x80, 2, 0x7D, 0x28]                                   // PROTO 2, EMPTY_DICT, MARK
    func unicode(_ s: String) { let b = Array(s.utf8); p += [0x58] + withUnsafeBytes(of: UInt32(b.count).littleEndian, Array.init) + b }
    func int(_ v: Int) {
        if let small = Int32(exactly: v) { p += [0x4A] + withUnsafeBytes(of: small.littleEndian, Array.init) }  // BININT
        else { p += [0x8A, 8] + withUnsafeBytes(of: v.littleEndian, Array.init) }                              // LONG1
    }
    func tuple(_ values: [Int]) { p += [0x28]; values.forEach(int); p += [0x74] }                              // MARK … TUPLE
    unicode("w")
    p += [0x63] + Array(global.utf8)                                           // GLOBAL
    p += [0x28, 0x28]                                                          // MARK MARK
    unicode("storage"); p += [0x63] + Array("torch\nFloatStorage\n".utf8); unicode("0"); unicode("cpu")
    int(storageElements)
    p += [0x74, 0x51]                                                          // TUPLE, BINPERSID
    int(offset)
    tuple(dims ?? [shape])
    tuple(strides ?? [1])
    p += [0x89]                                                                // False
    p += [0x63] + Array("collections\nOrderedDict\n".utf8) + [0x29, 0x52]      // OrderedDict()
    p += [0x74, 0x52]                                                          // TUPLE, REDUCE
    p += [0x75, 0x2E]                                                          // SETITEMS, STOP
    return p
}

final class VAETests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)

    func check(_ name: String) throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        let r = Self.runner.run(caseNamed: name)
        guard case .pass = r else { return XCTFail(r.description) }
    }

    func testGoldenEncode9() throws { try check("vae_encode_9f") }
    func testGoldenEncode13() throws { try check("vae_encode_13f") }
    func testGoldenDecode3() throws { try check("vae_decode_3l") }
    func testGoldenDecode5() throws { try check("vae_decode_5l") }
    func testGoldenRoundTrip() throws { try check("vae_roundtrip_1f") }
    func testGoldenPth() throws { try check("weights_vae_pth") }
    func testGoldenDiffusers() throws { try check("weights_vae_diffusers") }

    func tinyVAE() throws -> WanVAE {
        let path = goldenDirectory + "/weights/vae.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("golden data not found") }
        let w = try openVAEWeights(path: path)
        return try WanVAE(weights: w.source, arguments: ["dim": 8])
    }

    func testWrongFrameCountAndSizeSayWhatToDo() throws {
        let vae = try tinyVAE()
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [3, 0, 32, 32]))) { e in
            XCTAssertTrue("\(e)".contains("no frames"), "\(e)")
        }
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [3, 5, 4, 32]))) { e in
            XCTAssertTrue("\(e)".contains("at least 8x8"), "\(e)")
        }
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [4, 1, 32, 32])))
        XCTAssertThrowsError(try vae.decode(Tensor(zeros: [8, 1, 4, 4]))) { e in XCTAssertTrue("\(e)".contains("[16"), "\(e)") }
    }

    /// 1 + 4k + r frames (r < 4) encode as their first 1 + 4k, as the official loop (1 + (T - 1) // 4 chunks) does.
    func testFramesPastTheLastWholeChunkAreNotEncoded() throws {
        let vae = try tinyVAE()
        var rng = SystemRandomNumberGenerator()
        let video = Tensor(uninitialized: [3, 8, 16, 16])
        for i in 0..<video.count { video.data[i] = Float.random(in: -1...1, using: &rng) }
        let first5 = Tensor(uninitialized: [3, 5, 16, 16])
        for ch in 0..<3 { (first5.data + ch * 5 * 256).update(from: video.data + ch * 8 * 256, count: 5 * 256) }
        let all = try vae.encode(video), head = try vae.encode(first5)
        XCTAssertEqual(all.shape, [16, 2, 2, 2])
        XCTAssertEqual(Array(UnsafeBufferPointer(start: all.data, count: all.count)),
                       Array(UnsafeBufferPointer(start: head.data, count: head.count)))
        XCTAssertEqual(try vae.encode(Tensor(zeros: [3, 3, 16, 16])).shape, [16, 1, 2, 2])
    }

    func testStreamedDecodeEqualsWholeDecode() throws {
        let vae = try tinyVAE()
        let latent = Tensor(zeros: [16, 3, 4, 4])
        for i in 0..<latent.count { latent.data[i] = Float((i * 37) % 11) / 5 - 1 }
        var chunks: [(Tensor, Int)] = []
        try vae.decode(latent) { chunk, first in chunks.append((chunk, first)) }
        XCTAssertEqual(chunks.map { $0.0.shape[1] }, [1, 4, 4])
        XCTAssertEqual(chunks.map(\.1), [0, 1, 5])
        let whole = try vae.decode(latent)
        XCTAssertEqual(whole.shape, [3, 9, 32, 32])
        XCTAssertEqual(concatenateFrames(chunks.map(\.0)).array, whole.array)
    }

    func testStreamingEncodeReadsOneFrameAtATimeInOrderAndEqualsWholeEncode() throws {
        let vae = try tinyVAE()
        let (T, H, W) = (9, 24, 16)
        let video = Tensor(zeros: [3, T, H, W])
        for i in 0..<video.count { video.data[i] = Float((i * 53) % 17) / 8 - 1 }
        let whole = try vae.encode(video)
        XCTAssertEqual(whole.shape, [16, 3, 3, 2])
        var order: [Int] = []
        let streamed = try vae.encode(frames: T, height: H, width: W) { index, planar in
            order.append(index)
            for ch in 0..<3 { (planar + ch * H * W).update(from: video.data + (ch * T + index) * H * W, count: H * W) }
        }
        XCTAssertEqual(order, Array(0..<T))
        XCTAssertEqual(streamed.array, whole.array)
        // The first latent frame depends on the first video frame only (causal): changing the last frame leaves it.
        for i in 0..<(H * W) { for ch in 0..<3 { video.data[(ch * T + T - 1) * H * W + i] = 0.5 } }
        let changed = try vae.encode(video)
        let plane = 3 * 2
        for ch in 0..<16 {
            XCTAssertEqual(Array(changed.buffer[(ch * 3) * plane ..< (ch * 3 + 1) * plane]), Array(whole.buffer[(ch * 3) * plane ..< (ch * 3 + 1) * plane]))
        }
        XCTAssertNotEqual(changed.array, whole.array)
        // A reader error stops the encode and reaches the caller.
        struct Stop: Error {}
        XCTAssertThrowsError(try vae.encode(frames: T, height: H, width: W) { index, _ in if index == 4 { throw Stop() } }) { XCTAssertTrue($0 is Stop) }
    }

    func testTiledDecodeBlendsTilesAndOneTileIsTheExactDecode() throws {
        let vae = try tinyVAE()
        let latent = Tensor(zeros: [16, 2, 12, 10])
        for i in 0..<latent.count { latent.data[i] = Float((i * 29) % 13) / 6 - 1 }
        let exact = try vae.decode(latent)
        func tiled(_ th: Int, _ tw: Int, overlap: Int) throws -> (video: Tensor, chunks: [Int], ticks: Int) {
            var chunks: [Tensor] = [], firsts: [Int] = [], ticks = 0
            try vae.decodeTiled(latent, tileHeight: th, tileWidth: tw, overlap: overlap, afterTileFrame: { ticks += 1 }) { c, f in
                chunks.append(c); firsts.append(f)
            }
            return (concatenateFrames(chunks), firsts, ticks)
        }
        // A tile as large as the latent is the exact decode, bit for bit.
        let whole = try tiled(12, 10, overlap: 4)
        XCTAssertEqual(whole.video.array, exact.array)
        XCTAssertEqual(whole.chunks, [0, 1])
        XCTAssertEqual(whole.ticks, 2)
        // 2 x 2 tiles of 8 x 7 latent pixels overlapping by 4: the same shape, values in [-1, 1], near the exact decode
        // (tile edges see zero padding instead of their neighbours), and every tile ran every latent frame.
        let four = try tiled(8, 7, overlap: 4)
        XCTAssertEqual(four.video.shape, exact.shape)
        XCTAssertEqual(four.ticks, 2 * 4)
        XCTAssertTrue(four.video.array.allSatisfy { $0 >= -1 && $0 <= 1 })
        var diff: Float = 0, norm: Float = 0
        for i in 0..<exact.count { diff += (four.video.data[i] - exact.data[i]) * (four.video.data[i] - exact.data[i]); norm += exact.data[i] * exact.data[i] }
        XCTAssertGreaterThan(diff, 0)
        XCTAssertLessThan((diff / norm).squareRoot(), 0.5)
        // The tile plan: one tile when the state fits, more (and smaller) tiles for a smaller budget.
        let all = vae.config.decodeStateBytes(width: 80, height: 96)
        let one = vae.config.decodeTiles(latentHeight: 12, latentWidth: 10, stateBudget: all, overlap: 2)
        XCTAssertEqual(one.rows * one.columns, 1)
        let split = vae.config.decodeTiles(latentHeight: 12, latentWidth: 10, stateBudget: all / 2, overlap: 2)
        XCTAssertGreaterThan(split.rows * split.columns, 1)
        XCTAssertLessThanOrEqual(vae.config.decodeStateBytes(width: split.width * 8, height: split.height * 8), all / 2)
        XCTAssertThrowsError(try vae.decodeTiled(latent, tileHeight: 4, tileWidth: 4, overlap: 4) { _, _ in })
    }

    func testDecodeStateEstimateFollowsTheArchitecture() {
        // 832x480 with the published VAE: 3.78 GB of causal histories plus four frames of the widest stage.
        let bytes = WanVAEConfig.wan21.decodeStateBytes(width: 832, height: 480)
        XCTAssertGreaterThan(bytes, 4_000_000_000)
        XCTAssertLessThan(bytes, 5_000_000_000)
        // Histories scale with the pixel count.
        let quarter = WanVAEConfig.wan21.decodeStateBytes(width: 416, height: 240)
        XCTAssertEqual(Double(bytes) / Double(quarter), 4, accuracy: 0.01)
    }

    /// VAE configurations that cannot describe a Wan-VAE (a diffusers config.json with a huge or negative
    /// layers_per_block, no dim_mult, too few temperal_downsample entries or latent statistics): a badConfig naming
    /// the value, where building the layer list trapped on a negative range or an index past the end.
    func testVAEConfigThatCannotDescribeAVAE() {
        let weights = RandomWeights(shapes: [])
        var cases: [(WanVAEConfig, String)] = []
        var c = WanVAEConfig.wan21; c.numResBlocks = Int.min; cases.append((c, "num_res_blocks"))
        c = .wan21; c.dimMult = []; cases.append((c, "dim_mult []"))
        c = .wan21; c.temporalDownsample = [true]; cases.append((c, "temperal_downsample [true]"))
        c = .wan21; c.zDim = 32; cases.append((c, "fewer than z_dim 32"))
        c = .wan21; c.dim = 0; cases.append((c, "dim 0"))
        for (config, named) in cases {
            XCTAssertThrowsError(try WanVAE(config: config, weights: weights), named) { e in
                guard case .badConfig(let source, let detail)? = e as? WeightError else { return XCTFail("\(named): \(e)") }
                XCTAssertEqual(source, "random weights")
                XCTAssertTrue(detail.contains(named), "\(e)")
            }
        }
    }

    /// A diffusers VAE config.json with num_res_blocks near -2^63, and an up_blocks index near 2^63 in a tensor name:
    /// a clear error naming the config, and the name left for strict binding to report, where the name mapping's
    /// numResBlocks + 2 and block * stride overflowed (traps).
    func testDiffusersVAEAbsurdCountsAreRefused() throws {
        let folder = NSTemporaryDirectory() + "wankit-vae-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Data(#"{"_class_name": "AutoencoderKLWan", "num_res_blocks": -9223372036854775808}"#.utf8)
            .write(to: URL(fileURLWithPath: folder + "/config.json"))
        let weights = try writeSafetensors(header: ["decoder.up_blocks.0.resnets.0.norm1.gamma": ["dtype": "F32", "shape": [1], "data_offsets": [0, 4]]],
                                           data: floats([1]))
        try FileManager.default.moveItem(atPath: weights, toPath: folder + "/diffusion_pytorch_model.safetensors")
        XCTAssertThrowsError(try openVAEWeights(path: folder)) { e in
            guard case .badDiffusersConfig(let p, let d)? = e as? LayoutError else { return XCTFail("\(e)") }
            XCTAssertEqual(p, folder + "/config.json")
            XCTAssertTrue(d.contains("num_res_blocks"), d)
        }
        let name = "decoder.up_blocks.9223372036854775807.resnets.0.conv1.weight"
        XCTAssertEqual(DiffusersWanVAE.officialName(name), name)
        XCTAssertEqual(DiffusersWanVAE.officialName("decoder.up_blocks.1.resnets.2.conv1.weight"), "decoder.upsamples.6.residual.2.weight")
    }

    func testPickleAskingForAnyOtherCallableIsRefused() throws {
        let path = NSTemporaryDirectory() + "wankit-evil-\(UUID().uuidString).pth"
        try writeZip([("archive/data.pkl", stateDictPickle(storageElements: 2, shape: 2, global: "os\nsystem\n")),
                      ("archive/data/0", [UInt8](repeating: 0, count: 8))], to: path)
        XCTAssertThrowsError(try TorchCheckpoint(path: path)) { e in
            guard case .forbidden(_, "os.system") = e as? PickleError else { return XCTFail("\(e)") }
            XCTAssertTrue("\(e)".contains("executes nothing"), "\(e)")
        }
    }

    func testValidHandMadeCheckpointLoads() throws {
        let path = NSTemporaryDirectory() + "wankit-ok-\(UUID().uuidString).pth"
        let values: [Float] = [1.5, -2]
        try writeZip([("archive/data.pkl", stateDictPickle(storageElements: 2, shape: 2)),
                      ("archive/data/0", values.withUnsafeBytes(Array.init))], to: path)
        let c = try TorchCheckpoint(path: path)
        XCTAssertEqual(try c.float32("w").array, values)
    }

    func testStorageSizeMismatch() throws {
        let path = NSTemporaryDirectory() + "wankit-short-\(UUID().uuidString).pth"
        try writeZip([("archive/data.pkl", stateDictPickle(storageElements: 10, shape: 10)),
                      ("archive/data/0", [UInt8](repeating: 0, count: 8))], to: path)
        XCTAssertThrowsError(try TorchCheckpoint(path: path)) { e in
            guard case .storageMismatch = e as? PickleError else { return XCTFail("\(e)") }
        }
    }

    /// zip64 sizes and offsets near 2^63 (a hostile or corrupt archive): refused as corrupt, where the sums with
    /// them used to overflow and point the reader at wild memory.
    func testZip64FieldsBeyondTheFileAreCorrupt() throws {
        let values: [Float] = [1.5, -2]
        let (bytes, fields) = zip64Archive([("archive/data.pkl", stateDictPickle(storageElements: 2, shape: 2)),
                                            ("archive/data/0", values.withUnsafeBytes(Array.init))])
        let valid = NSTemporaryDirectory() + "wankit-zip64-\(UUID().uuidString).pth"
        try Data(bytes).write(to: URL(fileURLWithPath: valid))
        XCTAssertEqual(try TorchCheckpoint(path: valid).float32("w").array, values)
        for field in ["record", "count", "cdSize", "cdOffset", "stored0", "local0", "stored1", "local1"] {
            for huge in [UInt64(Int.max) - 20, UInt64(bytes.count) + 1] {
                var b = bytes
                for i in 0..<8 { b[fields[field]! + i] = UInt8((huge >> (8 * UInt64(i))) & 0xFF) }
                let path = NSTemporaryDirectory() + "wankit-zip64-\(field)-\(UUID().uuidString).pth"
                try Data(b).write(to: URL(fileURLWithPath: path))
                XCTAssertThrowsError(try TorchCheckpoint(path: path), "\(field) = \(huge)") { e in
                    guard case .corrupt(let p, let detail) = e as? ArchiveError else { return XCTFail("\(field): \(e)") }
                    XCTAssertEqual(p, path)
                    XCTAssertTrue(detail.contains("zip64") || detail.contains("central directory"), "\(field): \(e)")
                }
            }
        }
    }

    /// Element counts, offsets and dims near 2^62 in the pickle: a clear storage mismatch, where the products and
    /// sums with them used to overflow (a count times 4 that wraps to the storage's size was accepted).
    func testHugePickleIntegersAreRefused() throws {
        let values: [Float] = [1.5, -2]
        func load(_ pickle: [UInt8], storage: [UInt8]) throws -> String {
            let path = NSTemporaryDirectory() + "wankit-huge-\(UUID().uuidString).pth"
            try writeZip([("archive/data.pkl", pickle), ("archive/data/0", storage)], to: path)
            return path
        }
        let cases: [(String, [UInt8], [UInt8])] = [
            // 2^62 + 2 floats are 2^64 + 8 bytes: times 4 that wraps to the 8 bytes the storage holds.
            ("count wraps", stateDictPickle(storageElements: (1 << 62) + 2, shape: 2), values.withUnsafeBytes(Array.init)),
            ("count huge", stateDictPickle(storageElements: 1 << 62, shape: 2), []),
            ("offset huge", stateDictPickle(storageElements: 2, shape: 2, offset: Int.max - 1), values.withUnsafeBytes(Array.init)),
            ("dims overflow", stateDictPickle(storageElements: 2, shape: 2, dims: [1 << 32, 1 << 32, 4], strides: [1 << 34, 4, 1]),
             values.withUnsafeBytes(Array.init)),
        ]
        for (what, pickle, storage) in cases {
            let path = try load(pickle, storage: storage)
            XCTAssertThrowsError(try TorchCheckpoint(path: path), what) { e in
                guard case .storageMismatch(let p, "w", _) = e as? PickleError else { return XCTFail("\(what): \(e)") }
                XCTAssertEqual(p, path)
            }
        }
    }

    /// A pickle nesting a million tuples (1 MB): refused with a message, where walking or freeing the nested value
    /// used to overflow the stack (SIGSEGV).
    func testDeeplyNestedPickleIsRefused() throws {
        let path = NSTemporaryDirectory() + "wankit-deep-\(UUID().uuidString).pth"
        let pickle: [UInt8] = [0x80, 2, 0x29] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2E]  // (), TUPLE1 x 10^6, STOP
        try writeZip([("archive/data.pkl", pickle)], to: path)
        XCTAssertThrowsError(try TorchCheckpoint(path: path)) { e in
            guard case .malformed(_, let detail) = e as? PickleError else { return XCTFail("\(e)") }
            XCTAssertTrue(detail.contains("nested more than"), "\(e)")
            XCTAssertTrue("\(e)".contains(path), "\(e)")
        }
    }

    /// Pickles of 100,000 APPENDs to one list and 100,000 SETITEMs to one dict (300-500 KB): refused (no tensors) in
    /// well under a second, where each APPEND/SETITEM copied the container (quadratic: over 30 s each, a hang).
    func testLongPickleContainersGrowInPlace() throws {
        let list: [UInt8] = [0x80, 2, 0x5D] + Array([[UInt8]](repeating: [0x4B, 1, 0x61], count: 100_000).joined()) + [0x2E]
        let dict: [UInt8] = [0x80, 2, 0x7D] + Array([[UInt8]](repeating: [0x4B, 1, 0x4B, 2, 0x73], count: 100_000).joined()) + [0x2E]
        for (what, pickle) in [("APPEND", list), ("SETITEM", dict)] {
            let path = NSTemporaryDirectory() + "wankit-long-\(UUID().uuidString).pth"
            try writeZip([("archive/data.pkl", pickle)], to: path)
            let start = Date()
            XCTAssertThrowsError(try TorchCheckpoint(path: path), what) { e in
                guard case .malformed(_, let detail) = e as? PickleError else { return XCTFail("\(what): \(e)") }
                XCTAssertTrue(detail.contains("no tensors"), "\(e)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), 5, "\(what) x 100,000 should take linear time")
        }
    }

    func testTruncatedArchive() throws {
        let original = goldenDirectory + "/weights/vae.pth"
        guard let data = FileManager.default.contents(atPath: original) else { throw XCTSkip("golden data not found") }
        for cut in [data.count / 2, data.count - 30, 100] {
            let path = NSTemporaryDirectory() + "wankit-cut-\(cut).pth"
            try data.prefix(cut).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try TorchCheckpoint(path: path)) { e in
                XCTAssertTrue(e is ArchiveError || e is PickleError || e is WeightError, "untyped error \(e)")
            }
        }
    }
}
