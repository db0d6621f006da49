@_exported import WanTensor
@_exported import WanWeights
@_exported import WanModels
@_exported import WanSampling
@_exported import WanText
@_exported import WanCUDA

/// The release of this package: `wan --version`, and the generator recorded in every video's settings.
public enum WanKitVersion {
    public static let string = "0.9.0"
}
