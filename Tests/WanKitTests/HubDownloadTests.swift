import Foundation
import XCTest
import WanKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fake Hugging Face hub: a small HTTP/1.1 server on 127.0.0.1 (an ephemeral port), one request per connection,
/// serving the model listing API, /resolve/ (LFS files answer 302 to /cdn/<sha256> with the X-Linked-* headers, as
/// the hub does) and /cdn/ with Range support. Every loop is bounded in count and time; the accept loop ends by
/// itself after `lifetime` seconds or `maxConnections` connections, and `stop()` ends it at once.
final class FakeHubServer: @unchecked Sendable {
    struct Request {
        let method: String
        let path: String
        /// Lowercased names.
        let headers: [String: String]
    }

    let repo = "Wan-AI/Tiny"
    let gatedRepo = "Wan-AI/Gated"
    let commit = "3f1b6c0d2e4a5b6c7d8e9f00112233445566778a"
    private(set) var port: UInt16 = 0

    private let lock = NSLock()
    private var files: [(path: String, content: Data, lfs: Bool)] = []
    private var _requests: [Request] = []
    private var _corrupt: Set<String> = []
    private var _cutAt: [String: Int] = [:]
    private var _cutOnce = false
    private var _ghosts: Set<String> = []
    private var _ignoreRange = false
    private var _cdnHost = "127.0.0.1"
    private var _expireOnce = false
    private var stopFlag = false
    private let listener: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let maxConnections = 300
    private let lifetime: TimeInterval = 90

    init(files: [(String, Data, Bool)]) throws {
        self.files = files.map { (path: $0.0, content: $0.1, lfs: $0.2) }
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw NSError(domain: "FakeHub", code: 1) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")  // loopback only
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else { close(listener); throw NSError(domain: "FakeHub", code: 2) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) }
        }
        port = UInt16(bigEndian: addr.sin_port)
        let t = Thread { [self] in self.acceptLoop() }
        t.stackSize = 1 << 20
        t.start()
    }

    var endpoint: URL { URL(string: "http://127.0.0.1:\(port)")! }

    var requests: [Request] { lock.withLock { _requests } }
    func clearRequests() { lock.withLock { _requests.removeAll() } }
    /// Serve bytes that do not match the announced sha256 for this path.
    func corrupt(_ path: String) { lock.withLock { _ = _corrupt.insert(path) } }
    /// Close the connection once the body has reached byte `offset` of the file (once, or every time).
    func cut(_ path: String, at offset: Int?, once: Bool = false) {
        lock.withLock { _cutAt[path] = offset; _cutOnce = once }
    }
    /// Answer every GET with 200 and the whole file, whatever its Range header.
    func ignoreRange(_ on: Bool) { lock.withLock { _ignoreRange = on } }
    /// The host name of the CDN addresses that /resolve/ redirects to ("localhost": another host than the hub's
    /// 127.0.0.1 for the client, the same loopback listener here).
    func cdnHost(_ host: String) { lock.withLock { _cdnHost = host } }
    /// Answer the next /cdn/ request 403, as an expired signed address.
    func expireOnce() { lock.withLock { _expireOnce = true } }
    /// Listed by the API but 404 on /resolve/.
    func ghost(_ path: String) { lock.withLock { _ = _ghosts.insert(path) } }

    func stop() {
        let wasStopped = lock.withLock { () -> Bool in let s = stopFlag; stopFlag = true; return s }
        if !wasStopped { _ = finished.wait(timeout: .now() + 10) }
    }

    deinit { stop() }

    static func sha256(_ d: Data) -> String { SHA256Hasher.hex(d) }

    // MARK: Server loop

    private func acceptLoop() {
        defer { close(listener); finished.signal() }
        let deadline = Date().addingTimeInterval(lifetime)
        var served = 0
        while served < maxConnections, Date() < deadline, !lock.withLock({ stopFlag }) {
            var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let c = accept(listener, nil, nil)
            guard c >= 0 else { continue }
            served += 1
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            if let request = readRequest(c) {
                lock.withLock { _requests.append(request) }
                respond(c, request)
            }
            shutdown(c, Int32(SHUT_RDWR))
            close(c)
        }
    }

    private func readRequest(_ c: Int32) -> Request? {
        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<64 {  // at most 256 KiB of headers
            let n = recv(c, &chunk, chunk.count, 0)
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
            if let text = String(bytes: buffer, encoding: .utf8), let end = text.range(of: "\r\n\r\n") {
                let lines = text[..<end.lowerBound].components(separatedBy: "\r\n")
                let parts = lines[0].split(separator: " ")
                guard parts.count >= 2 else { return nil }
                var headers: [String: String] = [:]
                for line in lines.dropFirst() {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                return Request(method: String(parts[0]), path: String(parts[1]), headers: headers)
            }
        }
        return nil
    }

    private func sendAll(_ c: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { buf in
            var done = 0
            var tries = 0
            while done < buf.count, tries < 100_000 {
                tries += 1
                let n = send(c, buf.baseAddress! + done, buf.count - done, Int32(MSG_NOSIGNAL))
                if n <= 0 { return false }
                done += n
            }
            return done == buf.count
        }
    }

    private func head(_ status: String, _ headers: [(String, String)]) -> Data {
        var s = "HTTP/1.1 \(status)\r\nConnection: close\r\n"
        for (k, v) in headers { s += "\(k): \(v)\r\n" }
        return Data((s + "\r\n").utf8)
    }

    private func respond(_ c: Int32, _ r: Request) {
        let path = r.path.removingPercentEncoding ?? r.path
        let isHead = r.method == "HEAD"
        func simple(_ status: String, _ extra: [(String, String)] = [], body: String = "") {
            var h = extra
            h.append(("Content-Length", "\(body.utf8.count)"))
            _ = sendAll(c, head(status, h) + (isHead ? Data() : Data(body.utf8)))
        }
        // /api/models/{org}/{name}/revision/{revision}
        if path.hasPrefix("/api/models/") {
            let rest = path.dropFirst("/api/models/".count)
            guard let rev = rest.range(of: "/revision/") else { return simple("404 Not Found") }
            let repo = String(rest[..<rev.lowerBound]), revision = String(rest[rev.upperBound...])
            if repo == gatedRepo {
                return simple("403 Forbidden", [("X-Error-Code", "GatedRepo")], body: "{\"error\":\"gated\"}")
            }
            guard repo == self.repo else { return simple("404 Not Found", [], body: "{\"error\":\"Repository not found\"}") }
            guard revision == "main" || revision == commit else {
                return simple("404 Not Found", [("X-Error-Code", "RevisionNotFound")], body: "{\"error\":\"Invalid rev id\"}")
            }
            let siblings = lock.withLock { files.map { "{\"rfilename\":\"\($0.path)\"}" } }.joined(separator: ",")
            return simple("200 OK", [("Content-Type", "application/json")],
                          body: "{\"id\":\"\(repo)\",\"sha\":\"\(commit)\",\"siblings\":[\(siblings)]}")
        }
        // /{org}/{name}/resolve/{revision}/{path}
        if let res = path.range(of: "/resolve/") {
            let repo = String(path[path.index(after: path.startIndex)..<res.lowerBound])
            let rest = path[res.upperBound...]
            guard repo == self.repo, let slash = rest.firstIndex(of: "/") else {
                return simple("404 Not Found", [("X-Error-Code", "RepoNotFound")])
            }
            let revision = String(rest[..<slash]), file = String(rest[rest.index(after: slash)...])
            guard revision == "main" || revision == commit else {
                return simple("404 Not Found", [("X-Error-Code", "RevisionNotFound")])
            }
            let entry = lock.withLock { _ghosts.contains(file) ? nil : files.first { $0.path == file } }
            guard let entry else { return simple("404 Not Found", [("X-Error-Code", "EntryNotFound")], body: "Entry not found") }
            let sha = Self.sha256(entry.content)
            if entry.lfs {
                return simple("302 Found", [
                    ("Location", "http://\(lock.withLock { _cdnHost }):\(port)/cdn/\(sha)"),
                    ("X-Linked-Etag", "\"\(sha)\""), ("X-Linked-Size", "\(entry.content.count)"),
                    ("X-Repo-Commit", commit), ("ETag", "W/\"redirect-\(entry.content.count)\""),
                ])
            }
            // a small file: the etag is a git blob id (here a stand-in of 40 hex digits)
            return serveContent(c, r, file: file, content: entry.content, etag: String(sha.prefix(40)), extra: [("X-Repo-Commit", commit)])
        }
        // /cdn/{sha256}
        if path.hasPrefix("/cdn/") {
            let sha = String(path.dropFirst(5))
            if lock.withLock({ () -> Bool in let e = _expireOnce; _expireOnce = false; return e }) {
                return simple("403 Forbidden", [], body: "Request has expired")
            }
            guard let entry = lock.withLock({ files.first { Self.sha256($0.content) == sha } }) else { return simple("404 Not Found") }
            return serveContent(c, r, file: entry.path, content: entry.content, etag: "cdn-\(sha.prefix(8))", extra: [])
        }
        simple("404 Not Found")
    }

    private func serveContent(_ c: Int32, _ r: Request, file: String, content original: Data, etag: String, extra: [(String, String)]) {
        var content = original
        let (corrupt, cutAt, once, ignoreRange) = lock.withLock { (_corrupt.contains(file), _cutAt[file], _cutOnce, _ignoreRange) }
        if corrupt, !content.isEmpty { content[content.startIndex] ^= 0xFF }
        var start = 0, stop = content.count  // bytes start..<stop
        var status = "200 OK"
        var headers = extra + [("ETag", "\"\(etag)\""), ("Accept-Ranges", "bytes")]
        if !ignoreRange, let range = r.headers["range"], range.hasPrefix("bytes="), let dash = range.firstIndex(of: "-"),
           let from = Int(range[range.index(range.startIndex, offsetBy: 6)..<dash]) {
            let to = Int(range[range.index(after: dash)...]).map { min($0 + 1, content.count) } ?? content.count
            if from >= content.count || to <= from {
                _ = sendAll(c, head("416 Range Not Satisfiable", [("Content-Range", "bytes */\(content.count)"), ("Content-Length", "0")]))
                return
            }
            start = from
            stop = to
            status = "206 Partial Content"
            headers.append(("Content-Range", "bytes \(from)-\(to - 1)/\(content.count)"))
        }
        headers.append(("Content-Length", "\(stop - start)"))
        guard sendAll(c, head(status, headers)), r.method != "HEAD" else { return }
        var end = stop
        if let cutAt, cutAt > start, cutAt < end, r.method == "GET" {
            end = cutAt
            if once { lock.withLock { _cutAt[file] = nil } }
        }
        _ = sendAll(c, content.subdata(in: start..<end))
    }
}

final class HubDownloadTests: XCTestCase {
    var server: FakeHubServer!
    var cache: URL!
    let weights = HubDownloadTests.bytes(count: 300_000, seed: 7)
    let t5 = HubDownloadTests.bytes(count: 70_001, seed: 11)
    let config = Data("{\"dim\": 1536, \"model_type\": \"t2v\"}\n".utf8)

    static func bytes(count: Int, seed: UInt64) -> Data {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var d = Data(count: count)
        for i in 0..<count {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            d[i] = UInt8(truncatingIfNeeded: state)
        }
        return d
    }

    override func setUpWithError() throws {
        server = try FakeHubServer(files: [
            ("config.json", config, false),
            ("diffusion_pytorch_model.safetensors", weights, true),
            ("google/umt5-xxl/spiece.model", t5, true),
            ("empty.txt", Data(), false),
        ])
        cache = FileManager.default.temporaryDirectory.appendingPathComponent("wan-hub-\(UUID().uuidString)", isDirectory: true)
    }

    override func tearDownWithError() throws {
        server?.stop()
        server = nil
        if let cache { try? FileManager.default.removeItem(at: cache) }
    }

    func client(endpoint: URL? = nil) -> HubClient {
        let c = HubClient(endpoint: endpoint ?? server.endpoint, cacheDirectory: cache, token: nil, environment: [:])
        c.token = nil
        c.timeout = 10
        return c
    }

    var repoFolder: URL { cache.appendingPathComponent("models--Wan-AI--Tiny", isDirectory: true) }

    func blobNames() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: repoFolder.appendingPathComponent("blobs").path)) ?? []).sorted()
    }

    func resolveRequests() -> [FakeHubServer.Request] {
        server.requests.filter { $0.path.contains("/resolve/") || $0.path.hasPrefix("/cdn/") }
    }

    // MARK: Cases

    func testFullDownloadLaysOutBlobsSnapshotsAndRefs() throws {
        let events = Locked<[HubProgress]>([])
        let snap = try client().download(repo: server.repo) { p in events.mutate { $0.append(p) } }
        XCTAssertEqual(snap.standardizedFileURL.path,
                       repoFolder.appendingPathComponent("snapshots/\(server.commit)").standardizedFileURL.path)
        XCTAssertEqual(try String(contentsOf: repoFolder.appendingPathComponent("refs/main"), encoding: .utf8), server.commit)

        let fm = FileManager.default
        let expect: [(String, Data, String, String)] = [
            ("config.json", config, String(SHA256Hasher.hex(config).prefix(40)), "../../blobs/"),
            ("diffusion_pytorch_model.safetensors", weights, SHA256Hasher.hex(weights), "../../blobs/"),
            ("google/umt5-xxl/spiece.model", t5, SHA256Hasher.hex(t5), "../../../../blobs/"),
            ("empty.txt", Data(), String(SHA256Hasher.hex(Data()).prefix(40)), "../../blobs/"),
        ]
        for (path, content, etag, prefix) in expect {
            let pointer = snap.appendingPathComponent(path)
            XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: pointer.path), prefix + etag, path)
            XCTAssertEqual(try Data(contentsOf: pointer), content, path)
            XCTAssertEqual(try Data(contentsOf: repoFolder.appendingPathComponent("blobs/\(etag)")), content, path)
        }
        XCTAssertEqual(blobNames(), expect.map { $0.2 }.sorted(), "four blobs, nothing .incomplete")

        // the metadata request stopped at the hub's 302 (HEAD on /resolve/, never on /cdn/), the content came from /cdn/
        let reqs = resolveRequests()
        XCTAssertFalse(reqs.contains { $0.method == "HEAD" && $0.path.hasPrefix("/cdn/") })
        XCTAssertEqual(reqs.filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }.count, 2)
        XCTAssertTrue(reqs.allSatisfy { $0.headers["range"] == nil })

        let last = try XCTUnwrap(events.value.last)
        XCTAssertEqual(last.stage, .finished)
        XCTAssertEqual(last.filesDone, 4)
        XCTAssertEqual(last.filesTotal, 4)
        XCTAssertEqual(last.completed, Int64(config.count + weights.count + t5.count))
        XCTAssertEqual(last.total, last.completed)
        let perFile = events.value.filter { $0.stage == .downloading && $0.file == "diffusion_pytorch_model.safetensors" }
        XCTAssertEqual(perFile.last?.fileCompleted, Int64(weights.count))
        XCTAssertEqual(zip(perFile, perFile.dropFirst()).allSatisfy { $0.fileCompleted <= $1.fileCompleted }, true)

        XCTAssertEqual(client().resolveCachedSnapshot(repo: server.repo)?.standardizedFileURL.path, snap.standardizedFileURL.path)
        XCTAssertEqual(client().resolveCachedSnapshot(repo: server.repo, revision: server.commit)?.standardizedFileURL.path,
                       snap.standardizedFileURL.path)
        XCTAssertNil(client().resolveCachedSnapshot(repo: server.repo, revision: "v2"))
    }

    func testIncludePatternsSelectFiles() throws {
        let snap = try client().download(repo: server.repo, files: ["*.json", "google/"])
        let fm = FileManager.default
        XCTAssertTrue(fm.fileExists(atPath: snap.appendingPathComponent("config.json").path))
        XCTAssertTrue(fm.fileExists(atPath: snap.appendingPathComponent("google/umt5-xxl/spiece.model").path))
        XCTAssertFalse(fm.fileExists(atPath: snap.appendingPathComponent("diffusion_pytorch_model.safetensors").path))
        XCTAssertThrowsError(try client().download(repo: server.repo, files: ["*.gguf"])) { e in
            XCTAssertEqual(e as? HubError, .noFilesMatched(repo: server.repo, patterns: ["*.gguf"]))
        }
        XCTAssertTrue(HubGlob.matches("*.safetensors", "sub/dir/model.safetensors"))
        XCTAssertTrue(HubGlob.matches("model-0000[1-3]-of-*.safetensors", "model-00002-of-00006.safetensors"))
        XCTAssertFalse(HubGlob.matches("model-0000[!1-3]-of-*.safetensors", "model-00002-of-00006.safetensors"))
        XCTAssertTrue(HubGlob.matches("config.json", "config.json"))
        XCTAssertFalse(HubGlob.matches("config.json", "xconfig.json"))
        XCTAssertTrue(HubGlob.matches("?ae.pth", "vae.pth"))
    }

    func testInterruptedTransferLeavesIncompleteAndResumesWithRange() throws {
        let name = "diffusion_pytorch_model.safetensors"
        let sha = SHA256Hasher.hex(weights)
        server.cut(name, at: 123_457)
        let c = client()
        c.retries = 0
        XCTAssertThrowsError(try c.download(repo: server.repo, files: [name])) { e in
            guard case .transferInterrupted(let file, _, _)? = e as? HubError else { return XCTFail("got \(e)") }
            XCTAssertEqual(file, name)
            XCTAssertTrue("\(e)".contains("run the same command again to resume"), "\(e)")
        }
        let partial = repoFolder.appendingPathComponent("blobs/\(sha).incomplete")
        let have = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: partial.path)[.size] as? Int)
        XCTAssertGreaterThan(have, 0)
        XCTAssertLessThanOrEqual(have, 123_457)
        XCTAssertEqual(try Data(contentsOf: partial), weights.prefix(have), "what arrived is a prefix of the file")
        XCTAssertFalse(FileManager.default.fileExists(atPath: repoFolder.appendingPathComponent("blobs/\(sha)").path))

        server.cut(name, at: nil)
        server.clearRequests()
        let events = Locked<[HubProgress]>([])
        let snap = try c.download(repo: server.repo, files: [name]) { p in events.mutate { $0.append(p) } }
        let gets = resolveRequests().filter { $0.method == "GET" && $0.path.hasPrefix("/cdn/") }
        XCTAssertEqual(gets.count, 1)
        XCTAssertEqual(gets.first?.headers["range"], "bytes=\(have)-", "the second call asked only for the rest")
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(name)), weights)
        XCTAssertFalse(FileManager.default.fileExists(atPath: partial.path))
        XCTAssertTrue(events.value.contains { $0.stage == .resuming && $0.fileCompleted == Int64(have) })
        XCTAssertEqual(events.value.last?.completed, Int64(weights.count))
    }

    func testLargeFilesComeInBoundedRanges() throws {
        let name = "diffusion_pytorch_model.safetensors"
        let c = client()
        c.segmentSize = 100_000
        let snap = try c.download(repo: server.repo, files: [name])
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(name)), weights)
        XCTAssertEqual(resolveRequests().filter { $0.method == "GET" }.map { $0.headers["range"] ?? "none" },
                       ["bytes=0-99999", "bytes=100000-199999", "bytes=200000-"], "the last one open-ended")
    }

    func testBrokenConnectionIsResumedWithinOneCall() throws {
        let name = "google/umt5-xxl/spiece.model"
        server.cut(name, at: 30_000, once: true)
        let snap = try client().download(repo: server.repo, files: [name])
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(name)), t5)
        let ranges = resolveRequests().compactMap { $0.headers["range"] }
        XCTAssertEqual(ranges.count, 1)
        XCTAssertTrue(ranges.first?.hasPrefix("bytes=") ?? false)
    }

    func testUnusablePartialsStartOver() throws {
        let name = "diffusion_pytorch_model.safetensors"
        let sha = SHA256Hasher.hex(weights)
        let blobs = repoFolder.appendingPathComponent("blobs")
        try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
        // a server that answers a Range request with 200 and the whole file: the partial is dropped, not appended to
        try Data(repeating: 0x41, count: 1000).write(to: blobs.appendingPathComponent("\(sha).incomplete"))
        server.ignoreRange(true)
        var snap = try client().download(repo: server.repo, files: [name])
        XCTAssertEqual(resolveRequests().last?.headers["range"], "bytes=1000-")
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(name)), weights)
        XCTAssertEqual(blobNames(), [sha])

        // a partial longer than the file (not ours): started over without a Range
        let configEtag = String(SHA256Hasher.hex(config).prefix(40))
        try Data(repeating: 0x41, count: config.count + 5).write(to: blobs.appendingPathComponent("\(configEtag).incomplete"))
        server.ignoreRange(false)
        server.clearRequests()
        snap = try client().download(repo: server.repo, files: ["config.json"])
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent("config.json")), config)
        XCTAssertTrue(resolveRequests().allSatisfy { $0.headers["range"] == nil })
        XCTAssertEqual(blobNames(), [configEtag, sha].sorted())
    }

    func testTokenStaysOnTheHubAndAnExpiredCDNAddressIsRenewed() throws {
        let name = "diffusion_pytorch_model.safetensors"
        server.cdnHost("localhost")
        server.expireOnce()
        let c = client()
        c.token = "hf_secret"
        c.segmentSize = 100_000
        let snap = try c.download(repo: server.repo, files: [name])
        XCTAssertEqual(try Data(contentsOf: snap.appendingPathComponent(name)), weights)
        let reqs = server.requests
        XCTAssertTrue(reqs.filter { !$0.path.hasPrefix("/cdn/") }.allSatisfy { $0.headers["authorization"] == "Bearer hf_secret" })
        XCTAssertTrue(reqs.filter { $0.path.hasPrefix("/cdn/") }.allSatisfy { $0.headers["authorization"] == nil },
                      "the token is not sent to the CDN")
        XCTAssertEqual(reqs.filter { $0.method == "HEAD" }.count, 2, "the expired address was asked for again")
        XCTAssertEqual(reqs.filter { $0.path.hasPrefix("/cdn/") }.map { $0.headers["range"] ?? "none" },
                       ["bytes=0-99999", "bytes=0-99999", "bytes=100000-199999", "bytes=200000-"])
    }

    func testCorruptedFileIsRejectedAndLeavesNoBlob() throws {
        let name = "diffusion_pytorch_model.safetensors"
        let sha = SHA256Hasher.hex(weights)
        var bad = weights
        bad[0] ^= 0xFF
        server.corrupt(name)
        XCTAssertThrowsError(try client().download(repo: server.repo, files: [name])) { e in
            XCTAssertEqual(e as? HubError, .checksumMismatch(file: name, expected: sha, actual: SHA256Hasher.hex(bad)))
            XCTAssertTrue("\(e)".contains(name) && "\(e)".contains(sha), "\(e)")
        }
        XCTAssertEqual(blobNames(), [], "neither the blob nor an .incomplete is kept")
        let pointer = repoFolder.appendingPathComponent("snapshots/\(server.commit)/\(name)")
        XCTAssertNil(try? FileManager.default.destinationOfSymbolicLink(atPath: pointer.path))
    }

    func testSecondDownloadOfCompleteSnapshotTransfersNothing() throws {
        let first = try client().download(repo: server.repo)
        server.clearRequests()
        let events = Locked<[HubProgress]>([])
        let second = try client().download(repo: server.repo) { p in events.mutate { $0.append(p) } }
        XCTAssertEqual(first, second)
        XCTAssertEqual(server.requests.map(\.path), ["/api/models/\(server.repo)/revision/main"], "only the listing")
        XCTAssertEqual(events.value.filter { $0.stage == .cached }.count, 4)
        XCTAssertFalse(events.value.contains { $0.stage == .downloading })

        // a lost snapshot link with its blob still there is relinked without a transfer either (one HEAD)
        try FileManager.default.removeItem(at: second.appendingPathComponent("config.json"))
        server.clearRequests()
        _ = try client().download(repo: server.repo)
        XCTAssertEqual(resolveRequests().map(\.method), ["HEAD"])
        XCTAssertEqual(try Data(contentsOf: second.appendingPathComponent("config.json")), config)
    }

    func testNotFoundAndAccessErrorsAreTyped() throws {
        let c = client()
        XCTAssertThrowsError(try c.download(repo: "Wan-AI/Nope")) { e in
            XCTAssertEqual(e as? HubError, .repoNotFound(repo: "Wan-AI/Nope", tokenSent: false))
        }
        XCTAssertThrowsError(try c.download(repo: server.repo, revision: "v9")) { e in
            XCTAssertEqual(e as? HubError, .revisionNotFound(repo: server.repo, revision: "v9"))
        }
        server.ghost("config.json")
        XCTAssertThrowsError(try c.download(repo: server.repo, files: ["config.json"])) { e in
            XCTAssertEqual(e as? HubError, .fileNotFound(repo: server.repo, revision: server.commit, path: "config.json"))
        }
        XCTAssertThrowsError(try c.download(repo: server.gatedRepo)) { e in
            XCTAssertEqual(e as? HubError, .accessDenied(repo: server.gatedRepo, status: 403, tokenSent: false, gated: true))
            XCTAssertTrue("\(e)".contains("HF_TOKEN"), "\(e)")
        }
        XCTAssertThrowsError(try c.download(repo: "../etc")) { e in
            XCTAssertEqual(e as? HubError, .invalidRepoID("../etc"))
        }
        // the token is sent as a bearer token
        server.clearRequests()
        c.token = "hf_test"
        _ = try c.download(repo: server.repo, files: ["google/"]) as URL?
        XCTAssertEqual(server.requests.first?.headers["authorization"], "Bearer hf_test")
    }

    func testRefusedConnectionIsUnreachableAndCacheIsUsedOffline() throws {
        // a port with no listener: bind an ephemeral loopback port, then close it
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
                _ = bind(s, p, len)
                return getsockname(s, p, &len)
            }
        }
        close(s)
        let dead = URL(string: "http://127.0.0.1:\(UInt16(bigEndian: addr.sin_port))")!
        XCTAssertThrowsError(try client(endpoint: dead).download(repo: server.repo)) { e in
            guard case .unreachable(let host, _)? = e as? HubError else { return XCTFail("got \(e)") }
            XCTAssertEqual(host, "127.0.0.1")
            XCTAssertTrue("\(e)".contains("cannot reach 127.0.0.1: no network? set HF_ENDPOINT or download the files by hand and pass the folder"), "\(e)")
        }
        // with the revision in the cache, an unreachable hub falls back to it (as huggingface_hub does)
        let snap = try client().download(repo: server.repo)
        let events = Locked<[HubProgress]>([])
        let again = try client(endpoint: dead).download(repo: server.repo) { p in events.mutate { $0.append(p) } }
        XCTAssertEqual(again, snap)
        XCTAssertTrue(events.value.contains { $0.stage == .offline })
        let offline = HubClient(endpoint: dead, cacheDirectory: cache, environment: ["HF_HUB_OFFLINE": "1"])
        XCTAssertEqual(try offline.download(repo: server.repo), snap)
        XCTAssertThrowsError(try offline.download(repo: "Wan-AI/Other")) { e in
            XCTAssertEqual(e as? HubError, .notCached(repo: "Wan-AI/Other", revision: "main"))
        }
    }

    func testCacheFolderAndEndpointFromEnvironment() {
        XCTAssertEqual(HubClient.defaultCacheDirectory(environment: ["HOME": "/h"]).path, "/h/.cache/huggingface/hub")
        XCTAssertEqual(HubClient.defaultCacheDirectory(environment: ["HOME": "/h", "XDG_CACHE_HOME": "/x"]).path, "/x/huggingface/hub")
        XCTAssertEqual(HubClient.defaultCacheDirectory(environment: ["HOME": "/h", "HF_HOME": "/hf"]).path, "/hf/hub")
        XCTAssertEqual(HubClient.defaultCacheDirectory(environment: ["HF_HOME": "/hf", "HF_HUB_CACHE": "/c"]).path, "/c")
        let c = HubClient(environment: ["HF_ENDPOINT": "http://127.0.0.1:9/", "HF_TOKEN": "hf_x", "HOME": "/h"])
        XCTAssertEqual(c.endpoint.absoluteString, "http://127.0.0.1:9")
        XCTAssertEqual(c.token, "hf_x")
        XCTAssertEqual(HubClient(environment: ["HOME": "/nonexistent-home"]).endpoint.absoluteString, "https://huggingface.co")
        XCTAssertEqual(c.repoFolder("Wan-AI/Wan2.1-T2V-1.3B").lastPathComponent, "models--Wan-AI--Wan2.1-T2V-1.3B")
    }

    func testSHA256KnownAnswers() {
        XCTAssertEqual(SHA256Hasher.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256Hasher.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256Hasher.hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256Hasher.hex(Data(repeating: 0x61, count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // chunked updates of every size give the one-shot digest
        let d = Self.bytes(count: 1000, seed: 3)
        let whole = SHA256Hasher.hex(d)
        for step in [1, 3, 63, 64, 65, 127, 999] {
            var h = SHA256Hasher()
            var i = 0
            while i < d.count { h.update(d.subdata(in: i..<min(i + step, d.count))); i += step }
            XCTAssertEqual(h.finalizeHex(), whole, "step \(step)")
        }
    }
}

/// A value shared with callbacks on other threads.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.withLock { v } }
    func mutate(_ f: (inout T) -> Void) { lock.withLock { f(&v) } }
}
