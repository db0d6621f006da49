// 3-D rotary position embedding of the Wan DiT (rope_apply in the official wan/modules/model.py), in place on
// q or k laid out [B, L, heads, head_dim].
//
// Each head's head_dim values are head_dim/2 complex numbers (x[2j] + i x[2j+1]). With c = head_dim/2 pairs, the
// first c - 2*(c/3) pairs rotate by the frame index, the next c/3 by the row index, the last c/3 by the column index
// (for head_dim 128: 22 / 21 / 21). Pair k of a part with P pairs turns by pos * theta^(-2k / (2P)) radians, where
// pos is the token's index along that axis: the official table rope_params(1024, 2P). Token t of a sample with grid
// (f, h, w) sits at frame t / (h*w), row (t / w) % h, column t % w; tokens from f*h*w on (padding) are left as they
// are. As in the official code the angle, its sine/cosine and the rotation are computed in double precision.
//
// Launch: one thread per (sample, token, head, pair): grid-stride over B * L * heads * head_dim/2.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void rope_3d_body(T* x, const int* grid_sizes, int batch, int seq_len, int heads,
                                             int head_dim, float theta) {
    const int pairs = head_dim / 2;
    const int pairs_h = pairs / 3, pairs_w = pairs / 3;
    const int pairs_f = pairs - pairs_h - pairs_w;
    const long total = (long)batch * seq_len * heads * pairs;
    FOR_EACH_INDEX(i, total) {
        const int j = (int)(i % pairs);
        const long token_head = i / pairs;          // (b * seq_len + t) * heads + n
        const long token = token_head / heads;      // b * seq_len + t
        const int t = (int)(token % seq_len);
        const int b = (int)(token / seq_len);
        const int f = grid_sizes[3 * b], h = grid_sizes[3 * b + 1], w = grid_sizes[3 * b + 2];
        if (t >= f * h * w) continue;

        int pos, k, part_pairs;
        if (j < pairs_f) {
            pos = t / (h * w); k = j; part_pairs = pairs_f;
        } else if (j < pairs_f + pairs_h) {
            pos = (t / w) % h; k = j - pairs_f; part_pairs = pairs_h;
        } else {
            pos = t % w; k = j - pairs_f - pairs_h; part_pairs = pairs_w;
        }
        const double inv_freq = 1.0 / pow((double)theta, (double)(2 * k) / (double)(2 * part_pairs));
        double s, c;
        sincos((double)pos * inv_freq, &s, &c);

        const long at = token_head * head_dim + 2 * j;
        const double re = (double)load_float(x, at), im = (double)load_float(x, at + 1);
        store_float(x, at, (float)(re * c - im * s));
        store_float(x, at + 1, (float)(re * s + im * c));
    }
}

// grid_sizes: [B, 3] int32 (frames, height, width in patches), on the device. theta: 10000 for Wan.
extern "C" __global__ void rope_3d_f32(float* x, const int* grid_sizes, int batch, int seq_len, int heads,
                                       int head_dim, float theta) {
    rope_3d_body(x, grid_sizes, batch, seq_len, heads, head_dim, theta);
}

extern "C" __global__ void rope_3d_bf16(bf16* x, const int* grid_sizes, int batch, int seq_len, int heads,
                                        int head_dim, float theta) {
    rope_3d_body(x, grid_sizes, batch, seq_len, heads, head_dim, theta);
}
