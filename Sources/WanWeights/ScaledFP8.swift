import Foundation
import WanTensor

/// ComfyUI "fp8_scaled" checkpoints: each Linear `<m>.weight` is float8 (e4m3fn, or e5m2) with a float32 per-tensor
/// `<m>.scale_weight` (shape [] or [1]) beside it; weight = float(fp8) * scale_weight. The marker tensor `scaled_fp8`
/// and the activation scales `<m>.scale_input` (used only by fp8 matmuls) are not weights and are not listed.
public final class ScaledFP8Source: WeightSource, @unchecked Sendable {
    public let base: WeightSource
    private let scales: [String: Float]
    private let visible: [String]

    public static let marker = "scaled_fp8"

    /// Whether the names look like an fp8_scaled checkpoint.
    public static func detect(_ names: [String]) -> Bool {
        names.contains { $0 == marker || $0.hasSuffix("." + marker) || $0.hasSuffix(".scale_weight") }
    }

    public init(wrapping base: WeightSource) throws {
        self.base = base
        var scales: [String: Float] = [:]
        var hidden = Set<String>()
        for name in base.names {
            if name == Self.marker || name.hasSuffix("." + Self.marker) || name.hasSuffix(".scale_input") {
                hidden.insert(name)
                continue
            }
            guard name.hasSuffix(".scale_weight") else { continue }
            hidden.insert(name)
            let module = String(name.dropLast(".scale_weight".count))
            let weight = module + ".weight"
            guard base.info(weight) != nil else { throw LayoutError.orphanScale(source: base.label, key: name) }
            guard let info = base.info(name) else { continue }
            guard info.shape == [] || info.shape == [1] else {
                throw LayoutError.badScale(source: base.label, key: name, shape: info.shape, detail: "a per-tensor scale must have shape [] or [1]")
            }
            guard info.dtype.isFloat else {
                throw LayoutError.badScale(source: base.label, key: name, shape: info.shape, detail: "dtype \(info.dtype.rawValue) is not a float type")
            }
            let t = try base.float32(name)
            let s = t.data[0]
            guard s.isFinite else { throw LayoutError.badScale(source: base.label, key: name, shape: info.shape, detail: "the scale is \(s)") }
            scales[weight] = s
        }
        self.scales = scales
        visible = base.names.filter { !hidden.contains($0) }
    }

    public var label: String { base.label }
    public var names: [String] { visible }
    public func info(_ name: String) -> TensorInfo? { base.info(name) }
    /// The per-tensor scale of a weight, nil when it has none.
    public func scale(of name: String) -> Float? { scales[name] }

    public func stored(_ name: String) throws -> StoredTensor {
        let s = try base.stored(name)
        guard let scale = scales[name] else { return s }
        return StoredTensor(name: s.name, type: s.type, shape: s.shape, data: s.data, byteCount: s.byteCount,
                            scale: (s.scale ?? 1) * scale, owner: s.owner)
    }

    public func float32(_ name: String) throws -> Tensor {
        guard scales[name] != nil else { return try base.float32(name) }
        return try stored(name).float32()
    }
}

/// A source seen under other names: `names` maps each visible (official) name to the base's name.
public final class RenamedSource: WeightSource, @unchecked Sendable {
    public let base: WeightSource
    public let mapping: [String: String]

    /// `rename` gives the official name of each base name; two base names with one official name is an error.
    public init(wrapping base: WeightSource, rename: (String) -> String) throws {
        self.base = base
        var m: [String: String] = [:]
        for n in base.names.sorted() {
            let official = rename(n)
            if let other = m[official] { throw WeightError.duplicateKey(key: official, first: other, second: n) }
            m[official] = n
        }
        mapping = m
    }

    public var label: String { base.label }
    public var names: [String] { Array(mapping.keys) }
    public func info(_ name: String) -> TensorInfo? {
        guard let n = mapping[name], var i = base.info(n) else { return nil }
        i.name = name
        return i
    }
    public func float32(_ name: String) throws -> Tensor {
        guard let n = mapping[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        return try base.float32(n)
    }
    public func stored(_ name: String) throws -> StoredTensor {
        guard let n = mapping[name] else { throw WeightError.missingKey(source: label, key: name, expectedShape: nil) }
        let s = try base.stored(n)
        return StoredTensor(name: name, type: s.type, shape: s.shape, data: s.data, byteCount: s.byteCount, scale: s.scale, owner: s.owner)
    }
}
