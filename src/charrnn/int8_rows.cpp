// int8 weights times 2-8 rows of uint8 activations (AVX-512 VNNI), for the sampler's step product.
// At a few rows oneDNN's and torch._int_mm's int8 kernels pay per-call costs several times the
// weight read (40-180 us for 1024 -> 3138 against ~25 us at one row); this reads the weights once
// for all rows. The weights are packed [N/16, K/4, 16, 4] (int8), so one 64-byte load feeds one
// vpdpbusd per row: 16 outputs x 4 inputs. a = q + 128 (uint8), so comp = 128 * the row sums of the
// weights is taken off; out = float(sum - comp) * scale * s + bias, in the order and with the
// rounding of the _int_mm path (`.mul(scale)`, then `addcmul(bias, ., s)`).
#include <immintrin.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace {

// B blocks of 16 outputs at a time: B * M independent sums hide vpdpbusd's latency at few rows
template <int M, int B>
void blocks(const uint8_t* a, int64_t k4, const int8_t* w, const int32_t* comp, const float* scale,
            const float* s, const float* bias, float* out, int64_t n, int64_t first) {
  __m512i acc[B][M];
  for (int b = 0; b < B; ++b)
    for (int m = 0; m < M; ++m) acc[b][m] = _mm512_setzero_si512();
  const int8_t* wb = w + first * k4 * 64;
  for (int64_t k = 0; k < k4; ++k) {
    __m512i wv[B];
    for (int b = 0; b < B; ++b) wv[b] = _mm512_loadu_si512(wb + (b * k4 + k) * 64);
    for (int m = 0; m < M; ++m) {
      int32_t four;
      std::memcpy(&four, a + (m * k4 + k) * 4, 4);
      __m512i x = _mm512_set1_epi32(four);
      for (int b = 0; b < B; ++b) acc[b][m] = _mm512_dpbusd_epi32(acc[b][m], x, wv[b]);
    }
  }
  for (int b = 0; b < B; ++b) {
    int64_t at = (first + b) * 16, left = n - at;
    __mmask16 mask = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    __m512i c = _mm512_maskz_loadu_epi32(mask, comp + at);
    __m512 sc = _mm512_maskz_loadu_ps(mask, scale + at), bs = _mm512_maskz_loadu_ps(mask, bias + at);
    for (int m = 0; m < M; ++m) {
      __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[b][m], c)), sc);
      _mm512_mask_storeu_ps(out + m * n + at, mask, _mm512_fmadd_ps(x, _mm512_set1_ps(s[m]), bs));
    }
  }
}

template <int M>
void rows(const uint8_t* a, int64_t k4, const int8_t* w, const int32_t* comp, const float* scale,
          const float* s, const float* bias, float* out, int64_t n, int64_t begin, int64_t end) {
  int64_t block = begin;
  for (; block + 2 <= end; block += 2) blocks<M, 2>(a, k4, w, comp, scale, s, bias, out, n, block);
  if (block < end) blocks<M, 1>(a, k4, w, comp, scale, s, bias, out, n, block);
}

using Rows = decltype(&rows<1>);
constexpr Rows BY_ROWS[] = {rows<1>, rows<2>, rows<3>, rows<4>, rows<5>, rows<6>, rows<7>, rows<8>};

// a [M, K] uint8, packed [N16/16, K4/4, 16, 4] int8, comp [N] int32, scale [N], s [M, 1], bias [N]
at::Tensor int8_rows(const at::Tensor& a, const at::Tensor& packed, const at::Tensor& comp,
                     const at::Tensor& scale, const at::Tensor& s, const at::Tensor& bias) {
  const int64_t m = a.size(0), k = a.size(1), n = bias.size(0), k4 = packed.size(1);
  TORCH_CHECK(1 <= m && m <= 8, "int8_rows: 1 to 8 rows, not ", m);
  TORCH_CHECK(a.scalar_type() == at::kByte && packed.scalar_type() == at::kChar, "int8_rows: dtypes");
  TORCH_CHECK(k4 * 4 >= k && packed.size(0) * 16 >= n && comp.size(0) == n && scale.size(0) == n);
  at::Tensor padded = a.contiguous();
  if (k != k4 * 4) {  // whole groups of 4 (the weights' padding is 0)
    padded = at::zeros({m, k4 * 4}, a.options());
    padded.narrow(1, 0, k).copy_(a);
  }
  at::Tensor out = at::empty({m, n}, bias.options());
  auto sc = s.contiguous(), cm = comp.contiguous(), scl = scale.contiguous(), bs = bias.contiguous();
  const uint8_t* pa = padded.data_ptr<uint8_t>();
  const int8_t* pw = packed.data_ptr<int8_t>();
  at::parallel_for(0, packed.size(0), 8, [&](int64_t begin, int64_t end) {
    BY_ROWS[m - 1](pa, k4, pw, cm.data_ptr<int32_t>(), scl.data_ptr<float>(), sc.data_ptr<float>(),
                   bs.data_ptr<float>(), out.data_ptr<float>(), n, begin, end);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(charrnn, lib) {
  lib.def("int8_rows(Tensor a, Tensor packed, Tensor comp, Tensor scale, Tensor s, Tensor bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(charrnn, CPU, lib) { lib.impl("int8_rows", &int8_rows); }
