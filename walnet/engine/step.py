"""One training step (forward, PGM pseudo masks, loss, backward, optimizer step) as one program.

:class:`TrainStep` runs the step in one of three ways, all with the same numbers to float
rounding:

- eagerly, op by op;
- compiled: ``torch.compile(fullgraph=True)`` of forward + PGM + loss (walnet's ops have fake
  kernels and no host syncs, so the whole of it is one graph, and AOTAutograd compiles its
  backward with it); the optimizer step stays eager;
- CUDA-graphed: the whole step, the optimizer's update included, captured once into a CUDA
  graph and replayed on every batch, so one launch replaces the thousands of kernel launches
  and the Python between them that bound a WAL-Net step on a GPU. This needs fixed shapes (the
  training loader drops its last partial batch), an optimizer built with ``capturable=True``,
  no gradient scaler (bfloat16 autocast or float32) and one process.

The step returns its statistics as one device tensor, so the training loop never waits for the
GPU between steps.
"""
from __future__ import annotations

import contextlib

import torch

from walnet.models.walnet import WALNetOutput, walnet_loss

#: Eager steps run before a capture: they set up cuBLAS/cuDNN handles, cudnn.benchmark's
#: algorithm choice and the optimizer's state outside the graph, and they are real steps.
GRAPH_WARMUP_STEPS = 3


def forward(model, images: torch.Tensor, amp_dtype: torch.dtype | None, cache: bool = True, **kw) -> WALNetOutput:
    """`model`'s output for `images` (keywords `kw` passed on) under autocast to `amp_dtype`
    (none: float32), as a :class:`WALNetOutput`: a baseline's plain logits become one without a
    segmentation head. A CUDA graph needs ``cache=False``: autocast's cache of cast weights would
    outlive the capture."""
    with (torch.autocast(images.device.type, dtype=amp_dtype, cache_enabled=cache) if amp_dtype is not None
          else contextlib.nullcontext()):
        out = model(images, **kw)
    return out if isinstance(out, WALNetOutput) else WALNetOutput(out, None, ())


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The class probabilities of `logits` [N, K]: ``softmax(logits / temperature)`` in float32,
    `temperature` the model's (``walnet calibrate``; 1.0: uncalibrated, the plain softmax). The
    one place a model's temperature is applied (evaluate and predict)."""
    return torch.softmax(logits.float() / temperature, dim=1)


def check_finite(logits: torch.Tensor, model, source) -> None:
    """A one-line ValueError naming `source` (the checkpoint or model folder) when `logits` hold
    NaN or inf: their softmax would give NaN probabilities and argmax a class all the same. The
    message says whether the weights themselves are not finite."""
    if bool(torch.isfinite(logits).all()):
        return
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
        why = "its weights hold NaN or inf"
    else:
        why = "its weights are finite, so an input or an overflow made them so"
    raise ValueError(f"{source}: the model's outputs are not finite: {why}; no result was written")


def _rcm_epoch(model, epoch: int):
    """The epoch to pass to WAL-Net's forward so that it only tells whether the RCM is on:
    None (on) or 0 (off, during the warm-up). A compiled step then sees two values instead of
    one per epoch, and compiles at most twice."""
    if not model.rcm_active(epoch):
        return 0
    return None


class TrainStep:
    """Forward, PGM, loss, backward and optimizer step of one batch.

    Args:
        model: WAL-Net or a baseline classifier (or either wrapped in DistributedDataParallel).
        pgm: the :class:`~walnet.models.PseudoMaskGenerator`, or None (no segmentation loss).
        optimizer: the optimizer of ``model``'s parameters; with ``cuda_graph`` it must be built
            with ``capturable=True`` (``torch.optim.Adam(..., capturable=True)``).
        amp_dtype: autocast dtype (torch.bfloat16, torch.float16) or None for float32.
        scaler: a GradScaler (float16), or None.
        compile: ``torch.compile(fullgraph=True)`` forward + PGM + loss.
        compile_backend: the torch.compile backend (default inductor).
        cuda_graph: capture the whole step into a CUDA graph (CUDA only).
        class_weights: float32 [num_classes] on the model's device, the weights of the
            classification loss (:func:`~walnet.models.walnet.walnet_loss`), or None (equal). The
            step reads this one tensor each time (a CUDA graph captures its address).

    ``step(images, target, epoch)`` returns float32 [4] on the device: total, classification and
    segmentation loss, and the number of correct predictions of the batch. With ``cuda_graph``
    the tensor is the graph's own output, overwritten by the next step: use it (or clone it)
    before then.
    """

    def __init__(self, model, pgm, optimizer, *, amp_dtype: torch.dtype | None = None, scaler=None,
                 compile: bool = False, compile_backend: str = "inductor", cuda_graph: bool = False,
                 class_weights: torch.Tensor | None = None):
        if cuda_graph:
            if scaler is not None:
                raise ValueError("a CUDA-graphed step cannot use a gradient scaler (float16); use bfloat16 or "
                                 "float32")
            if not all(group.get("capturable", False) for group in optimizer.param_groups):
                raise ValueError("a CUDA-graphed step needs an optimizer built with capturable=True")
        self.model, self.pgm, self.optimizer = model, pgm, optimizer
        self.amp_dtype, self.scaler = amp_dtype, scaler
        self.cuda_graph = cuda_graph
        self.class_weights = class_weights
        bare = getattr(model, "module", model)  # look through DDP's wrapper
        self._bare = bare
        self._takes_epoch = hasattr(bare, "rcm_active")
        self._losses = self._forward_losses
        if compile:
            self._losses = torch.compile(self._forward_losses, fullgraph=True, backend=compile_backend)
        self._graphs: dict = {}  # per RCM state: [warm-up steps done, graph, static input, static target, output]

    def _forward_losses(self, images: torch.Tensor, target: torch.Tensor, rcm_epoch):
        """Forward, PGM and loss: the losses and correct count of the batch, float32 [4]."""
        out = forward(self.model, images, self.amp_dtype, cache=not self.cuda_graph,
                      **({"epoch": rcm_epoch} if self._takes_epoch else {}))
        pseudo = self.pgm(images, out.attention) if (self.pgm is not None and out.seg_logits is not None) else None
        parts = walnet_loss(out, target, pseudo, self.class_weights)
        correct = (out.logits.argmax(dim=1) == target).sum()
        return torch.stack([parts.total, parts.cls, parts.seg, correct.to(parts.total.dtype)])

    def _eager(self, images: torch.Tensor, target: torch.Tensor, rcm_epoch) -> torch.Tensor:
        stats = self._losses(images, target, rcm_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(stats[0]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            stats[0].backward()
            self.optimizer.step()
        return stats.detach()

    def __call__(self, images: torch.Tensor, target: torch.Tensor, epoch: int) -> torch.Tensor:
        rcm_epoch = _rcm_epoch(self._bare, epoch) if self._takes_epoch else None
        if not self.cuda_graph:
            return self._eager(images, target, rcm_epoch)
        return self._graphed(images, target, rcm_epoch)

    def _graphed(self, images: torch.Tensor, target: torch.Tensor, rcm_epoch) -> torch.Tensor:
        if images.device.type != "cuda":
            raise ValueError(f"a CUDA-graphed step needs CUDA tensors, got images on {images.device}")
        state = self._graphs.setdefault(rcm_epoch, [0, None, None, None, None])
        warm, graph, static_images, static_target, static_stats = state
        if graph is not None:
            if images.shape != static_images.shape or target.shape != static_target.shape:
                raise ValueError(f"a CUDA-graphed step takes batches of one shape: it was captured for images "
                                 f"{tuple(static_images.shape)}, got {tuple(images.shape)} (drop the last partial "
                                 "batch)")
            static_images.copy_(images, non_blocking=True)
            static_target.copy_(target, non_blocking=True)
            graph.replay()
            return static_stats
        if warm < GRAPH_WARMUP_STEPS:
            # on a side stream, as CUDA graphs ask of the work before a capture
            main = torch.cuda.current_stream(images.device)
            side = torch.cuda.Stream(images.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                stats = self._eager(images, target, rcm_epoch)
            main.wait_stream(side)
            stats.record_stream(main)  # the caller reads it on its stream: not to be reused before
            state[0] = warm + 1
            return stats
        # Another RCM state's graph is dropped: its gradients, which the capture below would
        # otherwise accumulate into, and its memory pool go with it.
        self._graphs = {rcm_epoch: state}
        static_images, static_target = images.clone(), target.clone()
        self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the gradients in its pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread keeps calling CUDA during the capture,
        # which the default (global) mode counts as an error of the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_stats = self._losses(static_images, static_target, rcm_epoch)
            static_stats[0].backward()
            self.optimizer.step()
            static_stats = static_stats.detach()
        state[1:] = [graph, static_images, static_target, static_stats]
        graph.replay()  # the capture ran nothing: this is the batch's step
        return static_stats
