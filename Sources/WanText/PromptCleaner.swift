import Foundation

/// Wan's prompt cleaning (`wan/modules/tokenizers.py`, `clean='whitespace'`):
/// `ftfy.fix_text(text)`, `html.unescape` twice, `strip()`, `\s+` → one space, `strip()`.
///
/// What of `ftfy.fix_text` (ftfy 6, default `TextFixerConfig`) is reproduced:
/// - the outer loop: the text is fixed line by line (segments end after each `\n`); HTML unescaping is "auto": it
///   is switched off for the current and every later line once a line contains `<`;
/// - per segment, the fixers repeat until nothing changes, in ftfy's order:
///   - `unescape_html`: `&name;` entities of the HTML5 table (with the semicolon), the all-caps forms ftfy accepts
///     (`&EACUTE;` → `É`), numeric `&#…;` / `&#x…;` references (Python's `html.unescape` rules);
///   - `fix_encoding`, repeated until nothing changes: text that ftfy's badness regex calls bad is encoded in each of
///     the code pages ftfy tries, in its order (Latin-1, "sloppy" Windows-1252/1251/1250/1253/1254/1257 with undefined
///     bytes passing through and U+FFFD ↔ byte 1A, ISO-8859-2, MacRoman, CP437); the first whose bytes, after
///     `restore_byte_a0` (not for MacRoman) and, for the sloppy pages, `replace_lossy_sequences`, decode as UTF-8 (or
///     as ftfy's `utf-8-variants`: CESU-8 pairs, `C0 80`) wins; otherwise each run of UTF-8 written as such characters
///     is decoded on its own (`decode_inconsistent_utf8`); text of Latin-1 that holds C1 controls is re-read as
///     Windows-1252;
///   - `fix_c1_controls` (C1 controls → Windows-1252 characters), `fix_latin_ligatures` (ﬁ → fi, Ǆ → DŽ, …),
///     `fix_character_width` (full-width/half-width forms and U+3000 → their NFKC forms), `uncurl_quotes`
///     (U+2018–U+201B, U+02BC → `'`; U+201C–U+201F → `"`), `fix_line_breaks` (CRLF, CR, U+2028, U+2029, U+0085 →
///     `\n`), `remove_terminal_escapes` (`ESC [ digits/; letter`), `remove_control_chars` (U+0000–U+0008, U+000B,
///     U+000E–U+001F, U+007F, U+206A–U+206F, U+FEFF, U+FFF9–U+FFFC), then NFC;
///   - `fix_surrogates` has nothing to do in Swift (strings hold no lone surrogates).
/// - then Python's `html.unescape` twice (full HTML5 table incl. the legacy names without `;`, longest-prefix
///   matching, numeric references with Python's replacement of invalid code points), `strip`, `\s+` → ` `, `strip`,
///   with Python's `str.isspace` set (incl. U+00A0, U+3000, U+2028/2029, U+0085, U+001C–U+001F; not U+200B).
public enum WanPromptCleaner {
    /// The cleaning modes of the official `HuggingfaceTokenizer` (`clean=`); Wan's umT5 uses `whitespace`.
    public enum Mode: String, CaseIterable, Sendable {
        /// No cleaning (`clean=None`).
        case none
        /// `whitespace_clean(basic_clean(text))`.
        case whitespace
        /// The same, then Python's `str.lower()`.
        case lower
        /// `canonicalize(basic_clean(text))`: `_` → space, ASCII punctuation removed, lower case, whitespace collapsed.
        case canonicalize
    }

    /// The cleaned prompt, as Wan feeds it to the tokenizer.
    public static func clean(_ text: String) -> String {
        collapseWhitespace(basicClean(text))
    }

    /// The prompt cleaned in `mode`.
    public static func clean(_ text: String, mode: Mode) -> String {
        switch mode {
        case .none: return text
        case .whitespace: return clean(text)
        case .lower: return pythonLower(clean(text))
        case .canonicalize:
            // basic_clean's strip is subsumed by the final collapse (removing punctuation makes no whitespace).
            var kept = String.UnicodeScalarView()
            for c in basicClean(text).unicodeScalars {
                if c == "_" { kept.append(" ") } else if !isASCIIPunctuation(c) { kept.append(c) }
            }
            return collapseWhitespace(pythonLower(String(kept)))
        }
    }

    /// `ftfy.fix_text`, then `html.unescape` twice (`basic_clean` without its `strip`, which every mode's whitespace
    /// collapse repeats).
    static func basicClean(_ text: String) -> String {
        htmlUnescape(htmlUnescape(fixText(text)))
    }

    /// Python's `string.punctuation`: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
    static func isASCIIPunctuation(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x21...0x2F, 0x3A...0x40, 0x5B...0x60, 0x7B...0x7E: return true
        default: return false
        }
    }

    /// Python's `str.lower()`: every scalar's full lowercase mapping, and capital sigma as final sigma (ς) where it
    /// ends a word: a cased letter before it and none after it, case-ignorable characters skipped (CPython's
    /// `handle_capital_sigma`; Swift's `lowercased()` always gives σ).
    public static func pythonLower(_ text: String) -> String {
        let scalars = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        for (i, c) in scalars.enumerated() {
            guard c.value == 0x3A3 else { out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars); continue }
            var j = i - 1
            while j >= 0, scalars[j].properties.isCaseIgnorable { j -= 1 }
            var final = j >= 0 && scalars[j].properties.isCased
            if final {
                var k = i + 1
                while k < scalars.count, scalars[k].properties.isCaseIgnorable { k += 1 }
                final = k == scalars.count || !scalars[k].properties.isCased
            }
            out.append(final ? "\u{3C2}" : "\u{3C3}")
        }
        return String(out)
    }

    /// `str.strip()` then `re.sub(r'\s+', ' ', …)` then `strip()`.
    public static func collapseWhitespace(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        var pendingSpace = false
        for c in text.unicodeScalars {
            if isPythonSpace(c) { pendingSpace = !out.isEmpty; continue }
            if pendingSpace { out.append(" "); pendingSpace = false }
            out.append(c)
        }
        return String(out)
    }

    /// Python's `str.isspace()`.
    public static func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    // MARK: ftfy.fix_text

    /// `ftfy.fix_text` with its default configuration, as far as described on the type.
    public static func fixText(_ text: String) -> String {
        let scalars = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        var unescape = true
        var pos = 0
        while pos < scalars.count {
            var end = pos
            while end < scalars.count && scalars[end] != "\n" { end += 1 }
            if end < scalars.count { end += 1 }
            let segment = Array(scalars[pos..<end])
            if segment.contains("<") { unescape = false }
            out.append(contentsOf: fixSegment(segment, unescapeHTML: unescape))
            pos = end
        }
        return String(out)
    }

    static func fixSegment(_ input: [Unicode.Scalar], unescapeHTML: Bool) -> [Unicode.Scalar] {
        var text = input
        for _ in 0..<16 {
            let orig = text
            if unescapeHTML { text = ftfyUnescapeHTML(text) }
            text = fixEncoding(text)
            text = fixC1Controls(text)
            text = text.flatMap { ligatures[$0.value].map { Array($0.unicodeScalars) } ?? [$0] }
            text = text.flatMap { widthMap[$0.value] ?? [$0] }
            text = text.map { c -> Unicode.Scalar in
                switch c.value {
                case 0x2BC, 0x2018...0x201B: return "'"
                case 0x201C...0x201F: return "\""
                default: return c
                }
            }
            text = fixLineBreaks(text)
            text = removeTerminalEscapes(text)
            text = text.filter { !isControl($0) }
            text = Array(UnicodeNormalization.nfc(String(String.UnicodeScalarView(text))).unicodeScalars)
            if text == orig { break }
        }
        return text
    }

    static func isControl(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x00...0x08, 0x0B, 0x0E...0x1F, 0x7F, 0x206A...0x206F, 0xFEFF, 0xFFF9...0xFFFC: return true
        default: return false
        }
    }

    static func fixLineBreaks(_ t: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(t.count)
        var i = 0
        while i < t.count {
            let c = t[i]
            if c == "\r" {
                out.append("\n")
                if i + 1 < t.count && t[i + 1] == "\n" { i += 1 }
            } else if c.value == 0x2028 || c.value == 0x2029 || c.value == 0x85 {
                out.append("\n")
            } else {
                out.append(c)
            }
            i += 1
        }
        return out
    }

    /// `\x1b\[[\d;]*[a-zA-Z]` removed.
    static func removeTerminalEscapes(_ t: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard t.contains("\u{1B}") else { return t }
        var out: [Unicode.Scalar] = []
        var i = 0
        while i < t.count {
            if t[i] == "\u{1B}" && i + 1 < t.count && t[i + 1] == "[" {
                var j = i + 2
                while j < t.count && (("0"..."9").contains(t[j]) || t[j] == ";") { j += 1 }
                if j < t.count && (("a"..."z").contains(t[j]) || ("A"..."Z").contains(t[j])) { i = j + 1; continue }
            }
            out.append(t[i]); i += 1
        }
        return out
    }

    static let ligatures: [UInt32: String] = [
        0x132: "IJ", 0x133: "ij", 0x149: "\u{2BC}n", 0x1F1: "DZ", 0x1F2: "Dz", 0x1F3: "dz", 0x1C4: "D\u{17D}",
        0x1C5: "D\u{17E}", 0x1C6: "d\u{17E}", 0x1C7: "LJ", 0x1C8: "Lj", 0x1C9: "lj", 0x1CA: "NJ", 0x1CB: "Nj", 0x1CC: "nj",
        0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u{17F}t", 0xFB06: "st",
    ]

    static let widthMap: [UInt32: [Unicode.Scalar]] = parseTable(WanTextTables.widthMap) { UInt32($0, radix: 16) }

    private static func parseTable<K: Hashable>(_ table: String, key: (String) -> K?) -> [K: [Unicode.Scalar]] {
        var d: [K: [Unicode.Scalar]] = [:]
        for line in table.split(separator: "\n") {
            let parts = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard parts.count == 2, let k = key(String(parts[0])) else { continue }
            d[k] = parts[1].split(separator: ",").compactMap { UInt32($0, radix: 16).flatMap(Unicode.Scalar.init) }
        }
        return d
    }

    // MARK: HTML

    /// HTML5 named references by name (with or without the trailing `;`, as the table lists them).
    static let htmlEntities: [String: [Unicode.Scalar]] = parseTable(WanTextTables.htmlEntities) { $0 }

    /// Python's `html.unescape`.
    public static func htmlUnescape(_ text: String) -> String {
        guard text.unicodeScalars.contains("&") else { return text }
        return String(String.UnicodeScalarView(htmlUnescape(Array(text.unicodeScalars))))
    }

    static func isHexDigit(_ c: Unicode.Scalar) -> Bool {
        ("0"..."9").contains(c) || ("a"..."f").contains(c) || ("A"..."F").contains(c)
    }

    static func charref(_ num: UInt64?) -> [Unicode.Scalar] {
        guard let n = num, n <= 0x10FFFF else { return ["\u{FFFD}"] }
        if n == 0 { return ["\u{FFFD}"] }
        if n == 0x0D { return ["\r"] }
        if (0x80...0x9F).contains(n) { return [Unicode.Scalar(cp1252[Int(n - 0x80)])!] }
        if (0xD800...0xDFFF).contains(n) { return ["\u{FFFD}"] }
        if (0x1...0x8).contains(n) || (0xE...0x1F).contains(n) || (0x7F...0x9F).contains(n) || (0xFDD0...0xFDEF).contains(n)
            || n == 0xB || (n & 0xFFFE) == 0xFFFE { return [] }
        return [Unicode.Scalar(UInt32(n))!]
    }

    static func parseNumber(_ digits: ArraySlice<Unicode.Scalar>, radix: UInt64) -> UInt64? {
        var v: UInt64 = 0
        for d in digits {
            let x = UInt64(Int(String(d), radix: Int(radix)) ?? 0)
            let (m, o1) = v.multipliedReportingOverflow(by: radix)
            let (a, o2) = m.addingReportingOverflow(x)
            if o1 || o2 || a > 0x10FFFF { return nil }
            v = a
        }
        return v
    }

    static func htmlUnescape(_ t: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(t.count)
        var i = 0
        let n = t.count
        while i < n {
            guard t[i] == "&", i + 1 < n else { out.append(t[i]); i += 1; continue }
            if t[i + 1] == "#" {
                var j = i + 2
                var hex = false
                if j < n && (t[j] == "x" || t[j] == "X") { hex = true; j += 1 }
                let ds = j
                while j < n && (hex ? isHexDigit(t[j]) : ("0"..."9").contains(t[j])) { j += 1 }
                if j == ds { out.append(t[i]); i += 1; continue }
                let value = parseNumber(t[ds..<j], radix: hex ? 16 : 10)
                if j < n && t[j] == ";" { j += 1 }
                out.append(contentsOf: charref(value))
                i = j
                continue
            }
            // [^\t\n\f <&#;]{1,32};?
            var j = i + 1
            while j < n && j - (i + 1) < 32 && !["\t", "\n", "\u{0C}", " ", "<", "&", "#", ";"].contains(t[j]) { j += 1 }
            if j == i + 1 { out.append(t[i]); i += 1; continue }
            if j < n && t[j] == ";" { j += 1 }
            let s = String(String.UnicodeScalarView(t[(i + 1)..<j]))
            if let v = htmlEntities[s] { out.append(contentsOf: v); i = j; continue }
            let sc = Array(s.unicodeScalars)
            var done = false
            var x = sc.count - 1
            while x > 1 {
                if let v = htmlEntities[String(String.UnicodeScalarView(sc[0..<x]))] {
                    out.append(contentsOf: v)
                    out.append(contentsOf: sc[x...])
                    done = true
                    break
                }
                x -= 1
            }
            if !done { out.append("&"); out.append(contentsOf: sc) }
            i = j
        }
        return out
    }

    /// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` replaced when it is a named reference with `;`, an all-caps
    /// form of a lower-case one, or a numeric reference that `html.unescape` consumes entirely.
    static func ftfyUnescapeHTML(_ t: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard t.contains("&") else { return t }
        func alnum(_ c: Unicode.Scalar) -> Bool { ("0"..."9").contains(c) || ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        var out: [Unicode.Scalar] = []
        var i = 0
        let n = t.count
        while i < n {
            if t[i] == "&" {
                var j = i + 1
                let numeric = j < n && t[j] == "#"
                if numeric { j += 1 }
                let ns = j
                while j < n && j - ns < 24 && alnum(t[j]) { j += 1 }
                if j > ns && j < n && t[j] == ";" {
                    let whole = Array(t[i...j])
                    let name = String(String.UnicodeScalarView(t[(i + 1)...j]))
                    if !numeric, let v = htmlEntities[name], name.hasSuffix(";") {
                        out.append(contentsOf: v); i = j + 1; continue
                    }
                    if !numeric, let v = upperEntity(name, whole) { out.append(contentsOf: v); i = j + 1; continue }
                    if numeric {
                        let u = htmlUnescape(whole)
                        if !u.contains(";") { out.append(contentsOf: u); i = j + 1; continue }
                    }
                    out.append(contentsOf: whole); i = j + 1; continue
                }
            }
            out.append(t[i]); i += 1
        }
        return out
    }

    private static func upperEntity(_ name: String, _ whole: [Unicode.Scalar]) -> [Unicode.Scalar]? {
        let lower = name.lowercased()
        guard lower != name, name == lower.uppercased(), let v = htmlEntities[lower] else { return nil }
        guard htmlUnescape(whole) == whole else { return nil }
        return Array(String(String.UnicodeScalarView(v)).uppercased().unicodeScalars)
    }

    // MARK: encoding repair

    /// A single-byte code page of ftfy's `fix_encoding` (see `WanTextTables.codePages`).
    struct CodePage {
        let name: String
        let sloppy: Bool
        let high: [UInt32]
        let reverse: [UInt32: UInt8]

        init(name: String, sloppy: Bool, high: [UInt16]) {
            self.name = name
            self.sloppy = sloppy
            self.high = high.map(UInt32.init)
            var r: [UInt32: UInt8] = [:]
            for (i, c) in high.enumerated() { r[UInt32(c)] = UInt8(0x80 + i) }
            self.reverse = r
        }

        /// The bytes of `text` in this code page, or nil when a character has none (ftfy's `possible_encoding`).
        func encode(_ text: [Unicode.Scalar]) -> [UInt8]? {
            var out: [UInt8] = []
            out.reserveCapacity(text.count)
            for c in text {
                let v = c.value
                if v < 0x80 {
                    if sloppy && v == 0x1A { return nil }  // byte 0x1A reads as U+FFFD in the sloppy pages
                    out.append(UInt8(v))
                } else if sloppy && v == 0xFFFD {
                    out.append(0x1A)
                } else if let b = reverse[v] {
                    out.append(b)
                } else {
                    return nil
                }
            }
            return out
        }
    }

    /// The code pages in ftfy's order: Latin-1, sloppy Windows-1252/1251/1250/1253/1254/1257, ISO-8859-2, MacRoman, CP437.
    static let codePages: [CodePage] = WanTextTables.codePages.map { CodePage(name: $0.name, sloppy: $0.sloppy, high: $0.high) }

    /// Windows-1252 bytes 0x80…0x9F; the undefined ones pass through (ftfy's "sloppy" codec).
    static let cp1252: [UInt32] = Array(codePages.first { $0.name == "sloppy-windows-1252" }!.high[0..<32])

    static let badnessRE = try! NSRegularExpression(pattern: pythonSemantics(WanTextTables.ftfyBadness))

    /// A pattern of Python's `re` (str, no flags) for ICU: `\w` is Python's word character (`str.isalnum()` or `_`:
    /// letters and every character with a numeric value, such as `¼`, which ICU's `\w` leaves out), `\s` Python's
    /// whitespace (`str.isspace()`, with U+001C…U+001F), and `.` outside brackets any character but `\n` (ICU's also
    /// stops at `\r`, U+0085, U+2028, U+2029).
    static func pythonSemantics(_ pattern: String) -> String {
        var out = ""
        var inClass = false
        var escaped = false
        for c in pattern {
            if escaped {
                escaped = false
                switch (c, inClass) {
                case ("w", false): out += "[\\p{L}\\p{Numeric_Type=Decimal}\\p{Numeric_Type=Digit}\\p{Numeric_Type=Numeric}_]"
                case ("s", false): out += "[\\t\\n\\x{0B}\\x{0C}\\r\\x{1C}-\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}]"
                case ("w", true), ("s", true): preconditionFailure("\\\(c) inside a character class")
                default: out += "\\" + String(c)
                }
                continue
            }
            switch c {
            case "\\": escaped = true
            case "[": inClass = true; out.append(c)
            case "]": inClass = false; out.append(c)
            case "." where !inClass: out += "[^\\n]"
            default: out.append(c)
            }
        }
        return out
    }
    static let utf8DetectorRE = try! NSRegularExpression(pattern: WanTextTables.ftfyUTF8Detector)

    /// ftfy's `is_bad`: the text matches its mojibake detector.
    static func isBad(_ s: String) -> Bool {
        badnessRE.firstMatch(in: s, range: NSRange(location: 0, length: (s as NSString).length)) != nil
    }

    static func string(_ t: [Unicode.Scalar]) -> String { String(String.UnicodeScalarView(t)) }

    /// ftfy's `fix_encoding` (see the type's description for what is covered).
    static func fixEncoding(_ input: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var text = input
        for _ in 0..<16 {
            let next = fixEncodingOneStep(text)
            if next == text { break }
            text = next
        }
        return text
    }

    /// Length of an `ALTERED_UTF8_RE` match at `i` (a UTF-8 sequence whose 0xA0 byte became a space), or 0.
    static func alteredUTF8Match(_ b: [UInt8], _ i: Int) -> Int {
        func cont(_ x: UInt8) -> Bool { (0x80...0xBF).contains(x) }
        func contNo85A0(_ x: UInt8) -> Bool { (0x80...0x84).contains(x) || (0x86...0x9F).contains(x) || (0xA1...0xBF).contains(x) }
        let n = b.count
        func at(_ k: Int) -> UInt8? { i + k < n ? b[i + k] : nil }
        guard let c0 = at(0) else { return 0 }
        if [0xC2, 0xC3, 0xC5, 0xCE, 0xD0, 0xD9].contains(c0), at(1) == 0x20 { return 2 }
        if c0 == 0xE2 || c0 == 0xE3, at(1) == 0x20, let c2 = at(2), contNo85A0(c2) { return 3 }
        if (0xE0...0xE3).contains(c0), let c1 = at(1), contNo85A0(c1), at(2) == 0x20 { return 3 }
        if c0 == 0xF0, let c1 = at(1), let c2 = at(2), let c3 = at(3) {
            if c1 == 0x20 && cont(c2) && cont(c3) { return 4 }
            if cont(c1) && c2 == 0x20 && cont(c3) { return 4 }
            if cont(c1) && cont(c2) && c3 == 0x20 { return 4 }
        }
        return 0
    }

    /// ftfy's `restore_byte_a0`, applied when `ALTERED_UTF8_RE` matches; nil when it does not.
    static func restoreByteA0(_ b: [UInt8]) -> [UInt8]? {
        guard (0..<b.count).contains(where: { alteredUTF8Match(b, $0) > 0 }) else { return nil }
        // A_GRAVE_WORD_RE: b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 "
        var a: [UInt8] = []
        var i = 0
        while i < b.count {
            if b[i] == 0xC3 && i + 1 < b.count && b[i + 1] == 0x20 {
                let rest = b[(i + 2)...]
                let blocked = [" ", "quele", "quela", "quilo", "s "].contains { rest.starts(with: Array($0.utf8)) }
                if !blocked { a += [0xC3, 0xA0, 0x20]; i += 2; continue }
            }
            a.append(b[i]); i += 1
        }
        var out: [UInt8] = []
        i = 0
        while i < a.count {
            let l = alteredUTF8Match(a, i)
            if l > 0 {
                for k in 0..<l { out.append(a[i + k] == 0x20 ? 0xA0 : a[i + k]) }
                i += l
            } else {
                out.append(a[i]); i += 1
            }
        }
        return out
    }

    /// ftfy's `replace_lossy_sequences` (`LOSSY_UTF8_RE` → the bytes of U+FFFD): UTF-8 sequences in which a byte was
    /// lost to `?` or to the sloppy pages' 0x1A, and every 0x1A.
    static func replaceLossySequences(_ b: [UInt8]) -> [UInt8] {
        guard b.contains(0x1A) || b.contains(0x3F) else { return b }
        let n = b.count
        func cont(_ x: UInt8) -> Bool { (0x80...0xBF).contains(x) }
        func lost(_ x: UInt8) -> Bool { x == 0x1A || x == 0x3F }            // [\x1a?]
        func contOr1A(_ x: UInt8) -> Bool { x == 0x1A || cont(x) }           // [\x1a\x80-\xbf]
        func any(_ x: UInt8) -> Bool { lost(x) || cont(x) }                  // [\x1a?\x80-\xbf]
        /// The length of the first alternative of LOSSY_UTF8_RE matching at i, or 0.
        func match(_ i: Int) -> Int {
            let c0 = b[i]
            func at(_ k: Int) -> UInt8? { i + k < n ? b[i + k] : nil }
            if (0xC2...0xDF).contains(c0), at(1) == 0x1A { return 2 }
            if (0xC2...0xC3).contains(c0), at(1) == 0x3F { return 2 }
            if c0 == 0xED, let c1 = at(1), (0xA0...0xAF).contains(c1), let c2 = at(2), at(3) == 0xED, let c4 = at(4), (0xB0...0xBF).contains(c4),
               let c5 = at(5), (lost(c2) && any(c5)) || (any(c2) && lost(c5)) { return 6 }
            if (0xE0...0xEF).contains(c0), let c1 = at(1), let c2 = at(2),
               (lost(c1) && contOr1A(c2)) || (contOr1A(c1) && lost(c2)) { return 3 }
            if (0xF0...0xF4).contains(c0), let c1 = at(1), let c2 = at(2), let c3 = at(3),
               (lost(c1) && contOr1A(c2) && contOr1A(c3)) || (contOr1A(c1) && lost(c2) && contOr1A(c3))
                || (contOr1A(c1) && contOr1A(c2) && lost(c3)) { return 4 }
            return c0 == 0x1A ? 1 : 0
        }
        var out: [UInt8] = []
        out.reserveCapacity(n)
        var i = 0
        while i < n {
            let l = match(i)
            if l > 0 { out += [0xEF, 0xBF, 0xBD]; i += l } else { out.append(b[i]); i += 1 }
        }
        return out
    }

    /// ftfy's "utf-8-variants" decoder: strict UTF-8, plus Java's `C0 80` for U+0000 and CESU-8 surrogate pairs
    /// (`ED A0-AF 80-BF ED B0-BF 80-BF`) for the characters past U+FFFF; nil where the bytes do not decode.
    static func decodeUTF8Variants(_ b: [UInt8]) -> [Unicode.Scalar]? {
        var out: [Unicode.Scalar] = []
        var run = 0  // start of the plain UTF-8 not yet decoded
        func flush(_ end: Int) -> Bool {
            guard end > run else { return true }
            guard let s = String(validating: b[run..<end], as: UTF8.self) else { return false }
            out.append(contentsOf: s.unicodeScalars)
            return true
        }
        let n = b.count
        var i = 0
        while i < n {
            if b[i] == 0xC0, i + 1 < n, b[i + 1] == 0x80 {
                guard flush(i) else { return nil }
                out.append("\u{0}"); i += 2; run = i
            } else if b[i] == 0xED, i + 1 < n, (0xA0...0xBF).contains(b[i + 1]) {
                guard flush(i) else { return nil }
                guard i + 5 < n, b[i + 1] <= 0xAF, (0x80...0xBF).contains(b[i + 2]), b[i + 3] == 0xED,
                      (0xB0...0xBF).contains(b[i + 4]), (0x80...0xBF).contains(b[i + 5]) else { return nil }
                let v = (UInt32(b[i + 1] & 0x0F) << 16) + (UInt32(b[i + 2] & 0x3F) << 10) + (UInt32(b[i + 4] & 0x0F) << 6)
                    + UInt32(b[i + 5] & 0x3F) + 0x10000
                out.append(Unicode.Scalar(v)!); i += 6; run = i
            } else {
                i += 1
            }
        }
        return flush(n) ? out : nil
    }

    /// One step of ftfy's `fix_encoding` (`_fix_encoding_one_step_and_explain`).
    static func fixEncodingOneStep(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        if text.isEmpty || text.allSatisfy({ $0.isASCII }) { return text }
        let str = string(text)
        if !isBad(str) { return text }
        // UTF-8 read as one of the code pages: encode, restore 0xA0 bytes, replace lossy sequences, decode as UTF-8.
        for page in codePages {
            guard var bytes = page.encode(text) else { continue }
            if page.name != "macroman", let r = restoreByteA0(bytes) { bytes = r }
            if page.sloppy { bytes = replaceLossySequences(bytes) }
            if bytes.contains(0xED) || bytes.contains(0xC0) {
                if let d = decodeUTF8Variants(bytes) { return d }
            } else if let s = String(validating: bytes, as: UTF8.self) {
                return Array(s.unicodeScalars)
            }
        }
        // decode_inconsistent_utf8: each detected run fixed on its own.
        let ns = str as NSString
        let matches = utf8DetectorRE.matches(in: str, range: NSRange(location: 0, length: ns.length))
        if !matches.isEmpty {
            var out = ""
            var last = 0
            for m in matches {
                out += ns.substring(with: NSRange(location: last, length: m.range.location - last))
                let sub = ns.substring(with: m.range)
                if m.range.length < ns.length && isBad(sub) {
                    out += string(fixEncoding(Array(sub.unicodeScalars)))
                } else {
                    out += sub
                }
                last = m.range.location + m.range.length
            }
            out += ns.substring(from: last)
            let fixed = Array(out.unicodeScalars)
            if fixed != text { return fixed }
        }
        // ftfy then re-reads Latin-1 text holding C1 controls as strict Windows-1252, and failing that (an undefined
        // byte) applies fix_c1_controls; where the strict decode succeeds it gives what fix_c1_controls gives, so
        // fix_c1_controls serves both.
        return fixC1Controls(text)
    }

    static func fixC1Controls(_ t: [Unicode.Scalar]) -> [Unicode.Scalar] {
        guard t.contains(where: { (0x80...0x9F).contains($0.value) }) else { return t }
        return t.map { (0x80...0x9F).contains($0.value) ? Unicode.Scalar(cp1252[Int($0.value - 0x80)])! : $0 }
    }
}
