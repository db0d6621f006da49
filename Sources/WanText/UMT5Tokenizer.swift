import Foundation

/// Why a tokenizer.json could not be loaded. Every case names the file and, where it applies, the JSON field.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(path: String)
    case unreadable(path: String, reason: String)
    case invalidJSON(path: String, reason: String)
    case missingField(path: String, field: String)
    case invalidField(path: String, field: String, reason: String)
    case unsupported(path: String, field: String, type: String)

    public var description: String {
        switch self {
        case .fileNotFound(let p): return "\(p): tokenizer file not found"
        case .unreadable(let p, let r): return "\(p): cannot read tokenizer file (\(r))"
        case .invalidJSON(let p, let r): return "\(p): not valid JSON (\(r)); the file is damaged or not a tokenizer.json (re-download it)"
        case .missingField(let p, let f): return "\(p): missing field '\(f)'"
        case .invalidField(let p, let f, let r): return "\(p): field '\(f)' is invalid: \(r)"
        case .unsupported(let p, let f, let t): return "\(p): field '\(f)': type '\(t)' is not supported"
        }
    }
}

/// The umT5 tokenizer of Wan2.1 (and any SentencePiece Unigram tokenizer in Hugging Face tokenizer.json form),
/// behaving as the `tokenizers` library runs the file: added/special tokens are split out of the raw text first,
/// each other segment is normalized (Precompiled, Replace, Strip, NFKC, Sequence, …) and pre-tokenized (Metaspace,
/// Sequence, …) on its own, every word is segmented by the Unigram model (Viterbi, byte fallback), then the
/// `TemplateProcessing` post-processor appends `</s>`.
///
///     let tok = try UMT5Tokenizer(file: "…/google/umt5-xxl")      // a folder or the tokenizer.json itself
///     tok.encode("a cat")                                          // [ids…, 1]
///     let (ids, mask) = tok.encodePadded("a cat", length: 512)     // truncated to 511 + </s>, padded with 0
public final class UMT5Tokenizer: @unchecked Sendable {
    public let path: String
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    public let model: UnigramModel
    let postProcessor: PostProcessor?
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    let addedTokens: [String: Int]
    public let padId: Int
    public let eosId: Int?
    public let unkId: Int?

    /// Loads `file`: a tokenizer.json, or a folder that holds one.
    public convenience init(file: String) throws {
        var path = file
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            path = (path as NSString).appendingPathComponent("tokenizer.json")
        }
        guard FileManager.default.fileExists(atPath: path) else { throw TokenizerError.fileNotFound(path: path) }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw TokenizerError.unreadable(path: path, reason: "\(error)")
        }
        try self.init(data: data, path: path)
    }

    /// Parses tokenizer.json content; `path` is only used in error messages.
    public init(data: Data, path: String = "tokenizer.json") throws {
        self.path = path
        let root: [String: Any]
        do {
            guard let r = try JSONText.object(with: data) as? [String: Any] else {
                throw TokenizerError.invalidJSON(path: path, reason: "top level is not an object")
            }
            root = r
        } catch let e as TokenizerError { throw e } catch {
            // JSONSerialization's own words ("Unexpected end of file around character 1234."), not the NSError dump.
            let ns = error as NSError
            throw TokenizerError.invalidJSON(path: path, reason: (ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? ns.localizedDescription)
        }
        let p = Parser(path: path)

        // model
        guard let modelAny = root["model"] else { throw TokenizerError.missingField(path: path, field: "model") }
        guard let m = modelAny as? [String: Any] else { throw TokenizerError.invalidField(path: path, field: "model", reason: "not an object") }
        let mtype = (m["type"] as? String) ?? (m["vocab"] is [Any] ? "Unigram" : "?")
        guard mtype == "Unigram" else { throw TokenizerError.unsupported(path: path, field: "model.type", type: mtype) }
        guard let vocabAny = m["vocab"] else { throw TokenizerError.missingField(path: path, field: "model.vocab") }
        guard let vocab = vocabAny as? [Any] else { throw TokenizerError.invalidField(path: path, field: "model.vocab", reason: "not a list") }
        var pieces = [String](), scores = [Double]()
        pieces.reserveCapacity(vocab.count); scores.reserveCapacity(vocab.count)
        for (i, e) in vocab.enumerated() {
            guard let pair = e as? [Any], pair.count == 2, let piece = pair[0] as? String, let score = pair[1] as? NSNumber else {
                throw TokenizerError.invalidField(path: path, field: "model.vocab[\(i)]", reason: "expected [piece, score]")
            }
            pieces.append(piece); scores.append(score.doubleValue)
        }
        guard !pieces.isEmpty else { throw TokenizerError.invalidField(path: path, field: "model.vocab", reason: "empty") }
        var unk: Int? = nil
        if let u = m["unk_id"], !(u is NSNull) {
            guard let n = u as? NSNumber, n.intValue >= 0, n.intValue < pieces.count else {
                throw TokenizerError.invalidField(path: path, field: "model.unk_id", reason: "not an id of the vocab")
            }
            unk = n.intValue
        }
        let byteFallback = (m["byte_fallback"] as? Bool) ?? false
        model = UnigramModel(pieces: pieces, scores: scores, unkId: unk, byteFallback: byteFallback,
                             fuseUnk: (m["fuse_unk"] as? Bool) ?? true)
        unkId = unk

        normalizer = try p.normalizer(root["normalizer"], "normalizer")
        preTokenizer = try p.preTokenizer(root["pre_tokenizer"], "pre_tokenizer")

        // added tokens
        var added: [AddedToken] = []
        var names: [String: Int] = [:]
        if let list = root["added_tokens"], !(list is NSNull) {
            guard let arr = list as? [Any] else { throw TokenizerError.invalidField(path: path, field: "added_tokens", reason: "not a list") }
            for (i, e) in arr.enumerated() {
                guard let d = e as? [String: Any], let content = d["content"] as? String, let id = (d["id"] as? NSNumber)?.intValue else {
                    throw TokenizerError.invalidField(path: path, field: "added_tokens[\(i)]", reason: "expected {id, content, …}")
                }
                let special = (d["special"] as? Bool) ?? false
                added.append(AddedToken(content: Array(content.unicodeScalars), id: id, special: special,
                                        normalized: (d["normalized"] as? Bool) ?? !special,
                                        lstrip: (d["lstrip"] as? Bool) ?? false, rstrip: (d["rstrip"] as? Bool) ?? false,
                                        singleWord: (d["single_word"] as? Bool) ?? false))
                names[content] = id
            }
        }
        addedTokens = names
        rawMatcher = AddedTokenMatcher(added.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(added.filter { $0.normalized })

        // post processor
        postProcessor = try p.postProcessor(root["post_processor"], "post_processor", tokens: names, model: model)

        padId = names["<pad>"] ?? model.id(of: "<pad>") ?? 0
        eosId = names["</s>"] ?? model.id(of: "</s>")
    }

    /// The id of a token (added tokens first, then vocabulary pieces).
    public func id(of token: String) -> Int? { addedTokens[token] ?? model.id(of: token) }
    /// Vocabulary size including added tokens beyond the model's pieces.
    public var vocabularySize: Int { max(model.count, (addedTokens.values.max() ?? -1) + 1) }

    /// The ids of `text` without special tokens added by the post-processor (special-token strings in the text are
    /// still honoured).
    public func encodeOrdinary(_ text: String) -> [Int] {
        var ids: [Int] = []
        let scalars = Array(text.unicodeScalars)
        for piece in rawMatcher.split(scalars, origin: 0) {
            switch piece {
            case .token(let id): ids.append(id)
            case .text(let segment, let start):
                var s = String(String.UnicodeScalarView(segment))
                if let n = normalizer { s = n.apply(s) }
                for sub in normalizedMatcher.split(Array(s.unicodeScalars), origin: start) {
                    switch sub {
                    case .token(let id): ids.append(id)
                    case .text(let t, let subStart):
                        var splits = [PreTokenizer.Split(text: t, atOrigin: subStart == 0)]
                        if let pt = preTokenizer { splits = pt.apply(splits) }
                        for w in splits where !w.text.isEmpty {
                            var bytes: [UInt8] = []
                            bytes.reserveCapacity(w.text.count * 3)
                            for c in w.text { bytes.append(contentsOf: String(c).utf8) }
                            model.tokenize(bytes, into: &ids)
                        }
                    }
                }
            }
        }
        return ids
    }

    /// Number of ids the post-processor adds to one sequence (1 for umT5's `$A </s>`).
    public var specialTokensAdded: Int { postProcessor?.addedCount ?? 0 }

    /// The ids of `text` as `tokenizer(text)` gives them: no truncation, no padding, `</s>` appended.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        let ids = encodeOrdinary(text)
        guard addSpecialTokens, let pp = postProcessor else { return ids }
        return pp.apply(ids)
    }

    /// The ids of `text` as Wan's `HuggingfaceTokenizer` requests them (`padding='max_length', truncation=True,
    /// max_length=length`): the sequence is cut to `length - 1` tokens (room for `</s>`), `</s>` appended, then padded
    /// with the pad id; `mask` is 1 for real tokens, 0 for padding.
    public func encodePadded(_ text: String, length: Int = 512) -> (ids: [Int], mask: [Int]) {
        var ids = encodeOrdinary(text)
        let room = max(0, length - specialTokensAdded)
        if ids.count > room { ids.removeLast(ids.count - room) }
        if let pp = postProcessor { ids = pp.apply(ids) }
        let real = ids.count
        var mask = [Int](repeating: 1, count: real)
        if real < length {
            ids.append(contentsOf: repeatElement(padId, count: length - real))
            mask.append(contentsOf: repeatElement(0, count: length - real))
        }
        return (ids, mask)
    }

    /// The pieces of `ids` (for debugging).
    public func pieces(_ ids: [Int]) -> [String] {
        let byId = Dictionary(addedTokens.map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        return ids.map { byId[$0] ?? ($0 >= 0 && $0 < model.count ? model.pieces[$0] : "<?\($0)>") }
    }
}

/// Reads the pipeline parts of tokenizer.json, naming the file and field in every error.
private struct Parser {
    let path: String

    func object(_ v: Any?, _ field: String) throws -> [String: Any] {
        guard let d = v as? [String: Any] else { throw TokenizerError.invalidField(path: path, field: field, reason: "not an object") }
        return d
    }
    func type(_ d: [String: Any], _ field: String) throws -> String {
        guard let t = d["type"] as? String else { throw TokenizerError.missingField(path: path, field: field + ".type") }
        return t
    }

    func normalizer(_ v: Any?, _ field: String) throws -> Normalizer? {
        if v == nil || v is NSNull { return nil }
        let d = try object(v, field)
        let t = try type(d, field)
        switch t {
        case "Precompiled":
            guard let b64 = d["precompiled_charsmap"] as? String else {
                if d["precompiled_charsmap"] is NSNull { return nil }  // an empty charsmap is a no-op
                throw TokenizerError.missingField(path: path, field: field + ".precompiled_charsmap")
            }
            if b64.isEmpty { return nil }
            do { return .precompiled(try PrecompiledCharsmap(base64: b64)) } catch {
                throw TokenizerError.invalidField(path: path, field: field + ".precompiled_charsmap", reason: "\(error)")
            }
        case "Sequence":
            guard let list = d["normalizers"] as? [Any] else { throw TokenizerError.missingField(path: path, field: field + ".normalizers") }
            return .sequence(try list.enumerated().compactMap { try normalizer($1, field + ".normalizers[\($0)]") })
        case "Replace":
            let pat = try object(d["pattern"], field + ".pattern")
            guard let content = d["content"] as? String else { throw TokenizerError.missingField(path: path, field: field + ".content") }
            if let s = pat["String"] as? String { return .replace(pattern: .string(s), content: content) }
            if let r = pat["Regex"] as? String {
                do { return .replace(pattern: .regex(try NSRegularExpression(pattern: r)), content: content) } catch {
                    throw TokenizerError.invalidField(path: path, field: field + ".pattern.Regex", reason: "\(error)")
                }
            }
            throw TokenizerError.invalidField(path: path, field: field + ".pattern", reason: "expected String or Regex")
        case "Strip":
            return .strip(left: (d["strip_left"] as? Bool) ?? true, right: (d["strip_right"] as? Bool) ?? true)
        case "Prepend":
            guard let s = d["prepend"] as? String else { throw TokenizerError.missingField(path: path, field: field + ".prepend") }
            return .prepend(s)
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        default: throw TokenizerError.unsupported(path: path, field: field + ".type", type: t)
        }
    }

    func preTokenizer(_ v: Any?, _ field: String) throws -> PreTokenizer? {
        if v == nil || v is NSNull { return nil }
        let d = try object(v, field)
        let t = try type(d, field)
        switch t {
        case "Metaspace":
            var rep: Unicode.Scalar = "\u{2581}"
            if let r = d["replacement"] {
                guard let s = r as? String, s.unicodeScalars.count == 1 else {
                    throw TokenizerError.invalidField(path: path, field: field + ".replacement", reason: "expected one character")
                }
                rep = s.unicodeScalars.first!
            }
            var scheme: PreTokenizer.PrependScheme = .always
            if let s = d["prepend_scheme"] as? String {
                switch s {
                case "always": scheme = .always
                case "first": scheme = .first
                case "never": scheme = .never
                default: throw TokenizerError.invalidField(path: path, field: field + ".prepend_scheme", reason: "unknown scheme '\(s)'")
                }
            } else if let a = d["add_prefix_space"] as? Bool {
                scheme = a ? .always : .never
            }
            return .metaspace(replacement: rep, prepend: scheme, split: (d["split"] as? Bool) ?? true)
        case "WhitespaceSplit": return .whitespaceSplit
        case "Whitespace": return .whitespace
        case "Sequence":
            guard let list = d["pretokenizers"] as? [Any] else { throw TokenizerError.missingField(path: path, field: field + ".pretokenizers") }
            return .sequence(try list.enumerated().compactMap { try preTokenizer($1, field + ".pretokenizers[\($0)]") })
        default: throw TokenizerError.unsupported(path: path, field: field + ".type", type: t)
        }
    }

    func postProcessor(_ v: Any?, _ field: String, tokens: [String: Int], model: UnigramModel) throws -> PostProcessor? {
        if v == nil || v is NSNull { return nil }
        let d = try object(v, field)
        let t = try type(d, field)
        guard t == "TemplateProcessing" else { throw TokenizerError.unsupported(path: path, field: field + ".type", type: t) }
        guard let single = d["single"] as? [Any] else { throw TokenizerError.missingField(path: path, field: field + ".single") }
        let specials = (d["special_tokens"] as? [String: Any]) ?? [:]
        var items: [PostProcessor.Item] = []
        for (i, e) in single.enumerated() {
            let f = field + ".single[\(i)]"
            let item = try object(e, f)
            if item["Sequence"] != nil { items.append(.sequence); continue }
            guard let sp = item["SpecialToken"] as? [String: Any], let name = sp["id"] as? String else {
                throw TokenizerError.invalidField(path: path, field: f, reason: "expected Sequence or SpecialToken")
            }
            if let entry = specials[name] as? [String: Any], let ids = entry["ids"] as? [NSNumber] {
                items.append(.special(ids.map(\.intValue)))
            } else if let id = tokens[name] ?? model.id(of: name) {
                items.append(.special([id]))
            } else {
                throw TokenizerError.invalidField(path: path, field: f, reason: "special token '\(name)' has no id")
            }
        }
        return PostProcessor(single: items)
    }
}
