import Foundation
import XCTest

/// The kernel-source harness's race check checked itself: a toy kernel that reads a neighbour's shared-memory slot
/// without the barrier between the write and the read must end in a ThreadSanitizer report, and the same kernel with
/// `__syncthreads()` (or, within a warp, `__syncwarp()`) must run clean. Without this a silent TSan build (a barrier
/// emulation that hid every race) would let the kernels' race tests pass whatever they do.
final class KernelRaceCheckTests: XCTestCase {
    /// A driver whose kernel writes slot t, then (after `sync`, if any) reads slot (t + stride) % 128.
    private func driver(sync: String, stride: Int) -> String {
        #"""
        #include "kernel_host.h"
        __global__ void neighbour(float* out) {
            __shared__ float slots[128];
            const int t = threadIdx.x;
            slots[t] = float(t + blockIdx.x);
            \#(sync)
            out[blockIdx.x * 128 + t] = slots[(t + \#(stride)) % 128];
        }
        int main() {
            std::vector<float> out(2 * 128);
            launch({2, 1, 1}, 128, [&] { neighbour(out.data()); });
            double worst = 0;
            for (int b = 0; b < 2; ++b)
                for (int t = 0; t < 128; ++t) worst = std::fmax(worst, std::fabs(out[b * 128 + t] - float((t + \#(stride)) % 128 + b)));
            std::printf("max_rel %g\n", worst);
            return 0;
        }
        """#
    }

    func testAMissingBarrierIsReportedAndTheBarrierSilencesIt() throws {
        _ = try KernelSourcesOnTheCPU.buildAndRun(modules: [], driver: driver(sync: "", stride: 33), sanitizer: .thread, expectRace: true)
        let clean = try KernelSourcesOnTheCPU.buildAndRun(modules: [], driver: driver(sync: "__syncthreads();", stride: 33), sanitizer: .thread)
        XCTAssertEqual(KernelSourcesOnTheCPU.maxRel(clean), 0)
    }

    func testALaneReadingAnotherLaneNeedsSyncwarp() throws {
        // Each lane reads the next lane's slot with nothing between: a race. With the reads kept inside the reader's
        // warp (lane 31 reads lane 0 of its own warp), __syncwarp between the write and the read is enough.
        _ = try KernelSourcesOnTheCPU.buildAndRun(modules: [], driver: driver(sync: "", stride: 1), sanitizer: .thread, expectRace: true)
        let warpLocal = driver(sync: "__syncwarp();", stride: 1).replacingOccurrences(of: "slots[(t + 1) % 128]", with: "slots[(t & ~31) | ((t + 1) & 31)]")
            .replacingOccurrences(of: "float((t + 1) % 128 + b)", with: "float(((t & ~31) | ((t + 1) & 31)) + b)")
        let clean = try KernelSourcesOnTheCPU.buildAndRun(modules: [], driver: warpLocal, sanitizer: .thread)
        XCTAssertEqual(KernelSourcesOnTheCPU.maxRel(clean), 0)
    }
}
