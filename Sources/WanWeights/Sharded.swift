import Foundation
import WanTensor

/// Hugging Face sharded checkpoints: `<name>.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map":
/// {key: shard file}}) beside the shards. The index is checked against the shards: every shard it names must exist,
/// every key it names must be in that shard, and no key may be in two shards.
public enum ShardedSafetensors {
    /// Opens the shards named by the index at `indexPath` as one source.
    public static func open(indexPath: String) throws -> SafetensorsSource {
        let folder = (indexPath as NSString).deletingLastPathComponent
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: indexPath)) } catch {
            throw LayoutError.notFound(path: indexPath, expected: "the shard index (diffusion_pytorch_model.safetensors.index.json)")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw LayoutError.badJSON(path: indexPath, detail: "not a JSON object")
        }
        guard let map = json["weight_map"] as? [String: Any] else {
            throw LayoutError.badJSON(path: indexPath, detail: "no \"weight_map\" object {tensor name: shard file}")
        }
        var wanted: [String: String] = [:]
        for (key, v) in map {
            guard let shard = v as? String, !shard.isEmpty, !shard.contains("/"), shard != "..", shard != "." else {
                throw LayoutError.badJSON(path: indexPath, detail: "weight_map[\"\(key)\"] is not a shard file name in the folder")
            }
            wanted[key] = shard
        }
        let shards = Array(Set(wanted.values)).sorted()
        guard !shards.isEmpty else { throw LayoutError.badJSON(path: indexPath, detail: "weight_map is empty") }
        var paths: [String] = []
        for s in shards {
            let p = (folder as NSString).appendingPathComponent(s)
            guard FileManager.default.fileExists(atPath: p) else { throw LayoutError.missingShard(index: indexPath, shard: s) }
            paths.append(p)
        }
        // Same prefix rule as a single file: SafetensorsSource detects ComfyUI's prefix over all shards together.
        let source = try SafetensorsSource(paths: paths)
        for (key, shard) in wanted.sorted(by: { $0.key < $1.key }) {
            let file = (folder as NSString).appendingPathComponent(shard)
            let holder = source.files.first { $0.path == file }
            if holder?.tensors[key] == nil {
                throw LayoutError.keyNotInShard(index: indexPath, key: key, shard: shard)
            }
        }
        return source
    }

    /// The index file of a folder: `diffusion_pytorch_model.safetensors.index.json`, else the only
    /// `*.safetensors.index.json` there.
    public static func indexFile(in folder: String) -> String? {
        let fm = FileManager.default
        let preferred = (folder as NSString).appendingPathComponent("diffusion_pytorch_model.safetensors.index.json")
        if fm.fileExists(atPath: preferred) { return preferred }
        let all = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".safetensors.index.json") }.sorted()
        return all.count == 1 ? (folder as NSString).appendingPathComponent(all[0]) : nil
    }
}
