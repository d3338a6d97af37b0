// Every walnet operator schema, in one place (docs/design.md §2). Kernels register themselves
// per backend in csrc/<op>/<op>_{cpu,cuda}; fake kernels and autograd are registered next to
// each op's Python wrapper (walnet/ops/pgm.py, rcm.py, felzenszwalb.py).
#include <torch/library.h>

#ifdef WALNET_PYTHON_MODULE
#include <Python.h>

// `import walnet._C` loads this library, which runs the static registrations below. The module
// itself is empty: every op is reached through torch.ops.walnet.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(walnet, m) {
  // PGM (docs/design.md §4)
  m.def("fuse_attention(Tensor a1, Tensor a2, Tensor a3) -> Tensor");
  m.def("superpixel_mean(Tensor values, Tensor labels) -> Tensor");
  m.def("pseudo_mask(Tensor a1, Tensor a2, Tensor a3, Tensor labels, float threshold) -> Tensor");
  // RCM (docs/design.md §5)
  m.def("mask_boxes(Tensor prob, int height, int width, float threshold, float dilation) -> Tensor");
  m.def("crop_resize(Tensor features, Tensor boxes, int out_height, int out_width, bool bilinear) -> Tensor");
  m.def("crop_resize_backward(Tensor grad, Tensor boxes, int in_height, int in_width, bool bilinear) -> Tensor");
  // The one-pass RCM over 1 to 8 levels: every level's mask_boxes (int32 [N,L,4]), every level's
  // nearest crop_resize back to its own size with boxes[:, l], and that crop's transpose.
  m.def("roi_boxes(Tensor prob, int[] heights, int[] widths, float threshold, float dilation) -> Tensor");
  m.def("crop_levels(Tensor[] features, Tensor boxes) -> Tensor[]");
  m.def("crop_levels_backward(Tensor[] grads, Tensor boxes) -> Tensor[]");
  // Felzenszwalb superpixels (docs/design.md §6). weights: scipy's Gaussian kernel, centre first;
  // k = scale / 255. algorithm: "sequential" (skimage's Kruskal, CPU), "reservations" (Kruskal by
  // deterministic reservations in warp rounds, whose rules are window, compact, prefilter and
  // chain) or "block" (reservations, 1,024-edge positional window); all give the same labels.
  // shared_limit: the shared memory the warp kernel may plan with (0: the device's; the CPU plans
  // with sm_90's), so that tests can run every state layout on small images.
  // Returns labels [N,H,W] int32 and the reservation rounds [N,2] int32 (0 for sequential).
  m.def(
      "felzenszwalb(Tensor images, float[] weights, float k, int min_size, str algorithm, int window, bool compact, "
      "bool prefilter, bool chain, int shared_limit=0) -> (Tensor, Tensor)");
  // Where the CUDA warp kernel keeps the union-find state of an image of `pixels` pixels, given
  // the dynamic shared memory a block may have: [layout (0 shared, 1 split, 2 global), bytes].
  m.def("felzenszwalb_plan(int pixels, int shared_limit) -> int[]");
}
