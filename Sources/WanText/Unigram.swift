import Foundation

/// A byte trie of the vocabulary pieces: node transitions live in one open-addressing hash table keyed by
/// (node, byte), so building it for umT5's 256k pieces is a single pass without per-node allocations.
struct ByteTrie: Sendable {
    private var keys: [UInt64]      // (node << 8 | byte) + 1; 0 = empty slot
    private var children: [Int32]
    private var mask: Int
    private var used = 0
    /// Piece id ending at each node, -1 if none.
    private(set) var terminal: [Int32] = [-1]

    init(expectedTransitions: Int) {
        var cap = 16
        while cap < expectedTransitions * 2 { cap <<= 1 }
        keys = [UInt64](repeating: 0, count: cap)
        children = [Int32](repeating: 0, count: cap)
        mask = cap - 1
    }

    @inline(__always) private static func hash(_ k: UInt64) -> Int {
        var h = k &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 29
        return Int(truncatingIfNeeded: h)
    }

    @inline(__always) func child(_ node: Int32, _ byte: UInt8) -> Int32 {
        let k = (UInt64(UInt32(bitPattern: node)) << 8 | UInt64(byte)) &+ 1
        var slot = Self.hash(k) & mask
        while true {
            let s = keys[slot]
            if s == k { return children[slot] }
            if s == 0 { return -1 }
            slot = (slot + 1) & mask
        }
    }

    private mutating func grow() {
        let oldKeys = keys, oldChildren = children
        let cap = keys.count * 2
        keys = [UInt64](repeating: 0, count: cap)
        children = [Int32](repeating: 0, count: cap)
        mask = cap - 1
        for i in 0..<oldKeys.count where oldKeys[i] != 0 {
            var slot = Self.hash(oldKeys[i]) & mask
            while keys[slot] != 0 { slot = (slot + 1) & mask }
            keys[slot] = oldKeys[i]
            children[slot] = oldChildren[i]
        }
    }

    /// Adds a piece; a piece seen twice keeps the later id (as the `tokenizers` library's token-to-id map does).
    mutating func insert<C: Collection>(_ bytes: C, id: Int32) where C.Element == UInt8 {
        var node: Int32 = 0
        for b in bytes {
            let k = (UInt64(UInt32(bitPattern: node)) << 8 | UInt64(b)) &+ 1
            var slot = Self.hash(k) & mask
            var found: Int32 = -1
            while true {
                let s = keys[slot]
                if s == k { found = children[slot]; break }
                if s == 0 { break }
                slot = (slot + 1) & mask
            }
            if found < 0 {
                if (used + 1) * 4 > keys.count * 3 {
                    grow()
                    slot = Self.hash(k) & mask
                    while keys[slot] != 0 { slot = (slot + 1) & mask }
                }
                found = Int32(terminal.count)
                terminal.append(-1)
                keys[slot] = k
                children[slot] = found
                used += 1
            }
            node = found
        }
        terminal[Int(node)] = id
    }

    /// The id of exactly these bytes, if they are a piece.
    func lookup<C: Collection>(_ bytes: C) -> Int32? where C.Element == UInt8 {
        var node: Int32 = 0
        for b in bytes {
            node = child(node, b)
            if node < 0 { return nil }
        }
        let t = terminal[Int(node)]
        return t >= 0 ? t : nil
    }
}

/// The Unigram model of a tokenizer.json (`"type": "Unigram"`): Viterbi segmentation of each pre-tokenized word
/// maximising the sum of piece scores, as the Hugging Face `tokenizers` library computes it (`encode_optimized`):
/// a character no piece of its own length covers gets an unknown node scored `min_score - 10`; consecutive unknown
/// nodes are fused; with `byte_fallback` an unknown string becomes its UTF-8 bytes as `<0xNN>` pieces, otherwise
/// `unk_id`.
public final class UnigramModel: @unchecked Sendable {
    public let pieces: [String]
    public let scores: [Double]
    public let unkId: Int?
    public let byteFallback: Bool
    public let fuseUnk: Bool
    let trie: ByteTrie
    private let minScore: Double
    private let byteIds: [Int32]

    public init(pieces: [String], scores: [Double], unkId: Int?, byteFallback: Bool, fuseUnk: Bool = true) {
        self.pieces = pieces
        self.scores = scores
        self.unkId = unkId
        self.byteFallback = byteFallback
        self.fuseUnk = fuseUnk
        var total = 0
        for p in pieces { total += p.utf8.count }
        var t = ByteTrie(expectedTransitions: max(16, total))
        for (i, p) in pieces.enumerated() { t.insert(p.utf8, id: Int32(i)) }
        trie = t
        minScore = scores.min() ?? 0
        var b = [Int32](repeating: -1, count: 256)
        for v in 0..<256 {
            let name = "<0x" + (v < 16 ? "0" : "") + String(v, radix: 16, uppercase: true) + ">"
            if let id = t.lookup(name.utf8) { b[v] = id }
        }
        byteIds = b
    }

    public var count: Int { pieces.count }
    public func id(of piece: String) -> Int? { trie.lookup(piece.utf8).map(Int.init) }

    @inline(__always) private static func charLength(_ lead: UInt8) -> Int {
        if lead < 0x80 { return 1 }
        if lead < 0xE0 { return 2 }
        if lead < 0xF0 { return 3 }
        return 4
    }

    /// Appends the ids of one pre-tokenized word (UTF-8 bytes).
    public func tokenize(_ word: [UInt8], into out: inout [Int]) {
        let n = word.count
        if n == 0 { return }
        let unkScore = minScore - 10.0
        var best = [Double](repeating: 0, count: n + 1)
        var start = [Int](repeating: -1, count: n + 1)
        var ids = [Int32](repeating: -1, count: n + 1)
        let unk = Int32(unkId ?? -1)
        var pos = 0
        while pos < n {
            let base = best[pos]
            let mblen = min(Self.charLength(word[pos]), n - pos)
            var hasSingle = false
            var node: Int32 = 0
            var k = pos
            while k < n {
                node = trie.child(node, word[k])
                if node < 0 { break }
                k += 1
                let id = trie.terminal[Int(node)]
                if id >= 0 {
                    let cand = scores[Int(id)] + base
                    if start[k] < 0 || cand > best[k] {
                        best[k] = cand
                        start[k] = pos
                        ids[k] = id
                    }
                    if k - pos == mblen { hasSingle = true }
                }
            }
            if !hasSingle {
                let e = pos + mblen
                let cand = unkScore + base
                if start[e] < 0 || cand > best[e] {
                    best[e] = cand
                    start[e] = pos
                    ids[e] = unk
                }
            }
            pos += mblen
        }
        // Backtrack: (start, end, id) with fused unknowns (id -1 marks an unknown run to resolve).
        var segments: [(Int, Int, Int32)] = []
        var end = n
        var unkEnd = -1
        while end > 0 {
            let s = start[end]
            if s < 0 { break }  // unreachable (defensive)
            let isUnk = ids[end] == unk
            if fuseUnk && unkId != nil && isUnk {
                if unkEnd < 0 { unkEnd = end }
            } else {
                if unkEnd >= 0 { segments.append((end, unkEnd, -2)); unkEnd = -1 }
                segments.append((s, end, isUnk ? -2 : ids[end]))
            }
            end = s
        }
        if unkEnd >= 0 { segments.append((0, unkEnd, -2)) }
        for (s, e, id) in segments.reversed() {
            if id >= 0 { out.append(Int(id)); continue }
            let bytes = word[s..<e]
            if let known = trie.lookup(bytes) { out.append(Int(known)); continue }
            if byteFallback && bytes.allSatisfy({ byteIds[Int($0)] >= 0 }) {
                for b in bytes { out.append(Int(byteIds[Int(b)])) }
                continue
            }
            out.append(unkId ?? 0)
        }
    }
}
