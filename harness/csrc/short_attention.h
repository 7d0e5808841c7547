// Attention of one short sequence and one head, computed whole (tokenbench.harness.cpu_varlen): the
// scores S = QK^T fit in the cache (511 tokens: 1 MB in float32), so the kernel needs no flash blocking
// and calls the BLAS directly, with no tensor, dispatcher or allocation per call. That per-call cost is
// what kept torch's flash kernel, one call per sequence, a fifth below one dense call per FLOP on the
// default suite's sequences of <= 196 tokens (docs/performance.md).
//
//   forward:  S = QK^T, P = softmax(scale S) (its log-sum-exp kept for the backward), O = PV
//   backward: P again from the log-sum-exp; dV = P^T dO, dP = dO V^T, dS = P o (dP - rowsum(dO o O)),
//             dQ = scale dS K, dK = scale dS^T Q
//
// Inputs of any floating type are gathered into the accumulation type (float; double for double), so
// half inputs are computed in float, as torch's kernel does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
// the Fortran BLAS that torch's library exports (MKL on x86). Weak: where it is missing the op keeps
// torch's kernel for short sequences too (short_attention::available()).
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // MKL's C entry (by value)
}

// the softmax loops are compiled for each vector width and the widest the CPU has is taken at load time;
// torch's kernel does the same (its AVX2/AVX-512 builds), and the exponentials are a sixth of the work
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SHORT_ATTENTION_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHORT_ATTENTION_CLONES
#endif

namespace short_attention {

inline bool available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// The BLAS on one thread while it lives. torch turns MKL's dynamic threading off, so a gemm called from a
// thread of the op's parallel region (or inline, with one worker) would start its own threads: measured
// 15 % more CPU time per FLOP at 2 threads (docs/performance.md). Without MKL there is nothing to set.
struct SequentialBlas {
  int previous = 0;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

// element (i, j) of a token-major tensor slice is data[i * row + j * col]
template <typename T>
struct Strided {
  T* data;
  int64_t row, col;
};

// per-thread scratch, grown as needed and kept across the pieces a thread takes
struct Workspace {
  std::vector<double> storage;
  template <typename A>
  A* get(size_t count) {
    const size_t words = (count * sizeof(A) + sizeof(double) - 1) / sizeof(double);
    if (storage.size() < words) storage.resize(words);
    return reinterpret_cast<A*>(storage.data());
  }
};

inline void gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

inline void gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// row-major C[m, n] = alpha op(A) op(B) with op(A) [m, k]; the BLAS is column-major, so it computes C^T
template <typename A>
void mm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, A alpha, const A* a, int64_t lda, const A* b,
        int64_t ldb, A* c, int64_t ldc) {
  gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', int(n), int(m), int(k), alpha, b, int(ldb), a, int(lda), A(0), c,
       int(ldc));
}

// exp(x) to ~1 ulp for x <= 0 (Cephes' expf polynomial on x - n ln2, times 2^n), branch-free so that the
// loops calling it vectorise
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// each row i of s [n, n]: exp(scale (s - max)) in place, its log-sum-exp into lse[i], 1 / sum into inv[i]
SHORT_ATTENTION_CLONES static void softmax_rows(float* s, int64_t n, float scale, float* lse, float* inv) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * n;
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = exp_approx((row[j] - m) * scale);
      sum += row[j];
    }
    lse[i] = m * scale + std::log(sum);
    inv[i] = 1.0f / sum;
  }
}

static void softmax_rows(double* s, int64_t n, double scale, double* lse, double* inv) {
  for (int64_t i = 0; i < n; ++i) {
    double* row = s + i * n;
    const double m = *std::max_element(row, row + n);
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += row[j] = std::exp((row[j] - m) * scale);
    lse[i] = m * scale + std::log(sum);
    inv[i] = 1.0 / sum;
  }
}

// the forward's probabilities again: row i of s becomes exp(scale s - lse[i])
SHORT_ATTENTION_CLONES static void probabilities(float* s, int64_t n, float scale, const float* lse) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * n;
    const float l = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] = exp_approx(row[j] * scale - l);
  }
}

static void probabilities(double* s, int64_t n, double scale, const double* lse) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) s[i * n + j] = std::exp(s[i * n + j] * scale - lse[i]);
}

template <typename T, typename A>
void gather(Strided<const T> x, int64_t n, int64_t d, A* out) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) out[i * d + j] = A(x.data[i * x.row + j * x.col]);
}

template <typename T, typename A>
void scatter(const A* in, int64_t n, int64_t d, Strided<T> x) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) x.data[i * x.row + j * x.col] = T(in[i * d + j]);
}

// one sequence of n tokens, one head: out, and the log-sum-exp of each query into lse[0, n)
template <typename T, typename A>
void forward(Strided<const T> q, Strided<const T> k, Strided<const T> v, Strided<T> out, A* lse, int64_t n,
             int64_t d, A scale, Workspace& ws) {
  A* Q = ws.get<A>(4 * n * d + n * n + n);
  A *K = Q + n * d, *V = K + n * d, *O = V + n * d, *S = O + n * d, *inv = S + n * n;
  gather(q, n, d, Q);
  gather(k, n, d, K);
  gather(v, n, d, V);
  mm<A>(false, true, n, n, d, A(1), Q, d, K, d, S, n);
  softmax_rows(S, n, scale, lse, inv);
  mm<A>(false, false, n, d, n, A(1), S, n, V, d, O, d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) out.data[i * out.row + j * out.col] = T(O[i * d + j] * inv[i]);
}

// its gradients: dq, dk, dv of the same sequence and head, given the forward's out and log-sum-exp
template <typename T, typename A>
void backward(Strided<const T> grad_out, Strided<const T> q, Strided<const T> k, Strided<const T> v,
              Strided<const T> out, const A* lse, Strided<T> dq, Strided<T> dk, Strided<T> dv, int64_t n,
              int64_t d, A scale, Workspace& ws) {
  A* Q = ws.get<A>(6 * n * d + 2 * n * n + n);
  A *K = Q + n * d, *V = K + n * d, *O = V + n * d, *dO = O + n * d, *G = dO + n * d;
  A *P = G + n * d, *dP = P + n * n, *rowdot = dP + n * n;
  gather(q, n, d, Q);
  gather(k, n, d, K);
  gather(v, n, d, V);
  gather(out, n, d, O);
  gather(grad_out, n, d, dO);
  mm<A>(false, true, n, n, d, A(1), Q, d, K, d, P, n);
  probabilities(P, n, scale, lse);
  mm<A>(true, false, n, d, n, A(1), P, n, dO, d, G, d);
  scatter(G, n, d, dv);
  mm<A>(false, true, n, n, d, A(1), dO, d, V, d, dP, n);
  for (int64_t i = 0; i < n; ++i) {
    A acc = 0;
    for (int64_t j = 0; j < d; ++j) acc += dO[i * d + j] * O[i * d + j];
    rowdot[i] = acc;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) dP[i * n + j] = P[i * n + j] * (dP[i * n + j] - rowdot[i]);
  mm<A>(false, false, n, d, n, scale, dP, n, K, d, G, d);
  scatter(G, n, d, dq);
  mm<A>(true, false, n, d, n, scale, dP, n, Q, d, G, d);
  scatter(G, n, d, dk);
}

}  // namespace short_attention
