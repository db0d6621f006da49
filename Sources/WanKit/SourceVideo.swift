import Foundation
import WanTensor

/// A video's frame timeline as decord's `VideoReader` reports it (`get_avg_fps`, `get_frame_timestamp`), read with
/// ffprobe from the same demuxer (libavformat): one entry per packet of the first video stream, sorted by pts.
public struct VideoTimeline: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// avg_frame_rate (decord's `get_avg_fps`).
    public var fps: Double
    /// [start, stop] of each frame in seconds, in float32 as decord computes them (see `MediaReader.timeline`).
    public var starts: [Float]
    public var stops: [Float]
    public var frameCount: Int { starts.count }

    public init(width: Int, height: Int, fps: Double, starts: [Float], stops: [Float]) {
        self.width = width; self.height = height; self.fps = fps; self.starts = starts; self.stops = stops
    }

    /// A constant-rate timeline of `frames` frames at `fps` with a time base of 1/`timeBase` (an MP4 written by ffmpeg
    /// at 30 fps has 1/15360: frame i starts at pts 512 i), computed with decord's float32 arithmetic.
    public static func constantRate(frames: Int, fps: Int, timeBase: Int, width: Int, height: Int) -> VideoTimeline {
        let step = Int64(timeBase / fps)
        let packets = (0..<frames).map { (pts: Int64($0) * step, duration: step) }
        return decordTimeline(packets: packets, startPTS: 0, timeBase: (1, timeBase), fps: Double(fps), width: width, height: height)
    }

    /// decord's `IndexKeyframes`: packets sorted by pts; start = (pts - start_time) * time_base and
    /// stop = (pts + duration - start_time) * time_base, where pts (and pts + duration) is converted to float32, the
    /// stream's start_time is a float32, the difference is float32, the product with the double time base is rounded
    /// to float32.
    static func decordTimeline(packets: [(pts: Int64, duration: Int64)], startPTS: Int64, timeBase: (Int, Int), fps: Double,
                               width: Int, height: Int) -> VideoTimeline {
        let sorted = packets.sorted { $0.pts < $1.pts }
        let factor = timeBase.0 == 0 || timeBase.1 == 0 ? 0 : Double(timeBase.0) / Double(timeBase.1)
        let startSec = Float(startPTS)
        let starts = sorted.map { Float(Double(Float($0.pts) - startSec) * factor) }
        let stops = sorted.map { Float(Double(Float($0.pts + $0.duration) - startSec) * factor) }
        return VideoTimeline(width: width, height: height, fps: fps, starts: starts, stops: stops)
    }
}

/// The frame ids and output size the official `VaceVideoProcessor` picks for a video.
public struct VACEVideoPlan: Sendable, Equatable {
    /// Indices into the video's frames (sorted by pts), one per output frame; repeats are possible.
    public var frameIDs: [Int]
    public var height: Int
    public var width: Int
    /// The frame rate the processor reports (keep_last: frames / duration); the official VACE code does not use it
    /// (the output is written at 16 fps).
    public var fps: Double
    public var frames: Int { frameIDs.count }
}

/// The official `VaceVideoProcessor` (wan/utils/vace_processor.py) as `WanVace` configures it: downsample
/// (4, 16, 16) = vae_stride x patch_size, min_area = max_area = the generation's area, zero_start, keep_last, and
/// `seq_len` 32760 at 832x480 or 75600 at 1280x720 (`prepare_source`).
public enum VACEVideoProcessor {
    public static let temporalDownsample = 4
    public static let spatialDownsample = 16

    /// The token budget `prepare_source` sets: 32760 for 832*480, 75600 for 1280*720, i.e. the 21 latent frames of
    /// 81 frames times the area's tokens. The official code refuses other areas; WanKit extends the same rule
    /// (21 * area / 256) to them.
    public static func sequenceLength(area: Int) -> Int { 21 * area / (spatialDownsample * spatialDownsample) }

    /// `_get_frameid_bbox_adjust_last` (keep_last=True, the mode `WanVace` uses), crop box None:
    ///
    ///     area_z = min(seq_len, max_area / 256, (h // 16) * (w // 16))
    ///     of = min((len - 1) // 4 + 1, int(seq_len / area_z))          latent frames
    ///     target_area_z = min(area_z, int(seq_len / of))
    ///     oh = round(sqrt(target_area_z * h / w)); ow = int(target_area_z / oh)
    ///     frames = (of - 1) * 4 + 1, size (16 oh, 16 ow)
    ///     timestamps = np.linspace(0, duration, frames), duration = mean(last frame's [start, stop]) (float32)
    ///     frame id = the first frame with start <= t <= stop (argmax of a boolean row: 0 when none)
    ///
    /// The whole clip is resampled to `frames` frames (its fps plays no part). `latentFrames` (WanKit's --frames)
    /// replaces `of`; it must not exceed what the video holds.
    public static func keepLastPlan(_ v: VideoTimeline, maxArea: Int, sequenceLength seqLen: Int,
                                    latentFrames: Int? = nil) throws -> VACEVideoPlan {
        let (df, ds) = (temporalDownsample, spatialDownsample)
        guard v.frameCount > 0 else { throw GenerationError.invalidSettings("the video has no frames") }
        let areaZ = try latentArea(v, maxArea: maxArea, seqLen: seqLen)
        let available = (v.frameCount - 1) / df + 1
        let (frames, oh, ow) = try latentShape(v, areaZ: areaZ, seqLen: seqLen, available: available, latentFrames: latentFrames) {
            "the video has \(v.frameCount) frames; \(($0 - 1) * df + 1) are needed: pass --frames \((available - 1) * df + 1) or fewer (4n+1), or leave --frames out"
        }
        let duration = (v.starts[v.frameCount - 1] + v.stops[v.frameCount - 1]) / 2
        let ids = linspace(Double(duration), count: frames).map { t in
            (0..<v.frameCount).first { t >= Double(v.starts[$0]) && t <= Double(v.stops[$0]) } ?? 0
        }
        return VACEVideoPlan(frameIDs: ids, height: oh * ds, width: ow * ds, fps: Double(frames) / Double(duration))
    }

    /// `_get_frameid_bbox_default` (keep_last=False, zero_start=True), which the processor also has: the clip is
    /// read at min(fps, maxFPS) from its start, (int(duration * fps) - 1) // 4 + 1 latent frames at most, frame id =
    /// the frame with start <= t < stop. `WanVace` does not use it; it is here for callers that want the source's
    /// speed kept (a 30 fps video read at 16 fps).
    public static func fixedRatePlan(_ v: VideoTimeline, maxArea: Int, sequenceLength seqLen: Int, maxFPS: Double = 16,
                                     latentFrames: Int? = nil) throws -> VACEVideoPlan {
        let (df, ds) = (temporalDownsample, spatialDownsample)
        guard v.frameCount > 0 else { throw GenerationError.invalidSettings("the video has no frames") }
        let targetFPS = min(v.fps, maxFPS)
        let duration = (v.starts[v.frameCount - 1] + v.stops[v.frameCount - 1]) / 2
        let areaZ = try latentArea(v, maxArea: maxArea, seqLen: seqLen)
        // int(duration * target_fps) in float32 (numpy scalar arithmetic), then Python's floor division.
        let covered = Int(duration * Float(targetFPS))
        let available = covered >= 1 ? (covered - 1) / df + 1 : 0
        guard available >= 1 else {
            throw GenerationError.invalidSettings("the video lasts \(duration) s: less than one frame at \(targetFPS) fps")
        }
        let (frames, oh, ow) = try latentShape(v, areaZ: areaZ, seqLen: seqLen, available: available, latentFrames: latentFrames) {
            "the video gives \((available - 1) * df + 1) frames at \(targetFPS) fps; \(($0 - 1) * df + 1) are needed"
        }
        let ids = linspace(Double(frames) / targetFPS, count: frames).map { t in
            (0..<v.frameCount).first { t >= Double(v.starts[$0]) && t < Double(v.stops[$0]) } ?? 0
        }
        return VACEVideoPlan(frameIDs: ids, height: oh * ds, width: ow * ds, fps: targetFPS)
    }

    /// area_z = min(seq_len, max_area / (dh * dw), (h // dh) * (w // dw)) as a Python float.
    static func latentArea(_ v: VideoTimeline, maxArea: Int, seqLen: Int) throws -> Double {
        let ds = spatialDownsample
        let areaZ = min(Double(seqLen), Double(maxArea) / Double(ds * ds), Double((v.height / ds) * (v.width / ds)))
        guard areaZ > 0 else {
            throw GenerationError.invalidSettings("the video is \(v.width)x\(v.height); sides of at least \(ds) pixels are needed")
        }
        return areaZ
    }

    /// of = min(available, int(seq_len / area_z)) latent frames, or `latentFrames` when given (refused with
    /// `tooMany(latentFrames)` beyond `available`); the frame count (of - 1) * 4 + 1 and the latent size for it.
    static func latentShape(_ v: VideoTimeline, areaZ: Double, seqLen: Int, available: Int, latentFrames: Int?,
                            tooMany: (Int) -> String) throws -> (frames: Int, oh: Int, ow: Int) {
        var of = min(available, Int(Double(seqLen) / areaZ))
        if let latentFrames {
            guard latentFrames <= available else { throw GenerationError.invalidSettings(tooMany(latentFrames)) }
            of = latentFrames
        }
        let (oh, ow) = try latentSize(v, areaZ: areaZ, seqLen: seqLen, latentFrames: of)
        return ((of - 1) * temporalDownsample + 1, oh, ow)
    }

    static func latentSize(_ v: VideoTimeline, areaZ: Double, seqLen: Int, latentFrames of: Int) throws -> (Int, Int) {
        let target = min(areaZ, Double(Int(Double(seqLen) / Double(of))))
        let ratio = Double(v.height) / Double(v.width)
        let oh = Int((target * ratio).squareRoot().rounded(.toNearestOrEven))
        guard oh > 0 else { throw GenerationError.invalidSettings("the video is \(v.width)x\(v.height): too wide for the model's size") }
        let ow = Int(target / Double(oh))
        guard ow > 0 else { throw GenerationError.invalidSettings("the video is \(v.width)x\(v.height): too tall for the model's size") }
        return (oh, ow)
    }

    /// numpy 1.x `np.linspace(0., stop, n)` in float64: k * (stop / (n - 1)), the last value exactly `stop`; [0]
    /// for n = 1.
    static func linspace(_ stop: Double, count n: Int) -> [Double] {
        guard n > 1 else { return n == 1 ? [0] : [] }
        let step = stop / Double(n - 1)
        return (0..<n).map { $0 == n - 1 ? stop : Double($0) * step }
    }
}

/// PyTorch's `F.interpolate(uint8 video, size, mode='bicubic', antialias=True)` on the CPU (torch >= 2.1, the
/// official requirement is 2.4): Keys' cubic with a = -0.5 widened by the scale when shrinking (PIL's filter
/// support), weights normalised in float64 then rounded to int16 at the largest precision under which the axis's
/// largest weight fits, the width resampled first, rounded ((sum + 2^(p-1)) >> p) and clamped to uint8, then the
/// height the same way; an axis whose size does not change is not resampled.
public enum AntialiasedBicubic {
    struct Axis {
        var first: [Int]
        var count: [Int]
        var weights: [Int32]   // [out][taps]
        var taps: Int
        var precision: Int
    }

    static func cubic(_ x: Double) -> Double {
        let a = -0.5, x = abs(x)
        if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
        if x < 2 { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
        return 0
    }

    /// `_compute_indices_min_size_weights_aa` + `_compute_index_ranges_int16_weights` for one axis.
    static func axis(input: Int, output: Int) -> Axis {
        let scale = Double(input) / Double(output)
        let support = scale >= 1 ? 2 * scale : 2
        let taps = Int(support.rounded(.up)) * 2 + 1
        let invscale = scale >= 1 ? 1 / scale : 1
        var first = [Int](repeating: 0, count: output), count = [Int](repeating: 0, count: output)
        var real = [Double](repeating: 0, count: output * taps)
        var wtMax = 0.0
        for i in 0..<output {
            let center = scale * (Double(i) + 0.5)
            let xmin = max(Int(center - support + 0.5), 0)
            let xsize = min(max(min(Int(center + support + 0.5), input) - xmin, 0), taps)
            var total = 0.0
            for j in 0..<xsize {
                let w = cubic((Double(j + xmin) - center + 0.5) * invscale)
                real[i * taps + j] = w
                total += w
            }
            if total != 0 {
                for j in 0..<xsize {
                    real[i * taps + j] /= total
                    wtMax = max(wtMax, real[i * taps + j])
                }
            }
            first[i] = xmin; count[i] = xsize
        }
        var precision = 0
        while precision < 22 {
            if Int(0.5 + wtMax * Double(1 << (precision + 1))) >= (1 << 15) { break }
            precision += 1
        }
        let weights = real.map { r -> Int32 in
            let v = r * Double(1 << precision)
            return Int32(truncatingIfNeeded: Int(v < 0 ? -0.5 + v : 0.5 + v))
        }
        return Axis(first: first, count: count, weights: weights.map { Int32(Int16(truncatingIfNeeded: $0)) }, taps: taps, precision: precision)
    }

    @inline(__always) static func clampByte(_ acc: Int32, _ precision: Int) -> UInt8 {
        UInt8(clamping: min(max(acc >> Int32(precision), 0), 255))
    }

    /// Resizes interleaved RGB bytes [h, w, 3] to [toHeight, toWidth, 3].
    public static func resize(_ pixels: [UInt8], height h: Int, width w: Int, toHeight oh: Int, toWidth ow: Int) -> [UInt8] {
        var src = pixels
        var (H, W) = (h, w)
        if ow != W {
            let ax = axis(input: W, output: ow)
            var dst = [UInt8](repeating: 0, count: H * ow * 3)
            let half = Int32(1) << Int32(max(ax.precision - 1, 0))
            src.withUnsafeBufferPointer { s in
                dst.withUnsafeMutableBufferPointer { d in
                    for y in 0..<H {
                        let row = y * W * 3
                        for x in 0..<ow {
                            var acc: (Int32, Int32, Int32) = (half, half, half)
                            let base = x * ax.taps
                            for j in 0..<ax.count[x] {
                                let k = ax.weights[base + j], p = row + (ax.first[x] + j) * 3
                                acc.0 += Int32(s[p]) * k; acc.1 += Int32(s[p + 1]) * k; acc.2 += Int32(s[p + 2]) * k
                            }
                            let o = (y * ow + x) * 3
                            d[o] = clampByte(acc.0, ax.precision); d[o + 1] = clampByte(acc.1, ax.precision); d[o + 2] = clampByte(acc.2, ax.precision)
                        }
                    }
                }
            }
            src = dst; W = ow
        }
        if oh != H {
            let ax = axis(input: H, output: oh)
            var dst = [UInt8](repeating: 0, count: oh * W * 3)
            let half = Int32(1) << Int32(max(ax.precision - 1, 0))
            src.withUnsafeBufferPointer { s in
                dst.withUnsafeMutableBufferPointer { d in
                    for y in 0..<oh {
                        let base = y * ax.taps
                        for i in 0..<(W * 3) {
                            var acc = half
                            for j in 0..<ax.count[y] { acc += Int32(s[(ax.first[y] + j) * W * 3 + i]) * ax.weights[base + j] }
                            d[y * W * 3 + i] = clampByte(acc, ax.precision)
                        }
                    }
                }
            }
            src = dst; H = oh
        }
        return src
    }
}

extension RGBImage {
    /// The official `VaceVideoProcessor.resize_crop` of one frame, still as bytes: scaled by
    /// max(width / W, height / H) to (round(scale * H), round(scale * W)) with `AntialiasedBicubic`, then centre-cropped
    /// at ((W' - width) // 2, (H' - height) // 2).
    public func resizedCropped(height oh: Int, width ow: Int) throws -> RGBImage {
        if height == oh && width == ow { return self }
        let scale = max(Double(ow) / Double(width), Double(oh) / Double(height))
        let rh = Int((scale * Double(height)).rounded(.toNearestOrEven)), rw = Int((scale * Double(width)).rounded(.toNearestOrEven))
        let resized = AntialiasedBicubic.resize(pixels, height: height, width: width, toHeight: rh, toWidth: rw)
        let (y1, x1) = ((rh - oh) / 2, (rw - ow) / 2)
        var out = [UInt8](repeating: 0, count: oh * ow * 3)
        for y in 0..<oh {
            let s = ((y1 + y) * rw + x1) * 3
            out.replaceSubrange((y * ow * 3)..<((y + 1) * ow * 3), with: resized[s..<(s + ow * 3)])
        }
        return try RGBImage(width: ow, height: oh, pixels: out)
    }
}

/// A source video (and its mask video) as the official `WanVace.prepare_source` reads them: the timeline probed,
/// the frame ids and size picked by `VACEVideoProcessor.keepLastPlan` (`plan`, cheap: no frame is decoded), then
/// only those frames decoded (`read`). The frames stay at the source's size; `RGBVideo.tensor(frames:height:width:)`
/// resizes and crops them as `resize_crop` does.
public struct SourceVideo: Sendable {
    public var path: String
    public var maskPath: String?
    public var timeline: VideoTimeline
    /// The mask video's size (it is read at its own size and resized like the source).
    public var maskSize: (width: Int, height: Int)?
    /// Frames the plan draws from: the shorter of the video and the mask (official `load_video_batch`).
    public var usableFrames: Int
    public var plan: VACEVideoPlan
    /// The generation's size and frame count (the plan's, or the caller's overrides).
    public var width: Int
    public var height: Int
    public var frames: Int { plan.frames }
    public var sizeFromVideo: Bool
    public var framesFromVideo: Bool
    /// The area that bounds the picked size (--size's, or `defaultArea`).
    public var area: Int

    /// The area used when no size is given: 832x480 (Wan2.1's 480P).
    public static let defaultArea = 832 * 480

    /// Plans `video` (and `mask`): `size` (width, height) replaces the picked size (the frames are resized and
    /// cropped to it; its area also sets the budget), `frames` (4n+1) the picked count (the whole clip is then sampled
    /// at that many frames, keep_last; a video with fewer frames is an error naming the count that fits). Without
    /// them the official rule decides both from the video and `area`. A mask is read as the official
    /// `load_video_batch` reads a pair: the frames are drawn from the shorter of the two (on the source's timeline),
    /// the same frame ids are taken from both, and each is resized and cropped to the size from its own size.
    public static func plan(video path: String, mask maskPath: String? = nil, size: (width: Int, height: Int)? = nil,
                            frames: Int? = nil, area: Int = defaultArea) throws -> SourceVideo {
        let timeline = try MediaReader.timeline(path)
        var usable = timeline
        var maskSize: (width: Int, height: Int)? = nil
        if let maskPath {
            let m = try MediaReader.timeline(maskPath)
            maskSize = (m.width, m.height)
            let length = min(m.frameCount, timeline.frameCount)
            usable = VideoTimeline(width: timeline.width, height: timeline.height, fps: timeline.fps,
                                   starts: Array(timeline.starts.prefix(length)), stops: Array(timeline.stops.prefix(length)))
        }
        let area = size.map { $0.width * $0.height } ?? area
        let df = VACEVideoProcessor.temporalDownsample
        if let frames, frames < 1 || (frames - 1) % df != 0 {
            throw GenerationError.invalidSettings("frames must be 4n+1 (1, 5, …, 81), got \(frames)")
        }
        let plan = try VACEVideoProcessor.keepLastPlan(usable, maxArea: area, sequenceLength: VACEVideoProcessor.sequenceLength(area: area),
                                                       latentFrames: frames.map { ($0 - 1) / df + 1 })
        return SourceVideo(path: path, maskPath: maskPath, timeline: timeline, maskSize: maskSize, usableFrames: usable.frameCount, plan: plan,
                           width: size?.width ?? plan.width, height: size?.height ?? plan.height,
                           sizeFromVideo: size == nil, framesFromVideo: frames == nil, area: area)
    }

    /// Decodes the planned frames of the video (and the mask), each at its own size.
    public func read() throws -> (video: RGBVideo, mask: RGBVideo?) {
        let video = try MediaReader.video(path, frameIDs: plan.frameIDs, width: timeline.width, height: timeline.height)
        let mask = try maskPath.map { p -> RGBVideo in
            let size = maskSize ?? (timeline.width, timeline.height)
            return try MediaReader.video(p, frameIDs: plan.frameIDs, width: size.width, height: size.height)
        }
        return (video, mask)
    }

    /// One line for the progress output: what was read and what was chosen.
    public var summary: String {
        let ids = plan.frameIDs
        let shown = ids.count <= 8 ? ids.map(String.init).joined(separator: ", ")
            : (ids.prefix(4).map(String.init) + ["…"] + ids.suffix(3).map(String.init)).joined(separator: ", ")
        let fps = timeline.fps.isFinite && timeline.fps > 0 ? String(format: " at %.4g fps", timeline.fps) : ""
        var maskNote = ""
        if let maskSize, maskSize != (timeline.width, timeline.height) || usableFrames < timeline.frameCount {
            maskNote = " (mask \(maskSize.width)x\(maskSize.height)" + (usableFrames < timeline.frameCount ? ", \(usableFrames) frames: the shorter length is used" : "") + ")"
        }
        return "source video: \(timeline.frameCount) frames of \(timeline.width)x\(timeline.height)\(fps)\(maskNote) → \(frames) frames "
            + "(\(framesFromVideo ? "from the video's length" : "--frames"); frame ids \(shown)) at \(width)x\(height) "
            + "(\(sizeFromVideo ? "from the video's aspect within an area of \(area) pixels" : "--size"))"
    }
}

extension MediaReader {
    /// The first video stream's size, avg_frame_rate and packet timeline (decord's numbers: see
    /// `VideoTimeline.decordTimeline`). A packet without a duration (or 0) takes the gap to the next pts, the last
    /// one 1 / fps (decord would give it an empty [start, start] interval).
    public static func timeline(_ path: String) throws -> VideoTimeline {
        let (w, h, _) = try probe(path, countFrames: false)
        guard let ffprobe = which("ffprobe") else { throw MediaError.ffmpegMissing }
        let r = try run(ffprobe, ["-v", "error", "-select_streams", "v:0", "-show_entries",
                                  "stream=avg_frame_rate,time_base,start_pts:packet=pts,duration", "-of", "json", path])
        guard r.status == 0, let json = try? JSONSerialization.jsonObject(with: r.stdout) as? [String: Any] else {
            throw MediaInputError.unreadable(path: path, detail: String(decoding: r.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let stream = (json["streams"] as? [[String: Any]])?.first ?? [:]
        func rational(_ s: Any?) -> (Int, Int)? {
            guard let s = s as? String else { return nil }
            let p = s.split(separator: "/").compactMap { Int($0) }
            return p.count == 2 ? (p[0], p[1]) : nil
        }
        func integer(_ v: Any?) -> Int64? {
            if let n = v as? NSNumber { return n.int64Value }
            if let s = v as? String { return Int64(s) }
            return nil
        }
        let rate = rational(stream["avg_frame_rate"]).map { $0.1 == 0 ? 0 : Double($0.0) / Double($0.1) } ?? 0
        let timeBase = rational(stream["time_base"]) ?? (1, 1)
        let startPTS = integer(stream["start_pts"]) ?? 0
        let raw = (json["packets"] as? [[String: Any]] ?? []).map { (pts: integer($0["pts"]), duration: integer($0["duration"])) }
        guard !raw.isEmpty else { throw MediaInputError.empty(path) }
        // Without pts (raw streams) the packets are numbered at the frame rate.
        let perFrame: Int64 = rate > 0 && timeBase.0 > 0 ? Int64((Double(timeBase.1) / Double(timeBase.0) / rate).rounded()) : 1
        var packets = raw.enumerated().map { (i, p) in (pts: p.pts ?? Int64(i) * perFrame, duration: p.duration ?? 0) }
        packets.sort { $0.pts < $1.pts }
        for i in packets.indices where packets[i].duration <= 0 {
            packets[i].duration = i + 1 < packets.count ? max(packets[i + 1].pts - packets[i].pts, 0) : max(perFrame, 1)
        }
        return VideoTimeline.decordTimeline(packets: packets, startPTS: startPTS, timeBase: timeBase, fps: rate, width: w, height: h)
    }

    /// The frames with the given indices (in presentation order; repeats allowed), decoding up to the last one and
    /// keeping only those, so a long video's other frames are never held.
    public static func video(_ path: String, frameIDs: [Int], width w: Int, height h: Int) throws -> RGBVideo {
        guard let last = frameIDs.max(), frameIDs.allSatisfy({ $0 >= 0 }) else { throw MediaInputError.empty(path) }
        let wanted = Set(frameIDs)
        guard wanted.count <= maximumVideoBytes / (w * h * 3) else { throw MediaInputError.tooLong(path: path, frames: wanted.count, width: w, height: h) }
        guard let ffmpeg = which("ffmpeg") else { throw MediaError.ffmpegMissing }
        let frameBytes = w * h * 3
        var kept: [Int: RGBImage] = [:]
        var index = 0
        let status = try stream(ffmpeg, ["-v", "error", "-i", path, "-map", "0:v:0", "-vsync", "passthrough", "-frames:v", "\(last + 1)",
                                         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], chunk: frameBytes) { bytes in
            if wanted.contains(index) { kept[index] = try RGBImage(width: w, height: h, pixels: bytes) }
            index += 1
        }
        guard status == 0, index > last else {
            throw MediaInputError.unreadable(path: path, detail: "ffmpeg decoded \(index) frames of \(w)x\(h); frame \(last) is needed")
        }
        return try RGBVideo(frames: frameIDs.map { kept[$0]! })
    }

    /// Runs a tool and hands its standard output to `body` in pieces of exactly `chunk` bytes (a short tail is
    /// dropped); standard error is drained alongside. Gives the exit status.
    static func stream(_ tool: String, _ args: [String], chunk: Int, _ body: ([UInt8]) throws -> Void) throws -> Int32 {
        let (reader, finish) = try launch(tool, args)
        var buffer = [UInt8]()
        buffer.reserveCapacity(chunk)
        var failure: Error? = nil
        while true {
            let data = reader.readData(ofLength: chunk - buffer.count)
            if data.isEmpty { break }
            buffer.append(contentsOf: data)
            if buffer.count == chunk {
                if failure == nil {
                    do { try body(buffer) } catch { failure = error }
                }
                buffer.removeAll(keepingCapacity: true)
            }
        }
        let status = finish().status
        if let failure { throw failure }
        return status
    }
}
