import Dispatch
import CDNNL
#if canImport(Glibc)
import Glibc
#endif

/// The one thread pool of WanKit: every hot loop runs its chunks here (GCD's pool, one worker per core).
/// oneDNN's own GEMMs run on its OpenMP team from the calling thread; inside our workers oneDNN is
/// told to stay single-threaded, so the two never oversubscribe the cores.
public enum Parallel {
    /// Number of workers (the machine's active cores).
    public static let workers: Int = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))

    /// Runs `body(i)` for i in 0..<count, spread across all cores. Small counts run inline.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || workers == 1 {
            let previous = omp_get_max_threads()
            omp_set_num_threads(1)
            for i in 0..<count { body(i) }
            omp_set_num_threads(previous)
            return
        }
        withoutActuallyEscaping(body) { body in
            DispatchQueue.concurrentPerform(iterations: count) { i in
                let previous = omp_get_max_threads()
                omp_set_num_threads(1)
                body(i)
                omp_set_num_threads(previous)
            }
        }
    }

    /// Runs `body(range)` over `count` items split into about `workers * 4` contiguous chunks of at least `grain` items.
    public static func forRanges(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let chunks = max(1, min(workers * 4, count / max(grain, 1)))
        if chunks == 1 { body(0..<count); return }
        let per = (count + chunks - 1) / chunks
        forEach(chunks) { c in
            let lo = c * per
            let hi = min(count, lo + per)
            if lo < hi { body(lo..<hi) }
        }
    }
}
