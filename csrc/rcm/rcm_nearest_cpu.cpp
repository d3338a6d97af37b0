// CPU kernels of crop_resize's nearest mode on tensors with unit W strides (contiguous) or unit
// C strides (channels_last): the fast paths, which copy values and compute nothing. Per sample,
// the taps are tabulated once for all its channels; output rows that repeat a source row are
// copies of the row above, and x86 builds upsample rows with AVX2 shuffles where the CPU has
// AVX2. Other strides, and bilinear, take the generic path of rcm_forward_cpu.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/strides.h"
#include "rcm.h"
#include "rcm_cpu.h"

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
using rcm::plane_grain;

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

}  // namespace

bool rcm::crop_nearest_cpu(const at::Tensor& features, const int32_t* pb, at::Tensor& out) {
  const Strides4 is = strides_of(features), os = strides_of(out);
  const bool planes = is.W == 1 && os.W == 1, pixels = is.C == 1 && os.C == 1;
  if (!planes && !pixels) return false;
  const int64_t N = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  const int64_t OH = out.size(2), OW = out.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cpu", [&] {
    const scalar_t* pf = features.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    if (planes) {
      at::parallel_for(0, N * C, plane_grain(OH * OW), [&](int64_t begin, int64_t end) {
        crop_nearest_planes(pf, is, po, os, pb, C, H, W, OH, OW, begin, end);
      });
    } else {
      at::parallel_for(0, N * OH, plane_grain(OW * C), [&](int64_t begin, int64_t end) {
        crop_nearest_pixels(pf, is, po, os, pb, C, H, W, OH, OW, begin, end);
      });
    }
  });
  return true;
}

}  // namespace walnet
