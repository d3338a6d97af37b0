// CUDA kernels of the RCM ops: mask_boxes with one block per sample (integer min/max over the
// source map in shared memory), crop_resize with one thread per output element, and its backward with one thread per
// input element gathering the output pixels that read it (no atomics: deterministic).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/strides.h"
#include "../common/cuda_launch.cuh"
#include "rcm.h"

namespace walnet {
namespace {

using rcm::Box;

template <typename scalar_t>
__global__ void mask_boxes_kernel(const scalar_t* prob, int64_t h, int64_t w, int64_t H, int64_t W,
                                  scalar_t threshold, double r, int32_t* out) {
  __shared__ unsigned long long lo_y, lo_x;
  __shared__ long long hi_y, hi_x;
  if (threadIdx.x == 0) {
    lo_y = h, lo_x = w, hi_y = -1, hi_x = -1;
  }
  __syncthreads();
  const int64_t n = blockIdx.x;
  const scalar_t* p = prob + n * h * w;
  // The box is found on the h x w source map, over the rows and columns the resize reads.
  for (int64_t i = threadIdx.x; i < h * w; i += kBlock) {
    const int64_t r = i / w, c = i % w;
    if (rcm::is_read(r, h, H) && rcm::is_read(c, w, W) &&
        rcm::is_foreground<at::opmath_type<scalar_t>>(p, w, r, c, threshold)) {
      atomicMin(&lo_y, static_cast<unsigned long long>(r));
      atomicMin(&lo_x, static_cast<unsigned long long>(c));
      atomicMax(&hi_y, static_cast<long long>(r));
      atomicMax(&hi_x, static_cast<long long>(c));
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Box b{static_cast<int64_t>(lo_y), static_cast<int64_t>(lo_x), hi_y, hi_x};
    b = b.y2 < 0 ? Box{0, 0, H - 1, W - 1} : rcm::dilate(rcm::target_box(b, h, w, H, W), H, W, r);
    int32_t* o = out + 4 * n;
    o[0] = b.y1, o[1] = b.x1, o[2] = b.y2, o[3] = b.x2;
  }
}

template <typename scalar_t>
__global__ void crop_resize_kernel(const scalar_t* in, Strides4 is, const int32_t* boxes, int64_t C, int64_t H,
                                   int64_t W, int64_t OH, int64_t OW, bool bilinear, scalar_t* out, Strides4 os,
                                   int64_t total) {
  using T = at::opmath_type<scalar_t>;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t ox = i % OW, oy = (i / OW) % OH, c = (i / (OW * OH)) % C, n = i / (OW * OH * C);
    const Box b = rcm::load_box(boxes, n, H, W);
    const Tap<T> ty = resize_tap<T>(oy, b.y2 - b.y1 + 1, OH, bilinear);
    const Tap<T> tx = resize_tap<T>(ox, b.x2 - b.x1 + 1, OW, bilinear);
    out[n * os.N + c * os.C + oy * os.H + ox * os.W] =
        static_cast<scalar_t>(rcm::crop_value<T>(in + n * is.N + c * is.C, is.H, is.W, b, ty, tx, bilinear));
  }
}

template <typename scalar_t>
__global__ void crop_resize_backward_kernel(const scalar_t* grad, Strides4 gs, const int32_t* boxes, int64_t C,
                                            int64_t H, int64_t W, int64_t OH, int64_t OW, bool bilinear,
                                            scalar_t* out, Strides4 os, int64_t total) {
  using T = at::opmath_type<scalar_t>;
  WALNET_GRID_STRIDE(i, total) {
    const int64_t ix = i % W, iy = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    const Box b = rcm::load_box(boxes, n, H, W);
    T value = T(0);
    if (iy >= b.y1 && iy <= b.y2 && ix >= b.x1 && ix <= b.x2) {
      const int64_t ch = b.y2 - b.y1 + 1, cw = b.x2 - b.x1 + 1, ry = iy - b.y1, rx = ix - b.x1;
      value = rcm::crop_grad<T>(grad + n * gs.N + c * gs.C, gs.H, gs.W, ch, cw, OH, OW, ry, rx,
                                readers_of<T>(ry, ch, OH, bilinear), readers_of<T>(rx, cw, OW, bilinear), bilinear);
    }
    out[n * os.N + c * os.C + iy * os.H + ix * os.W] = static_cast<scalar_t>(value);
  }
}

at::Tensor mask_boxes_cuda(const at::Tensor& prob_, int64_t H, int64_t W, double threshold, double dilation) {
  check_map(prob_, "prob");
  check_size(H, W, "mask_boxes", "target");
  check_dilation(dilation);
  const c10::cuda::CUDAGuard guard(prob_.device());
  const auto prob = prob_.contiguous();
  const int64_t N = prob.size(0);
  auto out = at::empty({N, 4}, prob.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "mask_boxes_cuda", [&] {
    mask_boxes_kernel<scalar_t><<<N, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        prob.const_data_ptr<scalar_t>(), prob.size(1), prob.size(2), H, W, static_cast<scalar_t>(threshold),
        static_cast<double>(W) * dilation, out.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// crop_resize_kernel and crop_resize_backward_kernel take the same arguments: `in` (the features,
// or the output's gradient), the boxes, C, the features' H x W, the output's OH x OW, and `out`
// (the output, or the features' gradient), one thread per element of `out`.
template <typename scalar_t, typename Kernel>
void launch_crop(Kernel kernel, const at::Tensor& in, const at::Tensor& boxes_, int64_t H, int64_t W, int64_t OH,
                 int64_t OW, bool bilinear, at::Tensor& out) {
  const int64_t total = out.numel();
  if (total == 0) return;
  const auto boxes = boxes_.contiguous();
  kernel<<<grid_for(total), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      in.const_data_ptr<scalar_t>(), strides_of(in), boxes.const_data_ptr<int32_t>(), in.size(1), H, W, OH, OW,
      bilinear, out.mutable_data_ptr<scalar_t>(), strides_of(out), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor crop_resize_cuda(const at::Tensor& features, const at::Tensor& boxes, int64_t OH, int64_t OW,
                            bool bilinear) {
  check_crop(features, "features", boxes, OH, OW, "crop_resize", "output");
  const c10::cuda::CUDAGuard guard(features.device());
  auto out = rcm::crop_output(features, OH, OW);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "crop_resize_cuda", [&] {
    launch_crop<scalar_t>(crop_resize_kernel<scalar_t>, features, boxes, features.size(2), features.size(3), OH, OW,
                          bilinear, out);
  });
  return out;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes, int64_t H, int64_t W,
                                     bool bilinear) {
  check_crop(grad, "grad", boxes, H, W, "crop_resize_backward", "input");
  const c10::cuda::CUDAGuard guard(grad.device());
  auto out = rcm::crop_output(grad, H, W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cuda", [&] {
    launch_crop<scalar_t>(crop_resize_backward_kernel<scalar_t>, grad, boxes, H, W, grad.size(2), grad.size(3),
                          bilinear, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(walnet, CUDA, m) {
  m.impl("mask_boxes", &mask_boxes_cuda);
  m.impl("crop_resize", &crop_resize_cuda);
  m.impl("crop_resize_backward", &crop_resize_backward_cuda);
}

}  // namespace walnet
