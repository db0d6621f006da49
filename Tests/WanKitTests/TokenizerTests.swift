import Foundation
import XCTest
import WanKit
import WanText

/// The umT5 tokenizer (tokenizer.json) and Wan's prompt cleaning against the golden cases, plus unit checks.
final class TokenizerTests: XCTestCase {
    static let runner = ConformanceRunner(goldenDirectory: goldenDirectory)
    static var tokenizerPath: String { (goldenDirectory as NSString).appendingPathComponent("tokenizer") }

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try assertGoldenCase(name, runner: Self.runner, file: file, line: line)
    }

    /// The official tokenizer's other cleaning modes: Python's lower() (final sigma where a word ends, which Swift's
    /// lowercased() does not do) and canonicalize (underscores to spaces, ASCII punctuation dropped).
    func testCleaningModes() {
        XCTAssertEqual(WanPromptCleaner.pythonLower("ΟΔΟΣ ΣΑΣ. Σ ΑΣ'Β ΑΣ'"), "οδος σας. σ ασ'β ας'")
        XCTAssertEqual("ΟΔΟΣ".lowercased(), "οδοσ")  // why pythonLower exists
        XCTAssertEqual(WanPromptCleaner.pythonLower("İ"), "i\u{307}")
        XCTAssertEqual(WanPromptCleaner.clean("  Hello,\tWORLD_wide! &amp; ΟΔΟΣ ", mode: .canonicalize), "hello world wide οδος")
        XCTAssertEqual(WanPromptCleaner.clean("  Hello,\tWORLD &amp; ", mode: .lower), "hello, world &")
        XCTAssertEqual(WanPromptCleaner.clean("  Hello,\tWORLD &amp; ", mode: .whitespace), "Hello, WORLD &")
        XCTAssertEqual(WanPromptCleaner.clean("  a\t&amp; ", mode: .none), "  a\t&amp; ")
    }

    func testTokenizerBasic() throws { try check("tokenizer_basic") }
    func testTokenizerUnicode() throws { try check("tokenizer_unicode") }
    func testTokenizerLong() throws { try check("tokenizer_long") }

    func tokenizer() throws -> UMT5Tokenizer {
        guard FileManager.default.fileExists(atPath: Self.tokenizerPath) else { throw XCTSkip("golden tokenizer not found") }
        return try UMT5Tokenizer(file: Self.tokenizerPath)
    }

    func testEmptyAndWhitespace() throws {
        let tok = try tokenizer()
        XCTAssertEqual(tok.encode(""), [1])
        XCTAssertEqual(tok.encode(WanPromptCleaner.clean("   \t\n ")), [1])
        let (ids, mask) = tok.encodePadded("", length: 512)
        XCTAssertEqual(ids.count, 512)
        XCTAssertEqual(ids[0], 1)
        XCTAssertEqual(mask.reduce(0, +), 1)
        XCTAssertTrue(ids.dropFirst().allSatisfy { $0 == 0 })
        // Runs of spaces in uncleaned text give standalone ▁ (259).
        XCTAssertEqual(tok.encode("   "), [259, 259, 259, 1])
    }

    func testSpecialTokens() throws {
        let tok = try tokenizer()
        XCTAssertEqual(tok.encode("<extra_id_0>"), [2299, 1])
        XCTAssertEqual(tok.encode("<extra_id_299>"), [2000, 1])
        XCTAssertEqual(tok.encode("</s><pad><unk>"), [1, 0, 2, 1])
        // Each segment between special tokens is pre-tokenized on its own: "a " ends with a lone ▁.
        let a = tok.encode("a")
        let ids = tok.encode("a <extra_id_1>a")
        XCTAssertEqual(ids, Array(a.dropLast()) + [259, 2298] + a)
        XCTAssertEqual(tok.id(of: "<extra_id_5>"), 2294)
    }

    func testByteFallback() throws {
        let tok = try tokenizer()
        // An astral character with no piece becomes its UTF-8 bytes (id 3 + byte), not <unk>.
        let ids = tok.encode("𪚥")
        let bytes = Array("𪚥".utf8).map { 3 + Int($0) }
        XCTAssertEqual(ids.last, 1)
        XCTAssertTrue(ids.count >= bytes.count + 1)
        XCTAssertEqual(Array(ids.dropLast().suffix(bytes.count)), bytes)
        XCTAssertFalse(ids.contains(2))
    }

    func testTruncation() throws {
        let tok = try tokenizer()
        let long = String(repeating: "cat ", count: 2000)
        let (ids, mask) = tok.encodePadded(long, length: 512)
        XCTAssertEqual(ids.count, 512)
        XCTAssertEqual(ids[511], 1)
        XCTAssertEqual(mask, [Int](repeating: 1, count: 512))
        XCTAssertEqual(Array(ids.prefix(511)), Array(tok.encode(long).prefix(511)))
    }

    func testTypedErrors() throws {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("wantext-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = (dir as NSString).appendingPathComponent("tokenizer.json")

        XCTAssertThrowsError(try UMT5Tokenizer(file: (dir as NSString).appendingPathComponent("missing.json"))) {
            guard case TokenizerError.fileNotFound = $0 else { return XCTFail("\($0)") }
        }
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try UMT5Tokenizer(file: dir)) {
            guard case TokenizerError.invalidJSON(let p, _) = $0 else { return XCTFail("\($0)") }
            XCTAssertEqual(p, path)
            // What is wrong and where, not Foundation's NSError dump ("Error Domain=NSCocoaErrorDomain Code=3840 …").
            XCTAssertFalse("\($0)".contains("Error Domain"), "\($0)")
            XCTAssertTrue("\($0)".contains("character"), "\($0)")
        }
        try Data(#"{"normalizer": null}"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try UMT5Tokenizer(file: path)) {
            guard case TokenizerError.missingField(_, "model") = $0 else { return XCTFail("\($0)") }
        }
        try Data(#"{"model": {"type": "BPE", "vocab": {}}}"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try UMT5Tokenizer(file: path)) {
            guard case TokenizerError.unsupported(_, "model.type", "BPE") = $0 else { return XCTFail("\($0)") }
        }
        try Data(#"{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a"]]}}"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try UMT5Tokenizer(file: path)) {
            guard case TokenizerError.invalidField(_, "model.vocab[1]", _) = $0 else { return XCTFail("\($0)") }
        }
        try Data(#"{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}, "normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAA!!"}}"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try UMT5Tokenizer(file: path)) {
            guard case TokenizerError.invalidField(_, "normalizer.precompiled_charsmap", _) = $0 else { return XCTFail("\($0)") }
            XCTAssertTrue("\($0)".contains(path))
        }
    }

    /// A tiny hand-written tokenizer.json: Viterbi picks the best-scoring split, Metaspace "first", byte fallback off.
    func testSmallUnigram() throws {
        let json = #"""
        {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "  "}, "content": " "}, {"type": "Strip", "strip_left": true, "strip_right": true}]},
         "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
         "added_tokens": [{"id": 1, "content": "</s>", "special": true, "normalized": false}],
         "post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
         "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false,
                   "vocab": [["<unk>", 0.0], ["</s>", 0.0], ["▁", -2.0], ["▁ab", -3.0], ["▁a", -1.0], ["b", -1.5], ["c", -1.0]]}}
        """#
        let tok = try UMT5Tokenizer(data: Data(json.utf8))
        XCTAssertEqual(tok.encode("ab"), [4, 5, 1])            // ▁a + b (-2.5) beats ▁ab (-3)
        XCTAssertEqual(tok.encode("abc"), [4, 5, 6, 1])
        XCTAssertEqual(tok.encode("a xy c"), [4, 2, 0, 2, 6, 1]) // x y fused into one <unk>
        XCTAssertEqual(tok.encode("ab</s>c"), [4, 5, 1, 6, 1])   // "first": no ▁ after the special token
    }

    func testCleaning() {
        XCTAssertEqual(WanPromptCleaner.clean("  a \u{3000}\u{00A0} b\n\tc  "), "a b c")
        XCTAssertEqual(WanPromptCleaner.clean("Tom &amp;amp; Jerry &lt;b&gt;"), "Tom & Jerry <b>")
        XCTAssertEqual(WanPromptCleaner.clean("caf\u{00C3}\u{00A9}"), "café")
        XCTAssertEqual(WanPromptCleaner.clean("\u{201C}x\u{201D} \u{2019}"), "\"x\" '")
        XCTAssertEqual(WanPromptCleaner.clean("\u{FB01}ne \u{FF26}\u{FF55}\u{FF4C}\u{FF4C}\u{FF01}"), "fine Full!")
        XCTAssertEqual(WanPromptCleaner.clean("a\u{0007}b\u{FEFF}c \u{1B}[31mred\u{1B}[0m"), "abc red")
        XCTAssertEqual(WanPromptCleaner.clean("&#x4e2d;&#25991; &nbsp;x &EACUTE;"), "中文 x É")
        XCTAssertEqual(WanPromptCleaner.clean("zero\u{200B}width"), "zero\u{200B}width")
        XCTAssertEqual(Array(WanPromptCleaner.clean("e\u{0301}").unicodeScalars), ["\u{E9}"])  // NFC
    }

    func testLoadSpeed() throws {
        // A synthetic 256k-piece vocabulary: loading and tokenizing a long prompt must stay fast.
        var vocab: [String] = ["[\"<pad>\", 0.0]", "[\"</s>\", 0.0]", "[\"<unk>\", 0.0]"]
        var rng = SystemRandomNumberGenerator()
        let letters = Array("abcdefghijklmnopqrstuvwxyzéü中文")
        var seen = Set<String>()
        while vocab.count < 256_000 {
            let len = Int.random(in: 1...8, using: &rng)
            let piece = (Int.random(in: 0...1, using: &rng) == 0 ? "▁" : "") + String((0..<len).map { _ in letters.randomElement(using: &rng)! })
            if seen.insert(piece).inserted { vocab.append("[\"\(piece)\", -\(Double.random(in: 1...20, using: &rng))]") }
        }
        let json = #"{"model": {"type": "Unigram", "unk_id": 2, "byte_fallback": false, "vocab": ["# + vocab.joined(separator: ",") + #"]},"# +
            #""pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}}"#
        let start = Date()
        let tok = try UMT5Tokenizer(data: Data(json.utf8))
        let loaded = Date().timeIntervalSince(start)
        let prompt = String(repeating: "a cat walks on the grass éü 中文 ", count: 60)
        let t0 = Date()
        let ids = tok.encodePadded(prompt, length: 512).ids
        let encoded = Date().timeIntervalSince(t0)
        XCTAssertEqual(ids.count, 512)
        print("256k-piece tokenizer.json: load \(String(format: "%.3f", loaded)) s, 512-token encode \(String(format: "%.2f", encoded * 1000)) ms")
        XCTAssertLessThan(loaded, 5.0)
        XCTAssertLessThan(encoded, 0.2)
    }
}
