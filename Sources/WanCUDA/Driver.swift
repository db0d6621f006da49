import Foundation

// The CUDA driver API (libcuda.so.1), declared here as C function-pointer types: only the entry points used.
// Types as in cuda.h: CUresult and CUdevice are int, CUdeviceptr is a 64-bit integer, handles are pointers.
typealias CUresult = Int32
typealias CUdevice = Int32
typealias CUdeviceptr = UInt64
typealias CUhandle = OpaquePointer  // CUcontext, CUmodule, CUfunction, CUstream

private typealias cuInit_t = @convention(c) (UInt32) -> CUresult
private typealias cuDriverGetVersion_t = @convention(c) (UnsafeMutablePointer<Int32>) -> CUresult
private typealias cuDeviceGetCount_t = @convention(c) (UnsafeMutablePointer<Int32>) -> CUresult
private typealias cuDeviceGet_t = @convention(c) (UnsafeMutablePointer<CUdevice>, Int32) -> CUresult
private typealias cuDeviceGetName_t = @convention(c) (UnsafeMutablePointer<CChar>, Int32, CUdevice) -> CUresult
private typealias cuDeviceGetAttribute_t = @convention(c) (UnsafeMutablePointer<Int32>, Int32, CUdevice) -> CUresult
private typealias cuDeviceTotalMem_t = @convention(c) (UnsafeMutablePointer<Int>, CUdevice) -> CUresult
private typealias cuDevicePrimaryCtxRetain_t = @convention(c) (UnsafeMutablePointer<CUhandle?>, CUdevice) -> CUresult
private typealias cuDevicePrimaryCtxRelease_t = @convention(c) (CUdevice) -> CUresult
private typealias cuCtxSetCurrent_t = @convention(c) (CUhandle?) -> CUresult
private typealias cuCtxSynchronize_t = @convention(c) () -> CUresult
private typealias cuMemGetInfo_t = @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> CUresult
private typealias cuMemAlloc_t = @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> CUresult
private typealias cuMemFree_t = @convention(c) (CUdeviceptr) -> CUresult
private typealias cuMemcpyHtoD_t = @convention(c) (CUdeviceptr, UnsafeRawPointer, Int) -> CUresult
private typealias cuMemcpyDtoH_t = @convention(c) (UnsafeMutableRawPointer, CUdeviceptr, Int) -> CUresult
private typealias cuMemcpyDtoD_t = @convention(c) (CUdeviceptr, CUdeviceptr, Int) -> CUresult
private typealias cuModuleLoadData_t = @convention(c) (UnsafeMutablePointer<CUhandle?>, UnsafeRawPointer) -> CUresult
private typealias cuModuleUnload_t = @convention(c) (CUhandle) -> CUresult
private typealias cuModuleGetFunction_t = @convention(c) (UnsafeMutablePointer<CUhandle?>, CUhandle, UnsafePointer<CChar>) -> CUresult
private typealias cuFuncSetAttribute_t = @convention(c) (CUhandle, Int32, Int32) -> CUresult
private typealias cuLaunchKernel_t = @convention(c) (
    CUhandle, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, CUhandle?,
    UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> CUresult
private typealias cuGetErrorString_t = @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> CUresult

// CUdevice_attribute values (cuda.h).
private let CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: Int32 = 16
private let CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: Int32 = 75
private let CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: Int32 = 76
private let CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: Int32 = 97
// CUfunction_attribute
private let CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: Int32 = 8
// CUresult values this code tells apart.
private let CUDA_SUCCESS: CUresult = 0
private let CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2
private let CUDA_ERROR_INSUFFICIENT_DRIVER: CUresult = 35
private let CUDA_ERROR_NO_DEVICE: CUresult = 100

/// One GPU as the driver describes it.
public struct GPUInfo: Codable, Sendable, Equatable {
    public var ordinal: Int
    public var name: String
    public var computeCapabilityMajor: Int
    public var computeCapabilityMinor: Int
    public var totalMemory: Int
    public var multiprocessors: Int
    public var maxSharedMemoryPerBlock: Int
    /// "8.0", "9.0", ...
    public var computeCapability: String { "\(computeCapabilityMajor).\(computeCapabilityMinor)" }
    /// The NVRTC target: "sm_80", "sm_90", ...
    public var architecture: String { "sm_\(computeCapabilityMajor)\(computeCapabilityMinor)" }
    /// bf16 tensor cores (mma.sync m16n8k16) arrived with compute capability 8.0.
    public var isSupported: Bool { computeCapabilityMajor >= 8 }
}

/// The NVIDIA driver, loaded once per process. `CUDADriver.load()` opens libcuda.so.1, checks the version and runs
/// cuInit; every later use shares that instance.
public final class CUDADriver {
    /// The oldest driver the backend accepts (CUDA 12.0: every sm_80+ feature used here).
    public static let minimumVersion = CUDAVersion(major: 12, minor: 0)

    public let version: CUDAVersion
    /// The opened libcuda.so.1 (nil for the CPU emulator, `CUDAEmulator`).
    let library: DynamicLibrary?

    private let cuDeviceGetCount: cuDeviceGetCount_t
    private let cuDeviceGet: cuDeviceGet_t
    private let cuDeviceGetName: cuDeviceGetName_t
    private let cuDeviceGetAttribute: cuDeviceGetAttribute_t
    private let cuDeviceTotalMem: cuDeviceTotalMem_t
    fileprivate let cuDevicePrimaryCtxRetain: cuDevicePrimaryCtxRetain_t
    fileprivate let cuDevicePrimaryCtxRelease: cuDevicePrimaryCtxRelease_t
    fileprivate let cuCtxSetCurrent: cuCtxSetCurrent_t
    fileprivate let cuCtxSynchronize: cuCtxSynchronize_t
    fileprivate let cuMemGetInfo: cuMemGetInfo_t
    fileprivate let cuMemAlloc: cuMemAlloc_t
    fileprivate let cuMemFree: cuMemFree_t
    fileprivate let cuMemcpyHtoD: cuMemcpyHtoD_t
    fileprivate let cuMemcpyDtoH: cuMemcpyDtoH_t
    fileprivate let cuMemcpyDtoD: cuMemcpyDtoD_t
    fileprivate let cuModuleLoadData: cuModuleLoadData_t
    fileprivate let cuModuleUnload: cuModuleUnload_t
    fileprivate let cuModuleGetFunction: cuModuleGetFunction_t
    fileprivate let cuFuncSetAttribute: cuFuncSetAttribute_t
    fileprivate let cuLaunchKernel: cuLaunchKernel_t
    private let cuGetErrorString: cuGetErrorString_t

    private static let shared: Result<CUDADriver, CUDAError> = Result { try CUDADriver() }.mapError { $0 as! CUDAError }

    /// The process's driver (opened and initialised on first use), or the CPU emulator while one is installed.
    public static func load() throws -> CUDADriver {
        if let emulated = CUDAEmulator.activeDriver() { return emulated }
        return try shared.get()
    }

    private convenience init() throws {
        let env = ProcessInfo.processInfo.environment
        let candidates = [env["WANKIT_LIBCUDA"], "libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1",
                          "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/lib/wsl/lib/libcuda.so.1"]
            .compactMap { $0 }.filter { !$0.isEmpty }
        guard let library = DynamicLibrary.open(candidates).library else {
            throw CUDAError.libraryNotFound(library: "libcuda.so.1", why: "no NVIDIA driver is installed",
                                            fix: "run on the CPU with --device cpu")
        }
        try self.init(library: library) { library.symbol($0, as: UnsafeMutableRawPointer.self) }
    }

    /// A driver whose entry points `resolve` gives by name (dlsym on libcuda.so.1, or the emulator's functions).
    init(library: DynamicLibrary?, resolve: (String) -> UnsafeMutableRawPointer?) throws {
        self.library = library
        func sym<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let f = resolve(name) else { throw CUDAError.missingSymbol(library: "libcuda.so.1", symbol: name) }
            return unsafeBitCast(f, to: type)
        }
        let cuInit = try sym("cuInit", cuInit_t.self)
        let cuDriverGetVersion = try sym("cuDriverGetVersion", cuDriverGetVersion_t.self)
        cuDeviceGetCount = try sym("cuDeviceGetCount", cuDeviceGetCount_t.self)
        cuDeviceGet = try sym("cuDeviceGet", cuDeviceGet_t.self)
        cuDeviceGetName = try sym("cuDeviceGetName", cuDeviceGetName_t.self)
        cuDeviceGetAttribute = try sym("cuDeviceGetAttribute", cuDeviceGetAttribute_t.self)
        cuDeviceTotalMem = try sym("cuDeviceTotalMem_v2", cuDeviceTotalMem_t.self)
        cuDevicePrimaryCtxRetain = try sym("cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain_t.self)
        cuDevicePrimaryCtxRelease = try sym("cuDevicePrimaryCtxRelease_v2", cuDevicePrimaryCtxRelease_t.self)
        cuCtxSetCurrent = try sym("cuCtxSetCurrent", cuCtxSetCurrent_t.self)
        cuCtxSynchronize = try sym("cuCtxSynchronize", cuCtxSynchronize_t.self)
        cuMemGetInfo = try sym("cuMemGetInfo_v2", cuMemGetInfo_t.self)
        cuMemAlloc = try sym("cuMemAlloc_v2", cuMemAlloc_t.self)
        cuMemFree = try sym("cuMemFree_v2", cuMemFree_t.self)
        cuMemcpyHtoD = try sym("cuMemcpyHtoD_v2", cuMemcpyHtoD_t.self)
        cuMemcpyDtoH = try sym("cuMemcpyDtoH_v2", cuMemcpyDtoH_t.self)
        cuMemcpyDtoD = try sym("cuMemcpyDtoD_v2", cuMemcpyDtoD_t.self)
        cuModuleLoadData = try sym("cuModuleLoadData", cuModuleLoadData_t.self)
        cuModuleUnload = try sym("cuModuleUnload", cuModuleUnload_t.self)
        cuModuleGetFunction = try sym("cuModuleGetFunction", cuModuleGetFunction_t.self)
        cuFuncSetAttribute = try sym("cuFuncSetAttribute", cuFuncSetAttribute_t.self)
        cuLaunchKernel = try sym("cuLaunchKernel", cuLaunchKernel_t.self)
        cuGetErrorString = try sym("cuGetErrorString", cuGetErrorString_t.self)

        var encoded: Int32 = 0
        if cuDriverGetVersion(&encoded) != CUDA_SUCCESS {
            throw CUDAError.callFailed(call: "cuDriverGetVersion", code: -1, message: "the driver did not report its version; reinstall the NVIDIA driver")
        }
        version = CUDAVersion(encoded: Int(encoded))
        if version < CUDADriver.minimumVersion {
            throw CUDAError.driverTooOld(driver: version, needed: CUDADriver.minimumVersion, neededBy: "WanKit's CUDA backend")
        }
        let status = cuInit(0)
        if status == CUDA_ERROR_NO_DEVICE { throw CUDAError.noDevice }
        if status == CUDA_ERROR_INSUFFICIENT_DRIVER {
            throw CUDAError.driverTooOld(driver: version, needed: CUDADriver.minimumVersion, neededBy: "cuInit")
        }
        try check(status, "cuInit")
    }

    /// Throws `callFailed` with the driver's own message for a non-zero result.
    func check(_ status: CUresult, _ call: String) throws {
        guard status != CUDA_SUCCESS else { return }
        var text: UnsafePointer<CChar>? = nil
        let message = (cuGetErrorString(status, &text) == CUDA_SUCCESS && text != nil) ? String(cString: text!) : "unknown error"
        throw CUDAError.callFailed(call: call, code: Int(status), message: message)
    }

    public func deviceCount() throws -> Int {
        var count: Int32 = 0
        let status = cuDeviceGetCount(&count)
        if status == CUDA_ERROR_NO_DEVICE { return 0 }
        try check(status, "cuDeviceGetCount")
        return Int(count)
    }

    func handle(ordinal: Int) throws -> CUdevice {
        var device: CUdevice = 0
        try check(cuDeviceGet(&device, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        return device
    }

    /// Name, compute capability and memory of GPU `ordinal`.
    public func info(ordinal: Int) throws -> GPUInfo {
        let device = try handle(ordinal: ordinal)
        var name = [CChar](repeating: 0, count: 256)
        try check(cuDeviceGetName(&name, Int32(name.count), device), "cuDeviceGetName")
        func attribute(_ id: Int32, _ what: String) throws -> Int {
            var value: Int32 = 0
            try check(cuDeviceGetAttribute(&value, id, device), "cuDeviceGetAttribute(\(what))")
            return Int(value)
        }
        var total = 0
        try check(cuDeviceTotalMem(&total, device), "cuDeviceTotalMem_v2")
        return GPUInfo(ordinal: ordinal, name: String(cString: name),
                       computeCapabilityMajor: try attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability major"),
                       computeCapabilityMinor: try attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability minor"),
                       totalMemory: total,
                       multiprocessors: try attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count"),
                       maxSharedMemoryPerBlock: try attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "shared memory per block"))
    }

    /// Every GPU the driver sees.
    public func devices() throws -> [GPUInfo] {
        try (0..<deviceCount()).map { try info(ordinal: $0) }
    }
}

/// The primary context of one GPU, made current on the calling thread by each operation that needs it.
public final class CUDAContext {
    public let driver: CUDADriver
    public let info: GPUInfo
    private let device: CUdevice
    private let context: CUhandle

    public init(ordinal: Int = 0) throws {
        driver = try CUDADriver.load()
        guard try driver.deviceCount() > ordinal else { throw CUDAError.noDevice }
        info = try driver.info(ordinal: ordinal)
        device = try driver.handle(ordinal: ordinal)
        var context: CUhandle? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain")
        self.context = context!
        try makeCurrent()
    }

    deinit { _ = driver.cuDevicePrimaryCtxRelease(device) }

    /// Binds the context to the calling thread (the driver keeps the current context per thread).
    public func makeCurrent() throws {
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    }

    /// Free and total device memory in bytes.
    public func memoryInfo() throws -> (free: Int, total: Int) {
        try makeCurrent()
        var free = 0, total = 0
        try driver.check(driver.cuMemGetInfo(&free, &total), "cuMemGetInfo_v2")
        return (free, total)
    }

    /// `bytes` of device memory; an allocation that cannot fit says how much was needed and how much is free.
    public func allocate(bytes: Int) throws -> DeviceBuffer {
        try makeCurrent()
        var pointer: CUdeviceptr = 0
        let status = driver.cuMemAlloc(&pointer, max(bytes, 1))
        if status == CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = (try? memoryInfo()) ?? (0, info.totalMemory)
            throw CUDAError.outOfMemory(needed: bytes, free: free, total: total)
        }
        try driver.check(status, "cuMemAlloc_v2(\(bytes) bytes)")
        return DeviceBuffer(context: self, pointer: pointer, bytes: bytes)
    }

    /// Copies `bytes` from host memory to the device address `destination` (any address inside an allocation).
    public func copy(toDevice destination: UInt64, from source: UnsafeRawPointer, bytes: Int) throws {
        guard bytes > 0 else { return }
        try makeCurrent()
        try driver.check(driver.cuMemcpyHtoD(destination, source, bytes), "cuMemcpyHtoD_v2(\(bytes) bytes)")
    }

    /// Copies `bytes` from the device address `source` to host memory (waits for the work queued before it).
    public func copy(toHost destination: UnsafeMutableRawPointer, from source: UInt64, bytes: Int) throws {
        guard bytes > 0 else { return }
        try makeCurrent()
        try driver.check(driver.cuMemcpyDtoH(destination, source, bytes), "cuMemcpyDtoH_v2(\(bytes) bytes)")
    }

    /// Copies `bytes` between two device addresses.
    public func copy(onDevice destination: UInt64, from source: UInt64, bytes: Int) throws {
        guard bytes > 0 else { return }
        try makeCurrent()
        try driver.check(driver.cuMemcpyDtoD(destination, source, bytes), "cuMemcpyDtoD_v2(\(bytes) bytes)")
    }

    /// Waits for every launched kernel; errors of earlier asynchronous launches surface here.
    public func synchronize() throws {
        try makeCurrent()
        try driver.check(driver.cuCtxSynchronize(), "cuCtxSynchronize")
    }

    /// Loads a cubin (or PTX text, NUL-terminated) image.
    public func loadModule(image: [UInt8], name: String) throws -> CUDAModule {
        try makeCurrent()
        var module: CUhandle? = nil
        var bytes = image
        if bytes.last != 0 { bytes.append(0) }  // PTX must be NUL-terminated; a cubin ignores the extra byte
        let status = bytes.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress!) }
        try driver.check(status, "cuModuleLoadData(\(name))")
        return CUDAModule(context: self, module: module!, name: name)
    }

    fileprivate func launch(_ function: CUhandle, grid: (Int, Int, Int), block: (Int, Int, Int), sharedBytes: Int,
                            arguments: [KernelArgument], name: String) throws {
        try makeCurrent()
        // cuLaunchKernel takes an array of pointers, one to each argument's value.
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(arguments.count, 1) * 8, alignment: 8)
        defer { storage.deallocate() }
        var pointers: [UnsafeMutableRawPointer?] = []
        for (i, argument) in arguments.enumerated() {
            let slot = storage + i * 8
            switch argument {
            case .pointer(let value): slot.storeBytes(of: value, as: UInt64.self)
            case .buffer(let buffer): slot.storeBytes(of: buffer.pointer, as: UInt64.self)
            case .int32(let value): slot.storeBytes(of: value, as: Int32.self)
            case .int64(let value): slot.storeBytes(of: value, as: Int64.self)
            case .float(let value): slot.storeBytes(of: value, as: Float.self)
            }
            pointers.append(slot)
        }
        let status = pointers.withUnsafeMutableBufferPointer { params in
            driver.cuLaunchKernel(function, UInt32(grid.0), UInt32(grid.1), UInt32(grid.2),
                                  UInt32(block.0), UInt32(block.1), UInt32(block.2), UInt32(sharedBytes), nil,
                                  params.baseAddress, nil)
        }
        try driver.check(status, "cuLaunchKernel(\(name))")
    }
}

/// One argument of a kernel launch, passed by value as the kernel declares it.
public enum KernelArgument {
    case buffer(DeviceBuffer)
    case pointer(UInt64)
    case int32(Int32)
    /// A C `long` (64 bits on Linux x86-64 and aarch64, host and device alike).
    case int64(Int64)
    case float(Float)
}

/// Device memory, freed when the last reference goes.
public final class DeviceBuffer {
    public let context: CUDAContext
    public let pointer: UInt64
    public let bytes: Int

    init(context: CUDAContext, pointer: UInt64, bytes: Int) {
        self.context = context
        self.pointer = pointer
        self.bytes = bytes
    }

    deinit {
        try? context.makeCurrent()
        _ = context.driver.cuMemFree(pointer)
    }

    public func upload(_ source: UnsafeRawBufferPointer) throws {
        precondition(source.count <= bytes, "upload of \(source.count) bytes into a \(bytes)-byte buffer")
        try context.makeCurrent()
        try context.driver.check(context.driver.cuMemcpyHtoD(pointer, source.baseAddress!, source.count), "cuMemcpyHtoD_v2")
    }

    public func download(into destination: UnsafeMutableRawBufferPointer) throws {
        precondition(destination.count <= bytes, "download of \(destination.count) bytes from a \(bytes)-byte buffer")
        try context.makeCurrent()
        try context.driver.check(context.driver.cuMemcpyDtoH(destination.baseAddress!, pointer, destination.count), "cuMemcpyDtoH_v2")
    }

    public func upload<T>(_ values: [T]) throws { try values.withUnsafeBytes { try upload($0) } }

    public func download<T>(count: Int, as: T.Type) throws -> [T] {
        try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            try download(into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }
}

/// A loaded module (one compiled kernel file).
public final class CUDAModule {
    public let context: CUDAContext
    public let name: String
    private let module: CUhandle

    init(context: CUDAContext, module: CUhandle, name: String) {
        self.context = context
        self.module = module
        self.name = name
    }

    deinit { _ = context.driver.cuModuleUnload(module) }

    public func function(_ kernel: String) throws -> CUDAFunction {
        var function: CUhandle? = nil
        let status = kernel.withCString { context.driver.cuModuleGetFunction(&function, module, $0) }
        if status != CUDA_SUCCESS || function == nil { throw CUDAError.kernelNotFound(name: kernel, file: name) }
        return CUDAFunction(module: self, handle: function!, name: kernel)
    }
}

/// One kernel of a module.
public struct CUDAFunction {
    public let module: CUDAModule
    let handle: CUhandle
    public let name: String

    /// Allows `bytes` of dynamic shared memory (beyond the default 48 KiB needs this opt-in).
    public func allowSharedMemory(bytes: Int) throws {
        let driver = module.context.driver
        try driver.check(driver.cuFuncSetAttribute(handle, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, Int32(bytes)),
                         "cuFuncSetAttribute(\(name), max dynamic shared memory)")
    }

    /// Launches on the default stream (asynchronous; `CUDAContext.synchronize` waits).
    public func launch(grid: (Int, Int, Int), block: (Int, Int, Int), sharedBytes: Int = 0, _ arguments: [KernelArgument]) throws {
        try module.context.launch(handle, grid: grid, block: block, sharedBytes: sharedBytes, arguments: arguments, name: name)
    }
}
