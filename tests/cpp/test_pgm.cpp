// C++ smoke test of libwalnet: calls the registered PGM ops through the dispatcher and checks
// them against plain loops written here from the definition (docs/design.md §4).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <map>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

at::Tensor call_pseudo_mask(const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& a3,
                            const at::Tensor& labels, double threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("walnet::pseudo_mask", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double)>();
  return op.call(a1, a2, a3, labels, threshold);
}

at::Tensor normalise(const at::Tensor& x) {
  return (x - x.min()) / (x.max() - x.min());
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t H = 12, W = 8;
  // a2 and a3 at half and quarter size: nearest upsampling by 2 and 4 is exact index division.
  auto a1 = at::rand({1, H, W}), a2 = at::rand({1, H / 2, W / 2}), a3 = at::rand({1, H / 4, W / 4});
  auto labels = at::randint(0, 5, {1, H, W}, at::kInt);
  const double threshold = 0.3;

  auto up2 = a2.repeat_interleave(2, 1).repeat_interleave(2, 2);
  auto up3 = a3.repeat_interleave(4, 1).repeat_interleave(4, 2);
  auto fused = normalise(normalise(a1) * normalise(up2) * normalise(up3));
  std::map<int, std::pair<double, int>> seg;
  auto f = fused.accessor<float, 3>();
  auto l = labels.accessor<int, 3>();
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      seg[l[0][y][x]].first += f[0][y][x];
      seg[l[0][y][x]].second += 1;
    }

  auto mask = call_pseudo_mask(a1, a2, a3, labels, threshold);
  expect(mask.scalar_type() == at::kByte, "pseudo_mask returns uint8");
  expect(mask.sizes() == a1.sizes(), "pseudo_mask keeps a1's shape");
  auto m = mask.accessor<uint8_t, 3>();
  int checked = 0;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      const auto& s = seg[l[0][y][x]];
      const double mean = s.first / s.second;
      if (std::abs(mean - threshold) < 1e-6) continue;
      expect(m[0][y][x] == (mean >= threshold ? 1 : 0), "pixel equals the loop definition");
      ++checked;
    }
  expect(checked > H * W / 2, "most pixels were checked");

  auto constant = at::ones({1, H, W});
  auto degenerate = call_pseudo_mask(constant, a2, a3, labels, threshold);
  expect(degenerate.eq(255).all().item<bool>(), "constant map -> 255 everywhere");

  std::printf("%s\n", failures == 0 ? "test_pgm: all checks passed" : "test_pgm: FAILED");
  return failures == 0 ? 0 : 1;
}
