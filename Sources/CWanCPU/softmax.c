// The online-softmax step of the CPU's bf16 attention (see CWanCPU.h), 16 lanes wide with AVX-512: a max pass and an
// exp / sum / bf16-pack pass per row. exp is the engine's Cephes-style polynomial (WanTensor's fastExp: the same
// clamp, range reduction and degree-6 coefficients), here with fused multiply-adds and scalef for the 2^n.
#include "CWanCPU.h"
#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

int wk_has_avx512_bf16(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bf16");
}

AVX512_BF16 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

AVX512_BF16 void wk_softmax_tile_bf16(float *s, int ld_s, int rows, int n, float scale, const float *bias,
                                      float *run_max, float *run_sum, float *alpha, uint16_t *probs, int ld_p) {
    const __m512 vscale = _mm512_set1_ps(scale);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < rows; r++) {
        float *row = s + (long)r * ld_s;
        uint16_t *out = probs + (long)r * ld_p;
        // Pass 1: t = scale * s (+ bias), kept in place when there is a bias; its maximum.
        __m512 vmax = ninf;
        for (int j = 0; j < n; j += 16) {
            const __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
            __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), vscale);
            if (bias) {
                t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(m, bias + j));
                _mm512_mask_storeu_ps(row + j, m, t);
            }
            vmax = _mm512_mask_max_ps(vmax, m, vmax, t);
        }
        const float tileMax = _mm512_reduce_max_ps(vmax);
        const float previous = run_max[r];
        const float newMax = previous > tileMax ? previous : tileMax;
        // Pass 2: p = exp(t - max), its sum, p as bf16.
        const __m512 f = bias ? _mm512_set1_ps(1.0f) : vscale;
        const __m512 shift = _mm512_set1_ps(newMax);
        __m512 vsum = _mm512_setzero_ps();
        for (int j = 0; j < n; j += 16) {
            const __mmask16 m = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
            const __m512 e = exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, row + j), f, shift));
            vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
            const __m256bh packed = _mm512_cvtneps_pbh(e);
            _mm256_mask_storeu_epi16(out + j, m, (__m256i)packed);
        }
        const float sum = _mm512_reduce_add_ps(vsum);
        const float a = previous == -INFINITY ? 0.0f : expf(previous - newMax);
        alpha[r] = a;
        run_sum[r] = run_sum[r] * a + sum;
        run_max[r] = newMax;
    }
}

#else
// Other architectures: no such kernel; the caller runs its portable loops.
int wk_has_avx512_bf16(void) { return 0; }
void wk_softmax_tile_bf16(float *s, int ld_s, int rows, int n, float scale, const float *bias,
                          float *run_max, float *run_sum, float *alpha, uint16_t *probs, int ld_p) {
    (void)s; (void)ld_s; (void)rows; (void)n; (void)scale; (void)bias; (void)run_max; (void)run_sum; (void)alpha; (void)probs;
    (void)ld_p;
}
#endif
