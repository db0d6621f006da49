import Foundation

/// A tokenizer.json normalizer (the kinds umT5 and other SentencePiece conversions use).
indirect enum Normalizer: Sendable {
    case precompiled(PrecompiledCharsmap)
    case sequence([Normalizer])
    case replace(pattern: ReplacePattern, content: String)
    case strip(left: Bool, right: Bool)
    case prepend(String)
    case nfc, nfd, nfkc, nfkd
    case lowercase

    enum ReplacePattern: @unchecked Sendable {
        case string(String)
        case regex(NSRegularExpression)
    }

    func apply(_ s: String) -> String {
        switch self {
        case .precompiled(let p): return p.normalize(s)
        case .sequence(let list): return list.reduce(s) { $1.apply($0) }
        case .replace(let pattern, let content):
            switch pattern {
            case .string(let p):
                return p.isEmpty ? s : Normalizer.replaceLiteral(s, p, content)
            case .regex(let re):
                let ns = s as NSString
                return re.stringByReplacingMatches(in: s, range: NSRange(location: 0, length: ns.length),
                                                   withTemplate: NSRegularExpression.escapedTemplate(for: content))
            }
        case .strip(let left, let right):
            var scalars = Array(s.unicodeScalars)
            if right { while let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() } }
            var start = 0
            if left { while start < scalars.count, scalars[start].properties.isWhitespace { start += 1 } }
            var out = String.UnicodeScalarView()
            out.append(contentsOf: scalars[start...])
            return String(out)
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .nfc: return UnicodeNormalization.nfc(s)
        case .nfd: return s.decomposedStringWithCanonicalMapping
        case .nfkc: return UnicodeNormalization.nfkc(s)
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        case .lowercase: return s.lowercased()
        }
    }

    /// Literal replacement on Unicode scalars (no canonical-equivalence matching, unlike String APIs).
    static func replaceLiteral(_ s: String, _ pattern: String, _ content: String) -> String {
        let src = Array(s.unicodeScalars), pat = Array(pattern.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < src.count {
            if i + pat.count <= src.count && src[i] == pat[0] && Array(src[i..<(i + pat.count)]) == pat {
                out.append(contentsOf: content.unicodeScalars)
                i += pat.count
            } else {
                out.append(src[i]); i += 1
            }
        }
        return String(out)
    }
}

/// A tokenizer.json pre-tokenizer.
indirect enum PreTokenizer: Sendable {
    enum PrependScheme: Sendable { case always, first, never }
    case metaspace(replacement: Unicode.Scalar, prepend: PrependScheme, split: Bool)
    case whitespaceSplit
    case whitespace
    case sequence([PreTokenizer])

    /// One piece of text being pre-tokenized; `atOrigin` is true when it starts at offset 0 of the original input
    /// (what Metaspace's "first" scheme tests).
    struct Split { var text: [Unicode.Scalar]; var atOrigin: Bool }

    func apply(_ splits: [Split]) -> [Split] {
        switch self {
        case .sequence(let list): return list.reduce(splits) { $1.apply($0) }
        case .metaspace(let rep, let prepend, let split):
            var out: [Split] = []
            for s in splits {
                var t = s.text.map { $0 == " " ? rep : $0 }
                switch prepend {
                case .always: if let f = t.first, f != rep { t.insert(rep, at: 0) }
                case .first: if let f = t.first, f != rep, s.atOrigin { t.insert(rep, at: 0) }
                case .never: break
                }
                if !split { if !t.isEmpty { out.append(Split(text: t, atOrigin: s.atOrigin)) }; continue }
                // Split before every replacement character (MergedWithNext).
                var cur: [Unicode.Scalar] = []
                var first = true
                for c in t {
                    if c == rep && !cur.isEmpty {
                        out.append(Split(text: cur, atOrigin: s.atOrigin && first)); first = false; cur = []
                    }
                    cur.append(c)
                }
                if !cur.isEmpty { out.append(Split(text: cur, atOrigin: s.atOrigin && first)) }
            }
            return out
        case .whitespaceSplit:
            var out: [Split] = []
            for s in splits {
                var cur: [Unicode.Scalar] = []
                var offset = 0, curStart = 0
                for c in s.text {
                    if c.properties.isWhitespace {
                        if !cur.isEmpty { out.append(Split(text: cur, atOrigin: s.atOrigin && curStart == 0)); cur = [] }
                    } else {
                        if cur.isEmpty { curStart = offset }
                        cur.append(c)
                    }
                    offset += 1
                }
                if !cur.isEmpty { out.append(Split(text: cur, atOrigin: s.atOrigin && curStart == 0)) }
            }
            return out
        case .whitespace:
            // \w+|[^\w\s]+
            var out: [Split] = []
            func isWord(_ c: Unicode.Scalar) -> Bool {
                c.properties.isAlphabetic || c.properties.numericType != nil || c.properties.generalCategory == .nonspacingMark
                    || c.properties.generalCategory == .spacingMark || c.properties.generalCategory == .connectorPunctuation
            }
            for s in splits {
                var cur: [Unicode.Scalar] = []
                var curKind = 0, offset = 0, curStart = 0
                for c in s.text {
                    let kind = c.properties.isWhitespace ? 0 : (isWord(c) ? 1 : 2)
                    if kind != curKind && !cur.isEmpty {
                        out.append(Split(text: cur, atOrigin: s.atOrigin && curStart == 0)); cur = []
                    }
                    if kind != 0 {
                        if cur.isEmpty { curStart = offset }
                        cur.append(c)
                    }
                    curKind = kind
                    offset += 1
                }
                if !cur.isEmpty { out.append(Split(text: cur, atOrigin: s.atOrigin && curStart == 0)) }
            }
            return out
        }
    }
}

/// One entry of tokenizer.json's `added_tokens`.
struct AddedToken: Sendable {
    var content: [Unicode.Scalar]
    var id: Int
    var special: Bool
    var normalized: Bool
    var lstrip: Bool
    var rstrip: Bool
    var singleWord: Bool
}

/// Finds added tokens in text, leftmost-longest (as the `tokenizers` library's Aho-Corasick matcher).
struct AddedTokenMatcher: Sendable {
    private var byFirst: [UInt32: [AddedToken]] = [:]
    var isEmpty: Bool { byFirst.isEmpty }

    init(_ tokens: [AddedToken]) {
        for t in tokens where !t.content.isEmpty { byFirst[t.content[0].value, default: []].append(t) }
        for k in byFirst.keys { byFirst[k]!.sort { $0.content.count > $1.content.count } }
    }

    enum Piece { case text([Unicode.Scalar], start: Int); case token(Int) }

    private static func isWordChar(_ c: Unicode.Scalar) -> Bool {
        c.properties.isAlphabetic || c.properties.numericType != nil || c == "_"
    }

    /// Splits `text` (whose first scalar is at `origin` in the original input) into text and token pieces;
    /// empty text pieces are dropped.
    func split(_ text: [Unicode.Scalar], origin: Int) -> [Piece] {
        if byFirst.isEmpty { return text.isEmpty ? [] : [.text(text, start: origin)] }
        var out: [Piece] = []
        var segStart = 0
        var i = 0
        let n = text.count
        while i < n {
            guard let cands = byFirst[text[i].value] else { i += 1; continue }
            var matched: AddedToken? = nil
            for t in cands where i + t.content.count <= n {
                var ok = true
                for k in 0..<t.content.count where text[i + k] != t.content[k] { ok = false; break }
                if !ok { continue }
                if t.singleWord {
                    if i > 0 && Self.isWordChar(text[i - 1]) && Self.isWordChar(t.content[0]) { continue }
                    let e = i + t.content.count
                    if e < n && Self.isWordChar(text[e]) && Self.isWordChar(t.content[t.content.count - 1]) { continue }
                }
                matched = t
                break
            }
            guard let t = matched else { i += 1; continue }
            var s = i, e = i + t.content.count
            if t.lstrip { while s > segStart && text[s - 1].properties.isWhitespace { s -= 1 } }
            if t.rstrip { while e < n && text[e].properties.isWhitespace { e += 1 } }
            if s > segStart { out.append(.text(Array(text[segStart..<s]), start: origin + segStart)) }
            out.append(.token(t.id))
            segStart = e
            i = e
        }
        if segStart < n { out.append(.text(Array(text[segStart..<n]), start: origin + segStart)) }
        return out
    }
}

/// tokenizer.json's `post_processor` when it is `TemplateProcessing` (single-sequence template only).
struct PostProcessor: Sendable {
    enum Item: Sendable { case sequence; case special([Int]) }
    var single: [Item]
    var addedCount: Int { single.reduce(0) { if case .special(let ids) = $1 { return $0 + ids.count } else { return $0 } } }

    func apply(_ ids: [Int]) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(ids.count + addedCount)
        for item in single {
            switch item {
            case .sequence: out.append(contentsOf: ids)
            case .special(let s): out.append(contentsOf: s)
            }
        }
        return out
    }
}
