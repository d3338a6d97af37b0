// CPU kernel of the Felzenszwalb op: images in parallel across threads, each run serially, by
// one of three algorithms that give the same labels (skimage's). "sequential": skimage's
// Kruskal. "reservations" and "block": the CUDA kernels' algorithms, Kruskal by deterministic
// reservations, round by round with the same code the CUDA kernels run (warp_rounds.h: one warp
// per image; felzenszwalb.h: the 1,024-thread block per image), so that a CPU-only build tests
// the GPU's rounds and reports the same round counts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "felzenszwalb.h"
#include "felzenszwalb_args.h"
#include "warp_rounds.h"

namespace walnet {
namespace {

using fz::Algorithm;

struct ImageScratch {
  std::vector<double> tmp, smooth, weight, ew;
  std::vector<int32_t> p, q, ep, eq, parent, size, bids, ra, rb;
  std::vector<int64_t> order, order_tmp;
  std::vector<uint64_t> keys, keys_tmp;
  std::vector<double> cint;
  std::vector<uint8_t> decided;
  // "reservations": the sorted edges, the warp's shared memory and the state in the index type
  // of the CUDA kernel's layout for the image size.
  std::vector<fz::SortedEdge> edges;
  std::unique_ptr<fz::WarpScratch> warp = std::make_unique<fz::WarpScratch>();
  std::vector<uint16_t> parent16, size16;
  std::vector<float> tau;
};

// Gaussian smoothing of a C x H x W float64 image as scipy: rows (axis 0), then columns.
void smooth_image(const double* img, int64_t C, int64_t H, int64_t W, at::ArrayRef<double> w, ImageScratch& s) {
  const int64_t HW = H * W, r = static_cast<int64_t>(w.size()) - 1;
  s.smooth.resize(C * HW);
  if (r < 0) {
    std::copy(img, img + C * HW, s.smooth.begin());
    return;
  }
  s.tmp.resize(C * HW);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        s.tmp[c * HW + y * W + x] = fz::smooth_sample(img + c * HW + x, W, H, y, w.data(), r);
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        s.smooth[c * HW + y * W + x] = fz::smooth_sample(s.tmp.data() + c * HW + y * W, 1, W, x, w.data(), r);
  }
}

// Stable LSD radix sort of edge indices by weight. Weights are >= 0, so their IEEE bit
// patterns order like the values; a stable sort keeps equal weights in edge-index order.
void radix_sort_by_weight(const std::vector<double>& weight, std::vector<int64_t>& order, std::vector<uint64_t>& keys,
                          std::vector<uint64_t>& keys_tmp, std::vector<int64_t>& order_tmp) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const int64_t E = static_cast<int64_t>(weight.size());
  keys.resize(E), keys_tmp.resize(E), order_tmp.resize(E);
  uint64_t all_or = 0, all_and = ~uint64_t(0);
  for (int64_t e = 0; e < E; ++e) {
    uint64_t bits;
    std::memcpy(&bits, &weight[e], sizeof bits);
    keys[e] = bits, order[e] = e;
    all_or |= bits, all_and &= bits;
  }
  std::vector<int64_t> count(kBuckets);
  for (int shift = 0; shift < 64; shift += kBits) {
    const uint64_t mask = uint64_t(kBuckets - 1) << shift;
    if (((all_or ^ all_and) & mask) == 0) continue;  // every key has the same digit here
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < E; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    int64_t sum = 0;
    for (auto& c : count) {
      const int64_t c0 = c;
      c = sum;
      sum += c0;
    }
    for (int64_t i = 0; i < E; ++i) {
      const int64_t dst = count[(keys[i] >> shift) & (kBuckets - 1)]++;
      keys_tmp[dst] = keys[i], order_tmp[dst] = order[i];
    }
    keys.swap(keys_tmp), order.swap(order_tmp);
  }
}

// Edge weights, then the edges sorted by (weight, index).
void sorted_edges(int64_t C, int64_t H, int64_t W, ImageScratch& s) {
  const int64_t E = fz::edge_counts(H, W).total(), HW = H * W;
  s.weight.resize(E), s.order.resize(E), s.p.resize(E), s.q.resize(E);
  for (int64_t e = 0; e < E; ++e) {
    fz::edge_endpoints(e, H, W, &s.p[e], &s.q[e]);
    s.weight[e] = fz::edge_weight(s.smooth.data(), C, HW, s.p[e], s.q[e]);
  }
  radix_sort_by_weight(s.weight, s.order, s.keys, s.keys_tmp, s.order_tmp);
  s.ep.resize(E), s.eq.resize(E), s.ew.resize(E);
  for (int64_t i = 0; i < E; ++i) {
    s.ep[i] = s.p[s.order[i]];
    s.eq[i] = s.q[s.order[i]];
    s.ew[i] = s.weight[s.order[i]];
  }
}

// One pass over the sorted edges, sequentially (returns 0 rounds).
int32_t run_sequential(const fz::PassState& st, int64_t E) {
  for (int64_t i = 0; i < E; ++i) {
    const int32_t a = fz::find_compress(st.parent, st.ep[i]), b = fz::find_compress(st.parent, st.eq[i]);
    if (a != b) fz::decide(st, i, a, b);
  }
  return 0;
}

// One pass by deterministic reservations as the "block" CUDA kernel runs it; each phase is a loop
// over the window in place of the GPU's threads (the phases are separated as the GPU separates
// them by barriers).
int32_t run_block(const fz::PassState& st, int64_t E) {
  int32_t rounds = 0;
  int64_t start = 0;
  std::vector<uint8_t> bidding(fz::kWindow);
  while (start < E) {
    const int64_t end = std::min(start + fz::kWindow, E);
    ++rounds;
    for (int64_t i = start; i < end; ++i) bidding[i - start] = !st.decided[i] && fz::bid_step(st, i);
    for (int64_t i = start; i < end; ++i)
      if (bidding[i - start]) fz::commit_step(st, i);
    for (int64_t i = start; i < end; ++i)
      if (bidding[i - start]) fz::release_step(st, i);
    while (start < E && st.decided[start]) ++start;
  }
  return rounds;
}

// "reservations": the CUDA kernel's warp rounds, lanes one after the other.
template <typename Index>
void run_warp(std::vector<Index>& parent, std::vector<Index>& size, int64_t HW, int64_t E, double k, int32_t min_size,
              const fz::RoundRules& rules, ImageScratch& s, int32_t* labels, int32_t* rounds) {
  parent.resize(HW), size.resize(HW), s.tau.resize(HW);
  const fz::Forest<Index> forest{parent.data(), size.data(), s.tau.data()};
  fz::segment_warp(warp::Warp{}, *s.warp, forest, s.edges.data(), HW, E, k, min_size, rules, labels, rounds);
}

void segment_image(const double* img, int64_t C, int64_t H, int64_t W, at::ArrayRef<double> weights, double k,
                   int64_t min_size, Algorithm algorithm, const fz::RoundRules& rules, int64_t shared_limit,
                   ImageScratch& s, int32_t* labels, int32_t* rounds) {
  const int64_t HW = H * W, E = fz::edge_counts(H, W).total();
  smooth_image(img, C, H, W, weights, s);
  sorted_edges(C, H, W, s);
  if (algorithm == Algorithm::kReservations) {
    s.edges.resize(E);
    for (int64_t i = 0; i < E; ++i) s.edges[i] = {s.ep[i], s.eq[i], s.ew[i]};
    // The index type of the state follows the layout the CUDA kernel would use for this image.
    if (fz::warp_plan(HW, shared_limit).layout == fz::StateLayout::kGlobal)
      run_warp(s.parent, s.size, HW, E, k, fz::min_size_i32(min_size), rules, s, labels, rounds);
    else
      run_warp(s.parent16, s.size16, HW, E, k, fz::min_size_i32(min_size), rules, s, labels, rounds);
    return;
  }
  s.parent.resize(HW), s.size.assign(HW, 1), s.cint.assign(HW, 0.0), s.bids.assign(HW, fz::kNoBid);
  for (int64_t p = 0; p < HW; ++p) s.parent[p] = static_cast<int32_t>(p);
  s.ra.resize(E), s.rb.resize(E);
  fz::PassState st{s.ep.data(), s.eq.data(), s.ew.data(), s.parent.data(), s.size.data(), s.cint.data(),
                   s.bids.data(), nullptr, s.ra.data(), s.rb.data(), k, fz::min_size_i32(min_size), false};
  for (int pass = 0; pass < 2; ++pass) {
    st.min_size_pass = pass == 1;
    s.decided.assign(E, 0);
    st.decided = s.decided.data();
    rounds[pass] = algorithm == Algorithm::kBlock ? run_block(st, E) : run_sequential(st, E);
  }
  fz::number_components(s.parent.data(), HW, labels);
}

std::tuple<at::Tensor, at::Tensor> felzenszwalb_cpu(const at::Tensor& images_, at::ArrayRef<double> weights,
                                                    double k, int64_t min_size, c10::string_view algorithm_name,
                                                    int64_t window, bool compact, bool prefilter, bool chain,
                                                    int64_t shared_limit) {
  check_images(images_, k, min_size);
  const Algorithm algorithm = fz::parse_algorithm(algorithm_name);
  const fz::RoundRules rules = fz::round_rules(window, compact, prefilter, chain);
  const int64_t limit = fz::shared_limit_for(shared_limit, fz::kSm90SharedBytes);
  const auto images = images_.contiguous();
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  auto labels = at::empty({N, H, W}, images.options().dtype(at::kInt));
  auto rounds = at::zeros({N, 2}, images.options().dtype(at::kInt));
  const double* pi = images.const_data_ptr<double>();
  int32_t* pl = labels.mutable_data_ptr<int32_t>();
  int32_t* pr = rounds.mutable_data_ptr<int32_t>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    ImageScratch scratch;
    for (int64_t n = begin; n < end; ++n)
      segment_image(pi + n * C * H * W, C, H, W, weights, k, min_size, algorithm, rules, limit, scratch,
                    pl + n * H * W, pr + 2 * n);
  });
  return {labels, rounds};
}

std::vector<int64_t> felzenszwalb_plan(int64_t pixels, int64_t shared_limit) {
  TORCH_CHECK(pixels > 0 && pixels < (int64_t(1) << 30), "felzenszwalb_plan: pixels must be in [1, 2^30), got ",
              pixels);
  TORCH_CHECK(shared_limit >= 0, "felzenszwalb_plan: shared_limit must be >= 0, got ", shared_limit);
  const fz::WarpPlan plan = fz::warp_plan(pixels, shared_limit);
  return {static_cast<int64_t>(plan.layout), plan.shared_bytes};
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("felzenszwalb", &felzenszwalb_cpu);
}

// No tensor arguments: one kernel for every device.
TORCH_LIBRARY_IMPL(walnet, CompositeExplicitAutograd, m) {
  m.impl("felzenszwalb_plan", &felzenszwalb_plan);
}

}  // namespace walnet
