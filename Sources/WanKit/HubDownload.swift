// Model download from the Hugging Face hub into the standard huggingface_hub cache layout, so that a model fetched by
// `wan download` is found by Python tools and the other way round:
//
//   <cache>/models--{org}--{name}/
//       blobs/<etag>                      the content; etag = sha256 (LFS files) or git blob sha1 (small files)
//       blobs/<etag>.incomplete           a transfer under way or interrupted (resumed with a Range request)
//       snapshots/<commit>/<path>  ->  ../../blobs/<etag>   (relative symlink, one "../" more per folder level)
//       refs/<revision>                   the commit hash the branch or tag pointed at (no newline)
//   <cache>/.locks/models--{org}--{name}/<etag>.lock   flock'd while a blob is written (as Python's filelock does)
//
// <cache> is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
// else ~/.cache/huggingface/hub. The endpoint is $HF_ENDPOINT or https://huggingface.co; the token is $HF_TOKEN, else
// the file $HF_TOKEN_PATH or $HF_HOME/token that `huggingface-cli login` writes. $HF_HUB_OFFLINE=1 uses the cache only.
//
// Transfers stream to disk (bounded memory), are hashed while they arrive, and an LFS file whose sha256 does not match
// its etag is rejected and deleted. Everything is synchronous: `download` blocks its caller.

import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Errors

/// What can go wrong with a hub download; every case prints as a sentence that says what to do.
public enum HubError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// Not "name" or "org/name" made of letters, digits, '-', '_', '.'.
    case invalidRepoID(String)
    /// Connection refused, no DNS, no route: nothing answered at all.
    case unreachable(host: String, reason: String)
    /// 401/403 for a repository that exists but needs a token (gated or private).
    case accessDenied(repo: String, status: Int, tokenSent: Bool, gated: Bool)
    case repoNotFound(repo: String, tokenSent: Bool)
    case revisionNotFound(repo: String, revision: String)
    case fileNotFound(repo: String, revision: String, path: String)
    /// `files` patterns matched nothing in the repository.
    case noFilesMatched(repo: String, patterns: [String])
    /// Any other HTTP status.
    case httpStatus(url: String, status: Int)
    /// The server answered something this client cannot use (no commit hash, bad JSON, a wrong Content-Range...).
    case badResponse(url: String, reason: String)
    /// The finished content's sha256 is not the etag the hub announced: the blob was deleted.
    case checksumMismatch(file: String, expected: String, actual: String)
    case sizeMismatch(file: String, expected: Int64, actual: Int64)
    /// The connection broke mid-file; what arrived is kept in the `.incomplete` blob and the next call resumes it.
    case transferInterrupted(file: String, bytesSoFar: Int64, reason: String)
    /// No room on the cache's disk (checked up front, and ENOSPC/EDQUOT while writing). `available` is -1 if unknown.
    case diskFull(path: String, needed: Int64, available: Int64)
    case fileSystem(path: String, reason: String)
    /// A file name from the server that would land outside the snapshot folder.
    case unsafePath(String)
    /// Offline ($HF_HUB_OFFLINE) and the revision is not in the cache.
    case notCached(repo: String, revision: String)

    public var description: String {
        switch self {
        case .invalidRepoID(let r):
            return "'\(r)' is not a hub repository id: expected ORG/NAME, e.g. Wan-AI/Wan2.1-T2V-1.3B"
        case .unreachable(let host, let reason):
            return "cannot reach \(host): no network? set HF_ENDPOINT or download the files by hand and pass the folder (\(reason))"
        case .accessDenied(let repo, let status, let tokenSent, let gated):
            let what = gated ? "\(repo) is a gated repository" : "access to \(repo) was refused (HTTP \(status))"
            return tokenSent
                ? "\(what): the token in HF_TOKEN has no access; accept the model's terms on its hub page with that account, or use a token with read access"
                : "\(what): it needs HF_TOKEN (a read token from huggingface.co/settings/tokens, after accepting the model's terms on its page)"
        case .repoNotFound(let repo, let tokenSent):
            return "no repository \(repo) on the hub (check the spelling\(tokenSent ? "" : "; if it is private, set HF_TOKEN"))"
        case .revisionNotFound(let repo, let revision):
            return "\(repo) has no branch, tag or commit '\(revision)'"
        case .fileNotFound(let repo, let revision, let path):
            return "\(repo) has no file '\(path)' at revision \(revision)"
        case .noFilesMatched(let repo, let patterns):
            return "no file of \(repo) matches \(patterns.joined(separator: ", "))"
        case .httpStatus(let url, let status):
            return "\(url) answered HTTP \(status)"
        case .badResponse(let url, let reason):
            return "unexpected answer from \(url): \(reason)"
        case .checksumMismatch(let file, let expected, let actual):
            return "\(file) is corrupt: its sha256 is \(actual) but the hub announced \(expected); the download was deleted, run again"
        case .sizeMismatch(let file, let expected, let actual):
            return "\(file): received \(actual) bytes, expected \(expected)"
        case .transferInterrupted(let file, let bytes, let reason):
            return "the transfer of \(file) broke after \(bytes) bytes (\(reason)); run the same command again to resume"
        case .diskFull(let path, let needed, let available):
            let avail = available >= 0 ? ", \(HubProgress.format(bytes: available)) free" : ""
            return "disk full at \(path): \(HubProgress.format(bytes: needed)) needed\(avail); free some space (or pass another cache folder) and run again to resume"
        case .fileSystem(let path, let reason):
            return "\(path): \(reason)"
        case .unsafePath(let p):
            return "refusing the file name '\(p)': it would be written outside the snapshot folder"
        case .notCached(let repo, let revision):
            return "HF_HUB_OFFLINE is set and \(repo)@\(revision) is not in the cache"
        }
    }

    public var errorDescription: String? { description }
}

// MARK: - Progress

/// One progress report. `completed`/`total` cover the bytes of every file this call transfers (bytes already in an
/// `.incomplete` blob count as completed); files found in the cache are reported once with `stage == .cached`.
public struct HubProgress: Sendable, Equatable {
    public enum Stage: Sendable, Equatable {
        /// Asking the hub for the file list.
        case listing
        /// Bytes arriving for `file`.
        case downloading
        /// Hashing what an earlier run left in the `.incomplete` blob before resuming.
        case resuming
        /// `file` is finished, verified and linked into the snapshot.
        case finished
        /// `file` was already in the snapshot (or its blob in the cache): nothing transferred.
        case cached
        /// The hub could not be reached and a cached snapshot of this revision is returned instead.
        case offline
    }
    public var stage: Stage
    /// The repository path of the file concerned ("" for .listing and .offline).
    public var file: String
    public var fileCompleted: Int64
    /// nil if the server did not tell the size.
    public var fileTotal: Int64?
    public var completed: Int64
    public var total: Int64
    public var filesDone: Int
    public var filesTotal: Int

    public init(stage: Stage, file: String, fileCompleted: Int64, fileTotal: Int64?, completed: Int64, total: Int64,
                filesDone: Int, filesTotal: Int) {
        self.stage = stage; self.file = file; self.fileCompleted = fileCompleted; self.fileTotal = fileTotal
        self.completed = completed; self.total = total; self.filesDone = filesDone; self.filesTotal = filesTotal
    }

    public static func format(bytes: Int64) -> String {
        let b = Double(bytes)
        if bytes >= 1 << 30 { return String(format: "%.2f GiB", b / Double(1 << 30)) }
        if bytes >= 1 << 20 { return String(format: "%.1f MiB", b / Double(1 << 20)) }
        if bytes >= 1 << 10 { return String(format: "%.1f KiB", b / Double(1 << 10)) }
        return "\(bytes) B"
    }
}

// MARK: - Client

/// A Hugging Face hub client for downloading model repositories into the shared cache.
public final class HubClient: @unchecked Sendable {
    /// The hub, e.g. https://huggingface.co or a mirror.
    public let endpoint: URL
    /// The hub cache folder (the one holding `models--org--name` folders).
    public let cacheDirectory: URL
    /// Sent as `Authorization: Bearer` to the endpoint's host (never to the CDN a file redirects to).
    public var token: String?
    /// Seconds without any byte from the server before a request is given up.
    public var timeout: TimeInterval = 60
    /// Automatic resumes of one file after its connection broke, each only if the previous try made progress.
    public var retries: Int = 3
    /// Largest byte range asked for in one request; it bounds the memory a transfer can hold (0: one request per file).
    public var segmentSize: Int64 = 64 << 20
    /// Use the cache only, never the network ($HF_HUB_OFFLINE=1).
    public var offline: Bool

    /// - Parameters:
    ///   - endpoint: nil: $HF_ENDPOINT, else https://huggingface.co.
    ///   - cacheDirectory: nil: `HubClient.defaultCacheDirectory(environment:)`.
    ///   - token: nil: $HF_TOKEN, else the token file of `huggingface-cli login`.
    public init(endpoint: URL? = nil, cacheDirectory: URL? = nil, token: String? = nil,
                environment: [String: String] = ProcessInfo.processInfo.environment) {
        var ep = endpoint
        if ep == nil, let e = environment["HF_ENDPOINT"], !e.isEmpty { ep = URL(string: e) }
        var s = (ep ?? URL(string: "https://huggingface.co")!).absoluteString
        while s.hasSuffix("/") { s.removeLast() }
        self.endpoint = URL(string: s)!
        self.cacheDirectory = cacheDirectory ?? Self.defaultCacheDirectory(environment: environment)
        self.token = token ?? Self.defaultToken(environment: environment)
        let off = environment["HF_HUB_OFFLINE"]?.lowercased() ?? ""
        self.offline = ["1", "true", "yes", "on"].contains(off)
    }

    /// $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
    public static func defaultCacheDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        func set(_ k: String) -> String? { environment[k].flatMap { $0.isEmpty ? nil : expandTilde($0) } }
        if let c = set("HF_HUB_CACHE") ?? set("HUGGINGFACE_HUB_CACHE") { return URL(fileURLWithPath: c, isDirectory: true) }
        return URL(fileURLWithPath: hfHome(environment), isDirectory: true).appendingPathComponent("hub", isDirectory: true)
    }

    static func hfHome(_ environment: [String: String]) -> String {
        if let h = environment["HF_HOME"], !h.isEmpty { return expandTilde(h) }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        let xdg = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : expandTilde($0) } ?? home + "/.cache"
        return xdg + "/huggingface"
    }

    static func expandTilde(_ p: String) -> String { (p as NSString).expandingTildeInPath }

    static func defaultToken(environment: [String: String]) -> String? {
        for k in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
            if let t = environment[k]?.trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty { return t }
        }
        let path = environment["HF_TOKEN_PATH"].flatMap { $0.isEmpty ? nil : expandTilde($0) } ?? hfHome(environment) + "/token"
        if let t = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty {
            return t
        }
        return nil
    }

    /// `models--org--name` in the cache.
    public func repoFolder(_ repo: String) -> URL {
        cacheDirectory.appendingPathComponent("models--" + repo.split(separator: "/").joined(separator: "--"), isDirectory: true)
    }

    /// The snapshot folder of `revision` (a branch, tag or full commit hash) if the cache has one, without the network.
    public func resolveCachedSnapshot(repo: String, revision: String = "main") -> URL? {
        guard (try? Self.validate(repo: repo)) != nil, Self.isSafeRevision(revision) else { return nil }
        let folder = repoFolder(repo)
        var commit = revision
        if !Self.isCommitHash(revision) {
            let ref = folder.appendingPathComponent("refs").appendingPathComponent(revision)
            guard let c = try? String(contentsOf: ref, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                  Self.isCommitHash(c) else { return nil }
            commit = c
        }
        let snap = folder.appendingPathComponent("snapshots", isDirectory: true).appendingPathComponent(commit, isDirectory: true)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: snap.path, isDirectory: &isDir), isDir.boolValue else { return nil }
        return snap
    }

    /// The commit and the file paths of a repository revision (GET /api/models/{repo}/revision/{revision}).
    public func listFiles(repo: String, revision: String = "main") throws -> (commit: String, files: [String]) {
        try Self.validate(repo: repo)
        let url = try makeURL("/api/models/\(repo)/revision/\(Self.encode(revision, keepSlash: false))")
        let r = try fetchSmall(url: url, method: "GET")
        if r.status != 200 { throw statusError(r, repo: repo, revision: revision, path: nil) }
        guard let json = try? JSONSerialization.jsonObject(with: r.body) as? [String: Any] else {
            throw HubError.badResponse(url: url.absoluteString, reason: "the repository listing is not a JSON object")
        }
        guard let sha = json["sha"] as? String, Self.isCommitHash(sha) else {
            throw HubError.badResponse(url: url.absoluteString, reason: "the repository listing has no commit hash \"sha\"")
        }
        let siblings = json["siblings"] as? [[String: Any]] ?? []
        return (sha, siblings.compactMap { $0["rfilename"] as? String })
    }

    /// Downloads the files of `repo` at `revision` into the cache and returns the snapshot folder
    /// (`…/models--org--name/snapshots/<commit>`), whose entries are symlinks to the verified blobs.
    ///
    /// - Parameters:
    ///   - files: repository paths or fnmatch patterns (`*` also crosses '/', `?`, `[…]`; "dir/" means "dir/*"), as
    ///     huggingface_hub's allow_patterns; nil downloads every file.
    ///   - progress: called on a background thread, in order, for each chunk written and each file done.
    /// Files already in the snapshot are not transferred; an `.incomplete` blob left by an earlier run is resumed.
    /// If the hub cannot be reached and the cache has a snapshot of this revision, that snapshot is returned
    /// (reported with stage `.offline`).
    @discardableResult
    public func download(repo: String, revision: String = "main", files: [String]? = nil,
                         progress: ((HubProgress) -> Void)? = nil) throws -> URL {
        try Self.validate(repo: repo)
        guard Self.isSafeRevision(revision) else { throw HubError.revisionNotFound(repo: repo, revision: revision) }
        let report = progress ?? { _ in }
        if offline {
            guard let snap = resolveCachedSnapshot(repo: repo, revision: revision) else {
                throw HubError.notCached(repo: repo, revision: revision)
            }
            return snap
        }
        report(HubProgress(stage: .listing, file: "", fileCompleted: 0, fileTotal: nil, completed: 0, total: 0, filesDone: 0, filesTotal: 0))
        let listing: (commit: String, files: [String])
        do {
            listing = try listFiles(repo: repo, revision: revision)
        } catch HubError.unreachable(let host, let reason) {
            if let snap = resolveCachedSnapshot(repo: repo, revision: revision), cachedSnapshot(snap, covers: files) {
                report(HubProgress(stage: .offline, file: "", fileCompleted: 0, fileTotal: nil, completed: 0, total: 0, filesDone: 0, filesTotal: 0))
                return snap
            }
            throw HubError.unreachable(host: host, reason: reason)
        }
        let commit = listing.commit
        var wanted = listing.files
        if let patterns = files {
            wanted = wanted.filter { HubGlob.matchesAny(patterns, $0) }
            if wanted.isEmpty { throw HubError.noFilesMatched(repo: repo, patterns: patterns) }
        }
        for f in wanted where !Self.isSafeRelativePath(f) { throw HubError.unsafePath(f) }

        let folder = repoFolder(repo)
        let snapshot = folder.appendingPathComponent("snapshots", isDirectory: true).appendingPathComponent(commit, isDirectory: true)
        let blobs = folder.appendingPathComponent("blobs", isDirectory: true)
        try makeDirectory(snapshot)
        try makeDirectory(blobs)
        if revision != commit {
            let ref = folder.appendingPathComponent("refs", isDirectory: true).appendingPathComponent(revision)
            try makeDirectory(ref.deletingLastPathComponent())
            if (try? String(contentsOf: ref, encoding: .utf8)) != commit {
                do { try Data(commit.utf8).write(to: ref, options: .atomic) } catch {
                    throw HubError.fileSystem(path: ref.path, reason: "cannot write the ref: \(error.localizedDescription)")
                }
            }
        }

        // Metadata of every file that the snapshot lacks (one HEAD each, pinned to the commit).
        var filesDone = 0
        var pending: [(path: String, meta: FileMetadata)] = []
        for path in wanted {
            let pointer = snapshot.appendingPathComponent(path)
            if Self.isRegularFile(pointer.path) {
                filesDone += 1
                report(HubProgress(stage: .cached, file: path, fileCompleted: 0, fileTotal: nil, completed: 0, total: 0, filesDone: filesDone, filesTotal: wanted.count))
                continue
            }
            let meta = try metadata(repo: repo, commit: commit, path: path)
            if Self.isRegularFile(blobs.appendingPathComponent(meta.etag).path) {
                try link(pointer: pointer, path: path, etag: meta.etag)
                filesDone += 1
                report(HubProgress(stage: .cached, file: path, fileCompleted: 0, fileTotal: meta.size, completed: 0, total: 0, filesDone: filesDone, filesTotal: wanted.count))
                continue
            }
            pending.append((path, meta))
        }
        if pending.isEmpty { return snapshot }

        // Room for what is still missing, before anything is written.
        var total: Int64 = 0, needed: Int64 = 0
        for p in pending {
            let size = p.meta.size ?? 0
            total += size
            needed += max(0, size - Self.fileSize(blobs.appendingPathComponent(p.meta.etag + ".incomplete").path))
        }
        let available = Self.freeBytes(blobs.path)
        if available >= 0, needed > available { throw HubError.diskFull(path: blobs.path, needed: needed, available: available) }

        var completed: Int64 = 0
        for p in pending {
            let blob = blobs.appendingPathComponent(p.meta.etag)
            let lock = try FileLock(cacheDirectory.appendingPathComponent(".locks", isDirectory: true)
                .appendingPathComponent(folder.lastPathComponent, isDirectory: true)
                .appendingPathComponent(p.meta.etag + ".lock"))
            defer { lock.unlock() }
            if !Self.isRegularFile(blob.path) {  // another process may have finished it while we waited for the lock
                let base = completed
                let fileIndex = filesDone
                try fetchBlob(meta: p.meta, path: p.path, blob: blob) { done, stage in
                    report(HubProgress(stage: stage, file: p.path, fileCompleted: done, fileTotal: p.meta.size,
                                       completed: base + done, total: total, filesDone: fileIndex, filesTotal: wanted.count))
                }
            }
            completed += p.meta.size ?? Self.fileSize(blob.path)
            try link(pointer: snapshot.appendingPathComponent(p.path), path: p.path, etag: p.meta.etag)
            filesDone += 1
            report(HubProgress(stage: .finished, file: p.path, fileCompleted: p.meta.size ?? 0, fileTotal: p.meta.size,
                               completed: completed, total: total, filesDone: filesDone, filesTotal: wanted.count))
        }
        return snapshot
    }

    // MARK: Per file

    struct FileMetadata {
        var repo: String
        var commit: String
        var etag: String
        var size: Int64?
        /// Where the content is (the CDN for LFS files).
        var location: URL
        /// True when the etag is a sha256 (LFS), so the content can be verified.
        var isSHA256: Bool { etag.count == 64 && etag.allSatisfy(\.isHexDigit) }
    }

    func metadata(repo: String, commit: String, path: String) throws -> FileMetadata {
        let url = try resolveURL(repo: repo, revision: commit, path: path)
        let r = try fetchSmall(url: url, method: "HEAD", followAbsoluteRedirects: false)
        guard (200..<400).contains(r.status) else { throw statusError(r, repo: repo, revision: commit, path: path) }
        guard let rawEtag = r.header("X-Linked-Etag") ?? r.header("ETag") else {
            throw HubError.badResponse(url: url.absoluteString, reason: "no ETag for \(path)")
        }
        let etag = Self.normalize(etag: rawEtag)
        guard !etag.isEmpty, etag.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw HubError.badResponse(url: url.absoluteString, reason: "unusable ETag '\(rawEtag)' for \(path)")
        }
        let size = (r.header("X-Linked-Size") ?? r.header("Content-Length")).flatMap { Int64($0.trimmingCharacters(in: .whitespaces)) }
        var location = r.finalURL
        if (300..<400).contains(r.status), let l = r.header("Location"), let u = URL(string: l, relativeTo: r.finalURL) {
            location = u.absoluteURL
        }
        return FileMetadata(repo: repo, commit: commit, etag: etag, size: size, location: location)
    }

    /// Fills `blob` (through `blob.incomplete`), resuming, verifying and retrying as documented.
    func fetchBlob(meta: FileMetadata, path: String, blob: URL, report: @escaping (Int64, HubProgress.Stage) -> Void) throws {
        let partial = URL(fileURLWithPath: blob.path + ".incomplete")
        var triesLeft = retries
        while true {
            let before = Self.fileSize(partial.path)
            do {
                try transfer(meta: meta, path: path, partial: partial, report: report)
                break
            } catch HubError.transferInterrupted(let file, let bytes, let reason) {
                if triesLeft <= 0 || Self.fileSize(partial.path) <= before {
                    throw HubError.transferInterrupted(file: file, bytesSoFar: bytes, reason: reason)
                }
                triesLeft -= 1
            }
        }
        if rename(partial.path, blob.path) != 0 {
            throw HubError.fileSystem(path: blob.path, reason: "cannot move the finished download into place: \(String(cString: strerror(errno)))")
        }
    }

    /// Fetches the rest of the file into `partial` (ranged GETs from its current length); on success `partial` is
    /// complete and verified. A partial longer than the file, or a server that ignores Range, starts it over.
    func transfer(meta: FileMetadata, path: String, partial: URL, report: @escaping (Int64, HubProgress.Stage) -> Void) throws {
        let fd = open(partial.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw HubError.fileSystem(path: partial.path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var have = Int64(lseek(fd, 0, SEEK_END))
        if let size = meta.size, have > size {  // longer than the file: not ours to resume
            guard ftruncate(fd, 0) == 0 else { throw HubError.fileSystem(path: partial.path, reason: String(cString: strerror(errno))) }
            have = 0
        }
        var hasher = SHA256Hasher()
        if have > 0 {
            report(have, .resuming)
            try Self.hashExisting(partial.path, bytes: have, into: &hasher)
        }
        let writer = BlobWriter(fd: fd, offset: have, hasher: hasher, path: partial.path, report: report)
        let connection = HTTPConnection(client: self)
        defer { connection.close() }
        // Large files come in segments of `segmentSize` bytes over one connection: URLSession on Linux cannot pause a
        // transfer, so a bounded request is what bounds the memory held between the network and the disk.
        var location = meta.location
        var refreshes = 0
        while meta.size.map({ $0 > writer.offset }) ?? true {
            let from = writer.offset
            var request = URLRequest(url: location)
            request.httpMethod = "GET"
            var last: Int64? = nil
            if let size = meta.size, segmentSize > 0, size - from > segmentSize { last = from + segmentSize - 1 }
            if from > 0 || last != nil { request.setValue("bytes=\(from)-\(last.map(String.init) ?? "")", forHTTPHeaderField: "Range") }
            let r = try perform(request, on: connection, followAbsoluteRedirects: true) { response in
                switch response.statusCode {
                case 206:
                    if let cr = Self.header(response, "Content-Range"), let start = Self.rangeStart(cr), start != from {
                        return .fail(HubError.badResponse(url: location.absoluteString, reason: "asked for bytes \(from)- and got '\(cr)'"))
                    }
                    return .stream(writer)
                case 200:
                    if from > 0 {  // the server ignored the Range: start over
                        if let e = writer.restart() { return .fail(e) }
                    }
                    return .stream(writer)
                default:
                    return .collect
                }
            }
            if let e = writer.error { throw e }
            if let e = r.transportError {
                throw Self.transportError(e, url: location, file: path, bytes: writer.offset, gotResponse: r.status != 0)
            }
            if r.status == 416, from > 0 {  // the range starts at or past the end: our partial is not usable, start over
                if let e = writer.restart() { throw e }
                continue
            }
            if [401, 403, 410].contains(r.status), location.host != endpoint.host, refreshes < 3 {
                // the CDN's signed address has expired (a long download): ask the hub for a fresh one
                refreshes += 1
                let fresh = try metadata(repo: meta.repo, commit: meta.commit, path: path)
                guard fresh.etag == meta.etag else {
                    throw HubError.badResponse(url: location.absoluteString, reason: "\(path) changed during the download")
                }
                location = fresh.location
                continue
            }
            guard r.status == 200 || r.status == 206 else {
                throw statusError(r, repo: meta.repo, revision: meta.commit, path: path)
            }
            let got = writer.offset - (r.status == 200 ? 0 : from)
            if let expected = r.contentLength, expected >= 0, got < expected {
                throw HubError.transferInterrupted(file: path, bytesSoFar: writer.offset, reason: "the connection closed early")
            }
            if r.status == 200 || meta.size == nil { break }  // the whole file came in one answer
            if writer.offset == from {
                throw HubError.transferInterrupted(file: path, bytesSoFar: from, reason: "the server sent no bytes")
            }
        }
        have = writer.offset
        hasher = writer.hasher
        if let size = meta.size, have != size {
            if have < size { throw HubError.transferInterrupted(file: path, bytesSoFar: have, reason: "the connection closed early") }
            _ = ftruncate(fd, 0)
            throw HubError.sizeMismatch(file: path, expected: size, actual: have)
        }
        if meta.isSHA256 {
            let actual = hasher.finalizeHex()
            if actual != meta.etag.lowercased() {
                unlink(partial.path)
                throw HubError.checksumMismatch(file: path, expected: meta.etag.lowercased(), actual: actual)
            }
        }
        if fsync(fd) != 0, errno == ENOSPC || errno == EDQUOT {
            throw HubError.diskFull(path: partial.path, needed: meta.size ?? have, available: Self.freeBytes(partial.path))
        }
    }

    /// `snapshots/<commit>/<path>` → `../../blobs/<etag>` (one more `../` per folder level), replaced atomically.
    func link(pointer: URL, path: String, etag: String) throws {
        try makeDirectory(pointer.deletingLastPathComponent())
        let depth = path.split(separator: "/").count - 1
        let target = String(repeating: "../", count: depth + 2) + "blobs/" + etag
        if let existing = try? FileManager.default.destinationOfSymbolicLink(atPath: pointer.path), existing == target { return }
        let tmp = pointer.deletingLastPathComponent().appendingPathComponent(".\(pointer.lastPathComponent).\(getpid()).\(UInt32.random(in: 0 ... .max)).tmp")
        guard symlink(target, tmp.path) == 0 else {
            throw HubError.fileSystem(path: pointer.path, reason: "cannot create the snapshot link: \(String(cString: strerror(errno)))")
        }
        guard rename(tmp.path, pointer.path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmp.path)
            throw HubError.fileSystem(path: pointer.path, reason: "cannot create the snapshot link: \(e)")
        }
    }

    /// Whether a cached snapshot can stand in for `files` when offline: every plain name (no wildcard) must be there.
    func cachedSnapshot(_ snap: URL, covers files: [String]?) -> Bool {
        guard let files else { return true }
        for f in files where !HubGlob.hasWildcard(f) && !f.hasSuffix("/") {
            if !Self.isRegularFile(snap.appendingPathComponent(f).path) { return false }
        }
        return true
    }

    // MARK: HTTP

    struct SmallResponse {
        var status: Int
        var headers: [String: String]
        var body: Data
        var finalURL: URL
        var contentLength: Int64?
        var transportError: Error?
        func header(_ name: String) -> String? {
            headers.first { $0.key.caseInsensitiveCompare(name) == .orderedSame }?.value
        }
    }

    func makeURL(_ pathAndQuery: String) throws -> URL {
        guard let u = URL(string: endpoint.absoluteString + pathAndQuery) else {
            throw HubError.badResponse(url: endpoint.absoluteString + pathAndQuery, reason: "not a valid URL")
        }
        return u
    }

    func resolveURL(repo: String, revision: String, path: String) throws -> URL {
        try makeURL("/\(repo)/resolve/\(Self.encode(revision, keepSlash: false))/\(Self.encode(path, keepSlash: true))")
    }

    /// A request whose body is small (JSON, error pages): kept in memory, at most 64 MiB.
    func fetchSmall(url: URL, method: String, followAbsoluteRedirects: Bool = true) throws -> SmallResponse {
        var request = URLRequest(url: url)
        request.httpMethod = method
        let r = try perform(request, followAbsoluteRedirects: followAbsoluteRedirects) { _ in .collect }
        if let e = r.transportError {
            throw Self.transportError(e, url: url, file: url.lastPathComponent, bytes: 0, gotResponse: r.status != 0)
        }
        return r
    }

    enum BodyHandling { case collect, stream(BlobWriter), fail(Error) }

    /// Runs one request to completion on `connection` (a fresh one if nil). Redirects are followed with the same
    /// method and headers; the token goes only to the endpoint's host. With `followAbsoluteRedirects == false` only
    /// relative redirects (a renamed repository) are followed, as huggingface_hub's metadata request does: a redirect
    /// to the CDN is returned as it is, since the hub's 3xx answer is the one that carries X-Linked-Etag,
    /// X-Linked-Size and X-Repo-Commit.
    func perform(_ request: URLRequest, on connection: HTTPConnection? = nil, followAbsoluteRedirects: Bool,
                 body: @escaping (HTTPURLResponse) -> BodyHandling) throws -> SmallResponse {
        var req = request
        req.timeoutInterval = timeout
        req.setValue("identity", forHTTPHeaderField: "Accept-Encoding")
        req.setValue("wankit/1 (swift; hub download)", forHTTPHeaderField: "User-Agent")
        if let token, req.url?.host == endpoint.host { req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let conn = connection ?? HTTPConnection(client: self)
        defer { if connection == nil { conn.close() } }
        conn.run(req, followAbsolute: followAbsoluteRedirects, body: body)
        return SmallResponse(status: conn.response?.statusCode ?? 0,
                             headers: Dictionary(conn.response?.allHeaderFields.compactMap { k, v in
                                 (k as? String).map { ($0, "\(v)") } } ?? [], uniquingKeysWith: { a, _ in a }),
                             body: conn.collected, finalURL: conn.response?.url ?? req.url!,
                             contentLength: conn.response.flatMap { r in Self.header(r, "Content-Length").flatMap { Int64($0) } },
                             transportError: conn.failure)
    }

    static func header(_ r: HTTPURLResponse, _ name: String) -> String? {
        for (k, v) in r.allHeaderFields {
            if let k = k as? String, k.caseInsensitiveCompare(name) == .orderedSame { return v as? String }
        }
        return nil
    }

    /// "bytes 100-199/200" → 100.
    static func rangeStart(_ contentRange: String) -> Int64? {
        let s = contentRange.trimmingCharacters(in: .whitespaces)
        guard s.lowercased().hasPrefix("bytes ") else { return nil }
        return Int64(s.dropFirst(6).prefix { $0.isNumber })
    }

    func statusError(_ r: SmallResponse, repo: String, revision: String, path: String?) -> HubError {
        let code = r.header("X-Error-Code") ?? ""
        let tokenSent = token != nil
        switch (r.status, code) {
        case (_, "GatedRepo"): return .accessDenied(repo: repo, status: r.status, tokenSent: tokenSent, gated: true)
        case (_, "RevisionNotFound"): return .revisionNotFound(repo: repo, revision: revision)
        case (_, "EntryNotFound"): return .fileNotFound(repo: repo, revision: revision, path: path ?? "")
        case (_, "RepoNotFound"): return .repoNotFound(repo: repo, tokenSent: tokenSent)
        case (401, _), (403, _): return .accessDenied(repo: repo, status: r.status, tokenSent: tokenSent, gated: false)
        case (404, _):
            if let path { return .fileNotFound(repo: repo, revision: revision, path: path) }
            return .repoNotFound(repo: repo, tokenSent: tokenSent)
        default: return .httpStatus(url: r.finalURL.absoluteString, status: r.status)
        }
    }

    static func transportError(_ error: Error, url: URL, file: String, bytes: Int64, gotResponse: Bool) -> HubError {
        if let h = error as? HubError { return h }
        let ns = error as NSError
        let host = url.host ?? url.absoluteString
        let unreachable: Set<Int> = [NSURLErrorCannotConnectToHost, NSURLErrorCannotFindHost, NSURLErrorDNSLookupFailed,
                                     NSURLErrorNotConnectedToInternet, NSURLErrorInternationalRoamingOff,
                                     NSURLErrorDataNotAllowed, NSURLErrorCallIsActive]
        if ns.domain == NSURLErrorDomain, unreachable.contains(ns.code) {
            return .unreachable(host: host, reason: ns.localizedDescription)
        }
        if !gotResponse, ns.domain == NSURLErrorDomain, ns.code == NSURLErrorTimedOut {
            return .unreachable(host: host, reason: "no answer within the timeout")
        }
        return .transferInterrupted(file: file, bytesSoFar: bytes, reason: ns.localizedDescription)
    }

    // MARK: Files

    func makeDirectory(_ url: URL) throws {
        do { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) } catch {
            if Self.isDiskFullError(error) { throw HubError.diskFull(path: url.path, needed: 0, available: Self.freeBytes(url.path)) }
            throw HubError.fileSystem(path: url.path, reason: "cannot create the folder: \(error.localizedDescription)")
        }
    }

    static func isDiskFullError(_ error: Error) -> Bool {
        var e: NSError? = error as NSError
        while let n = e {
            if n.domain == NSPOSIXErrorDomain, n.code == Int(ENOSPC) || n.code == Int(EDQUOT) { return true }
            e = n.userInfo[NSUnderlyingErrorKey] as? NSError
        }
        return false
    }

    /// A regular file, following symlinks (a dangling snapshot link is not one).
    static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    static func fileSize(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    /// Free bytes for an unprivileged writer on the file system of `path` (or its closest existing parent); -1 if unknown.
    static func freeBytes(_ path: String) -> Int64 {
        var p = path
        while true {
            var s = statvfs()
            if statvfs(p, &s) == 0 { return Int64(s.f_bavail) * Int64(s.f_frsize) }
            let parent = (p as NSString).deletingLastPathComponent
            if parent == p || parent.isEmpty { return -1 }
            p = parent
        }
    }

    static func hashExisting(_ path: String, bytes: Int64, into hasher: inout SHA256Hasher) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw HubError.fileSystem(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let chunk = 1 << 22
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        var left = bytes
        while left > 0 {
            let n = read(fd, buffer.baseAddress, Int(min(Int64(chunk), left)))
            if n < 0, errno == EINTR { continue }
            if n <= 0 { throw HubError.fileSystem(path: path, reason: "cannot read the partial download back") }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0 ..< n]))
            left -= Int64(n)
        }
    }

    // MARK: Names

    static func validate(repo: String) throws {
        let parts = repo.split(separator: "/", omittingEmptySubsequences: false)
        let ok = (1...2).contains(parts.count) && parts.allSatisfy { p in
            !p.isEmpty && p != "." && p != ".." && !p.hasPrefix("--") && !p.contains("--")
                && p.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
        }
        if !ok { throw HubError.invalidRepoID(repo) }
    }

    static func isCommitHash(_ s: String) -> Bool {
        s.count == 40 && s.allSatisfy { $0.isASCII && $0.isHexDigit && !$0.isUppercase }
    }

    /// Branch and tag names become paths under refs/: no "..", no absolute path.
    static func isSafeRevision(_ r: String) -> Bool {
        !r.isEmpty && isSafeRelativePath(r)
    }

    static func isSafeRelativePath(_ p: String) -> Bool {
        guard !p.isEmpty, !p.hasPrefix("/"), !p.contains("\0"), !p.contains("\\") else { return false }
        return p.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
    }

    static func normalize(etag: String) -> String {
        var e = etag.trimmingCharacters(in: .whitespaces)
        if e.hasPrefix("W/") { e.removeFirst(2) }
        return e.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters (and '/' when `keepSlash`).
    static func encode(_ s: String, keepSlash: Bool) -> String {
        var allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
        if keepSlash { allowed.insert("/") }
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}

// MARK: - Transfer plumbing

/// Writes streamed bytes at the end of the `.incomplete` blob and hashes them; remembers the first error.
final class BlobWriter: @unchecked Sendable {
    let fd: Int32
    var offset: Int64
    var received: Int64 = 0
    var hasher: SHA256Hasher
    let path: String
    let report: (Int64, HubProgress.Stage) -> Void
    var error: Error?

    init(fd: Int32, offset: Int64, hasher: SHA256Hasher, path: String, report: @escaping (Int64, HubProgress.Stage) -> Void) {
        self.fd = fd; self.offset = offset; self.hasher = hasher; self.path = path; self.report = report
    }

    func restart() -> Error? {
        if ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0 {
            return HubError.fileSystem(path: path, reason: String(cString: strerror(errno)))
        }
        offset = 0
        hasher = SHA256Hasher()
        return nil
    }

    /// false: stop the transfer (error set).
    func write(_ data: Data) -> Bool {
        let ok: Bool = data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) -> Bool in
            var done = 0
            while done < buf.count {
                let n = pwrite(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + Int64(done)))
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == ENOSPC || errno == EDQUOT {
                        error = HubError.diskFull(path: path, needed: Int64(buf.count - done), available: HubClient.freeBytes(path))
                    } else {
                        error = HubError.fileSystem(path: path, reason: "write failed: \(String(cString: strerror(errno)))")
                    }
                    return false
                }
                done += n
            }
            hasher.update(buf)
            return true
        }
        if ok {
            offset += Int64(data.count)
            received += Int64(data.count)
            report(offset, .downloading)
        }
        return ok
    }
}

/// One URLSession (so one connection cache) running requests one after the other; its own delegate, on a serial queue.
final class HTTPConnection: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    let endpointHost: String?
    let token: String?
    private var session: URLSession!
    private let done = DispatchSemaphore(value: 0)
    // The state of the request under way (set before it starts, read after `done`).
    var followAbsolute = true
    var body: (HTTPURLResponse) -> HubClient.BodyHandling = { _ in .collect }
    var response: HTTPURLResponse?
    var collected = Data()
    var writer: BlobWriter?
    var failure: Error?
    var limitExceeded = false

    init(client: HubClient) {
        endpointHost = client.endpoint.host
        token = client.token
        super.init()
        let config = URLSessionConfiguration.ephemeral
        config.timeoutIntervalForRequest = client.timeout
        config.timeoutIntervalForResource = 7 * 24 * 3600
        config.requestCachePolicy = .reloadIgnoringLocalCacheData
        config.urlCache = nil
        config.httpMaximumConnectionsPerHost = 1
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        session = URLSession(configuration: config, delegate: self, delegateQueue: queue)
    }

    func run(_ request: URLRequest, followAbsolute: Bool, body: @escaping (HTTPURLResponse) -> HubClient.BodyHandling) {
        self.followAbsolute = followAbsolute
        self.body = body
        response = nil; collected = Data(); writer = nil; failure = nil; limitExceeded = false
        session.dataTask(with: request).resume()
        done.wait()
    }

    func close() { session.finishTasksAndInvalidate() }

    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        guard let next = request.url, let original = task.originalRequest else { completionHandler(nil); return }
        let sameHost = next.host == endpointHost
        if !followAbsolute, let location = HubClient.header(response, "Location"), URL(string: location)?.scheme != nil {
            completionHandler(nil)  // a metadata request stops at the hub's answer (which carries X-Linked-*), not the CDN's
            return
        }
        var r = URLRequest(url: next)
        r.httpMethod = original.httpMethod
        r.timeoutInterval = original.timeoutInterval
        for (k, v) in original.allHTTPHeaderFields ?? [:] where k.caseInsensitiveCompare("Authorization") != .orderedSame {
            r.setValue(v, forHTTPHeaderField: k)
        }
        if sameHost, let token { r.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        completionHandler(r)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        guard let http = response as? HTTPURLResponse else {
            failure = HubError.badResponse(url: response.url?.absoluteString ?? "", reason: "not an HTTP answer")
            completionHandler(.cancel)
            return
        }
        self.response = http
        switch body(http) {
        case .collect: completionHandler(.allow)
        case .stream(let w): writer = w; completionHandler(.allow)
        case .fail(let e): failure = e; completionHandler(.cancel)
        }
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        if let writer {
            if !writer.write(data) { dataTask.cancel() }
        } else if !limitExceeded {
            if collected.count + data.count > 64 << 20 { limitExceeded = true; dataTask.cancel(); return }
            collected.append(data)
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        if failure == nil, writer?.error == nil, !limitExceeded, let error { failure = error }
        if limitExceeded, failure == nil {
            failure = HubError.badResponse(url: task.originalRequest?.url?.absoluteString ?? "", reason: "an answer over 64 MiB where a small one was expected")
        }
        done.signal()
    }
}

/// An exclusive flock on a lock file (released by `unlock` or at exit), compatible with Python's filelock.
final class FileLock {
    private var fd: Int32
    init(_ url: URL) throws {
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { return }  // a read-only .locks folder must not stop a download
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { break }
        }
    }
    func unlock() {
        if fd >= 0 { flock(fd, LOCK_UN); close(fd); fd = -1 }
    }
    deinit { unlock() }
}

// MARK: - Patterns

/// fnmatch as Python's (used by huggingface_hub's allow_patterns): `*` matches anything including '/', `?` one
/// character, `[abc]`, `[a-z]`, `[!abc]`; a pattern ending in '/' matches everything under that folder.
public enum HubGlob {
    public static func matchesAny(_ patterns: [String], _ name: String) -> Bool {
        patterns.contains { matches($0, name) }
    }

    public static func matches(_ pattern: String, _ name: String) -> Bool {
        let p = Array(pattern.hasSuffix("/") ? pattern + "*" : pattern)
        let s = Array(name)
        var pi = 0, si = 0
        var starP = -1, starS = 0
        while si < s.count {
            if pi < p.count {
                switch p[pi] {
                case "*":
                    starP = pi; starS = si; pi += 1
                    continue
                case "?":
                    pi += 1; si += 1
                    continue
                case "[":
                    if let (ok, next) = matchClass(p, pi, s[si]) {
                        if ok { pi = next; si += 1; continue }
                    } else if s[si] == "[" {  // an unclosed '[' is a literal
                        pi += 1; si += 1; continue
                    }
                default:
                    if p[pi] == s[si] { pi += 1; si += 1; continue }
                }
            }
            if starP < 0 { return false }
            starS += 1; si = starS; pi = starP + 1
        }
        while pi < p.count, p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    public static func hasWildcard(_ pattern: String) -> Bool {
        pattern.contains { $0 == "*" || $0 == "?" || $0 == "[" }
    }

    /// nil if the class at p[start] is not closed; else (matched, index after ']').
    static func matchClass(_ p: [Character], _ start: Int, _ c: Character) -> (Bool, Int)? {
        var i = start + 1
        var negate = false
        if i < p.count, p[i] == "!" { negate = true; i += 1 }
        var matched = false
        var first = true
        while i < p.count {
            if p[i] == "]", !first { return (matched != negate, i + 1) }
            first = false
            if i + 2 < p.count, p[i + 1] == "-", p[i + 2] != "]" {
                if p[i] <= c && c <= p[i + 2] { matched = true }
                i += 3
            } else {
                if p[i] == c { matched = true }
                i += 1
            }
        }
        return nil
    }
}

// MARK: - SHA-256

/// FIPS 180-4 SHA-256, streaming.
public struct SHA256Hasher: Sendable {
    private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
        (0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)
    private var block = [UInt8](repeating: 0, count: 64)
    private var blockCount = 0
    private var length: UInt64 = 0

    public init() {}

    public mutating func update(_ data: Data) {
        data.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress, bytes.count > 0 else { return }
        var n = bytes.count
        length &+= UInt64(n)
        if blockCount > 0 {
            let take = min(64 - blockCount, n)
            block.withUnsafeMutableBytes { b in (b.baseAddress! + blockCount).copyMemory(from: p, byteCount: take) }
            blockCount += take; p += take; n -= take
            if blockCount == 64 {
                block.withUnsafeBytes { compress($0.baseAddress!) }
                blockCount = 0
            }
        }
        while n >= 64 {
            compress(p)
            p += 64; n -= 64
        }
        if n > 0 {
            block.withUnsafeMutableBytes { b in b.baseAddress!.copyMemory(from: p, byteCount: n) }
            blockCount = n
        }
    }

    /// The digest as 64 lowercase hex characters.
    public mutating func finalizeHex() -> String {
        let bits = length &* 8
        var pad = [UInt8](repeating: 0, count: (blockCount < 56 ? 56 : 120) - blockCount)
        pad[0] = 0x80
        for i in (0..<8).reversed() { pad.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
        let saved = length
        pad.withUnsafeBytes { update($0) }
        length = saved
        let words = [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7]
        return words.map { w in
            let s = String(w, radix: 16)
            return String(repeating: "0", count: 8 - s.count) + s
        }.joined()
    }

    public static func hex(_ data: Data) -> String {
        var s = SHA256Hasher()
        s.update(data)
        return s.finalizeHex()
    }

    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    @inline(__always) private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

    private mutating func compress(_ p: UnsafeRawPointer) {
        var w = (UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0),
                 UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0), UInt32(0))
        withUnsafeMutableBytes(of: &w) { wb in
            let words = wb.bindMemory(to: UInt32.self)
            for i in 0..<16 { words[i] = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)) }
            var a = h.0, b = h.1, c = h.2, d = h.3, e = h.4, f = h.5, g = h.6, hh = h.7
            Self.k.withUnsafeBufferPointer { k in
                for i in 0..<64 {
                    let wi: UInt32
                    if i < 16 {
                        wi = words[i]
                    } else {
                        let w15 = words[(i - 15) & 15], w2 = words[(i - 2) & 15]
                        let s0 = Self.rotr(w15, 7) ^ Self.rotr(w15, 18) ^ (w15 >> 3)
                        let s1 = Self.rotr(w2, 17) ^ Self.rotr(w2, 19) ^ (w2 >> 10)
                        wi = words[i & 15] &+ s0 &+ words[(i - 7) & 15] &+ s1
                        words[i & 15] = wi
                    }
                    let S1 = Self.rotr(e, 6) ^ Self.rotr(e, 11) ^ Self.rotr(e, 25)
                    let ch = (e & f) ^ (~e & g)
                    let t1 = hh &+ S1 &+ ch &+ k[i] &+ wi
                    let S0 = Self.rotr(a, 2) ^ Self.rotr(a, 13) ^ Self.rotr(a, 22)
                    let maj = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = S0 &+ maj
                    hh = g; g = f; f = e; e = d &+ t1; d = c; c = b; b = a; a = t1 &+ t2
                }
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e, h.5 &+ f, h.6 &+ g, h.7 &+ hh)
        }
    }
}
