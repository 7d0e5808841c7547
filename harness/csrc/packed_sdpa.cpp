// Varlen attention for CPU (tokenbench.harness.cpu_varlen): torch's own flash kernel, run on pieces of a
// packed batch so that both passes keep every thread busy. The kernel, and so the arithmetic of each
// piece, is torch's; what this file decides is which pieces run where.
//
// Why: a Python loop of per-sequence calls pays the call's fixed cost once per sequence per layer, serially
// (most of a short sequence's time), and torch's CPU flash backward parallelises over batch x heads only,
// so a 3-head sequence on 2 threads leaves a core idle for a third of its backward. Here:
//   * short sequences (< 512 tokens) are one piece each, all heads; the pieces of the batch share the
//     threads in one parallel region (a nested at::parallel_for, the kernel's own, runs serially);
//     ATen's parallel_for is a header template, parallel only where OpenMP is on: this file must be
//     built with -fopenmp (torch's libgomp is then the one runtime; region_threads() tells);
//     a batch of one sequence is torch's own call;
//   * a long sequence runs as torch runs it (one call, threads across heads and query blocks), except in
//     the backward when the heads do not divide evenly over the threads: then it is cut into pieces of
//     (head, key chunk). Key chunks are exact for dK and dV (the softmax normaliser is the forward's
//     log-sum-exp); their dQ are partial sums, added after the region.
// Pieces are taken costliest first, each thread taking the next as it frees up. Cutting long sequences
// in the forward, or by head where the heads divide evenly, measured slower than torch's own call.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kLongSequence = 512;
constexpr int64_t kMinChunkRows = 128;

struct Piece {
  int64_t start, len;  // the sequence: rows [start, start + len) of the packed tensors
  int64_t head;        // -1: all heads
  int64_t k0, k1;      // key rows [k0, k1) within the sequence
  int64_t slot;        // the (sequence, head) it belongs to: a chunked slot sums its partial dQ
  double cost;
};

struct Plan {
  std::vector<std::pair<int64_t, int64_t>> whole;  // (start, len): one call each, torch's own threads
  std::vector<Piece> pieces;                       // one parallel region
  std::vector<int64_t> chunks;                     // pieces per slot
};

Plan plan(const std::vector<int64_t>& cu, int64_t heads, bool backward) {
  const int64_t threads = at::get_num_threads();
  double total = 0;
  int64_t sequences = 0;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    total += double(cu[i + 1] - cu[i]) * double(cu[i + 1] - cu[i]);
    sequences += cu[i + 1] > cu[i];
  }
  // one sequence alone is torch's own call: there is nothing to share the threads with
  const bool cut_long = backward && threads > 1 && heads % threads != 0 && sequences > 1;
  Plan p;
  const double share = total * double(heads) / double(4 * threads);  // a chunk costs at most this
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    const int64_t start = cu[i], n = cu[i + 1] - cu[i];
    if (n == 0) continue;
    if (n < kLongSequence && sequences > 1) {
      p.pieces.push_back({start, n, -1, 0, n, int64_t(p.chunks.size()), double(n) * double(n) * double(heads)});
      p.chunks.push_back(1);
    } else if (!cut_long) {
      p.whole.emplace_back(start, n);
    } else {
      const double cost = double(n) * double(n);
      const int64_t chunks = std::clamp<int64_t>(int64_t(std::ceil(cost / std::max(share, 1.0))), 1,
                                                 std::max<int64_t>(n / kMinChunkRows, 1));
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t slot = int64_t(p.chunks.size());
        p.chunks.push_back(chunks);
        for (int64_t c = 0; c < chunks; ++c)
          p.pieces.push_back({start, n, h, n * c / chunks, n * (c + 1) / chunks, slot, cost / double(chunks)});
      }
    }
  }
  std::stable_sort(p.pieces.begin(), p.pieces.end(), [](const Piece& a, const Piece& b) { return a.cost > b.cost; });
  return p;
}

// rows [start, start + len) of a packed [N, heads, d] tensor as the kernel's [1, heads or 1, len, d] (a view)
at::Tensor rows(const at::Tensor& t, int64_t start, int64_t len, int64_t head) {
  auto r = t.narrow(0, start, len);
  return head < 0 ? r.unsqueeze(0).transpose(1, 2) : r.select(1, head).unsqueeze(0).unsqueeze(0);
}

// the same rows of the log-sum-exp [heads, N], as the kernel's [1, heads or 1, len]
at::Tensor lse_rows(const at::Tensor& lse, int64_t start, int64_t len, int64_t head) {
  auto r = lse.narrow(1, start, len);
  return head < 0 ? r.unsqueeze(0) : r.select(0, head).unsqueeze(0).unsqueeze(0);
}

template <typename F>
void run_pieces(const std::vector<Piece>& pieces, const F& body) {
  if (pieces.empty()) return;
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), int64_t(pieces.size()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    // worker threads do not carry the caller's dispatch state: keep autograd out of the kernel calls
    c10::impl::ExcludeDispatchKeyGuard no_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
    for (size_t i = next++; i < pieces.size(); i = next++) body(pieces[i]);
  });
}

std::vector<int64_t> checked_cu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef cu) {
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "packed_sdpa: q, k, v must all be [N, heads, head_dim]");
  TORCH_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == q.size(0),
              "packed_sdpa: cu_seqlens must run from 0 to N = ", q.size(0));
  for (size_t i = 0; i + 1 < cu.size(); ++i)
    TORCH_CHECK(cu[i] <= cu[i + 1], "packed_sdpa: cu_seqlens must not decrease");
  return std::vector<int64_t>(cu.begin(), cu.end());
}

// q, k, v [N, heads, d] -> out [N, heads, d] and the log-sum-exp [heads, N] (float32 for half inputs)
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           at::IntArrayRef cu_seqlens, double scale) {
  const auto cu = checked_cu(q, k, v, cu_seqlens);
  const auto st = q.scalar_type();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(1), q.size(0)},
                       q.options().dtype(st == at::kBFloat16 || st == at::kHalf ? at::kFloat : st));
  auto call = [&](int64_t start, int64_t len) {
    auto [o, l] = at::_scaled_dot_product_flash_attention_for_cpu(rows(q, start, len, -1), rows(k, start, len, -1),
                                                                  rows(v, start, len, -1), 0.0, false, std::nullopt,
                                                                  scale);
    rows(out, start, len, -1).copy_(o);
    lse_rows(lse, start, len, -1).copy_(l);
  };
  const auto p = plan(cu, q.size(1), false);
  for (const auto& [start, len] : p.whole) call(start, len);
  run_pieces(p.pieces, [&](const Piece& x) { call(x.start, x.len); });
  return std::make_tuple(out, lse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& out, const at::Tensor& lse,
                                                        at::IntArrayRef cu_seqlens, double scale) {
  const auto cu = checked_cu(q, k, v, cu_seqlens);
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const auto p = plan(cu, q.size(1), true);
  // dK, dV of the key rows [ks, ks + kn) and dQ (whole, or a partial sum kept in *partial)
  auto call = [&](int64_t start, int64_t len, int64_t head, int64_t ks, int64_t kn, at::Tensor* partial) {
    auto [gq, gk, gv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        rows(grad_out, start, len, head), rows(q, start, len, head), rows(k, ks, kn, head), rows(v, ks, kn, head),
        rows(out, start, len, head), lse_rows(lse, start, len, head), 0.0, false, std::nullopt, scale);
    rows(dk, ks, kn, head).copy_(gk);
    rows(dv, ks, kn, head).copy_(gv);
    if (partial) *partial = gq;
    else rows(dq, start, len, head).copy_(gq);
  };
  for (const auto& [start, len] : p.whole) call(start, len, -1, start, len, nullptr);
  std::vector<at::Tensor> partial_dq(p.pieces.size());
  run_pieces(p.pieces, [&](const Piece& x) {
    const size_t i = size_t(&x - p.pieces.data());
    call(x.start, x.len, x.head, x.start + x.k0, x.k1 - x.k0, p.chunks[x.slot] > 1 ? &partial_dq[i] : nullptr);
  });
  std::vector<bool> started(p.chunks.size(), false);
  for (size_t i = 0; i < p.pieces.size(); ++i) {
    const auto& x = p.pieces[i];
    if (p.chunks[x.slot] == 1) continue;
    auto d = rows(dq, x.start, x.len, x.head);
    if (started[x.slot]) d.add_(partial_dq[i]);
    else d.copy_(partial_dq[i]);
    started[x.slot] = true;
  }
  return std::make_tuple(dq, dk, dv);
}

// how many threads one parallel region of this library runs on (1: it was built without OpenMP, and every
// piece would run in turn)
int64_t region_threads() {
  std::atomic<int64_t> seen{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { ++seen; });
  return seen;
}

}  // namespace

TORCH_LIBRARY(tokenbench, m) {
  m.def("region_threads() -> int", &region_threads);
  m.def("packed_sdpa(Tensor q, Tensor k, Tensor v, int[] cu_seqlens, float scale) -> (Tensor, Tensor)");
  m.def("packed_sdpa_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "int[] cu_seqlens, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tokenbench, CPU, m) {
  m.impl("packed_sdpa", &forward);
  m.impl("packed_sdpa_backward", &backward);
}
