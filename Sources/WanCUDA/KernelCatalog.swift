/// The kernels each file under Kernels/ defines (extern "C" names), so the host side and a test can check them.
public enum KernelCatalog {
    public static let kernels: [String: [String]] = [
        "norm.cu": ["rms_norm_f32", "rms_norm_bf16", "layer_norm_modulate_f32", "layer_norm_modulate_bf16"],
        "rope.cu": ["rope_3d_f32", "rope_3d_bf16"],
        "elementwise.cu": ["gelu_tanh_f32", "gelu_tanh_bf16", "silu_f32", "silu_bf16", "gated_residual_f32",
                           "gated_residual_bf16", "modulation_add_f32", "convert_f32_to_bf16", "convert_bf16_to_f32",
                           "gelu_erf_f32", "gelu_erf_bf16", "add_f32", "add_bf16", "bias_act_f32", "bias_act_bf16"],
        "dequant.cu": CompactWeightFormat.allCases.map(\.kernel),
        "fp8.cu": ["fp8_amax_bf16", "fp8_quantize_e4m3_bf16"],
        "vae.cu": ["vae_im2col_f32", "vae_im2col_bf16", "vae_rms_norm_f32", "vae_softmax_f32", "vae_conv_bf16"],
        "t5.cu": ["t5_attention_f32", "t5_attention_bf16", "t5_gelu_mul_f32", "t5_gelu_mul_bf16", "t5_flash_attention_bf16_d16",
                  "t5_flash_attention_bf16_d32", "t5_flash_attention_bf16_d64", "t5_flash_attention_bf16_d80"],
        "attention.cu": ["flash_attention_f32", "flash_attention_bf16_any", "flash_attention_bf16_d32", "flash_attention_bf16_d64", "flash_attention_bf16_d128"],
        "attention2.cu": ["flash_attention_bf16_v2_d64", "flash_attention_bf16_v2_d128"],
    ]
}
