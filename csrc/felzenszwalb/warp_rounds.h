// Kruskal by deterministic reservations, one warp per image (docs/design.md §6): the round code
// of the CUDA kernel `kruskal_warp_kernel`, written once over the lanes of a warp
// (csrc/common/warp.h). The CPU kernel runs the very same steps (algorithm "reservations"), so on
// a machine without a GPU it reproduces the GPU kernel's labels and its round counts.
//
// A round over a window of up to 64 sorted, undecided edges (two slots per lane):
//   1. finds:   each slot's two current roots; an edge inside one component is
//               decided (dropped), and so, in the min_size pass, is one whose two sides both
//               have min_size pixels (sizes only grow);
//   2. bids:    every other slot sets its bit in the bid masks of its two roots (a hash table of
//               the round's roots in shared memory; OR is order-free);
//   3. commit:  a slot that is the lowest bit of both its roots' masks is the earliest undecided
//               edge on either component, so deciding it now is what the sequential pass does;
//               with the chain rule the lane then walks on along the smaller root's edges (below);
//   4. release: the bid table is emptied;
//   5. refill:  the undecided slots move to the front (ballots and popc), new edges fill the
//               rest from a ring of edges prefetched ahead with asynchronous copies.
// The rules (window 32 or 64, compaction, prefilter, chain) change the number of rounds, never
// the labels.
//
// The chain rule ("leaf chain"). The lane of a winning slot j0 = (r, s0), r < s0, walks r's
// window edges j = (r, s) in order and decides each while (a) j is the first window edge on s, or
// (b) every window edge on s goes to r (mask(s) is a subset of mask(r)): then every earlier edge
// on s is one this lane has already decided. It stops after merging an s that has window edges to
// other roots. Each root is touched by at most one lane per round, and every earlier edge on it
// was decided before, in order: the sequential result again.
#pragma once

#include <cstdint>

#include "../common/macros.h"
#include "../common/warp.h"

namespace walnet {
namespace fz {

// One sorted edge as the sort leaves it: endpoints and weight; 16 bytes, one asynchronous copy.
struct alignas(16) SortedEdge {
  int32_t p, q;
  double w;
};

// The rules of the rounds (see the top of the file); the labels never depend on them.
struct RoundRules {
  int32_t window;  // edges per round: 32 or 64 (one or two slots per lane)
  bool compact;    // the window holds the first `window` undecided edges (else the positions
                   // [first undecided, first undecided + window), decided ones included)
  bool prefilter;  // the min_size pass starts by dropping, for good, every edge whose two sides
                   // are one component or both have min_size pixels
  bool chain;      // the chain rule
};

constexpr int kMaxWindow = 64;
constexpr int kRing = 256;      // edges prefetched ahead of the window (a power of two)
constexpr int kBidTable = 256;  // hash slots for the <= 128 roots of a round (a power of two)
constexpr int32_t kNoRoot = -1;

// The warp's scratch in shared memory (the same struct on the host).
struct WarpScratch {
  SortedEdge ring[kRing];
  SortedEdge window[2][kMaxWindow];  // double-buffered: the refill moves slots between the two
  int32_t ra[kMaxWindow], rb[kMaxWindow];  // each slot's two roots this round
  float ta[kMaxWindow], tb[kMaxWindow];    // their thresholds at the start of the round
  int32_t bid_root[kBidTable];
  uint32_t bid_lo[kBidTable], bid_hi[kBidTable];  // bid masks: slots 0..31 and 32..63
  uint8_t decided[2][kMaxWindow];
};

// One image's union-find. The root of a component is its smallest pixel (parent[r] == r); `tau`
// of a root is skimage's merge threshold float32(cint + k / size), all that the merge test reads
// of cint, updated on merges only. Index: uint16_t where the state is in shared memory (images
// of up to 65,535 pixels), int32_t otherwise.
template <typename Index>
struct Forest {
  Index* parent;
  Index* size;
  float* tau;
};

// --- where the state lives ---------------------------------------------------------------------

// kShared: parent, size and tau in shared memory; kSplit: parent and size in shared memory, tau in
// global memory; kGlobal: all three in global memory (int32). The bids, window and ring are always
// in shared memory.
enum class StateLayout : int32_t { kShared = 0, kSplit = 1, kGlobal = 2 };

struct WarpPlan {
  StateLayout layout;
  int64_t shared_bytes;  // dynamic shared memory per warp (one warp per block)
};

// The largest dynamic shared memory of a block on sm_90 (227 KiB): the CPU emulation plans with
// it, so that it runs the instantiation an H100/H200 runs for the same image size.
constexpr int64_t kSm90SharedBytes = 232448;
constexpr int64_t kMaxU16Pixels = 65535;  // uint16 parent indices and sizes

WALNET_HD int64_t scratch_bytes() { return (static_cast<int64_t>(sizeof(WarpScratch)) + 15) / 16 * 16; }

WALNET_HD WarpPlan warp_plan(int64_t HW, int64_t shared_limit) {
  const int64_t base = scratch_bytes(), forest = 4 * HW;  // uint16 parent and size
  if (HW <= kMaxU16Pixels) {
    if (base + forest + 4 * HW <= shared_limit) return {StateLayout::kShared, base + forest + 4 * HW};
    if (base + forest <= shared_limit) return {StateLayout::kSplit, base + forest};
  }
  return {StateLayout::kGlobal, base};
}

// --- union-find --------------------------------------------------------------------------------
// Lanes that run concurrently only read the forest; a pointer is rewritten only by the lane that
// owns its component in that step (the lane deciding an edge owns both of its components), so no
// two lanes ever race on shared memory (compute-sanitizer's racecheck stays clean).

template <typename Index>
WALNET_HD int32_t root_of(const Index* parent, int32_t x) {
  while (true) {
    const int32_t p = parent[x];
    if (p == x) return x;
    x = p;
  }
}

// Root of x, every node on the way re-pointed at it (the caller owns x's component).
template <typename Index>
WALNET_HD int32_t compress_path(Index* parent, int32_t x) {
  const int32_t root = root_of(parent, x);
  while (x != root) {
    const int32_t next = parent[x];
    parent[x] = static_cast<Index>(root);
    x = next;
  }
  return root;
}

// --- the bid table -----------------------------------------------------------------------------

WALNET_HD int bid_home(int32_t root) {
  return static_cast<int>((static_cast<uint32_t>(root) * 2654435761u) >> 24) & (kBidTable - 1);
}

// Sets `slot`'s bit in the mask of `root` (claiming a hash slot for it if needed); returns the
// hash slot, which the release step clears (the root's first bidder does).
WALNET_HD int place_bid(WarpScratch& s, int32_t root, int slot) {
  int h = bid_home(root);
  while (true) {
    const int32_t seen = warp::atomic_cas(&s.bid_root[h], kNoRoot, root);
    if (seen == kNoRoot || seen == root) break;
    h = (h + 1) & (kBidTable - 1);
  }
  warp::atomic_or(slot < 32 ? &s.bid_lo[h] : &s.bid_hi[h], uint32_t(1) << (slot & 31));
  return h;
}

// The slots of this round's window that touch `root` (which bid this round).
WALNET_HD uint64_t bids_on(const WarpScratch& s, int32_t root) {
  int h = bid_home(root);
  while (s.bid_root[h] != root) h = (h + 1) & (kBidTable - 1);
  return (static_cast<uint64_t>(s.bid_hi[h]) << 32) | s.bid_lo[h];
}

WALNET_HD void clear_bid(WarpScratch& s, int h) {
  s.bid_root[h] = kNoRoot;
  s.bid_lo[h] = 0;
  s.bid_hi[h] = 0;
}

// --- one pass ----------------------------------------------------------------------------------

template <typename Index>
struct Pass {
  Forest<Index> f;
  const SortedEdge* edges;  // the pass's edges in sorted order
  int64_t count;
  double k;
  int32_t min_size;
  bool min_size_pass;  // false: the merge pass
};

// Edges [next, next + c) of the pass are read from the ring; the ring holds (or has requested)
// the edges [next, requested).
struct Feed {
  int64_t next = 0, requested = 0;
};

// Requests the edges [requested, next + kRing) of the pass into the ring, one group of
// asynchronous copies per lane. The ring slots they overwrite hold edges before `next`, which the
// refill has consumed (a warp.sync() separates the two).
template <typename Index>
WALNET_HD void top_up(const warp::Warp& warp, WarpScratch& s, const Pass<Index>& pass, Feed& feed) {
  const int64_t end = feed.next + kRing < pass.count ? feed.next + kRing : pass.count;
  const int64_t from = feed.requested;
  warp.each([&](int lane) {
    for (int64_t i = from + lane; i < end; i += warp::kLanes) warp::copy_async16(&s.ring[i & (kRing - 1)], &pass.edges[i]);
    warp::commit_async();
  });
  feed.requested = end > from ? end : from;
}

// Decides the edge of slot j between the component `hub` (the chain's, size and tau in
// registers) and the untouched root `other` (tau as at the start of the round). Returns whether
// they merged; then `hub` is the merged root.
template <typename Index>
WALNET_HD bool decide(const Pass<Index>& pass, double w, int32_t& hub, int32_t& hub_size, float& hub_tau,
                      int32_t other, float other_tau) {
  const int32_t other_size = pass.f.size[other];
  bool merge;
  if (pass.min_size_pass) {
    merge = hub_size < pass.min_size || other_size < pass.min_size;
  } else {
    // skimage: w < min(float32(cint_a + k / size_a), float32(cint_b + k / size_b)), as double.
    merge = w < static_cast<double>(hub_tau < other_tau ? hub_tau : other_tau);
  }
  if (!merge) return false;
  const int32_t lo = hub < other ? hub : other, hi = hub < other ? other : hub;
  pass.f.parent[hi] = static_cast<Index>(lo);
  hub = lo;
  hub_size += other_size;
  pass.f.size[lo] = static_cast<Index>(hub_size);
  if (!pass.min_size_pass) {
    hub_tau = static_cast<float>(w + pass.k / static_cast<double>(hub_size));  // cint = w
    pass.f.tau[lo] = hub_tau;
  }
  return true;
}

// The commit step of a slot j0 that won both its roots: decide it and, with the chain rule, the
// edges after it on its smaller root (see the top of the file). Marks every slot it decides.
template <typename Index>
WALNET_HD void commit_winner(WarpScratch& s, int cur, const Pass<Index>& pass, const RoundRules& rules, int j0,
                             uint64_t mask_a, uint64_t mask_b) {
  const int32_t a = s.ra[j0], b = s.rb[j0];
  const int32_t r = a < b ? a : b;
  const uint64_t mask_r = r == a ? mask_a : mask_b;
  int32_t hub = r, hub_size = pass.f.size[r];
  float hub_tau = r == a ? s.ta[j0] : s.tb[j0];
  uint64_t rest = mask_r & ~warp::below(j0);
  while (rest != 0) {
    const int j = warp::lowest64(rest);
    rest &= rest - 1;
    const bool r_is_a = s.ra[j] == r;
    const int32_t other = r_is_a ? s.rb[j] : s.ra[j];
    const uint64_t mask_other = j == j0 ? (r == a ? mask_b : mask_a) : bids_on(s, other);
    const bool only_to_r = (mask_other & ~mask_r) == 0;
    if (j != j0 && warp::lowest64(mask_other) != j && !only_to_r) break;
    s.decided[cur][j] = 1;
    if (root_of(pass.f.parent, other) == hub) continue;  // merged into the hub earlier in the chain
    const SortedEdge e = s.window[cur][j];
    const bool merged = decide(pass, e.w, hub, hub_size, hub_tau, other, r_is_a ? s.tb[j] : s.ta[j]);
    compress_path(pass.f.parent, e.p);  // this lane owns both sides: shorten the next finds
    compress_path(pass.f.parent, e.q);
    if (!rules.chain || (merged && !only_to_r)) break;
  }
}

// Runs one pass over pass.edges by reservation rounds; returns the number of rounds.
template <typename Index>
WALNET_HD int32_t run_pass(const warp::Warp& warp, WarpScratch& s, const Pass<Index>& pass, const RoundRules& rules) {
  const int slots = rules.window / warp::kLanes;  // per lane: 1 or 2
  Feed feed;
  top_up(warp, s, pass, feed);
  warp::wait_async<0>();
  warp.sync();
  int cur = 0, filled = 0;  // the window: slots [0, filled) of buffer `cur`
  int32_t rounds = 0;
  uint64_t keep = 0;  // slots that stay in the window
  while (true) {
    // Refill: the kept slots move to the front of the other buffer, in order; new edges from
    // the ring fill the rest.
    const int kept = warp::popc64(keep);
    const int64_t left = pass.count - feed.next;
    const int fresh = static_cast<int>(rules.window - kept < left ? rules.window - kept : left);
    const int64_t next = feed.next;
    warp.each([&](int lane) {
WALNET_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int slot = lane + warp::kLanes * h;
        if (h >= slots) break;
        if ((keep >> slot) & 1) {
          const int to = warp::popc64(keep & warp::below(slot));
          s.window[cur ^ 1][to] = s.window[cur][slot];
          s.decided[cur ^ 1][to] = rules.compact ? 0 : s.decided[cur][slot];
        }
        if (slot >= kept && slot < kept + fresh) {
          s.window[cur ^ 1][slot] = s.ring[(next + slot - kept) & (kRing - 1)];
          s.decided[cur ^ 1][slot] = 0;
        }
      }
    });
    feed.next += fresh;
    filled = kept + fresh;
    cur ^= 1;
    warp.sync();
    if (filled == 0) break;
    top_up(warp, s, pass, feed);
    ++rounds;

    // Finds and bids.
    warp::Lanes<bool> live[2];
    warp::Lanes<int> home_a[2], home_b[2];
    warp.each([&](int lane) {
WALNET_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int slot = lane + warp::kLanes * h;
        live[h][lane] = false;
        if (h >= slots || slot >= filled || s.decided[cur][slot]) continue;
        const SortedEdge e = s.window[cur][slot];
        const int32_t a = root_of(pass.f.parent, e.p), b = root_of(pass.f.parent, e.q);
        if (a == b || (pass.min_size_pass && pass.f.size[a] >= pass.min_size && pass.f.size[b] >= pass.min_size)) {
          s.decided[cur][slot] = 1;
          continue;
        }
        s.ra[slot] = a;
        s.rb[slot] = b;
        if (!pass.min_size_pass) {
          s.ta[slot] = pass.f.tau[a];
          s.tb[slot] = pass.f.tau[b];
        }
        home_a[h][lane] = place_bid(s, a, slot);
        home_b[h][lane] = place_bid(s, b, slot);
        live[h][lane] = true;
      }
    });
    warp.sync();

    // Commit: the winners (and their chains).
    warp::Lanes<bool> first_on_a[2], first_on_b[2];
    warp.each([&](int lane) {
WALNET_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int slot = lane + warp::kLanes * h;
        if (h >= slots || !live[h][lane]) continue;
        const uint64_t mask_a = bids_on(s, s.ra[slot]), mask_b = bids_on(s, s.rb[slot]);
        first_on_a[h][lane] = warp::lowest64(mask_a) == slot;
        first_on_b[h][lane] = warp::lowest64(mask_b) == slot;
        if (first_on_a[h][lane] && first_on_b[h][lane]) commit_winner(s, cur, pass, rules, slot, mask_a, mask_b);
      }
    });
    warp.sync();

    // Release the bids (each root's first bidder clears its entry); wait for the ring's edges of
    // the next refill (all but the copies issued this round, which the refill after next may need).
    warp.each([&](int lane) {
WALNET_UNROLL
      for (int h = 0; h < 2; ++h) {
        if (h >= slots || !live[h][lane]) continue;
        if (first_on_a[h][lane]) clear_bid(s, home_a[h][lane]);
        if (first_on_b[h][lane]) clear_bid(s, home_b[h][lane]);
      }
    });
    warp::wait_async<1>();
    warp.sync();

    // Which slots stay: the undecided ones (compact), or all from the first undecided one.
    warp::Lanes<bool> undecided[2];
    warp.each([&](int lane) {
WALNET_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int slot = lane + warp::kLanes * h;
        undecided[h][lane] = h < slots && slot < filled && !s.decided[cur][slot];
      }
    });
    uint64_t alive = warp.ballot(undecided[0]);
    if (slots == 2) alive |= static_cast<uint64_t>(warp.ballot(undecided[1])) << 32;
    if (rules.compact || alive == 0) {
      keep = alive;
    } else {
      const uint64_t in_window = filled == 64 ? ~uint64_t(0) : warp::below(filled);
      keep = in_window & ~warp::below(warp::lowest64(alive));
    }
  }
  warp::wait_async<0>();
  warp.sync();
  return rounds;
}

// Points every pixel straight at its root: the roots are found first (into `scratch`, HW ints),
// then written, so that no lane rewrites a pointer another lane is following.
template <typename Index>
WALNET_HD void flatten(const warp::Warp& warp, const Forest<Index>& f, int64_t HW, int32_t* scratch) {
  warp.each([&](int lane) {
    for (int64_t p = lane; p < HW; p += warp::kLanes) scratch[p] = root_of(f.parent, static_cast<int32_t>(p));
  });
  warp.sync();
  warp.each([&](int lane) {
    for (int64_t p = lane; p < HW; p += warp::kLanes) f.parent[p] = static_cast<Index>(scratch[p]);
  });
  warp.sync();
}

// The prefilter of the min_size pass on a flattened forest: keeps, in order and in place, the
// edges whose two sides are different components with one of them below min_size; returns how
// many. (An edge dropped here would be dropped by the finds of any later round: components only
// merge, sizes only grow.)
template <typename Index>
WALNET_HD int64_t prefilter(const warp::Warp& warp, SortedEdge* edges, int64_t E, const Forest<Index>& f,
                            int32_t min_size) {
  int64_t kept = 0;
  for (int64_t base = 0; base < E; base += warp::kLanes) {
    warp::Lanes<bool> keep;
    warp::Lanes<SortedEdge> e;
    warp.each([&](int lane) {
      keep[lane] = false;
      if (base + lane >= E) return;
      e[lane] = edges[base + lane];
      const int32_t a = f.parent[e[lane].p], b = f.parent[e[lane].q];
      keep[lane] = a != b && (f.size[a] < min_size || f.size[b] < min_size);
    });
    const uint32_t mask = warp.ballot(keep);
    warp.sync();  // every lane has read its edge before any is overwritten
    warp.each([&](int lane) {
      if (keep[lane]) edges[kept + warp::popc64(mask & warp::below(lane))] = e[lane];
    });
    kept += warp::popc64(mask);
  }
  warp.sync();
  return kept;
}

// Labels 0..n-1 in raster order of each component's first pixel (its root): the roots count
// themselves with a ballot, then every other pixel copies its root's label.
template <typename Index>
WALNET_HD void number_roots(const warp::Warp& warp, const Forest<Index>& f, int64_t HW, int32_t* labels) {
  int32_t carried = 0;
  for (int64_t base = 0; base < HW; base += warp::kLanes) {
    warp::Lanes<bool> is_root;
    warp.each([&](int lane) {
      const int64_t p = base + lane;
      is_root[lane] = p < HW && f.parent[p] == p;
    });
    const uint32_t mask = warp.ballot(is_root);
    warp.each([&](int lane) {
      if (is_root[lane]) labels[base + lane] = carried + warp::popc64(mask & warp::below(lane));
    });
    carried += warp::popc64(mask);
  }
  warp.sync();
  warp.each([&](int lane) {
    for (int64_t p = lane; p < HW; p += warp::kLanes) {
      if (f.parent[p] != p) labels[p] = labels[root_of(f.parent, static_cast<int32_t>(p))];
    }
  });
}

// One image: both passes over its sorted edges (overwritten by the prefilter), then the labels.
// rounds[0], rounds[1]: the rounds of the merge and min_size passes.
template <typename Index>
WALNET_HD void segment_warp(const warp::Warp& warp, WarpScratch& s, const Forest<Index>& f, SortedEdge* edges,
                            int64_t HW, int64_t E, double k, int32_t min_size, const RoundRules& rules,
                            int32_t* labels, int32_t* rounds) {
  // skimage's initial threshold: float32(cint + k / size) with cint = 0 and size = 1.
  const float tau0 = static_cast<float>(0.0 + k / 1.0);
  warp.each([&](int lane) {
    for (int64_t p = lane; p < HW; p += warp::kLanes) {
      f.parent[p] = static_cast<Index>(p);
      f.size[p] = 1;
      f.tau[p] = tau0;
    }
    for (int h = lane; h < kBidTable; h += warp::kLanes) clear_bid(s, h);
  });
  warp.sync();
  Pass<Index> pass{f, edges, E, k, min_size, false};
  const int32_t merge_rounds = run_pass(warp, s, pass, rules);
  pass.min_size_pass = true;
  if (rules.prefilter) {
    flatten(warp, f, HW, labels);  // the labels are written last: scratch until then
    pass.count = prefilter(warp, edges, E, f, min_size);
  }
  const int32_t min_size_rounds = run_pass(warp, s, pass, rules);
  number_roots(warp, f, HW, labels);
  warp.each([&](int lane) {
    if (lane == 0) rounds[0] = merge_rounds, rounds[1] = min_size_rounds;
  });
}

}  // namespace fz
}  // namespace walnet
