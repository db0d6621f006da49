import ArgumentParser
import Foundation
import WanKit

/// `wan download REPO [--revision main] [--include PATTERN …] [--cache-dir DIR]`: a repository of the Hugging Face hub
/// into the shared huggingface_hub cache; progress on stderr, the snapshot folder on stdout.
struct Download: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a model repository from the Hugging Face hub into the huggingface_hub cache (resumable, sha256-verified).",
        discussion: """
            Prints the snapshot folder on stdout, to pass to the other commands. Files already in the cache are not \
            transferred again; an interrupted download resumes where it stopped when run again.
            Environment: HF_TOKEN (gated or private repositories), HF_ENDPOINT (a mirror), HF_HOME / HF_HUB_CACHE \
            (the cache folder, default ~/.cache/huggingface/hub), HF_HUB_OFFLINE=1 (cache only).
            Example: wan download Wan-AI/Wan2.1-T2V-1.3B --include "*.json" "*.safetensors"
            """)

    @Argument(help: "Repository id, e.g. Wan-AI/Wan2.1-T2V-1.3B.") var repo: String
    @Option(help: "Branch, tag or commit hash.") var revision = "main"
    @Option(name: .long, parsing: .upToNextOption,
            help: ArgumentHelp("Only files matching these patterns (fnmatch: * also crosses '/'; 'dir/' = everything under dir/).",
                               valueName: "pattern"))
    var include: [String] = []
    @Option(name: .customLong("cache-dir"), help: "Hub cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub).")
    var cacheDir: String?

    func run() throws {
        let client = HubClient(cacheDirectory: cacheDir.map { URL(fileURLWithPath: ($0 as NSString).expandingTildeInPath, isDirectory: true) })
        let printer = ProgressPrinter()
        let snapshot: URL
        do {
            snapshot = try client.download(repo: repo, revision: revision, files: include.isEmpty ? nil : include) { printer.show($0) }
        } catch let e as HubError {
            printer.endLine()
            printer.write("wan download: \(e)\n")
            throw ExitCode(1)
        }
        printer.endLine()
        print(snapshot.path)
    }
}

/// Progress on stderr: one line rewritten in place on a terminal, a line per file otherwise.
final class ProgressPrinter: @unchecked Sendable {
    let tty = isatty(STDERR_FILENO) != 0
    let lock = NSLock()
    var lastDraw = Date.distantPast
    var lineOpen = false
    /// The first byte report of this run: the speed counts only what this run transferred.
    var baseline: (time: Date, bytes: Int64)?

    func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }

    func endLine() {
        lock.withLock {
            if lineOpen { write("\n"); lineOpen = false }
        }
    }

    func show(_ p: HubProgress) {
        lock.withLock {
            let count = "[\(p.filesDone)/\(p.filesTotal)]"
            switch p.stage {
            case .listing:
                write("listing files…\n")
            case .offline:
                write("the hub cannot be reached: using the cached snapshot\n")
            case .cached:
                clear()
                write("\(count) \(p.file): already in the cache\n")
            case .finished:
                clear()
                write("\(count) \(p.file): \(HubProgress.format(bytes: p.fileCompleted)) done\n")
            case .resuming:
                clear()
                write("\(p.file): resuming after \(HubProgress.format(bytes: p.fileCompleted))\n")
            case .downloading:
                guard tty else { return }
                let now = Date()
                if baseline == nil { baseline = (now, p.completed) }
                guard now.timeIntervalSince(lastDraw) >= 0.2 else { return }
                lastDraw = now
                let base = baseline ?? (now, p.completed)
                let rate = Double(p.completed - base.bytes) / max(now.timeIntervalSince(base.time), 0.001)
                let pct = p.total > 0 ? String(format: "%5.1f%%", 100 * Double(p.completed) / Double(p.total)) : "  ?  "
                let file = p.fileTotal.map { "\(HubProgress.format(bytes: p.fileCompleted)) / \(HubProgress.format(bytes: $0))" }
                    ?? HubProgress.format(bytes: p.fileCompleted)
                let line = "\(pct)  \(HubProgress.format(bytes: p.completed)) / \(HubProgress.format(bytes: p.total))  \(HubProgress.format(bytes: Int64(rate)))/s  \(p.file): \(file)"
                write("\r\u{1B}[K" + line)
                lineOpen = true
            }
        }
    }

    /// Removes the in-place line (lock held).
    private func clear() {
        if lineOpen { write("\r\u{1B}[K"); lineOpen = false }
    }
}
