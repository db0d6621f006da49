@_exported import WanTensor
@_exported import WanWeights
@_exported import WanModels
@_exported import WanSampling
@_exported import WanText
@_exported import WanCUDA
