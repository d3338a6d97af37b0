// Per-element logic of the Felzenszwalb op (docs/design.md §6), shared by the CPU and CUDA builds:
// scipy's Gaussian smoothing sample, skimage's edge list and weights, the float32-rounded merge
// predicate, union-find, and the rounds of the "block" algorithm (Kruskal by deterministic
// reservations, one 1,024-thread block per image; the warp's rounds are in warp_rounds.h).
//
// Floating-point order is skimage's / scipy's, so that the output equals skimage bit for bit;
// build with -ffp-contract=off (host) and -fmad=false (device).
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/macros.h"

namespace walnet {
namespace fz {

// scipy.ndimage mode="reflect" (d c b a | a b c d | d c b a), for any distance outside the line.
WALNET_HD int64_t reflect(int64_t i, int64_t n) {
  const int64_t period = 2 * n;
  int64_t m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

// One output sample of scipy's correlate1d with a symmetric kernel: w[0] is the centre weight,
// w[j] the weight at distance j (j = 1..r). scipy: out = in[0] * w[0], then for j = r down to 1,
// out += (in[-j] + in[j]) * w[j].
WALNET_HD double smooth_sample(const double* line, int64_t stride, int64_t n, int64_t i, const double* w, int64_t r) {
  double out = line[i * stride] * w[0];
  for (int64_t j = r; j >= 1; --j) out += (line[reflect(i - j, n) * stride] + line[reflect(i + j, n) * stride]) * w[j];
  return out;
}

// skimage's edges, in its order: right, down, down-right, up-right, each in raster order.
struct EdgeCounts {
  int64_t right, down, diag;  // diag: each of down-right and up-right
  WALNET_HD int64_t total() const { return right + down + 2 * diag; }
};

WALNET_HD EdgeCounts edge_counts(int64_t H, int64_t W) {
  return {H * (W - 1), (H - 1) * W, (H - 1) * (W - 1)};
}

// Endpoints (p, q) of edge e as pixel indices (q is the later pixel of skimage's difference).
WALNET_HD void edge_endpoints(int64_t e, int64_t H, int64_t W, int32_t* p, int32_t* q) {
  const EdgeCounts c = edge_counts(H, W);
  int64_t a, b;
  if (e < c.right) {
    const int64_t y = e / (W - 1), x = e % (W - 1);
    a = y * W + x, b = a + 1;
  } else if ((e -= c.right) < c.down) {
    a = e, b = e + W;
  } else if ((e -= c.down) < c.diag) {
    const int64_t y = e / (W - 1), x = e % (W - 1);
    a = y * W + x, b = a + W + 1;
  } else {
    e -= c.diag;
    const int64_t y = e / (W - 1), x = e % (W - 1);
    a = y * W + x + 1, b = (y + 1) * W + x;
  }
  *p = static_cast<int32_t>(a);
  *q = static_cast<int32_t>(b);
}

// sqrt of the sum over channels (left to right) of the squared difference, as numpy computes it.
WALNET_HD double edge_weight(const double* img, int64_t C, int64_t HW, int32_t p, int32_t q) {
  double d = img[q] - img[p];
  double s = d * d;
  for (int64_t c = 1; c < C; ++c) {
    d = img[c * HW + q] - img[c * HW + p];
    s += d * d;
  }
  return sqrt(s);
}

// skimage's merge test: w < min(float32(cint_a + k / size_a), float32(cint_b + k / size_b)).
WALNET_HD bool should_merge(double w, double cint_a, int32_t size_a, double cint_b, int32_t size_b, double k) {
  const float ta = static_cast<float>(cint_a + k / static_cast<double>(size_a));
  const float tb = static_cast<float>(cint_b + k / static_cast<double>(size_b));
  return w < static_cast<double>(ta < tb ? ta : tb);
}

// min_size as the int32 that segment sizes are compared with. Any value above the largest image
// (2^30 pixels, checks.h) merges exactly as much, so a larger one is clamped, never wrapped.
WALNET_HD int32_t min_size_i32(int64_t min_size) {
  return min_size > 0x7fffffff ? 0x7fffffff : static_cast<int32_t>(min_size);
}

// Union-find whose root is the smallest pixel index of its component (parent[x] <= x).
WALNET_HD int32_t find_root(const int32_t* parent, int32_t x) {
  while (parent[x] < x) x = parent[x];
  return x;
}

// Joins two different roots; returns the surviving root (the smaller index).
WALNET_HD int32_t join_roots(int32_t* parent, int32_t a, int32_t b) {
  const int32_t lo = a < b ? a : b, hi = a < b ? b : a;
  parent[hi] = lo;
  return lo;
}

// --- Kruskal by deterministic reservations ------------------------------------------------
// Each round, every undecided edge of the window bids its sorted position on both of its
// current roots (atomic min); an edge that holds both bids is the earliest undecided edge
// touching either component, so committing it now gives exactly the sequential result, and the
// winners of one round touch disjoint roots.

// Sorted edges considered per round: the threads of the CUDA kernel's per-image block, and the
// CPU's window, so that both backends run (and report) the same rounds.
constexpr int kWindow = 1024;

constexpr int32_t kNoBid = 0x7fffffff;

WALNET_HD void bid(int32_t* slot, int32_t position) {
#if defined(__CUDA_ARCH__)
  atomicMin(slot, position);
#else
  int32_t cur = __atomic_load_n(slot, __ATOMIC_RELAXED);
  while (position < cur && !__atomic_compare_exchange_n(slot, &cur, position, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
#endif
}

// Root with path halving to the root found; parent[x] only ever moves to an ancestor, so
// concurrent finds (GPU threads of one round) may race benignly.
WALNET_HD int32_t find_compress(int32_t* parent, int32_t x) {
  const int32_t root = find_root(parent, x);
  while (parent[x] < x) {
    const int32_t next = parent[x];
    parent[x] = root;
    x = next;
  }
  return root;
}

// State of one image's pass over its sorted edges (arrays indexed by sorted position i, or by
// pixel for parent/size/cint/bids).
struct PassState {
  const int32_t* ep;  // endpoints and weight of the i-th lightest edge
  const int32_t* eq;
  const double* ew;
  int32_t* parent;
  int32_t* size;
  double* cint;
  int32_t* bids;      // per root: the smallest position bidding on it this round
  uint8_t* decided;   // per position
  int32_t* ra;        // per position: roots seen in this round's bid phase
  int32_t* rb;
  double k;
  int32_t min_size;
  bool min_size_pass;  // false: the merge pass; true: the min_size pass
};

// Decision of the earliest undecided edge on its two current roots a != b (both passes).
WALNET_HD void decide(const PassState& s, int64_t i, int32_t a, int32_t b) {
  if (!s.min_size_pass) {
    if (should_merge(s.ew[i], s.cint[a], s.size[a], s.cint[b], s.size[b], s.k)) {
      const int32_t r = join_roots(s.parent, a, b);
      s.size[r] = s.size[a] + s.size[b];
      s.cint[r] = s.ew[i];
    }
  } else if (s.size[a] < s.min_size || s.size[b] < s.min_size) {
    const int32_t r = join_roots(s.parent, a, b);
    s.size[r] = s.size[a] + s.size[b];
  }
}

// Round phase 1 for position i: drop edges already decided by the state (same component; or,
// in the min_size pass, both sides already large: sizes only grow), else bid on both roots.
// Returns true when the edge bid.
WALNET_HD bool bid_step(const PassState& s, int64_t i) {
  const int32_t a = find_compress(s.parent, s.ep[i]), b = find_compress(s.parent, s.eq[i]);
  if (a == b || (s.min_size_pass && s.size[a] >= s.min_size && s.size[b] >= s.min_size)) {
    s.decided[i] = 1;
    return false;
  }
  s.ra[i] = a;
  s.rb[i] = b;
  bid(s.bids + a, static_cast<int32_t>(i));
  bid(s.bids + b, static_cast<int32_t>(i));
  return true;
}

// Round phase 2 for a position that bid: commit it if it won both roots.
WALNET_HD void commit_step(const PassState& s, int64_t i) {
  const int32_t a = s.ra[i], b = s.rb[i];
  if (s.bids[a] == i && s.bids[b] == i) {
    decide(s, i, a, b);
    s.decided[i] = 1;
  }
}

// Round phase 3 for a position that bid: withdraw its bids for the next round.
WALNET_HD void release_step(const PassState& s, int64_t i) {
  s.bids[s.ra[i]] = kNoBid;
  s.bids[s.rb[i]] = kNoBid;
}

// Relabels components 0..n-1 in raster order of first appearance (skimage's np.unique
// numbering): the root of a component is its first pixel, so a pixel that is its own root opens
// a new label.
WALNET_HD void number_components(const int32_t* parent, int64_t HW, int32_t* labels) {
  int32_t next = 0;
  for (int64_t p = 0; p < HW; ++p) {
    const int32_t r = find_root(parent, static_cast<int32_t>(p));
    labels[p] = r == p ? next++ : labels[r];
  }
}

}  // namespace fz
}  // namespace walnet
