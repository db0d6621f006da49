// CPU kernels written with x86 intrinsics where Swift's vectorised loops fall short: compiled per function for the
// instruction set they need (`target` attributes) and chosen at run time by the caller, so the package still builds
// and runs for x86-64-v3.
#ifndef CWANCPU_H
#define CWANCPU_H
#include <stdint.h>

/// Whether this CPU runs `wk_softmax_tile_bf16` (AVX-512F/BW/VL and AVX512-BF16, as on Zen 4 and Sapphire Rapids).
int wk_has_avx512_bf16(void);

/// One tile step of an online softmax for bf16 attention. For each of `rows` rows of float32 scores `s` (rows
/// `ld_s` apart, `n` keys): t_j = scale * s_j (+ bias[j] when `bias` is not NULL); m' = max(run_max[r], max_j t_j);
/// p_j = exp(t_j - m') rounded to bf16 into `probs` (rows `ld_p` apart); alpha[r] = exp(run_max[r] - m') (0 when
/// run_max was -inf); run_sum[r] = run_sum[r] * alpha[r] + sum_j exp(t_j - m') (the unrounded values); run_max[r] = m'.
/// Needs `wk_has_avx512_bf16()`.
void wk_softmax_tile_bf16(float *s, int ld_s, int rows, int n, float scale, const float *bias,
                          float *run_max, float *run_sum, float *alpha, uint16_t *probs, int ld_p);
#endif
