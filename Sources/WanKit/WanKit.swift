@_exported import WanTensor
@_exported import WanWeights
@_exported import WanModels
