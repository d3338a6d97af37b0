// C++ test of the one-pass RCM's table logic (csrc/rcm/rcm.h, docs/design.md §5), exhaustive for
// every nearest resize between 1 and 64: the reader table inverted from the monotone source index
// (what the CUDA kernel of crop_levels_backward builds, one entry per thread and no search) equals
// readers_of's binary search and the readers counted from the definition, and every entry is
// written exactly once; the per-pixel gradient sum over the table's ranges (nearest_grad, 32-bit
// offsets) equals crop_grad's bit for bit on random gradients.
#include <cstdio>
#include <random>
#include <vector>

#include "rcm/rcm.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, int64_t in, int64_t out, int64_t s) {
  if (!ok && ++failures <= 20) std::fprintf(stderr, "FAILED: %s (in %ld, out %ld, source %ld)\n", what, in, out, s);
}

// The inverted table of in -> out, and how many times invert_readers wrote each entry.
std::vector<int32_t> inverted(int64_t in, int64_t out, std::vector<int>& writes) {
  std::vector<int32_t> begin(in + 1, -7);
  writes.assign(in + 1, 0);
  for (int64_t o = 0; o < out; ++o) {
    std::vector<int32_t> alone(in + 1, -7);  // what this output index writes on its own
    walnet::rcm::invert_readers(o, in, out, alone.data());
    for (int64_t k = 0; k <= in; ++k)
      if (alone[k] != -7) ++writes[k], begin[k] = alone[k];
  }
  return begin;
}

void check_tables(int64_t in, int64_t out) {
  std::vector<int> writes;
  const std::vector<int32_t> begin = inverted(in, out, writes);
  for (int64_t k = 0; k <= in; ++k) expect(writes[k] == 1, "entry written exactly once", in, out, k);
  expect(begin[in] == out, "the table ends at out", in, out, in);
  for (int64_t s = 0; s < in; ++s) {
    const walnet::Range got = walnet::rcm::reader_range(begin.data(), s);
    const walnet::Range searched = walnet::readers_of<float>(s, in, out, false);
    expect(got.begin == searched.begin && got.end == searched.end, "range equals readers_of", in, out, s);
    // From the definition: the outputs whose source is s, consecutive; none -> empty at the
    // first output whose source is past s.
    int64_t first = out, count = 0;
    for (int64_t o = out - 1; o >= 0; --o) {
      const int64_t src = walnet::nearest_src(o, in, out);
      if (src >= s) first = o;
      count += src == s;
    }
    expect(got.begin == first && got.end - got.begin == count, "range equals the counted readers", in, out, s);
  }
}

// Every source pixel of a ch x cw crop resized to oh x ow: nearest_grad over the inverted tables
// (as the CUDA kernel) against crop_grad over readers_of (crop_resize_backward's CUDA kernel).
void check_grad(int64_t ch, int64_t cw, int64_t oh, int64_t ow, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> grad(oh * ow);
  for (float& g : grad) g = normal(rng);
  std::vector<int> writes;
  const std::vector<int32_t> rows = inverted(ch, oh, writes), cols = inverted(cw, ow, writes);
  for (int64_t ry = 0; ry < ch; ++ry)
    for (int64_t rx = 0; rx < cw; ++rx) {
      const float got = walnet::rcm::nearest_grad<float, int32_t>(grad.data(), static_cast<int32_t>(ow), 1,
                                                                  walnet::rcm::reader_range(rows.data(), ry),
                                                                  walnet::rcm::reader_range(cols.data(), rx));
      const float want = walnet::rcm::crop_grad<float>(grad.data(), ow, 1, ch, cw, oh, ow, ry, rx,
                                                       walnet::readers_of<float>(ry, ch, oh, false),
                                                       walnet::readers_of<float>(rx, cw, ow, false), false);
      expect(got == want || (got != got && want != want), "nearest_grad equals crop_grad", ch * 1000 + cw,
             oh * 1000 + ow, ry * 1000 + rx);
    }
}

}  // namespace

int main() {
  int64_t pairs = 0;
  for (int64_t in = 1; in <= 64; ++in)
    for (int64_t out = 1; out <= 64; ++out, ++pairs) check_tables(in, out);
  std::mt19937 rng(0);
  std::uniform_int_distribution<int64_t> size(1, 64);
  for (int trial = 0; trial < 400; ++trial) check_grad(size(rng), size(rng), size(rng), size(rng), rng);
  std::printf("test_rcm_tables: %ld resizes, 400 crops: %s\n", pairs, failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
