import Foundation
import XCTest
import WanKit

/// umT5 encoder and CLIP vision tower: every golden case of components `t5` / `clip` (and their `weights_*` cases)
/// plus unit tests of the relative-position buckets, strict binding and layouts.
final class EncoderTests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try assertGoldenCase(name, runner: Self.runner, file: file, line: line)
    }

    func testT5Basic() throws { try check("t5_basic") }
    func testT5Long() throws { try check("t5_long") }
    func testT5TwoLengths() throws { try check("t5_two_lengths") }
    func testWeightsT5BF16Pth() throws { try check("weights_t5_bf16_pth") }
    func testWeightsT5HF() throws { try check("weights_t5_hf") }
    func testCLIPVisualBasic() throws { try check("clip_visual_basic") }
    func testCLIPVisualWide() throws { try check("clip_visual_wide") }
    func testWeightsCLIPVisualHF() throws { try check("weights_clip_visual_hf") }
    func testWeightsCLIPVisualPth() throws { try check("weights_clip_visual_pth") }

    /// Every case of the folder whose name marks it as a t5 / clip case (other inputs and shapes included).
    func testEveryEncoderCase() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        let names = try Self.runner.caseNames().filter {
            $0.hasPrefix("t5_") || $0.hasPrefix("clip_visual_") || $0.hasPrefix("weights_t5_") || $0.hasPrefix("weights_clip_visual_")
        }
        XCTAssertGreaterThanOrEqual(names.count, 9)
        for n in names { try check(n) }
    }

    // MARK: relative position buckets

    func testRelativePositionBucketsByHand() {
        // Bidirectional, 32 buckets: 16 per direction (keys after the query use 16…31), exact below 8, then
        // 8 + trunc(log(|rel|/8) / log(128/8) * 8), at most 15.
        func b(_ rel: Int) -> Int { UMT5Encoder.relativePositionBucket(rel, numBuckets: 32, bidirectional: true, maxDistance: 128) }
        XCTAssertEqual(b(0), 0)
        XCTAssertEqual(b(-1), 1)
        XCTAssertEqual(b(1), 17)
        XCTAssertEqual(b(-7), 7)
        XCTAssertEqual(b(7), 23)
        XCTAssertEqual(b(-8), 8)              // log(1) = 0
        XCTAssertEqual(b(-12), 9)             // log(1.5)/log(16)*8 = 1.17
        XCTAssertEqual(b(12), 25)
        XCTAssertEqual(b(-16), 10)            // log(2)/log(16)*8 = 2 exactly in float32
        XCTAssertEqual(b(-32), 12)            // log(4)/log(16)*8 = 4
        XCTAssertEqual(b(100), 31)            // log(12.5)/log(16)*8 = 7.29 -> 15, + 16
        XCTAssertEqual(b(-127), 15)           // 7.98 -> 15
        XCTAssertEqual(b(-128), 15)           // 8 -> capped at 15
        XCTAssertEqual(b(-200), 15)           // 9.29 -> capped
        XCTAssertEqual(b(149), 31)
        // Unidirectional (decoder style): only keys before the query, 32 buckets, exact below 16.
        func u(_ rel: Int) -> Int { UMT5Encoder.relativePositionBucket(rel, numBuckets: 32, bidirectional: false, maxDistance: 128) }
        XCTAssertEqual(u(5), 0)
        XCTAssertEqual(u(-3), 3)
        XCTAssertEqual(u(-20), 17)            // 16 + trunc(log(1.25)/log(8)*16 = 1.72)
    }

    // MARK: strict binding

    func tinyT5() -> UMT5Config {
        var c = UMT5Config()
        c.vocab = 50; c.dim = 16; c.dimAttn = 16; c.dimFfn = 24; c.numHeads = 2; c.numLayers = 2; c.numBuckets = 8
        return c
    }

    func testT5WrongShapeNamesTheKey() throws {
        let c = tinyT5()
        let shapes = c.parameterShapes().map { $0.name == "blocks.1.attn.k.weight" ? ($0.name, [16, 15]) : $0 }
        XCTAssertThrowsError(try UMT5Encoder(config: c, weights: RandomWeights(shapes: shapes))) { error in
            XCTAssertEqual(error as? WeightError, .shapeMismatch(source: "random weights", key: "blocks.1.attn.k.weight", expected: [16, 16], found: [16, 15]))
        }
        let table = c.parameterShapes().map { $0.name == "blocks.0.pos_embedding.embedding.weight" ? ($0.name, [8, 3]) : $0 }
        XCTAssertThrowsError(try UMT5Encoder(config: c, weights: RandomWeights(shapes: table))) { error in
            guard case .shapeMismatch(_, let key, _, _)? = error as? WeightError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "blocks.0.pos_embedding.embedding.weight")
        }
    }

    /// Text encoder configurations that cannot describe an encoder (a transformers config.json with a huge d_kv, a
    /// negative relative_attention_max_distance, no layers, 2 buckets): a badConfig naming the value, where d_kv ×
    /// num_heads overflowed (a trap) and a max_dist within the exact buckets made the bucket of a distant position
    /// Int(NaN) (a trap at the first encode).
    func testT5ConfigThatCannotDescribeAnEncoder() throws {
        let weights = RandomWeights(shapes: tinyT5().parameterShapes())
        let hf: [String: Any] = ["d_model": 16, "d_ff": 24, "num_heads": 2, "num_layers": 2, "vocab_size": 50,
                                 "relative_attention_num_buckets": 8, "d_kv": 8]
        XCTAssertNoThrow(try UMT5Encoder(config: UMT5Config.inferred(from: weights, arguments: HFUMT5.officialArguments(hf)), weights: weights))
        // T5 v1.0's ReLU feed-forward is not the official T5Encoder's gated GELU: refused, naming it.
        XCTAssertThrowsError(try HFUMT5.officialArguments(hf.merging(["feed_forward_proj": "relu"]) { $1 }, path: "t5/config.json")) { e in
            XCTAssertTrue("\(e)".contains("t5/config.json") && "\(e)".contains("feed_forward_proj 'relu'"), "\(e)")
        }
        let cases: [([String: Any], String)] = [(["d_kv": 1 << 62], "dim_attn"), (["relative_attention_max_distance": -129], "max_dist -129"),
                                               (["num_layers": 0], "num_layers 0"), (["relative_attention_num_buckets": 2], "num_buckets 2"),
                                               (["layer_norm_epsilon": Double.nan], "eps nan")]
        for (change, named) in cases {
            let config = UMT5Config.inferred(from: weights, arguments: try HFUMT5.officialArguments(hf.merging(change) { $1 }))
            XCTAssertThrowsError(try UMT5Encoder(config: config, weights: weights), named) { e in
                guard case .badConfig(let source, let detail)? = e as? WeightError else { return XCTFail("\(named): \(e)") }
                XCTAssertEqual(source, "random weights")
                XCTAssertTrue(detail.contains(named), "\(e)")
            }
        }
    }

    func testT5UnexpectedKeyIsReported() throws {
        let c = tinyT5()
        let shapes = c.parameterShapes() + [("blocks.0.attn.extra.weight", [4])]
        XCTAssertThrowsError(try UMT5Encoder(config: c, weights: RandomWeights(shapes: shapes))) { error in
            XCTAssertEqual(error as? WeightError, .unexpectedKeys(source: "random weights", keys: ["blocks.0.attn.extra.weight"]))
        }
    }

    func testCLIPWrongShapeNamesTheKey() throws {
        var c = CLIPVisionConfig()
        c.dim = 32; c.numHeads = 2; c.numLayers = 2; c.imageSize = 28; c.patchSize = 14; c.outDim = 8
        func shapes(_ wrong: String?) -> [(name: String, shape: [Int])] {
            var list: [(name: String, shape: [Int])] = [("patch_embedding.weight", [32, 3, 14, 14]), ("cls_embedding", [1, 1, 32]),
                                                        ("pos_embedding", [1, 5, 32]), ("pre_norm.weight", [32]), ("pre_norm.bias", [32]),
                                                        ("post_norm.weight", [32]), ("post_norm.bias", [32]), ("head", [32, 8])]
            for i in 0..<2 {
                let p = "transformer.\(i)."
                list += [(p + "norm1.weight", [32]), (p + "norm1.bias", [32]), (p + "norm2.weight", [32]), (p + "norm2.bias", [32]),
                         (p + "attn.to_qkv.weight", [96, 32]), (p + "attn.to_qkv.bias", [96]), (p + "attn.proj.weight", [32, 32]),
                         (p + "attn.proj.bias", [32]), (p + "mlp.0.weight", [128, 32]), (p + "mlp.0.bias", [128]),
                         (p + "mlp.2.weight", [32, 128]), (p + "mlp.2.bias", [32])]
            }
            return list.map { $0.name == wrong ? ($0.name, $0.shape.map { $0 + 1 }) : $0 }
        }
        let model = try CLIPVision(config: c, weights: RandomWeights(shapes: shapes(nil)))
        let out = try model.visual(Tensor(zeros: [3, 1, 20, 30]))
        XCTAssertEqual(out.shape, [1, 5, 32])
        for name in ["transformer.0.attn.to_qkv.weight", "transformer.1.mlp.2.weight", "pos_embedding"] {
            XCTAssertThrowsError(try CLIPVision(config: c, weights: RandomWeights(shapes: shapes(name)))) { error in
                guard case .shapeMismatch(_, let key, _, _)? = error as? WeightError else { return XCTFail("\(name): \(error)") }
                XCTAssertEqual(key, name)
            }
        }
    }

    func testCLIPConfigurationsNoTowerHasAreRefused() throws {
        let weights = RandomWeights(shapes: [("patch_embedding.weight", [32, 3, 14, 14])])
        var base = CLIPVisionConfig()
        base.dim = 32; base.numHeads = 2; base.numLayers = 2; base.imageSize = 28; base.patchSize = 14; base.outDim = 8
        let cases: [(String, (inout CLIPVisionConfig) -> Void)] = [
            ("mlp_ratio", { $0.mlpRatio = 1e300 }), ("mlp_ratio", { $0.mlpRatio = .nan }), ("image_size", { $0.imageSize = 1 << 40 }),
            ("patch_size", { $0.patchSize = 0 }), ("patch_size", { $0.patchSize = 29 }), ("dim", { $0.dim = Int.max }),
            ("num_layers", { $0.numLayers = 1 << 20 }), ("out_dim", { $0.outDim = 0 }), ("num_heads", { $0.numHeads = 3 }),
            ("num_heads", { $0.numHeads = 0 }),
        ]
        for (key, edit) in cases {
            var c = base
            edit(&c)
            XCTAssertThrowsError(try CLIPVision(config: c, weights: weights)) { error in
                guard case .badConfig(_, let detail)? = error as? WeightError else { return XCTFail("\(key): \(error)") }
                XCTAssertTrue(detail.contains(key), "\(key): \(detail)")
            }
        }
    }

    // MARK: semantics

    /// Padded positions are masked keys: the real tokens' states do not depend on them, and `forward` (every
    /// position) agrees with `encode` (real tokens only).
    func testMaskedPaddingDoesNotChangeRealTokens() throws {
        var c = tinyT5()
        c.numLayers = 2
        let model = try UMT5Encoder(config: c, weights: RandomWeights(shapes: c.parameterShapes(), seed: 4))
        let real = [5, 17, 3, 44, 1]
        let plain = try model.encode(tokens: [real])[0]
        let ids = Tensor(shape: [1, 9], values: (real + [0, 9, 0, 0]).map(Float.init))
        let mask = Tensor(shape: [1, 9], values: [1, 1, 1, 1, 1, 0, 0, 0, 0])
        let encoded = try model.encode(ids: ids, mask: mask)[0]
        let full = try model.forward(ids: ids, mask: mask)
        XCTAssertEqual(encoded.shape, [5, 16])
        XCTAssertEqual(full.shape, [1, 9, 16])
        for i in 0..<plain.count {
            XCTAssertEqual(encoded.data[i], plain.data[i], accuracy: 1e-5)
            XCTAssertEqual(full.data[i], plain.data[i], accuracy: 1e-5)
        }
        XCTAssertThrowsError(try model.encode(tokens: [[50]]))  // outside the vocabulary
    }

    /// Bicubic resize to the same size is the identity (t = 0 gives taps 0, 1, 0, 0), and a constant stays constant.
    func testBicubicResize() {
        let src: [Float] = (0..<(5 * 7)).map { Float($0 * $0 % 11) }
        var same = [Float](repeating: 0, count: 35)
        src.withUnsafeBufferPointer { s in same.withUnsafeMutableBufferPointer { d in
            CLIPVision.resizeBicubic(s.baseAddress!, planes: 1, height: 5, width: 7, toHeight: 5, width: 7, into: d.baseAddress!)
        } }
        for i in 0..<35 { XCTAssertEqual(same[i], src[i], accuracy: 1e-5) }
        let flat = [Float](repeating: 0.25, count: 12)
        var up = [Float](repeating: 0, count: 9 * 13)
        flat.withUnsafeBufferPointer { s in up.withUnsafeMutableBufferPointer { d in
            CLIPVision.resizeBicubic(s.baseAddress!, planes: 1, height: 3, width: 4, toHeight: 9, width: 13, into: d.baseAddress!)
        } }
        for v in up { XCTAssertEqual(v, 0.25, accuracy: 1e-6) }
    }

    // MARK: layouts

    func testLayoutsAreDetected() throws {
        guard FileManager.default.fileExists(atPath: goldenDirectory) else { throw XCTSkip("golden data not found") }
        let w = (goldenDirectory as NSString).appendingPathComponent("weights")
        func p(_ s: String) -> String { (w as NSString).appendingPathComponent(s) }
        let hf = try openT5Weights(path: p("t5_hf"))
        XCTAssertEqual(hf.layout, "hf-transformers")
        XCTAssertEqual(hf.arguments?["dim_attn"] as? Int, 64)
        XCTAssertEqual(hf.source.info("blocks.2.ffn.gate.0.weight")?.shape, [128, 64])
        XCTAssertEqual(try openT5Weights(path: p("t5_bf16.pth")).layout, "official-pth")
        XCTAssertEqual(try openT5Weights(path: p("t5.safetensors")).layout, "official")
        let clipHF = try openCLIPWeights(path: p("clip_visual_hf"))
        XCTAssertEqual(clipHF.layout, "hf-transformers")
        XCTAssertEqual(clipHF.source.info("transformer.3.attn.to_qkv.weight")?.shape, [192, 64])
        XCTAssertEqual(clipHF.arguments?["num_heads"] as? Int, 4)
        let pth = try openCLIPWeights(path: p("clip_visual.pth"))
        XCTAssertEqual(pth.layout, "official-pth")
        XCTAssertNotNil(pth.source.info("cls_embedding"))
        XCTAssertThrowsError(try openT5Weights(path: p("does-not-exist.pth")))
    }
}
