import Foundation
import WanText
import WanWeights

extension ConformanceRunner {
    /// Golden cases of component `tokenizer` (tokenizer.json + Wan's prompt cleaning). Every output is compared
    /// exactly: `cleaned` (Unicode scalars), `ids`/`lengths`/`mask_lengths` (cleaned, truncated and padded to
    /// `seq_len`) and `raw_ids`/`raw_lengths` (the uncleaned string, `</s>` appended, no truncation).
    func runTokenizer(_ c: GoldenCase) throws -> CaseResult {
        guard let strings = c.inputs["strings"] as? [String] else { return .fail(c.name, "input 'strings' is not a list of strings") }
        let tokPath = (root as NSString).appendingPathComponent(c.config["tokenizer"] as? String ?? "tokenizer")
        let tok = try UMT5Tokenizer(file: tokPath)
        let seqLen = (c.config["seq_len"] as? NSNumber)?.intValue ?? 512
        // clean: null (or "none") is no cleaning, as the official HuggingfaceTokenizer's clean=None.
        let cleanName = (c.config["clean"] is NSNull) ? "none" : (c.config["clean"] as? String) ?? "whitespace"
        let addSpecial = (c.config["add_special_tokens"] as? Bool) ?? true
        guard let clean = WanPromptCleaner.Mode(rawValue: cleanName) else {
            return .fail(c.name, "clean mode '\(cleanName)' is not one of the official tokenizer's (none, whitespace, lower, canonicalize)")
        }

        var cleaned: [String] = [], ids: [Int] = [], lengths: [Int] = [], maskLengths: [Int] = []
        var rawIds: [Int] = [], rawLengths: [Int] = []
        var paddingProblem: String? = nil
        for (i, s) in strings.enumerated() {
            let cl = WanPromptCleaner.clean(s, mode: clean)
            cleaned.append(cl)
            let (padded, mask) = tok.encodePadded(cl, length: seqLen)
            let len = mask.reduce(0, +)
            ids.append(contentsOf: padded.prefix(len))
            lengths.append(len)
            maskLengths.append(mask.reduce(0, +))
            if paddingProblem == nil, padded.count != seqLen || mask.count != seqLen
                || padded[len...].contains(where: { $0 != tok.padId }) || mask[..<len].contains(0) || mask[len...].contains(1) {
                paddingProblem = "string \(i): padded ids/mask are not \(len) real tokens followed by padding to \(seqLen)"
            }
            let raw = tok.encode(s, addSpecialTokens: addSpecial)
            rawIds.append(contentsOf: raw)
            rawLengths.append(raw.count)
        }
        if let p = paddingProblem { return .fail(c.name, p) }

        var failures: [String] = []
        var checked: [String] = []
        // cleaned strings
        if let expected = c.outputs["cleaned"] {
            checked.append("cleaned")
            if let exp = expected as? [String] {
                if exp.count != cleaned.count {
                    failures.append("cleaned: \(cleaned.count) strings, expected \(exp.count)")
                } else if let i = cleaned.indices.first(where: { Array(cleaned[$0].unicodeScalars) != Array(exp[$0].unicodeScalars) }) {
                    let g = Array(cleaned[i].unicodeScalars), e = Array(exp[i].unicodeScalars)
                    let pos = Self.firstDifference(g, e)
                    failures.append("cleaned[\(i)] differs at scalar \(pos): got \(Self.show(cleaned[i])) expected \(Self.show(exp[i])) (input \(Self.show(strings[i])))")
                }
            } else {
                failures.append("cleaned: expected output is not a list of strings")
            }
        }
        // integer outputs
        let got: [String: [Int]] = ["ids": ids, "lengths": lengths, "mask_lengths": maskLengths, "raw_ids": rawIds, "raw_lengths": rawLengths]
        for name in ["lengths", "mask_lengths", "ids", "raw_lengths", "raw_ids"] where c.outputs[name] != nil {
            checked.append(name)
            let exp: [Int]
            do { exp = try Self.integers(c, name) } catch { failures.append("\(name): \(error)"); continue }
            let g = got[name]!
            if g == exp { continue }
            // Locate the first mismatch per string.
            let per: [Int]? = name == "ids" ? lengths : name == "raw_ids" ? rawLengths : nil
            let expPer: [Int]? = name == "ids" ? (try? Self.integers(c, "lengths")) : name == "raw_ids" ? (try? Self.integers(c, "raw_lengths")) : nil
            if let per, let expPer, expPer.count == per.count {
                var go = 0, eo = 0
                var reported = false
                for i in 0..<per.count {
                    let gs = Array(g[min(go, g.count)..<min(go + per[i], g.count)])
                    let es = Array(exp[min(eo, exp.count)..<min(eo + expPer[i], exp.count)])
                    if gs != es {
                        let pos = Self.firstDifference(gs, es)
                        let text = name == "ids" ? cleaned[i] : strings[i]
                        failures.append("\(name): string \(i) \(Self.show(text)) differs at token \(pos): got \(Self.window(gs, pos)) (\(gs.count) ids) expected \(Self.window(es, pos)) (\(es.count) ids); pieces got \(tok.pieces(Array(gs[min(pos, gs.count)...].prefix(4)))) expected \(tok.pieces(Array(es[min(pos, es.count)...].prefix(4))))")
                        reported = true
                        break
                    }
                    go += per[i]; eo += expPer[i]
                }
                if !reported { failures.append("\(name): \(g.count) values, expected \(exp.count)") }
            } else {
                let pos = Self.firstDifference(g, exp)
                let what = name.contains("lengths") && pos < strings.count ? " (string \(pos) \(Self.show(strings[pos])))" : ""
                failures.append("\(name): first difference at index \(pos)\(what): got \(Self.window(g, pos)) expected \(Self.window(exp, pos))")
            }
        }
        if !failures.isEmpty { return .fail(c.name, failures.joined(separator: "; ")) }
        if checked.isEmpty { return .fail(c.name, "case has no outputs") }
        return .pass(c.name, "\(strings.count) strings, \(ids.count) ids + \(rawIds.count) raw ids exact (\(checked.joined(separator: ", ")))")
    }

    private static func show(_ s: String) -> String {
        let short = s.unicodeScalars.count > 80 ? String(String.UnicodeScalarView(Array(s.unicodeScalars).prefix(80))) + "…" : s
        var out = "\""
        for c in short.unicodeScalars {
            if c.value < 0x20 || c.value == 0x7F || (0x80...0x9F).contains(c.value) || c.value == 0xFEFF || c.value == 0x200B || c.value == 0xA0 {
                out += "\\u{\(String(c.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }

    private static func firstDifference<T: Equatable>(_ a: [T], _ b: [T]) -> Int {
        (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) ?? min(a.count, b.count)
    }

    private static func window(_ a: [Int], _ pos: Int) -> String {
        let lo = max(0, pos - 2), hi = min(a.count, pos + 4)
        return lo < hi ? "[\(lo > 0 ? "…, " : "")\(a[lo..<hi].map(String.init).joined(separator: ", "))\(hi < a.count ? ", …" : "")]" : "[]"
    }

    /// An integer output tensor (int64/int32/…) read exactly from the case's safetensors.
    static func integers(_ c: GoldenCase, _ name: String) throws -> [Int] {
        guard let spec = c.outputs[name] as? [String: Any], let key = spec["tensor"] as? String else {
            throw DiTInputError(description: "output \(name) is not a tensor")
        }
        guard let info = c.tensors.info(key) else { throw DiTInputError(description: "tensor \(key) not in the case's safetensors") }
        guard let file = c.tensors.files.first(where: { $0.tensors[key] != nil }) ?? c.tensors.files.first else {
            throw DiTInputError(description: "case has no safetensors file")
        }
        let p = file.pointer(info)
        let n = info.shape.reduce(1, *)
        switch info.dtype {
        case .i64: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        case .i32: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        case .i16: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self)) }
        case .u8, .bool: return (0..<n).map { Int(p.load(fromByteOffset: $0, as: UInt8.self)) }
        case .i8: return (0..<n).map { Int(p.load(fromByteOffset: $0, as: Int8.self)) }
        default: throw DiTInputError(description: "tensor \(key) has dtype \(info.dtype.rawValue), expected an integer type")
        }
    }
}
