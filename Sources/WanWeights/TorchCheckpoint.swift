import Foundation
import WanTensor

/// Errors of torch checkpoints beyond the zip container.
public enum PickleError: Error, CustomStringConvertible, Equatable {
    case forbidden(path: String, callable: String)
    case unsupportedOpcode(path: String, opcode: UInt8, offset: Int)
    case malformed(path: String, detail: String)
    case storageMismatch(path: String, key: String, detail: String)

    public var description: String {
        switch self {
        case .forbidden(let p, let c):
            return "\(p): the checkpoint's pickle asks for '\(c)', which is not a tensor-rebuild function; WanKit executes nothing from a pickle and refuses the file (convert it to safetensors if you trust it)"
        case .unsupportedOpcode(let p, let op, let o):
            return "\(p): unsupported pickle opcode 0x\(String(op, radix: 16)) at byte \(o); only what torch.save writes for a state dict is understood"
        case .malformed(let p, let d):
            return "\(p): malformed pickle: \(d)"
        case .storageMismatch(let p, let k, let d):
            return "\(p): tensor '\(k)': \(d) (the file is truncated or damaged)"
        }
    }
}

/// A value of the restricted pickle machine. Nothing is ever executed: globals are names, REDUCE of an allowed
/// name builds a description.
indirect enum PickleValue {
    case none, bool(Bool), int(Int), float(Double), string(String), bytes([UInt8])
    case tuple([PickleValue]), list([PickleValue]), dict([(PickleValue, PickleValue)])
    case global(String)
    case storage(dtype: DType, key: String, elements: Int)
    case tensor(TorchTensorRef)
    case orderedDictEmpty
    case mark

    var asInt: Int? { if case .int(let v) = self { return v }; if case .bool(let b) = self { return b ? 1 : 0 }; return nil }
    var asString: String? { if case .string(let s) = self { return s }; return nil }
    var items: [PickleValue]? {
        switch self { case .tuple(let v), .list(let v): return v; default: return nil }
    }
}

struct TorchTensorRef {
    let storageKey: String
    let dtype: DType
    let storageElements: Int
    let offset: Int
    let shape: [Int]
    let stride: [Int]
}

/// A torch checkpoint (`torch.save` of a state dict: a zip archive with `<name>/data.pkl` and one stored entry per
/// storage under `<name>/data/`), read by a pickle machine that only understands what torch.save writes and refuses
/// any other callable. Tensors stay in the mapping.
public final class TorchCheckpoint: WeightSource, @unchecked Sendable {
    public let path: String
    let archive: ZipArchive
    private var index: [String: TensorInfo] = [:]

    /// Callables a state-dict pickle may name (all rebuild tensors or containers; none is executed).
    static let allowedGlobals: Set<String> = [
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
        "collections.OrderedDict", "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage",
        "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage", "torch.ByteStorage", "torch.BoolStorage",
    ]
    static let storageDTypes: [String: DType] = [
        "torch.FloatStorage": .f32, "torch.HalfStorage": .f16, "torch.BFloat16Storage": .bf16, "torch.DoubleStorage": .f64,
        "torch.LongStorage": .i64, "torch.IntStorage": .i32, "torch.ShortStorage": .i16, "torch.CharStorage": .i8,
        "torch.ByteStorage": .u8, "torch.BoolStorage": .bool,
    ]

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        archive = try ZipArchive(file: file)
        guard let pkl = archive.order.first(where: { $0.hasSuffix("/data.pkl") || $0 == "data.pkl" }) else {
            throw ArchiveError.missingEntry(path: path, entry: "<name>/data.pkl (is this a torch.save checkpoint?)")
        }
        let prefix = String(pkl.dropLast("data.pkl".count))
        let root = try Self.unpickle(try archive.bytes(pkl), path: path)
        var found: [String: TorchTensorRef] = [:]
        try Self.collect(root, prefix: "", into: &found, path: path)
        if found.isEmpty { throw PickleError.malformed(path: path, detail: "no tensors found in the state dict") }
        for (name, t) in found {
            let entryName = prefix + "data/" + t.storageKey
            guard let entry = archive.entries[entryName] else { throw ArchiveError.missingEntry(path: path, entry: entryName) }
            guard entry.method == 0 else { throw ArchiveError.compressed(path: path, entry: entryName) }
            let elementSize = t.dtype.byteSize
            // Division, not multiplication: a hostile element count must not overflow.
            guard entry.size % elementSize == 0, entry.size / elementSize == t.storageElements else {
                throw PickleError.storageMismatch(path: path, key: name, detail: "storage '\(t.storageKey)' holds \(entry.size) bytes but the pickle declares \(t.storageElements) elements of \(elementSize) bytes")
            }
            var count = 1
            for d in t.shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else {
                    throw PickleError.storageMismatch(path: path, key: name, detail: "shape \(t.shape) has more elements than any storage can hold")
                }
                count = p
            }
            // Row-major contiguity (the only layout a state dict of contiguous parameters has).
            var expected = 1
            for d in stride(from: t.shape.count - 1, through: 0, by: -1) {
                guard t.shape[d] == 1 || t.stride[d] == expected else {
                    throw PickleError.storageMismatch(path: path, key: name, detail: "non-contiguous tensor (shape \(t.shape), stride \(t.stride)); save it with .contiguous()")
                }
                expected = expected.multipliedReportingOverflow(by: t.shape[d]).partialValue
            }
            guard t.offset >= 0, count <= t.storageElements, t.offset <= t.storageElements - count else {
                throw PickleError.storageMismatch(path: path, key: name, detail: "its \(count) elements at storage offset \(t.offset) run past the storage's \(t.storageElements) elements")
            }
            index[name] = TensorInfo(name: name, dtype: t.dtype, shape: t.shape, offset: entry.dataOffset + t.offset * elementSize, byteCount: count * elementSize)
        }
    }

    public var label: String { path }
    public var names: [String] { Array(index.keys) }
    public func info(_ name: String) -> TensorInfo? { index[name] }

    public func float32(_ name: String) throws -> Tensor {
        guard let info = index[name] else { throw WeightError.missingKey(source: path, key: name, expectedShape: nil) }
        let src = archive.file.base + info.offset
        if info.dtype == .f32 && Int(bitPattern: src) % 4 == 0 {
            return Tensor(borrowing: UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: Float.self)), shape: info.shape, owner: archive.file)
        }
        let t = Tensor(uninitialized: info.shape)
        FloatConversion.toF32(src, dtype: info.dtype, count: info.elementCount, into: t.data)
        return t
    }

    /// Walks dicts (a state dict, possibly nested as {"state_dict": …} or {"model": …}) and collects tensors.
    static func collect(_ v: PickleValue, prefix: String, into found: inout [String: TorchTensorRef], path: String) throws {
        switch v {
        case .dict(let pairs):
            for (k, value) in pairs {
                guard let key = k.asString else { continue }
                let name = prefix.isEmpty ? key : prefix + "." + key
                if case .tensor(let t) = value { found[name] = t } else { try collect(value, prefix: name, into: &found, path: path) }
            }
        default: break
        }
    }

    // MARK: the pickle machine

    /// How deeply containers may nest. A state dict nests a few levels (dict, tensor arguments, storage id, perhaps a
    /// wrapping {"state_dict": …}); a hostile pickle nesting a million levels would overflow the stack when walked
    /// or freed.
    static let maxNesting = 100

    static func unpickle(_ data: UnsafeRawBufferPointer, path: String) throws -> PickleValue {
        // Each value carries its nesting depth (0 for scalars, 1 + the deepest item for containers).
        var stack: [(value: PickleValue, depth: Int)] = []
        var marks: [Int] = []
        var memo: [Int: (value: PickleValue, depth: Int)] = [:]
        var pos = 0
        let n = data.count
        func need(_ k: Int) throws { guard k <= n - pos else { throw PickleError.malformed(path: path, detail: "truncated at byte \(pos)") } }
        func u8() throws -> Int { try need(1); defer { pos += 1 }; return Int(data[pos]) }
        func le(_ k: Int) throws -> UInt64 {
            try need(k)
            var v: UInt64 = 0
            for i in 0..<k { v |= UInt64(data[pos + i]) << (8 * UInt64(i)) }
            pos += k
            return v
        }
        /// A length field: one larger than what remains is a truncated (or hostile) pickle.
        func length(_ k: Int) throws -> Int {
            let v = try le(k)
            guard v <= UInt64(n - pos) else { throw PickleError.malformed(path: path, detail: "a length of \(v) bytes at byte \(pos - k) runs past the end of the pickle") }
            return Int(v)
        }
        func line() throws -> String {
            var end = pos
            while end < n && data[end] != 0x0A { end += 1 }
            guard end < n else { throw PickleError.malformed(path: path, detail: "unterminated line at byte \(pos)") }
            let s = String(decoding: UnsafeRawBufferPointer(rebasing: data[pos..<end]), as: UTF8.self)
            pos = end + 1
            return s
        }
        func text(_ k: Int) throws -> String {
            guard k >= 0 else { throw PickleError.malformed(path: path, detail: "negative length") }
            try need(k)
            defer { pos += k }
            return String(decoding: UnsafeRawBufferPointer(rebasing: data[pos..<(pos + k)]), as: UTF8.self)
        }
        func push(_ v: PickleValue) { stack.append((v, 0)) }
        /// Pushes a container holding `items` (deeper by one than its deepest item).
        func push(_ v: PickleValue, holding items: Int...) throws {
            let depth = 1 + (items.max() ?? 0)
            guard depth <= maxNesting else {
                throw PickleError.malformed(path: path, detail: "containers nested more than \(maxNesting) levels deep at byte \(pos); a state dict is not")
            }
            stack.append((v, depth))
        }
        func pop() throws -> (value: PickleValue, depth: Int) {
            guard let v = stack.popLast() else { throw PickleError.malformed(path: path, detail: "stack underflow at byte \(pos)") }
            return v
        }
        func popMark() throws -> (values: [PickleValue], depth: Int) {
            guard let m = marks.popLast(), m <= stack.count else { throw PickleError.malformed(path: path, detail: "MARK missing at byte \(pos)") }
            let items = stack[m...]
            let result = (items.map(\.value), items.map(\.depth).max() ?? 0)
            stack.removeSubrange(m...)
            return result
        }
        func global(_ name: String) throws -> PickleValue {
            guard allowedGlobals.contains(name) else { throw PickleError.forbidden(path: path, callable: name) }
            return .global(name)
        }
        func reduce(_ callable: PickleValue, _ args: PickleValue) throws -> PickleValue {
            guard case .global(let name) = callable, let a = args.items else {
                throw PickleError.malformed(path: path, detail: "REDUCE of something that is not an allowed callable")
            }
            switch name {
            case "collections.OrderedDict":
                return .dict([])
            case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
                guard a.count >= 4, case .storage(let dtype, let key, let elements) = a[0], let offset = a[1].asInt,
                      let shape = a[2].items?.compactMap(\.asInt), let stride = a[3].items?.compactMap(\.asInt),
                      shape.count == a[2].items?.count, stride.count == shape.count, shape.allSatisfy({ $0 >= 0 }) else {
                    throw PickleError.malformed(path: path, detail: "bad arguments to \(name)")
                }
                return .tensor(TorchTensorRef(storageKey: key, dtype: dtype, storageElements: elements, offset: offset, shape: shape, stride: stride))
            case "torch._utils._rebuild_parameter":
                guard let first = a.first, case .tensor = first else { throw PickleError.malformed(path: path, detail: "bad _rebuild_parameter") }
                return first
            default:
                throw PickleError.forbidden(path: path, callable: name)
            }
        }
        while true {
            let op = UInt8(try u8())
            switch op {
            case 0x80: _ = try u8()                                   // PROTO
            case 0x95: _ = try le(8)                                  // FRAME
            case 0x2E: return try pop().value                         // STOP
            case 0x7D: push(.dict([]))                                // EMPTY_DICT
            case 0x5D: push(.list([]))                                // EMPTY_LIST
            case 0x29: push(.tuple([]))                               // EMPTY_TUPLE
            case 0x28: marks.append(stack.count)                      // MARK
            case 0x4E: push(.none)                                    // NONE
            case 0x88: push(.bool(true))                              // NEWTRUE
            case 0x89: push(.bool(false))                             // NEWFALSE
            case 0x4B: push(.int(try u8()))                           // BININT1
            case 0x4D: push(.int(Int(try le(2))))                     // BININT2
            case 0x4A: push(.int(Int(Int32(truncatingIfNeeded: try le(4)))))  // BININT
            case 0x8A:                                                // LONG1
                let k = try u8()
                guard k <= 8 else { throw PickleError.malformed(path: path, detail: "integer wider than 64 bits") }
                var v = k == 0 ? 0 : Int(truncatingIfNeeded: try le(k))
                if k > 0 && k < 8 && (v >> (8 * k - 1)) & 1 == 1 { v -= 1 << (8 * k) }
                push(.int(v))
            case 0x47: push(.float(Double(bitPattern: UInt64(bigEndian: try le(8)))))  // BINFLOAT (big-endian)
            case 0x58: push(.string(try text(try length(4))))         // BINUNICODE
            case 0x8C: push(.string(try text(try u8())))              // SHORT_BINUNICODE
            case 0x8D: push(.string(try text(try length(8))))         // BINUNICODE8
            case 0x43: let k = try u8(); try need(k); push(.bytes(Array(data[pos..<(pos + k)]))); pos += k  // SHORT_BINBYTES
            case 0x42: let k = try length(4); push(.bytes(Array(data[pos..<(pos + k)]))); pos += k  // BINBYTES
            case 0x71: memo[try u8()] = stack.last                     // BINPUT
            case 0x72: memo[Int(try le(4))] = stack.last               // LONG_BINPUT
            case 0x94: memo[memo.count] = stack.last                   // MEMOIZE
            case 0x68, 0x6A:                                           // BINGET, LONG_BINGET
                let k = op == 0x68 ? try u8() : Int(try le(4))
                guard let v = memo[k] else { throw PickleError.malformed(path: path, detail: "memo \(k) undefined") }
                stack.append(v)
            case 0x63:                                                 // GLOBAL "module\nname\n"
                let module = try line(), name = try line()
                push(try global(module + "." + name))
            case 0x93:                                                 // STACK_GLOBAL
                let name = try pop().value, module = try pop().value
                guard let m = module.asString, let nm = name.asString else { throw PickleError.malformed(path: path, detail: "STACK_GLOBAL without strings") }
                push(try global(m + "." + nm))
            case 0x74: let (items, d) = try popMark(); try push(.tuple(items), holding: d)  // TUPLE
            case 0x85: let a = try pop(); try push(.tuple([a.value]), holding: a.depth)      // TUPLE1
            case 0x86: let b = try pop(), a = try pop(); try push(.tuple([a.value, b.value]), holding: a.depth, b.depth)  // TUPLE2
            case 0x87:                                                 // TUPLE3
                let c = try pop(), b = try pop(), a = try pop()
                try push(.tuple([a.value, b.value, c.value]), holding: a.depth, b.depth, c.depth)
            case 0x6C: let (items, d) = try popMark(); try push(.list(items), holding: d)    // LIST
            // The list or dict taken off the stack is dropped (`.value = .none`) before it grows, so that its storage
            // has one owner and grows in place: a pickle of a million APPENDs would otherwise copy it each time.
            case 0x61:                                                 // APPEND
                let v = try pop()
                var list = try pop()
                guard case .list(var l) = list.value else { throw PickleError.malformed(path: path, detail: "APPEND to a non-list") }
                list.value = .none
                l.append(v.value); try push(.list(l), holding: list.depth - 1, v.depth)
            case 0x65:                                                 // APPENDS
                let (items, d) = try popMark()
                var list = try pop()
                guard case .list(var l) = list.value else { throw PickleError.malformed(path: path, detail: "APPENDS to a non-list") }
                list.value = .none
                l += items; try push(.list(l), holding: list.depth - 1, d)
            case 0x73:                                                 // SETITEM
                let v = try pop(), k = try pop()
                var dict = try pop()
                guard case .dict(var d) = dict.value else { throw PickleError.malformed(path: path, detail: "SETITEM on a non-dict") }
                dict.value = .none
                d.append((k.value, v.value)); try push(.dict(d), holding: dict.depth - 1, k.depth, v.depth)
            case 0x75:                                                 // SETITEMS
                let (items, depth) = try popMark()
                var dict = try pop()
                guard items.count % 2 == 0, case .dict(var d) = dict.value else { throw PickleError.malformed(path: path, detail: "SETITEMS on a non-dict") }
                dict.value = .none
                for i in stride(from: 0, to: items.count, by: 2) { d.append((items[i], items[i + 1])) }
                try push(.dict(d), holding: dict.depth - 1, depth)
            case 0x51:                                                 // BINPERSID
                let pid = try pop().value
                guard let t = pid.items, t.count >= 5, t[0].asString == "storage", case .global(let type) = t[1],
                      let dtype = storageDTypes[type], let key = t[2].asString, let elements = t[4].asInt, elements >= 0 else {
                    throw PickleError.malformed(path: path, detail: "unexpected persistent id (not a torch storage)")
                }
                push(.storage(dtype: dtype, key: key, elements: elements))
            case 0x52:                                                 // REDUCE
                let args = try pop().value, callable = try pop().value
                push(try reduce(callable, args))
            case 0x62:                                                 // BUILD: state for OrderedDict / tensor; ignored
                _ = try pop()
            default:
                throw PickleError.unsupportedOpcode(path: path, opcode: op, offset: pos - 1)
            }
        }
    }
}
