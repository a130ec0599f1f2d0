// The compact Llama/Qwen2 decoder's forward over new tokens (prefill and decode steps) on CPU, in C++.
//
// Why: at rollout batch sizes a small model's decode step is ~100 tiny torch ops, and on
// CPU each op's Python + dispatch cost (5-10 us) outweighs its arithmetic. Here a step is
// one call: the weight matmuls go to oneDNN with weights packed once per weight load
// (AMX on bf16-capable Xeons), and everything between them (RMSNorm, RoPE, the KV-cache
// write, grouped-query attention over the cache, SiLU*up) is a handful of fused loops.
// The KV cache's layout inside each (row, head) block is this file's business (see the Kv
// policies): keys are stored so one vector op scores 16 slots, and on CPUs with AVX512-BF16
// a bf16 cache is stored in pairs so attention runs on vdpbf16ps (a third of the instructions).
//
// Numerics: norms, softmax and attention accumulate in fp32; every tensor the Python
// decoder rounds to the model dtype is rounded here at the same point (attention
// probabilities too, before they weigh the values; only the scores stay fp32), so fp32
// matches the Python path to float rounding and bf16 to bf16 rounding.
// Built with -march=native: pick ATen's vector width from what the compiler targets.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#endif
// AVX512-BF16 (Cooper Lake, Sapphire Rapids and later): bf16 dot products and one-instruction rounding.
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
#define BATON_AVX512_BF16
#include <immintrin.h>
#endif

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using at::Tensor;
using fVec = at::vec::Vectorized<float>;
constexpr int64_t kV = fVec::size();

// Work (elements) below which one thread does the whole loop: forking costs more than it saves.
constexpr int64_t kMinElementsPerTask = 16384;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(1, work_per_item));
}

// kV elements of T as fp32.
template <typename T>
inline fVec load_f(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    fVec out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

// kV fp32 lanes stored as T (round to nearest even).
template <typename T>
inline void store_t(T* p, const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, kV);
  }
}

// The value a T tensor would hold: identity for fp32, a round trip through T otherwise.
template <typename T>
inline fVec round_t(const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    alignas(64) T tmp[kV];
    store_t(tmp, v);
    return load_f(tmp);
  }
}

#ifdef BATON_AVX512_BF16
// vcvtneps2bf16 rounds to nearest even like c10::BFloat16 (it flushes fp32 denormals, which activations never are).
inline __m256i to_bf16_bits(const fVec& v) {
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
}

inline fVec from_bf16_bits(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

template <>
inline void store_t<c10::BFloat16>(c10::BFloat16* p, const fVec& v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16_bits(v));
}

template <>
inline fVec round_t<c10::BFloat16>(const fVec& v) {
  return from_bf16_bits(to_bf16_bits(v));
}
#endif

inline float sum_lanes(const fVec& v) {
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
}

// x[r] * rsqrt(mean(x[r]^2) + eps), scaled by w. fp32: one product (torch.rms_norm);
// bf16/fp16: normalise in fp32, round, then multiply by the weight in the model dtype (HF order).
// d is a multiple of kV (checked at construction).
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* out, int64_t rows, int64_t d, float eps) {
  at::parallel_for(0, rows, grain_for(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      T* o = out + r * d;
      fVec ss(0.f);
      for (int64_t i = 0; i < d; i += kV) {
        const fVec v = load_f(xr + i);
        ss = at::vec::fmadd(v, v, ss);
      }
      const fVec inv(1.f / std::sqrt(sum_lanes(ss) / static_cast<float>(d) + eps));
      for (int64_t i = 0; i < d; i += kV) {
        store_t(o + i, load_f(w + i) * round_t<T>(load_f(xr + i) * inv));
      }
    }
  });
}

// out[r, :I] = silu(gate) * up, with gate_up[r] = [gate | up] (rounded after silu, as F.silu then mul_).
template <typename T>
void silu_mul_rows(const T* gate_up, T* out, int64_t rows, int64_t inter) {
  const fVec one(1.f);
  at::parallel_for(0, rows, grain_for(inter), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = gate_up + r * 2 * inter;
      const T* u = g + inter;
      T* o = out + r * inter;
      for (int64_t i = 0; i < inter; i += kV) {
        const fVec gv = load_f(g + i);
        const fVec silu = round_t<T>(gv / (one + gv.neg().exp()));
        store_t(o + i, silu * load_f(u + i));
      }
    }
  });
}

// RoPE of one head into fp32: x*cos + rotate_half(x)*sin, with the sign folded into `sin_signed`
// (rotate_half(x)[i] = x[(i + hd/2) mod hd]). Rounded like the Python path: x*cos, then the addcmul.
template <typename T>
inline void rope_head(const T* x, const T* cos, const T* sin_signed, float* out, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < hd; i += kV) {
    const int64_t j = i < half ? i + half : i - half;
    const fVec xc = round_t<T>(load_f(x + i) * load_f(cos + i));
    round_t<T>(at::vec::fmadd(load_f(x + j), load_f(sin_signed + i), xc)).store(out + i);
  }
}

struct AttentionShape {
  int64_t rows, q_len, q_heads, kv_heads, head_dim, max_len, first_slot;
};

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGroup = 16;
// Attention scores slots in blocks of this many (SLOT_BLOCK in __init__.py): cache lengths are multiples of it.
constexpr int64_t kSlotBlock = 16;

inline int64_t round_up_to_block(int64_t slots) { return (slots + kSlotBlock - 1) / kSlotBlock * kSlotBlock; }

// A (row, kv head)'s cache block is max_len * hd elements; how keys and values sit in it is a
// layout policy. Every policy stores keys so that one vector op scores kV consecutive slots.

// Any dtype: keys dim-major [hd][max_len], values slot-major [max_len][hd].
template <typename T>
struct DimMajorKv {
  static void write(const float* k, const T* v, T* k_head, T* v_head, int64_t slot, int64_t max_len, int64_t hd) {
    for (int64_t d = 0; d < hd; ++d) k_head[d * max_len + slot] = static_cast<T>(k[d]);
    std::copy(v, v + hd, v_head + slot * hd);
  }

  // scores[j * stride + t] = (q_j . k_t) * scale for t in [0, length) (up to the next multiple of kV; the tail
  // past `length` is garbage the caller masks). q: fp32 [group][hd].
  static void score(const float* q, const T* k_head, int64_t group, int64_t hd, int64_t max_len, int64_t length,
                    float scale, float* scores, int64_t stride) {
    for (int64_t t0 = 0; t0 < length; t0 += kV) {
      fVec acc[kMaxGroup];
      for (int64_t j = 0; j < group; ++j) acc[j] = fVec(0.f);
      for (int64_t d = 0; d < hd; ++d) {
        const fVec kd = load_f(k_head + d * max_len + t0);
        for (int64_t j = 0; j < group; ++j) acc[j] = at::vec::fmadd(fVec(q[j * hd + d]), kd, acc[j]);
      }
      for (int64_t j = 0; j < group; ++j) (acc[j] * fVec(scale)).store(scores + j * stride + t0);
    }
  }

  // out[j] = sum_t probs[j * stride + t] * v_t over t in [0, length); probs are 0 on masked slots.
  static void weigh(float* probs, int64_t stride, const T* v_head, int64_t group, int64_t hd, int64_t length,
                    T* out) {
    const int64_t chunks = hd / kV;
    for (int64_t j = 0; j < group; ++j) {
      const float* pj = probs + j * stride;
      fVec acc[kMaxHeadDim / kV];
      for (int64_t c = 0; c < chunks; ++c) acc[c] = fVec(0.f);
      for (int64_t t = 0; t < length; ++t) {
        if (pj[t] == 0.f) continue;  // prompt padding
        const fVec p(static_cast<float>(static_cast<T>(pj[t])));  // probs in T, as softmax(...).to(T)
        const T* vt = v_head + t * hd;
        for (int64_t c = 0; c < chunks; ++c) acc[c] = at::vec::fmadd(p, load_f(vt + c * kV), acc[c]);
      }
      for (int64_t c = 0; c < chunks; ++c) store_t(out + j * hd + c * kV, acc[c]);
    }
  }
};

#ifdef BATON_AVX512_BF16
// bf16 for vdpbf16ps, which multiplies pairs of bf16 and adds both products to an fp32 lane. Keys in
// blocks of 16 slots, [max_len/16][hd/2][16][2]: a 64-byte load holds 16 slots x 2 dims and scoring a
// block reads hd * 32 contiguous bytes. Values [max_len/2][hd][2]: a load holds 16 dims x 2 slots.
// Probabilities are rounded to bf16 before weighing the values, as the torch path's softmax(...).to(bf16).
struct PairedBf16Kv {
  using T = c10::BFloat16;
  static_assert(kV == kSlotBlock, "one zmm of fp32 scores is one slot block");

  static uint32_t pair(float lo, float hi) {  // lo/hi already hold bf16 values: the conversion is exact
    return static_cast<uint32_t>(T(lo).x) | (static_cast<uint32_t>(T(hi).x) << 16);
  }

  static __m512bh as_bf16(__m512i v) { return reinterpret_cast<__m512bh>(v); }

  static void write(const float* k, const T* v, T* k_head, T* v_head, int64_t slot, int64_t max_len, int64_t hd) {
    uint32_t* kp = reinterpret_cast<uint32_t*>(k_head) + (slot / kSlotBlock) * (hd / 2) * kSlotBlock + slot % kSlotBlock;
    for (int64_t d = 0; d < hd; d += 2) kp[(d / 2) * kSlotBlock] = pair(k[d], k[d + 1]);
    // dims widened to 32 bits, shifted into this slot's half of each (even, odd) pair, stored under a mask
    uint16_t* vp = reinterpret_cast<uint16_t*>(v_head) + (slot / 2) * hd * 2;
    const __mmask32 half = (slot & 1) ? 0xAAAAAAAAu : 0x55555555u;
    for (int64_t d = 0; d < hd; d += kV) {
      __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + d)));
      if (slot & 1) w = _mm512_slli_epi32(w, 16);
      _mm512_mask_storeu_epi16(vp + 2 * d, half, w);
    }
  }

  static void score(const float* q, const T* k_head, int64_t group, int64_t hd, int64_t max_len, int64_t length,
                    float scale, float* scores, int64_t stride) {
    alignas(64) uint32_t qp[kMaxGroup * kMaxHeadDim / 2];
    for (int64_t i = 0; i < group * hd; i += 2) qp[i / 2] = pair(q[i], q[i + 1]);
    const int64_t pairs = hd / 2;  // even: hd is a multiple of 32
    for (int64_t t0 = 0; t0 < length; t0 += kSlotBlock) {
      const uint32_t* block = reinterpret_cast<const uint32_t*>(k_head) + t0 * pairs;
      for (int64_t j = 0; j < group; ++j) {
        const uint32_t* qj = qp + j * pairs;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();  // two chains hide the dot latency
        for (int64_t p = 0; p < pairs; p += 2) {
          a0 = _mm512_dpbf16_ps(a0, as_bf16(_mm512_loadu_si512(block + p * kSlotBlock)),
                                as_bf16(_mm512_set1_epi32(qj[p])));
          a1 = _mm512_dpbf16_ps(a1, as_bf16(_mm512_loadu_si512(block + (p + 1) * kSlotBlock)),
                                as_bf16(_mm512_set1_epi32(qj[p + 1])));
        }
        _mm512_storeu_ps(scores + j * stride + t0, _mm512_mul_ps(_mm512_add_ps(a0, a1), _mm512_set1_ps(scale)));
      }
    }
  }

  // probs must be 0 up to the next slot block past `length` (they are overwritten: the bf16 copy goes
  // in place); values past `length` may be garbage (even NaN): the odd half of a half-filled last pair is
  // masked out of the load.
  static void weigh(float* probs, int64_t stride, const T* v_head, int64_t group, int64_t hd, int64_t length,
                    T* out) {
    const uint32_t* vp = reinterpret_cast<const uint32_t*>(v_head);  // (slot pair u, dim d) at vp[u * hd + d]
    const int64_t full = length / 2;
    for (int64_t j = 0; j < group; ++j) {
      float* pj = probs + j * stride;
      // bf16 probabilities, read back as (even, odd) slot pairs; block t0 lands in bytes already read.
      for (int64_t t0 = 0; t0 < length; t0 += kSlotBlock) {
        const __m256i bits = to_bf16_bits(fVec::loadu(pj + t0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(reinterpret_cast<uint16_t*>(pj) + t0), bits);
      }
      const uint32_t* pp = reinterpret_cast<const uint32_t*>(pj);
      for (int64_t c0 = 0; c0 < hd; c0 += 2 * kV) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
        int64_t u = 0;
        for (; u + 1 < full; u += 2) {
          const __m512bh p0 = as_bf16(_mm512_set1_epi32(pp[u])), p1 = as_bf16(_mm512_set1_epi32(pp[u + 1]));
          const uint32_t* v0 = vp + u * hd + c0;
          const uint32_t* v1 = v0 + hd;
          a0 = _mm512_dpbf16_ps(a0, as_bf16(_mm512_loadu_si512(v0)), p0);
          a1 = _mm512_dpbf16_ps(a1, as_bf16(_mm512_loadu_si512(v0 + kV)), p0);
          b0 = _mm512_dpbf16_ps(b0, as_bf16(_mm512_loadu_si512(v1)), p1);
          b1 = _mm512_dpbf16_ps(b1, as_bf16(_mm512_loadu_si512(v1 + kV)), p1);
        }
        for (; u < (length + 1) / 2; ++u) {
          const __mmask32 keep = u < full ? ~__mmask32(0) : __mmask32(0x55555555);  // odd slot past length
          const __m512bh p0 = as_bf16(_mm512_set1_epi32(pp[u]));
          const uint32_t* v0 = vp + u * hd + c0;
          a0 = _mm512_dpbf16_ps(a0, as_bf16(_mm512_maskz_loadu_epi16(keep, v0)), p0);
          a1 = _mm512_dpbf16_ps(a1, as_bf16(_mm512_maskz_loadu_epi16(keep, v0 + kV)), p0);
        }
        store_t(out + j * hd + c0, fVec(_mm512_add_ps(a0, b0)));
        store_t(out + j * hd + c0 + kV, fVec(_mm512_add_ps(a1, b1)));
      }
    }
  }
};
#endif

// Softmax over slots [0, length) of each of `group` score rows (`padded` apart), in place and in fp32;
// slots where `valid` is false (prompt padding; null: none) and slots [length, padded) get probability 0.
// False when no slot is valid (a padding query), leaving the rows undefined.
inline bool softmax_rows(float* scores, int64_t group, int64_t length, int64_t padded, const bool* valid) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  bool any_valid = valid == nullptr;
  for (int64_t t = 0; t < length && valid; ++t) {
    if (!valid[t]) {
      for (int64_t j = 0; j < group; ++j) scores[j * padded + t] = neg_inf;
    } else {
      any_valid = true;
    }
  }
  if (!any_valid) return false;
  for (int64_t j = 0; j < group; ++j) {
    float* sj = scores + j * padded;
    std::fill(sj + length, sj + padded, neg_inf);
    fVec top_v(neg_inf);
    for (int64_t t = 0; t < padded; t += kV) top_v = at::vec::maximum(top_v, fVec::loadu(sj + t));
    const fVec top(at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return at::vec::maximum(x, y); }, top_v));
    fVec total_v(0.f);
    for (int64_t t = 0; t < padded; t += kV) {
      const fVec e = (fVec::loadu(sj + t) - top).exp();  // masked slots: exp(-inf) = 0
      e.store(sj + t);
      total_v = total_v + e;
    }
    const fVec norm(1.f / sum_lanes(total_v));
    for (int64_t t = 0; t < padded; t += kV) (fVec::loadu(sj + t) * norm).store(sj + t);
  }
  return true;
}

// For every (row, kv head): RoPE the q_len new keys and write them and their values into the
// cache at slots [first_slot, first_slot + q_len); then query i of each of the group's heads
// attends over slots [0, first_slot + i] (causal), skipping slots where `key_valid` is false
// (prompt padding; null: none). A query with no valid slot (a padding query) gets zeros.
// qkv: [rows, q_len, (Hq + 2 Hkv) * hd]; out: [rows, q_len, Hq * hd]. fp32 scores and softmax.
template <typename T, typename Kv>
void rope_cache_attend(
    const T* qkv, const int64_t* positions, const T* cos_table, const T* sin_table,
    T* k_cache, T* v_cache, const bool* key_valid, int64_t key_valid_stride, T* out,
    const AttentionShape& s) {
  const int64_t hd = s.head_dim, group = s.q_heads / s.kv_heads;
  const int64_t qkv_width = (s.q_heads + 2 * s.kv_heads) * hd;
  const int64_t max_length = s.first_slot + s.q_len;
  const int64_t padded_max = round_up_to_block(max_length);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const int64_t work = s.q_len * max_length * hd * group * 2;
  at::parallel_for(0, s.rows * s.kv_heads, grain_for(work), [&](int64_t begin, int64_t end) {
    alignas(64) float q[kMaxGroup * kMaxHeadDim];
    alignas(64) float k[kMaxHeadDim];
    std::vector<float> scores(group * padded_max);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / s.kv_heads, g = item % s.kv_heads;
      T* k_head = k_cache + (r * s.kv_heads + g) * s.max_len * hd;
      T* v_head = v_cache + (r * s.kv_heads + g) * s.max_len * hd;
      const bool* valid = key_valid ? key_valid + r * key_valid_stride : nullptr;

      for (int64_t i = 0; i < s.q_len; ++i) {
        const T* tok = qkv + (r * s.q_len + i) * qkv_width;
        const int64_t pos = positions[r * s.q_len + i];
        rope_head(tok + (s.q_heads + g) * hd, cos_table + pos * hd, sin_table + pos * hd, k, hd);
        Kv::write(k, tok + (s.q_heads + s.kv_heads + g) * hd, k_head, v_head, s.first_slot + i, s.max_len, hd);
      }

      for (int64_t i = 0; i < s.q_len; ++i) {
        const T* tok = qkv + (r * s.q_len + i) * qkv_width;
        const int64_t pos = positions[r * s.q_len + i], length = s.first_slot + i + 1;
        const int64_t padded = round_up_to_block(length);
        for (int64_t j = 0; j < group; ++j) {
          rope_head(tok + (g * group + j) * hd, cos_table + pos * hd, sin_table + pos * hd, q + j * hd, hd);
        }
        T* o = out + ((r * s.q_len + i) * s.q_heads + g * group) * hd;
        Kv::score(q, k_head, group, hd, s.max_len, length, scale, scores.data(), padded);
        if (softmax_rows(scores.data(), group, length, padded, valid)) {
          Kv::weigh(scores.data(), padded, v_head, group, hd, length, o);
        } else {
          std::fill(o, o + group * hd, static_cast<T>(0.f));
        }
      }
    }
  });
}

// oneDNN linear on a weight packed by mkldnn::_reorder_linear_weight (boxed call: the op
// is registered by torch's mkldnn library, not declared in a public header).
Tensor packed_linear(const Tensor& x, const Tensor& packed, const std::optional<Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(packed);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// residual + x @ W^T (+ bias), fused by oneDNN's binary post-op.
Tensor packed_linear_add(const Tensor& x, const Tensor& residual, const Tensor& packed, const std::optional<Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "binary");
  torch::jit::Stack stack;
  stack.reserve(5);
  stack.emplace_back(x);
  stack.emplace_back(residual);
  stack.emplace_back(packed);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("add"));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

struct Layer {
  Tensor input_norm, post_norm;
  Tensor qkv, o, gate_up, down;  // packed
  std::optional<Tensor> qkv_b, o_b, gate_up_b, down_b;
};

// Absent biases arrive as empty tensors (a list of tensors cannot hold None).
std::optional<Tensor> maybe(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? std::optional<Tensor>(t) : std::nullopt;
}

}  // namespace

// Whether this build has the AVX512-BF16 attention (bf16 caches in the paired layout).
bool has_paired_bf16() {
#ifdef BATON_AVX512_BF16
  return true;
#else
  return false;
#endif
}

// The decoder's weights as the C++ step sees them: norms and embeddings shared with the
// Python module (same storage), projection weights packed (rebuilt after every weight load).
class CpuDecoder {
 public:
  CpuDecoder(Tensor embed, Tensor final_norm, Tensor lm_head, Tensor rope_cos, Tensor rope_sin,
             std::vector<std::vector<Tensor>> layers, int64_t q_heads, int64_t kv_heads,
             int64_t head_dim, int64_t intermediate, double eps, bool paired_bf16)
      : embed_(std::move(embed)), final_norm_(std::move(final_norm)), lm_head_(std::move(lm_head)),
        cos_(std::move(rope_cos)), sin_(std::move(rope_sin)), q_heads_(q_heads), kv_heads_(kv_heads),
        head_dim_(head_dim), inter_(intermediate), eps_(static_cast<float>(eps)),
        paired_bf16_(paired_bf16) {
    TORCH_CHECK(q_heads_ % kv_heads_ == 0, "q_heads must be a multiple of kv_heads");
    TORCH_CHECK(head_dim_ % (2 * kV) == 0 && head_dim_ <= kMaxHeadDim,
                "head_dim ", head_dim_, " must be a multiple of ", 2 * kV, " and at most ", kMaxHeadDim);
    TORCH_CHECK(q_heads_ / kv_heads_ <= kMaxGroup, "at most ", kMaxGroup, " query heads per kv head");
    TORCH_CHECK(inter_ % kV == 0 && embed_.size(1) % kV == 0,
                "hidden and intermediate sizes must be multiples of ", kV);
    for (auto& l : layers) {
      TORCH_CHECK(l.size() == 10, "a layer is [input_norm, post_norm, qkv, o, gate_up, down, and their 4 biases]");
      layers_.push_back(Layer{l[0], l[1], l[2], l[3], l[4], l[5], maybe(l[6]), maybe(l[7]), maybe(l[8]), maybe(l[9])});
    }
  }

  // tokens/positions [n, q] int64: q new tokens per row, going to cache slots [first_slot, first_slot + q)
  // (prefill: q = prompt width, first_slot = 0; decode: q = 1). keys/values per layer
  // [max_batch, Hkv, max_len, hd], rows [0, n) used. key_valid [>= n, >= first_slot + q] bool (false on
  // prompt padding) or None. Returns fp32 logits [n, V] of each row's last token.
  Tensor forward(const Tensor& tokens, const Tensor& positions, int64_t first_slot, const std::vector<Tensor>& keys,
                 const std::vector<Tensor>& values, const std::optional<Tensor>& key_valid) const {
    TORCH_CHECK(tokens.dim() == 2 && positions.sizes() == tokens.sizes(), "tokens and positions must be [n, q]");
    const int64_t n = tokens.size(0), q = tokens.size(1);
    TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(), "one key and value cache per layer");
    TORCH_CHECK(tokens.scalar_type() == at::kLong && positions.scalar_type() == at::kLong, "tokens and positions must be int64");
    TORCH_CHECK(first_slot + q <= keys[0].size(2), "slots up to ", first_slot + q, " exceed the cache length ", keys[0].size(2));
    TORCH_CHECK(n <= keys[0].size(0), "more rows than the cache holds");
    TORCH_CHECK(keys[0].size(2) % kSlotBlock == 0, "the cache length must be a multiple of ", kSlotBlock,
                " (attention reads whole slot blocks)");
    Tensor pos = positions.contiguous();
    Tensor x = embed_.index_select(0, tokens.reshape({-1}));
    Tensor h = at::empty_like(x);
    Tensor attn = at::empty({n * q, q_heads_ * head_dim_}, x.options());
    Tensor act = at::empty({n * q, inter_}, x.options());
    AttentionShape shape{n, q, q_heads_, kv_heads_, head_dim_, keys[0].size(2), first_slot};
    const bool* valid = nullptr;
    int64_t valid_stride = 0;
    if (key_valid.has_value()) {
      TORCH_CHECK(key_valid->scalar_type() == at::kBool && key_valid->is_contiguous() && key_valid->dim() == 2,
                  "key_valid must be a contiguous 2-d bool tensor");
      TORCH_CHECK(key_valid->size(0) >= n && key_valid->size(1) >= first_slot + q, "key_valid is smaller than [n, slots]");
      valid = key_valid->data_ptr<bool>();
      valid_stride = key_valid->size(1);
    }
    switch (x.scalar_type()) {
      case at::kFloat: layers<float>(x, h, attn, act, pos, keys, values, valid, valid_stride, shape); break;
      case at::kBFloat16: layers<c10::BFloat16>(x, h, attn, act, pos, keys, values, valid, valid_stride, shape); break;
      case at::kHalf: layers<c10::Half>(x, h, attn, act, pos, keys, values, valid, valid_stride, shape); break;
      default: TORCH_CHECK(false, "unsupported dtype ", x.scalar_type());
    }
    if (q > 1) h = h.view({n, q, -1}).select(1, q - 1).contiguous();
    return packed_linear(h, lm_head_, std::nullopt).to(at::kFloat);
  }

 private:
  // Every layer, then the final norm into h (all tokens). x is replaced (the residual adds return new tensors).
  template <typename scalar_t>
  void layers(Tensor& x, Tensor& h, Tensor& attn, Tensor& act, const Tensor& pos, const std::vector<Tensor>& keys,
              const std::vector<Tensor>& values, const bool* valid, int64_t valid_stride,
              const AttentionShape& shape) const {
    const int64_t n = x.size(0), d = x.size(1);  // n = rows * q tokens
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      TORCH_CHECK(keys[i].is_contiguous() && values[i].is_contiguous(), "KV cache views must be contiguous");
      rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), l.input_norm.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), n, d, eps_);
      Tensor qkv = packed_linear(h, l.qkv, l.qkv_b);
      attend<scalar_t>(qkv.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), keys[i].data_ptr<scalar_t>(),
                       values[i].data_ptr<scalar_t>(), valid, valid_stride, attn.data_ptr<scalar_t>(), shape);
      x = packed_linear_add(attn, x, l.o, l.o_b);
      rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), l.post_norm.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), n, d, eps_);
      Tensor gate_up = packed_linear(h, l.gate_up, l.gate_up_b);
      silu_mul_rows<scalar_t>(gate_up.data_ptr<scalar_t>(), act.data_ptr<scalar_t>(), n, inter_);
      x = packed_linear_add(act, x, l.down, l.down_b);
    }
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), final_norm_.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), n, d, eps_);
  }

  // The cache layout is this decoder's choice: paired bf16 (vdpbf16ps) when built for it and asked for.
  template <typename scalar_t>
  void attend(const scalar_t* qkv, const int64_t* pos, scalar_t* keys, scalar_t* values, const bool* valid,
              int64_t valid_stride, scalar_t* out, const AttentionShape& shape) const {
    const scalar_t* cos = cos_.data_ptr<scalar_t>();
    const scalar_t* sin = sin_.data_ptr<scalar_t>();
#ifdef BATON_AVX512_BF16
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      if (paired_bf16_) {
        rope_cache_attend<scalar_t, PairedBf16Kv>(qkv, pos, cos, sin, keys, values, valid, valid_stride, out, shape);
        return;
      }
    }
#endif
    rope_cache_attend<scalar_t, DimMajorKv<scalar_t>>(qkv, pos, cos, sin, keys, values, valid, valid_stride, out, shape);
  }

  Tensor embed_, final_norm_, lm_head_, cos_, sin_;
  std::vector<Layer> layers_;
  int64_t q_heads_, kv_heads_, head_dim_, inter_;
  float eps_;
  bool paired_bf16_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Baton's fused CPU decode step for the built-in rollout engine";
  m.def("has_paired_bf16", &has_paired_bf16, "whether bf16 attention can use AVX512-BF16 dot products");
  pybind11::class_<CpuDecoder>(m, "CpuDecoder")
      .def(pybind11::init<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<std::vector<Tensor>>, int64_t, int64_t,
                          int64_t, int64_t, double, bool>())
      .def("forward", &CpuDecoder::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
