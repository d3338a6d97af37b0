// CPU kernels of the RCM ops. mask_boxes: one sample per task; crop_resize and its backward:
// runs of (sample, channel) planes per task, with the row/column taps (or, backward, the output
// pixels reading each source row/column) tabulated once per sample. Strided access, so
// contiguous and channels_last tensors need no copy; nearest has fast paths for unit W strides
// (and, forward, unit C strides).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/checks.h"
#include "../common/strides.h"
#include "rcm.h"

// x86 builds shuffle upsampled rows with AVX2 where the CPU has it (checked at run time).
#if defined(__x86_64__) && defined(__GNUC__)
#define WALNET_SHUFFLE 1
#include <immintrin.h>
#else
#define WALNET_SHUFFLE 0
#endif

namespace walnet {
namespace {

using rcm::Box;

at::Tensor mask_boxes_cpu(const at::Tensor& prob_, int64_t H, int64_t W, double threshold, double dilation) {
  check_map(prob_, "prob");
  check_size(H, W, "mask_boxes", "target");
  const auto prob = prob_.contiguous();
  const int64_t N = prob.size(0), h = prob.size(1), w = prob.size(2);
  auto out = at::empty({N, 4}, prob.options().dtype(at::kInt));
  int32_t* po = out.mutable_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "mask_boxes_cpu", [&] {
    const scalar_t* pp = prob.const_data_ptr<scalar_t>();
    const auto thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        Box b{H, W, -1, -1};
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x)
            if (rcm::is_foreground<at::opmath_type<scalar_t>>(pp + n * h * w, h, w, H, W, y, x, thr)) {
              b = {std::min(b.y1, y), std::min(b.x1, x), std::max(b.y2, y), std::max(b.x2, x)};
            }
        b = b.y2 < 0 ? Box{0, 0, H - 1, W - 1} : rcm::dilate(b, H, W, static_cast<double>(W) * dilation);
        int32_t* o = po + 4 * n;
        o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
      }
    });
  });
  return out;
}

// Planes per parallel task at least, so that small maps (7x7: 49 values a plane) are not split
// finer than the cost of waking a thread.
int64_t plane_grain(int64_t plane_size) { return std::max<int64_t>(1, 32768 / plane_size); }

// Nearest taps of one sample, tabulated once for all its channels: the source offset of every
// output row (box origin included) and whether it repeats the previous row (it is then a copy of
// that output row), and the source column of every output column as int32 (the index loads are
// the gather's main cost besides the copy itself).
struct NearestTaps {
  std::vector<int64_t> row;
  std::vector<uint8_t> repeat;
  std::vector<int32_t> col;
  bool unit_cols = false;  // col[ox] == ox: a row is a plain copy
  bool identity = false;   // the box is the whole map and the size unchanged: a plane is a copy

  NearestTaps(int64_t OH, int64_t OW) : row(OH), repeat(OH), col(OW) {}

  void tabulate(const Box& b, int64_t H, int64_t W, int64_t sH, int64_t sW) {
    const int64_t OH = static_cast<int64_t>(row.size()), OW = static_cast<int64_t>(col.size());
    const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
    for (int64_t oy = 0, prev = -1; oy < OH; ++oy) {
      const int64_t ry = nearest_src(oy, ch, OH);
      row[oy] = (b.y1 + ry) * sH + b.x1 * sW;
      repeat[oy] = ry == prev;
      prev = ry;
    }
    for (int64_t ox = 0; ox < OW; ++ox) col[ox] = static_cast<int32_t>(nearest_src(ox, cw, OW));
    unit_cols = cw == OW;
    identity = unit_cols && ch == OH && ch == H && cw == W;
  }
};

// Nearest crop-resize of planes c0..c1 of one sample, row by row: repeated source rows are
// copies of the output row above, the others a gather (a copy where the columns are the crop's).
template <typename scalar_t>
void crop_rows(const scalar_t* in, const Strides4& is, scalar_t* out, const Strides4& os, const NearestTaps& taps,
               int64_t c0, int64_t c1) {
  const int64_t OH = static_cast<int64_t>(taps.row.size()), OW = static_cast<int64_t>(taps.col.size());
  const int32_t* __restrict__ cols = taps.col.data();
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t* ip = in + c * is.C;
    scalar_t* op = out + c * os.C;
    for (int64_t oy = 0; oy < OH; ++oy) {
      scalar_t* __restrict__ orow = op + oy * os.H;
      if (taps.repeat[oy]) {
        std::copy_n(orow - os.H, OW, orow);
        continue;
      }
      const scalar_t* __restrict__ irow = ip + taps.row[oy];
      if (taps.unit_cols) {
        std::copy_n(irow, OW, orow);
      } else {
        for (int64_t ox = 0; ox < OW; ++ox) orow[ox] = irow[cols[ox]];
      }
    }
  }
}

#if WALNET_SHUFFLE
// Upsampling rows with x86 shuffles (AVX2, chosen at run time): when every chunk of `lanes`
// output columns reads at most `lanes` consecutive source columns, a chunk is one load, one
// shuffle and one store instead of `lanes` scalar gathers. Loads start at most `lanes` columns
// before the crop's right edge, so they stay inside the source row; the last chunk overlaps the
// one before it where OW is not a multiple of `lanes`.
struct RowShuffles {
  std::vector<int32_t> src, dst;  // first source and output column of every chunk
  std::vector<uint8_t> masks;     // 32 bytes per chunk: vpermd lanes, or pshufb bytes (2-byte types)

  static bool supported() {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2;
  }

  bool tabulate(const std::vector<int32_t>& cols, int64_t cw, size_t bytes) {
    const int64_t OW = static_cast<int64_t>(cols.size()), lanes = bytes == 8 ? 4 : 8;
    if (!supported() || OW < lanes || cw < lanes || cw == OW) return false;
    const int64_t chunks = (OW + lanes - 1) / lanes;
    src.resize(chunks), dst.resize(chunks), masks.assign(32 * chunks, 0);
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t d = std::min(k * lanes, OW - lanes), s = std::min<int64_t>(cols[d], cw - lanes);
      if (cols[d + lanes - 1] - s >= lanes) return false;  // downsampling: a chunk spans too far
      src[k] = static_cast<int32_t>(s), dst[k] = static_cast<int32_t>(d);
      uint8_t* m = &masks[32 * k];
      for (int64_t j = 0; j < lanes; ++j) {
        const int64_t i = cols[d + j] - s;  // source lane of output lane j
        if (bytes == 2) {
          m[2 * j] = static_cast<uint8_t>(2 * i), m[2 * j + 1] = static_cast<uint8_t>(2 * i + 1);
        } else {
          const int64_t words = static_cast<int64_t>(bytes / 4);  // vpermd moves 4-byte words
          for (int64_t w = 0; w < words; ++w) reinterpret_cast<int32_t*>(m)[words * j + w] = static_cast<int32_t>(words * i + w);
        }
      }
    }
    return true;
  }
};

template <size_t kBytes>
__attribute__((target("avx2"))) void crop_rows_shuffled(const char* in, const Strides4& is, char* out,
                                                        const Strides4& os, const NearestTaps& taps,
                                                        const RowShuffles& sh, int64_t c0, int64_t c1) {
  const int64_t OH = static_cast<int64_t>(taps.row.size());
  const int64_t chunks = static_cast<int64_t>(sh.src.size());
  for (int64_t c = c0; c < c1; ++c) {
    const char* ip = in + c * is.C * kBytes;
    char* op = out + c * os.C * kBytes;
    for (int64_t oy = 0; oy < OH;) {
      // The output rows oy..oy + reps - 1 read one source row: each chunk is shuffled once and
      // stored to all of them.
      int64_t reps = 1;
      while (oy + reps < OH && taps.repeat[oy + reps]) ++reps;
      const char* irow = ip + taps.row[oy] * kBytes;
      char* orow = op + oy * os.H * kBytes;
      const int64_t step = os.H * kBytes;
      for (int64_t k = 0; k < chunks; ++k) {
        const char* s = irow + sh.src[k] * kBytes;
        char* d = orow + sh.dst[k] * kBytes;
        const uint8_t* m = &sh.masks[32 * k];
        if constexpr (kBytes == 2) {
          const __m128i v = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)),
                                             _mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
          for (int64_t r = 0; r < reps; ++r) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + r * step), v);
        } else {
          const __m256i v = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)),
                                                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m)));
          for (int64_t r = 0; r < reps; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + r * step), v);
        }
      }
      oy += reps;
    }
  }
}
#endif

// Largest dense output plane gathered through one flat table of source offsets: a 7x7 plane is
// then one 49-step loop, not 7 row loops. Larger planes keep the rows, whose repeats are copies.
constexpr int64_t kFlatPlane = 1024;

// Nearest crop-resize of planes [begin, end) (plane = n * C + c) with unit W strides, a sample
// at a time so that its taps are tabulated once.
template <typename scalar_t>
void crop_nearest_planes(const scalar_t* pf, const Strides4& is, scalar_t* po, const Strides4& os, const int32_t* pb,
                         int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t begin, int64_t end) {
  NearestTaps taps(OH, OW);
  // int32 offsets must reach the whole input plane.
  const bool flat = OH * OW <= kFlatPlane && os.H == OW && (H - 1) * is.H + W < (int64_t(1) << 31);
  std::vector<int32_t> table(flat ? OH * OW : 0);
#if WALNET_SHUFFLE
  RowShuffles shuffles;
#endif
  const bool dense = is.H == W && os.H == OW;  // planes without gaps between rows
  for (int64_t plane = begin; plane < end;) {
    const int64_t n = plane / C, c0 = plane % C, c1 = std::min(C, c0 + (end - plane));
    plane += c1 - c0;
    const Box b = rcm::load_box(pb, n, H, W);
    taps.tabulate(b, H, W, is.H, 1);
    const scalar_t* in = pf + n * is.N;
    scalar_t* out = po + n * os.N;
    if (taps.identity && dense) {
      if (is.C == H * W && os.C == H * W) {
        std::copy_n(in + c0 * is.C, (c1 - c0) * H * W, out + c0 * os.C);
      } else {
        for (int64_t c = c0; c < c1; ++c) std::copy_n(in + c * is.C, H * W, out + c * os.C);
      }
      continue;
    }
#if WALNET_SHUFFLE
    if (shuffles.tabulate(taps.col, b.x2 - b.x1 + 1, sizeof(scalar_t))) {
      crop_rows_shuffled<sizeof(scalar_t)>(reinterpret_cast<const char*>(in), is, reinterpret_cast<char*>(out), os, taps,
                                           shuffles, c0, c1);
      continue;
    }
#endif
    if (flat) {
      int32_t* __restrict__ t = table.data();
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) t[oy * OW + ox] = static_cast<int32_t>(taps.row[oy] + taps.col[ox]);
      const int64_t size = OH * OW;
      int64_t c = c0;
      // Four channels per pass: one index load for four copies.
      for (; c + 4 <= c1; c += 4) {
        const scalar_t* __restrict__ i0 = in + c * is.C;
        const scalar_t* __restrict__ i1 = i0 + is.C;
        const scalar_t* __restrict__ i2 = i1 + is.C;
        const scalar_t* __restrict__ i3 = i2 + is.C;
        scalar_t* __restrict__ o0 = out + c * os.C;
        scalar_t* __restrict__ o1 = o0 + os.C;
        scalar_t* __restrict__ o2 = o1 + os.C;
        scalar_t* __restrict__ o3 = o2 + os.C;
        for (int64_t k = 0; k < size; ++k) {
          const int32_t j = t[k];
          o0[k] = i0[j], o1[k] = i1[j], o2[k] = i2[j], o3[k] = i3[j];
        }
      }
      for (; c < c1; ++c) {
        const scalar_t* __restrict__ i0 = in + c * is.C;
        scalar_t* __restrict__ o0 = out + c * os.C;
        for (int64_t k = 0; k < size; ++k) o0[k] = i0[t[k]];
      }
      continue;
    }
    crop_rows(in, is, out, os, taps, c0, c1);
  }
}

// Nearest crop-resize of channels_last maps (unit C strides), output rows [begin, end)
// (row = n * OH + oy): every output pixel is a copy of the C channels of one source pixel.
template <typename scalar_t>
void crop_nearest_pixels(const scalar_t* pf, const Strides4& is, scalar_t* po, const Strides4& os, const int32_t* pb,
                         int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t begin, int64_t end) {
  NearestTaps taps(OH, OW);
  int64_t tabulated = -1;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / OH, oy = r % OH;
    if (n != tabulated) {
      taps.tabulate(rcm::load_box(pb, n, H, W), H, W, is.H, is.W);
      tabulated = n;
    }
    scalar_t* orow = po + n * os.N + oy * os.H;
    if (taps.repeat[oy] && oy > 0 && os.W == C) {
      std::copy_n(orow - os.H, OW * C, orow);
      continue;
    }
    const scalar_t* irow = pf + n * is.N + taps.row[oy];
    for (int64_t ox = 0; ox < OW; ++ox) std::copy_n(irow + taps.col[ox] * is.W, C, orow + ox * os.W);
  }
}

at::Tensor crop_resize_cpu(const at::Tensor& features, const at::Tensor& boxes_, int64_t OH, int64_t OW,
                           bool bilinear) {
  check_crop(features, "features", boxes_, OH, OW, "crop_resize", "output");
  const auto boxes = boxes_.contiguous();
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  auto out = rcm::crop_output(features, OH, OW);
  if (out.numel() == 0) return out;
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pf = features.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const Strides4 is = strides_of(features), os = strides_of(out);
    if (!bilinear && is.W == 1 && os.W == 1) {
      at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
        crop_nearest_planes(pf, is, po, os, pb, C, H, W, OH, OW, begin, end);
      });
      return;
    }
    if (!bilinear && is.C == 1 && os.C == 1) {
      at::parallel_for(0, N * OH, plane_grain(OW * C), [&](int64_t begin, int64_t end) {
        crop_nearest_pixels(pf, is, po, os, pb, C, H, W, OH, OW, begin, end);
      });
      return;
    }
    // Strides as locals: the compiler cannot prove that writes through `po` leave them unchanged.
    const int64_t isH = is.H, isW = is.W, osH = os.H, osW = os.W;
    at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
      std::vector<Tap<T>> ty(OH), tx(OW);
      int64_t tabulated = -1;  // the sample whose taps are in ty / tx
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        if (n != tabulated) {
          for (int64_t oy = 0; oy < OH; ++oy) ty[oy] = resize_tap<T>(oy, b.y2 - b.y1 + 1, OH, bilinear);
          for (int64_t ox = 0; ox < OW; ++ox) tx[ox] = resize_tap<T>(ox, b.x2 - b.x1 + 1, OW, bilinear);
          tabulated = n;
        }
        const scalar_t* in = pf + n * is.N + c * is.C;
        scalar_t* o = po + n * os.N + c * os.C;
        for (int64_t oy = 0; oy < OH; ++oy) {
          scalar_t* orow = o + oy * osH;
          for (int64_t ox = 0; ox < OW; ++ox)
            orow[ox * osW] = static_cast<scalar_t>(rcm::crop_value<T>(in, isH, isW, b, ty[oy], tx[ox], bilinear));
        }
      }
    });
  });
  return out;
}

// The output indices reading each source index of a nearest resize from `in` to `out`: the
// first (clamped to a valid index when there is none) and how many (consecutive ones).
struct Readers {
  std::vector<int32_t> first, count;
  int32_t most = 0;  // the largest count

  void tabulate(int64_t in, int64_t out) {
    first.assign(in, 0);
    count.assign(in, 0);
    for (int64_t o = 0; o < out; ++o) {
      const int64_t s = nearest_src(o, in, out);
      if (count[s]++ == 0) first[s] = static_cast<int32_t>(o);
    }
    most = *std::max_element(count.begin(), count.end());
  }
};

// acc[rx] = 0 + s (first row of a source row's readers) or acc[rx] + s (the next ones), s being
// the row sum 0 + g[ox_first] + g[ox_first + 1] + ... of source column rx. Every column sums a
// fixed kMost (or `most`) terms, the ones past its count being +0: s is never -0 (it starts
// from +0), so s + 0 == s bitwise, and the loop has no data-dependent branch.
template <bool kFirst, int kMost, typename T, typename scalar_t>
void nearest_row_grad(const scalar_t* grow, int64_t gW, const Readers& cols, int64_t cw, T* acc) {
  const int32_t* first = cols.first.data();
  const int32_t* count = cols.count.data();
  const int32_t most = kMost > 0 ? kMost : cols.most;
  for (int64_t rx = 0; rx < cw; ++rx) {
    const scalar_t* gp = grow + first[rx] * gW;
    const int32_t k = count[rx];
    T s = T(0) + (k > 0 ? static_cast<T>(gp[0]) : T(0));
    for (int32_t j = 1; j < most; ++j) s += j < k ? static_cast<T>(gp[j * gW]) : T(0);
    acc[rx] = kFirst ? T(0) + s : acc[rx] + s;
  }
}

// Nearest backward of planes [begin, end) (plane = n * C + c) as a stream over the gradient's
// rows, with the summation order of rcm::crop_grad: every source pixel gets 0 + rowsum(oy_first)
// + rowsum(oy_first + 1) + ..., each row sum being 0 + g[ox_first] + g[ox_first + 1] + ... in
// increasing ox. Same bits as the gather (and the CUDA kernel), at the cost of one pass over the
// gradient. The readers of every source row and column are tabulated once per sample.
template <typename T, typename scalar_t>
void nearest_planes_grad(const scalar_t* pg, const Strides4& gs, scalar_t* po, const Strides4& os, const int32_t* pb,
                         int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t begin, int64_t end) {
  Readers rows, cols;
  // float and double sum straight into a unit-stride output row; half and bfloat16 in T.
  constexpr bool kInPlace = std::is_same_v<T, scalar_t>;
  std::vector<T> buffer(W);
  for (int64_t plane = begin; plane < end;) {
    const int64_t n = plane / C, c0 = plane % C, c1 = std::min(C, c0 + (end - plane));
    plane += c1 - c0;
    const Box b = rcm::load_box(pb, n, H, W);
    const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
    rows.tabulate(ch, OH);
    cols.tabulate(cw, OW);
    // The column count as a compile-time constant where it is small (crops of at least a
    // quarter of the output), so that the inner loop unrolls.
    const auto row_grad = [&](auto first, const scalar_t* grow, T* acc) {
      constexpr bool kFirst = decltype(first)::value;
      if (cw == OW && gs.W == 1) {  // every column read once, in place: vectorisable
        for (int64_t rx = 0; rx < cw; ++rx) {
          const T s = T(0) + static_cast<T>(grow[rx]);
          acc[rx] = kFirst ? T(0) + s : acc[rx] + s;
        }
        return;
      }
      switch (cols.most) {
        case 1: return nearest_row_grad<kFirst, 1>(grow, gs.W, cols, cw, acc);
        case 2: return nearest_row_grad<kFirst, 2>(grow, gs.W, cols, cw, acc);
        case 3: return nearest_row_grad<kFirst, 3>(grow, gs.W, cols, cw, acc);
        case 4: return nearest_row_grad<kFirst, 4>(grow, gs.W, cols, cw, acc);
        default: return nearest_row_grad<kFirst, 0>(grow, gs.W, cols, cw, acc);
      }
    };
    for (int64_t c = c0; c < c1; ++c) {
      const scalar_t* g = pg + n * gs.N + c * gs.C;
      scalar_t* o = po + n * os.N + c * os.C;
      const auto zero = [&](scalar_t* p, int64_t count) {
        for (int64_t i = 0; i < count; ++i) p[i * os.W] = scalar_t(0);
      };
      for (int64_t iy = 0; iy < b.y1; ++iy) zero(o + iy * os.H, W);
      for (int64_t iy = b.y2 + 1; iy < H; ++iy) zero(o + iy * os.H, W);
      for (int64_t ry = 0; ry < ch; ++ry) {
        scalar_t* orow = o + (b.y1 + ry) * os.H;
        zero(orow, b.x1);
        zero(orow + (b.x2 + 1) * os.W, W - b.x2 - 1);
        T* acc = buffer.data();
        if constexpr (kInPlace) {
          if (os.W == 1) acc = orow + b.x1;
        }
        const int64_t oy0 = rows.first[ry], oy1 = oy0 + rows.count[ry];
        if (oy0 == oy1) {
          std::fill_n(acc, cw, T(0));
        } else {
          row_grad(std::true_type{}, g + oy0 * gs.H, acc);
          for (int64_t oy = oy0 + 1; oy < oy1; ++oy) row_grad(std::false_type{}, g + oy * gs.H, acc);
        }
        if (acc == buffer.data())
          for (int64_t rx = 0; rx < cw; ++rx) orow[(b.x1 + rx) * os.W] = static_cast<scalar_t>(acc[rx]);
      }
    }
  }
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes_, int64_t H, int64_t W,
                                    bool bilinear) {
  check_crop(grad, "grad", boxes_, H, W, "crop_resize_backward", "input");
  const auto boxes = boxes_.contiguous();
  const int64_t N = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  auto out = rcm::crop_output(grad, H, W);
  const int32_t* pb = boxes.const_data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = grad.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const Strides4 gs = strides_of(grad), os = strides_of(out);
    if (!bilinear) {
      at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
        nearest_planes_grad<T>(pg, gs, po, os, pb, C, H, W, OH, OW, begin, end);
      });
      return;
    }
    const int64_t gsH = gs.H, gsW = gs.W, osH = os.H, osW = os.W;
    at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
      std::vector<Range> rows(H), cols(W);
      int64_t tabulated = -1;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        const Box b = rcm::load_box(pb, n, H, W);
        const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1;
        if (n != tabulated) {
          for (int64_t ry = 0; ry < ch; ++ry) rows[ry] = readers_of<T>(ry, ch, OH, true);
          for (int64_t rx = 0; rx < cw; ++rx) cols[rx] = readers_of<T>(rx, cw, OW, true);
          tabulated = n;
        }
        const scalar_t* g = pg + n * gs.N + c * gs.C;
        scalar_t* o = po + n * os.N + c * os.C;
        for (int64_t iy = 0; iy < H; ++iy) {
          scalar_t* orow = o + iy * osH;
          const bool row_inside = iy >= b.y1 && iy <= b.y2;
          for (int64_t ix = 0; ix < W; ++ix) {
            if (!row_inside || ix < b.x1 || ix > b.x2) {
              orow[ix * osW] = scalar_t(0);
              continue;
            }
            const int64_t ry = iy - b.y1, rx = ix - b.x1;
            orow[ix * osW] = static_cast<scalar_t>(
                rcm::crop_grad<T>(g, gsH, gsW, ch, cw, OH, OW, ry, rx, rows[ry], cols[rx], true));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CPU, m) {
  m.impl("mask_boxes", &mask_boxes_cpu);
  m.impl("crop_resize", &crop_resize_cpu);
  m.impl("crop_resize_backward", &crop_resize_backward_cpu);
}

}  // namespace walnet
