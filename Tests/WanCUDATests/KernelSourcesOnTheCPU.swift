import Foundation
import XCTest
import WanCUDA

/// Runs kernels of Sources/WanCUDA/Kernels from their CUDA source on the CPU, for the *KernelSourcesOnTheCPU tests: each
/// `.cu` file compiled as C++20 behind `shim` (CUDA's qualifiers, vector types and built-ins), a test's driver behind
/// `host` (the execution model: one std::thread per CUDA thread of a block, the same threads for block after block;
/// `__syncthreads` a barrier of the block, `__syncwarp`, `__shfl_xor_sync`/`__shfl_sync`, `ldmatrix` and the warp's
/// `mma.sync.m16n8k16` exchanges among its 32 lanes, the mma's fragments laid out as the PTX ISA documents them;
/// `cp.async` queued per thread and done only by the `wait_group` that must complete it, its destination NaN until
/// then; a kernel's inline PTX stays under `__CUDA_ARCH__` with a call of the host's function beside it).
///
/// Two builds of a driver (`Sanitizer`): with AddressSanitizer where the compiler has it, so a kernel that reads or
/// writes past a buffer stops the run; and with ThreadSanitizer (`race_check` true in the driver, which then runs
/// fewer, smaller cases), so a missing `__syncthreads` / `__syncwarp` (a data race on shared memory, or a cp.async
/// destination read before the wait and barrier that publish it) fails the test with TSan's report. Drivers print one
/// line per case and `max_rel <x>` last. `WANKIT_KERNELS_ON_CPU_KEEP=1` keeps the scratch folder (its path printed).
enum KernelSourcesOnTheCPU {
    static let shim = #"""
        // CUDA built-ins for running Kernels/*.cu on the CPU (Tests/WanCUDATests): one std::thread per CUDA thread of a
        // block, blocks one after another; __syncthreads is a barrier of the block, __syncwarp, the shuffles, ldmatrix and
        // mma.sync are warp-collective exchanges (kernel_host.h defines them). Included before the kernel's own text.
        #include <barrier>
        #include <cmath>
        #include <cstring>
        #include <cstdint>
        #define __global__
        #define __device__
        #define __forceinline__ inline
        #define __launch_bounds__(...)
        #define __shared__ static
        #define __align__(n) __attribute__((aligned(n)))
        struct HostDim3 { unsigned x, y, z; };
        extern HostDim3 blockDim, gridDim;
        extern thread_local HostDim3 threadIdx, blockIdx;
        struct alignas(16) float4 { float x, y, z, w; };
        struct alignas(16) uint4 { unsigned x, y, z, w; };
        struct alignas(8) uint2 { unsigned x, y; };
        static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
        static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
        static inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
        static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
        static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
        static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
        static inline int min(int a, int b) { return a < b ? a : b; }
        static inline int max(int a, int b) { return a > b ? a : b; }
        static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
        // IEEE round-to-nearest products, sums and differences that the compiler may not contract into FMAs (as -ffp-contract=off
        // builds every kernel file here).
        static inline float __fmul_rn(float a, float b) { return a * b; }
        static inline float __fadd_rn(float a, float b) { return a + b; }
        static inline float __fsub_rn(float a, float b) { return a - b; }
        float __shfl_xor_sync(unsigned mask, float v, int offset);
        float __shfl_sync(unsigned mask, float v, int source_lane);
        void __syncthreads();
        // The warp's mma.sync.m16n8k16 (bf16 in, f32 accumulators) from the fragments its 32 lanes hand over.
        void mma_bf16_16816_host(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1);
        // The warp's ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lane l hands over the (16-byte aligned) address
        // of row l % 8 of matrix l / 8; r[i] receives row l / 4, columns 2(l % 4) and 2(l % 4) + 1 of matrix i (the lower
        // column in the low half), or with `trans` column l / 4, rows 2(l % 4) and 2(l % 4) + 1.
        void ldmatrix_host(unsigned* r, int count, const void* row, bool trans);
        static inline void ldmatrix_x4_host(unsigned* r, const void* row, bool trans) { ldmatrix_host(r, 4, row, trans); }
        // cp.async.{ca,cg}.shared.global with src-size: `src_bytes` (0..16) copied, the rest of the 16 zero-filled, but only
        // when a wait completes it (the PTX memory model, taken adversarially): the call queues the copy in this thread and
        // fills the 16 destination bytes with 0xff (a bf16 / f32 NaN) until then. commit_group closes this thread's open
        // copies into a group; wait_group n completes all but the n most recent committed groups (copies not yet committed
        // wait); wait_all = commit_group + wait_group 0. A thread's copies still queued when its block ends complete then.
        void cp_async_16_host(void* dst, const void* src, int src_bytes);
        void cp_async_commit_host();
        void cp_async_wait_host(int n);
        void cp_async_wait_all_host();
        // __syncwarp of the full warp (the kernels' FULL_MASK): a barrier of the warp's 32 lanes.
        void __syncwarp(unsigned mask = 0xffffffffu);
        """#

    static let host = #"""
        // The CUDA execution model on the CPU for kernels compiled from their .cu source (shim.h declares what the kernels
        // call): launch() runs every thread of a block as a std::thread, blocks one after another (the same team of
        // threads for every block and launch of that block size, a barrier between blocks); barriers, warp exchanges
        // and cp.async's queues follow. Every hand-over between threads is a std::barrier, which ThreadSanitizer sees
        // as synchronisation, so a race it reports is the kernel's. Plus what every driver needs: bf16 bits <-> float,
        // random numbers, the rel_l2 report. `race_check` is true in the ThreadSanitizer build (drivers run fewer,
        // smaller cases there). Include once, in the driver.
        #include "shim.h"
        #include "common.cuh"
        #include <algorithm>
        #include <cstdio>
        #include <cstdlib>
        #include <deque>
        #include <functional>
        #include <thread>
        #include <vector>
        #ifdef KERNELS_ON_CPU_TSAN
        static const bool race_check = true;
        #else
        static const bool race_check = false;
        #endif
        HostDim3 blockDim, gridDim;
        thread_local HostDim3 threadIdx, blockIdx;
        // Made with the team (below), not freed at exit: a thread that ends the program leaves the others waiting on them.
        static std::barrier<>* block_barrier;
        static std::barrier<>* warp_barriers[32];
        static unsigned exchange[32][32][6];
        static float shuffled[32][32];
        void __syncthreads() { block_barrier->arrive_and_wait(); }
        void __syncwarp(unsigned) { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
        // Every lane of the warp hands over v and gets the value of lane `source` (all 32 lanes take part, as the kernels'
        // FULL_MASK says).
        static float warp_exchange(float v, int source) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            shuffled[warp][lane] = v;
            warp_barriers[warp]->arrive_and_wait();
            const float r = shuffled[warp][source & 31];
            warp_barriers[warp]->arrive_and_wait();
            return r;
        }
        float __shfl_xor_sync(unsigned, float v, int offset) { return warp_exchange(v, (threadIdx.x % 32) ^ offset); }
        float __shfl_sync(unsigned, float v, int source_lane) { return warp_exchange(v, source_lane); }

        // The team: one std::thread per CUDA thread of a block, kept from launch to launch while the block size stays (a
        // thread's creation costs more than a block's work under ThreadSanitizer). Each runs every block of a launch in
        // turn as thread threadIdx.x of it; `block_end` separates the blocks (as the earlier join did: a block's shared
        // memory is the next one's), `team_start` / `team_done` bracket a launch with the launching thread.
        static unsigned team_size = 0;
        static std::vector<std::thread>* team;
        static std::barrier<>* team_start;
        static std::barrier<>* team_done;
        static std::barrier<>* block_end;
        static std::function<void()> team_body;  // empty: the team leaves
        static void team_work(unsigned tid) {
            threadIdx = {tid, 0, 0};
            for (;;) {
                team_start->arrive_and_wait();
                if (!team_body) return;
                for (unsigned bz = 0; bz < gridDim.z; ++bz) for (unsigned by = 0; by < gridDim.y; ++by) for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                    blockIdx = {bx, by, bz};
                    team_body();
                    cp_async_wait_all_host();  // copies left in flight land before the block ends
                    block_end->arrive_and_wait();
                }
                team_done->arrive_and_wait();
            }
        }
        static void make_team(unsigned threads) {
            if (team) {
                team_body = nullptr;
                team_start->arrive_and_wait();
                for (auto& th : *team) th.join();
                delete team; delete team_start; delete team_done; delete block_end; delete block_barrier;
                for (unsigned w = 0; w < team_size / 32; ++w) delete warp_barriers[w];
            }
            team_size = threads;
            team_start = new std::barrier<>(threads + 1);
            team_done = new std::barrier<>(threads + 1);
            block_end = new std::barrier<>(threads);
            block_barrier = new std::barrier<>(threads);
            for (unsigned w = 0; w < threads / 32; ++w) warp_barriers[w] = new std::barrier<>(32);
            team = new std::vector<std::thread>;
            for (unsigned tid = 0; tid < threads; ++tid) team->emplace_back(team_work, tid);
        }

        // Runs `body` as every thread of a grid of blocks of `threads` threads (a multiple of 32), one block after another.
        template <typename Body> static void launch(HostDim3 grid, unsigned threads, Body body) {
            if (threads % 32 != 0 || threads > 1024) { std::printf("launch: %u threads per block\n", threads); std::exit(2); }
            if (threads != team_size) make_team(threads);
            blockDim = {threads, 1, 1};
            gridDim = grid;
            team_body = body;
            team_start->arrive_and_wait();
            team_done->arrive_and_wait();
        }
        template <typename Body> static void launch(unsigned gx, unsigned gy, Body body) { launch({gx, gy, 1}, 256, body); }

        static float bf(unsigned bits16) { return __uint_as_float(bits16 << 16); }
        void mma_bf16_16816_host(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            unsigned* mine = exchange[warp][lane];
            mine[0] = a0; mine[1] = a1; mine[2] = a2; mine[3] = a3; mine[4] = b0; mine[5] = b1;
            warp_barriers[warp]->arrive_and_wait();
            // PTX ISA m16n8k16 (.bf16): g = lane / 4, t = lane % 4, low half = lower column (A) or row (B).
            float A[16][16], B[16][8];
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, t = l % 4;
                const unsigned* e = exchange[warp][l];
                for (int h = 0; h < 2; ++h) {
                    A[g][2 * t + h] = bf((e[0] >> (16 * h)) & 0xffff);
                    A[g + 8][2 * t + h] = bf((e[1] >> (16 * h)) & 0xffff);
                    A[g][2 * t + 8 + h] = bf((e[2] >> (16 * h)) & 0xffff);
                    A[g + 8][2 * t + 8 + h] = bf((e[3] >> (16 * h)) & 0xffff);
                    B[2 * t + h][g] = bf((e[4] >> (16 * h)) & 0xffff);
                    B[2 * t + 8 + h][g] = bf((e[5] >> (16 * h)) & 0xffff);
                }
            }
            const int g = lane / 4, t = lane % 4;
            const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
            for (int i = 0; i < 4; ++i) {
                float s = d[i];
                for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
                d[i] = s;
            }
            warp_barriers[warp]->arrive_and_wait();
        }

        static const unsigned short* ldmatrix_rows[32][32];
        void ldmatrix_host(unsigned* r, int count, const void* row, bool trans) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            if (lane < 8 * count && reinterpret_cast<uintptr_t>(row) % 16 != 0) { std::printf("ldmatrix: lane %d's row address %p is not 16-byte aligned\n", lane, row); std::exit(3); }
            ldmatrix_rows[warp][lane] = static_cast<const unsigned short*>(row);
            warp_barriers[warp]->arrive_and_wait();
            const int g = lane / 4, t = lane % 4;
            for (int i = 0; i < count; ++i) {
                const unsigned lo = trans ? ldmatrix_rows[warp][8 * i + 2 * t][g] : ldmatrix_rows[warp][8 * i + g][2 * t];
                const unsigned hi = trans ? ldmatrix_rows[warp][8 * i + 2 * t + 1][g] : ldmatrix_rows[warp][8 * i + g][2 * t + 1];
                r[i] = lo | (hi << 16);
            }
            warp_barriers[warp]->arrive_and_wait();
        }
        // cp.async per thread: the copies issued since the last commit_group, and the committed groups, oldest first.
        struct CpAsync { char* dst; const char* src; int bytes; };
        static thread_local std::vector<CpAsync> cp_async_open;
        static thread_local std::deque<std::vector<CpAsync>> cp_async_groups;
        void cp_async_16_host(void* dst, const void* src, int src_bytes) {
            if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0) || src_bytes < 0 || src_bytes > 16) {
                std::printf("cp.async: dst %p src %p src-size %d (16-byte aligned addresses and 0..16 bytes)\n", dst, src, src_bytes);
                std::exit(3);
            }
            // Undefined until a wait completes the copy: NaN to whoever reads it early. Plain stores, here and in the wait
            // (ThreadSanitizer does not see GCC's inlined memset / memcpy of a constant size).
            uint64_t* d = static_cast<uint64_t*>(dst);
            d[0] = d[1] = ~0ull;
            cp_async_open.push_back({static_cast<char*>(dst), static_cast<const char*>(src), src_bytes});
        }
        void cp_async_commit_host() {
            cp_async_groups.push_back(std::move(cp_async_open));
            cp_async_open.clear();
        }
        void cp_async_wait_host(int n) {
            while ((int)cp_async_groups.size() > n) {
                for (const CpAsync& c : cp_async_groups.front()) {
                    uint64_t w[2] = {0, 0};
                    if (c.bytes > 0) std::memcpy(w, c.src, c.bytes);
                    uint64_t* d = reinterpret_cast<uint64_t*>(c.dst);
                    d[0] = w[0];
                    d[1] = w[1];
                }
                cp_async_groups.pop_front();
            }
        }
        void cp_async_wait_all_host() {
            if (!cp_async_open.empty()) cp_async_commit_host();
            cp_async_wait_host(0);
        }

        static unsigned long long seed = 88172645463325252ull;
        static float rnd() { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return (float)((seed >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1; }
        static float rounded(float v) { return bf(float_to_bf16(v)); }

        // rel_l2 = ||got - want|| / ||want|| (infinite where the sizes differ or got has a NaN), printed after `what`.
        static double report(const char* what, const std::vector<double>& got, const std::vector<double>& want) {
            double diff = 0, norm = 0;
            for (size_t i = 0; i < got.size() && i < want.size(); ++i) { diff += (got[i] - want[i]) * (got[i] - want[i]); norm += want[i] * want[i]; }
            const double rel = got.size() == want.size() && !std::isnan(diff) ? std::sqrt(diff / (norm > 0 ? norm : 1)) : INFINITY;
            std::printf("%s: rel_l2 %.3e\n", what, rel);
            return rel;
        }
        // softmax(scale q k^T) v in float64, per batch and head, over the first min(lens[b], Lk) keys (all without
        // lens; none: zeros); q [B, Lq, H, D], k and v [B, Lk, H, D]: the reference of the flash-attention kernels.
        static std::vector<double> reference_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                                       const std::vector<int>& lens, int B, int Lq, int Lk, int H, int D, float scale) {
            const long token = (long)H * D;
            std::vector<double> want(q.size()), s(Lk);
            for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) for (int i = 0; i < Lq; ++i) {
                const int n = lens.empty() ? Lk : std::min(lens[b], Lk);
                const long qi = ((long)b * Lq + i) * token + (long)h * D;
                double top = -INFINITY, total = 0;
                for (int j = 0; j < n; ++j) {
                    const long kj = ((long)b * Lk + j) * token + (long)h * D;
                    double dot = 0;
                    for (int d = 0; d < D; ++d) dot += (double)q[qi + d] * k[kj + d];
                    s[j] = dot * scale;
                    top = std::fmax(top, s[j]);
                }
                for (int j = 0; j < n; ++j) total += (s[j] = std::exp(s[j] - top));
                for (int d = 0; d < D; ++d) {
                    double o = 0;
                    for (int j = 0; j < n; ++j) o += s[j] * v[((long)b * Lk + j) * token + (long)h * D + d];
                    want[qi + d] = n > 0 ? o / total : 0.0;  // no key: zeros
                }
            }
            return want;
        }

        // The largest |got - want| over the largest |want| (NaN counts as infinite).
        static double max_abs_over_max_ref(const std::vector<double>& got, const std::vector<double>& want) {
            double worst = 0, largest = 0;
            for (size_t i = 0; i < got.size(); ++i) {
                worst = std::fmax(worst, std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - want[i]));
                largest = std::fmax(largest, std::fabs(want[i]));
            }
            return worst / (largest > 0 ? largest : 1);
        }
        """#

    static func compiler() -> String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for name in ["g++", "clang++", "c++"] {
            for dir in paths where FileManager.default.isExecutableFile(atPath: dir + "/" + name) { return dir + "/" + name }
        }
        return nil
    }

    /// Runs a program; its stdout and stderr together.
    static func run(_ executable: String, _ arguments: [String], in directory: URL? = nil,
                    environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        if let directory { process.currentDirectoryURL = directory }
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }

    /// How a driver is built: AddressSanitizer (where the compiler has it; else plain), or ThreadSanitizer with
    /// KERNELS_ON_CPU_TSAN defined (the driver's `race_check`).
    enum Sanitizer { case address, thread }

    /// Compiles `modules` (file names in Kernels/) and `driver` for the CPU and runs the program in a scratch folder
    /// that also holds `files` (inputs a driver reads by name); its output, printed. A visible skip without a C++20
    /// compiler (or, for `.thread`, without ThreadSanitizer); a failed build or run fails the test, and so does a
    /// ThreadSanitizer report (its first lines in the failure message; the run stops at the first).
    /// `expectRace`: the run must end in a ThreadSanitizer report (the harness's own check that races are seen).
    static func buildAndRun(modules: [String], driver: String, files: [String: Data] = [:], sanitizer: Sanitizer = .address,
                            expectRace: Bool = false) throws -> String {
        guard let cxx = compiler() else { throw XCTSkip("no C++ compiler (g++, clang++, c++) on PATH: \(modules.joined(separator: ", ")) not run on the CPU") }
        let sources = try KernelSources.load()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("wankit-kernels-on-cpu-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let keep = ProcessInfo.processInfo.environment["WANKIT_KERNELS_ON_CPU_KEEP"] == "1"
        if keep { print("kernels on the CPU: scratch folder \(dir.path) kept") }
        defer { if !keep { try? FileManager.default.removeItem(at: dir) } }
        for (name, text) in sources.headers { try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8) }
        try shim.write(to: dir.appendingPathComponent("shim.h"), atomically: true, encoding: .utf8)
        try host.write(to: dir.appendingPathComponent("kernel_host.h"), atomically: true, encoding: .utf8)
        for (name, data) in files { try data.write(to: dir.appendingPathComponent(name)) }
        var units: [String] = []
        for module in modules {
            let text = try XCTUnwrap(sources.modules[module], "\(module) is not among \(sources.moduleNames)")
            let unit = dir.appendingPathComponent(module.replacingOccurrences(of: ".cu", with: "_host.cpp")).path
            try ("#include \"shim.h\"\n" + text).write(toFile: unit, atomically: true, encoding: .utf8)
            units.append(unit)
        }
        let driverPath = dir.appendingPathComponent("driver.cpp").path
        try driver.write(toFile: driverPath, atomically: true, encoding: .utf8)
        let binary = dir.appendingPathComponent("kernels_on_cpu").path
        let flags = ["-std=c++20", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-Wno-unknown-pragmas", "-I", dir.path, "-o", binary]
        let what = modules.joined(separator: ", ")
        var build: (status: Int32, output: String)
        switch sanitizer {
        case .address:
            build = try run(cxx, ["-fsanitize=address"] + flags + units + [driverPath])
            if build.status != 0 && build.output.contains("asan") { build = try run(cxx, flags + units + [driverPath]) }  // no AddressSanitizer
        case .thread:
            // Line tables (-g1) so that the report names the kernel's lines.
            build = try run(cxx, ["-fsanitize=thread", "-g1", "-DKERNELS_ON_CPU_TSAN=1"] + flags + units + [driverPath])
            if build.status != 0 && build.output.contains("tsan") { throw XCTSkip("\(cxx) has no ThreadSanitizer here: \(what) not checked for races") }
        }
        guard build.status == 0 else {
            if build.output.contains("barrier") { throw XCTSkip("\(cxx) has no C++20 std::barrier: \(what) not run on the CPU") }
            XCTFail("\(cxx) could not build \(what) for the CPU:\n\(build.output)")
            return build.output
        }
        let result = try run(binary, [], in: dir, environment: ["ASAN_OPTIONS": "detect_leaks=0", "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"])
        print(result.output)
        if sanitizer == .thread && result.output.contains("FATAL: ThreadSanitizer") {  // e.g. a memory layout it cannot run in
            throw XCTSkip("ThreadSanitizer could not run \(what) here: \(result.output.prefix(300))")
        }
        if expectRace {
            XCTAssertTrue(result.output.contains("WARNING: ThreadSanitizer: data race"), "no race reported in \(what):\n\(result.output.prefix(2000))")
        } else if let start = result.output.range(of: "WARNING: ThreadSanitizer") {
            // The report's first lines, each stack cut after the kernel's launch (the team's frames below it say nothing).
            var report: [Substring] = [], inTeam = false
            for line in result.output[start.lowerBound...].split(separator: "\n", omittingEmptySubsequences: false) {
                let frame = line.trimmingCharacters(in: .whitespaces).hasPrefix("#")
                if !frame { inTeam = false }
                if frame && inTeam { continue }
                if line.contains(" team_work ") || line.contains(" __invoke_impl<") { inTeam = true; continue }
                report.append(line)
                if report.count == 40 { break }
            }
            XCTFail("ThreadSanitizer: a race in \(what) (shared memory read or written without a barrier between):\n\(report.joined(separator: "\n"))")
        } else {
            XCTAssertEqual(result.status, 0, result.output)
        }
        return result.output
    }

    /// The value of the driver's last line, `max_rel <x>` (infinity where it is missing).
    static func maxRel(_ output: String) -> Double {
        let last = output.split(separator: "\n").last.map(String.init) ?? ""
        guard last.hasPrefix("max_rel ") else { return .infinity }
        return Double(last.dropFirst("max_rel ".count)) ?? .infinity
    }
}
