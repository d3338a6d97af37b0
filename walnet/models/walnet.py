"""WAL-Net (paper Fig. 1; docs/design.md §3): shared timm encoder with three attention gates, a
DeepLabV3+ segmentation decoder trained from PGM pseudo masks, the RCM, and four linear heads."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from walnet import ops
from walnet.files import first_line
from walnet.models.attention import GridAttentionGate
from walnet.models.backbone import create_encoder
from walnet.models.decoder import DeepLabV3PlusDecoder
from walnet.models.normalize import input_stats, normalize, register_stats
from walnet.models.rcm import RCM
from walnet.models.registry import BASELINES, DEFAULT_BACKBONE, variant_settings


class WALNetOutput(NamedTuple):
    """What :class:`WALNet` returns: class logits [N,K], segmentation logits [N,2,H1,W1] at
    stage-1 size (None without the PGM), attention maps A1..A3 ([N,1,H_i,W_i], each summing
    to 1; empty without the PGM)."""

    logits: torch.Tensor
    seg_logits: torch.Tensor | None
    attention: tuple[torch.Tensor, ...]


class WALNet(nn.Module):
    """WAL-Net as a drop-in classifier.

    Args:
        backbone: any timm model with four feature stages (``features_only``), default the
            paper's ``resnest50d``.
        num_classes: plaque classes (paper: hyperechoic, hypoechoic, mixed-echoic).
        roi_method: RCM method, one of ``walnet.ops.ROI_METHODS`` (paper default "dilated_crop").
        attention_channels: inner channels K of the attention gates (authors: 2048).
        rcm_warmup_epochs: in training, the RCM is off while ``epoch < rcm_warmup_epochs``
            (always on in eval, and in training when no epoch is given).
        use_rcm: False for the "no RCM" ablation.
        use_pgm: False for the "no PGM, no RCM" ablation, the paper's baseline: the plain
            classifier (encoder, global average pooling of stage 4, one linear head), with no
            gates, decoder or RCM; ``seg_logits`` is None and ``attention`` empty.
        pretrained: load the backbone's pretrained weights (downloads; off by default).
        pretrained_file: load them from this local file instead (a state dict of the timm model
            `backbone`, ``torch.save`` or safetensors; implies `pretrained`, never downloads).
        backend: op backend ("auto", "kernel", "reference").

    ``forward(x, epoch=None)`` takes RGB images [N,3,H,W] in [0, 1] (224² in the paper) and
    returns a :class:`WALNetOutput`. The encoder sees ``(x - input_mean) / input_std``, the
    normalisation its pretrained weights expect (the backbone's ``pretrained_cfg``, ImageNet's
    by default); the two are persistent buffers [1,3,1,1], so checkpoints carry them.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 3,
        roi_method: str = "dilated_crop",
        attention_channels: int = 2048,
        rcm_warmup_epochs: int = 20,
        use_rcm: bool = True,
        use_pgm: bool = True,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        self.rcm = RCM(roi_method, backend=backend)  # first: it checks roi_method and backend
        _check_args(num_classes=num_classes, attention_channels=attention_channels,
                    rcm_warmup_epochs=rcm_warmup_epochs, use_rcm=use_rcm, use_pgm=use_pgm, pretrained=pretrained)
        self.encoder = create_encoder(backbone, pretrained=pretrained, pretrained_file=pretrained_file)
        register_stats(self, *input_stats(self.encoder))
        channels = self.encoder.feature_info.channels()
        c1, c2, c3, c4 = channels
        self.use_pgm = use_pgm
        if use_pgm:
            self.gates = nn.ModuleList(GridAttentionGate(c, c4, attention_channels) for c in (c1, c2, c3))
            self.decoder = DeepLabV3PlusDecoder(c1, c4, num_classes=2)
            self.heads = nn.ModuleList(nn.Linear(c, num_classes) for c in channels)
        else:
            self.gates, self.decoder = nn.ModuleList(), None
            self.heads = nn.ModuleList([nn.Linear(c4, num_classes)])
        self.rcm_warmup_epochs = rcm_warmup_epochs
        self.use_rcm = use_rcm and use_pgm

    @classmethod
    def from_pretrained(cls, folder, device: str | torch.device = "cpu") -> WALNet:
        """The WAL-Net of a folder written by ``walnet export`` (config.json and
        model.safetensors, read without pickle), with its weights, in eval mode on `device`;
        read like :func:`walnet.models.load_pretrained` (the same checks of config.json, never
        pretrained, nothing downloaded). A folder that holds a baseline is an error (load it with
        :func:`walnet.models.load_pretrained`); so are a missing file, another format or
        version, and weights that do not fit (each naming the file)."""
        from walnet.models.folder import CONFIG_FILE, load_weights, read_config

        config = read_config(folder)  # checked: WAL-Net's arguments only, of their types and bounds
        path = Path(folder) / CONFIG_FILE
        if config["model"] in BASELINES:
            raise ValueError(f"{path} holds the baseline {config['model']!r}, not a WAL-Net; load it with "
                             "walnet.models.load_pretrained")
        try:
            kwargs = variant_settings(config["model"], config["kwargs"], as_args=True)
            model = cls(num_classes=config["num_classes"], **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{path} describes a model walnet cannot build ({config['model']!r} with "
                             f"{config['kwargs']}): {first_line(exc)}") from None
        return load_weights(model, folder, device)

    @property
    def roi_method(self) -> str:
        """The RCM's ROI method."""
        return self.rcm.method

    @property
    def backend(self) -> str:
        """The op backend of the model's RCM ("auto", "kernel", "reference")."""
        return self.rcm.backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {value!r}")
        self.rcm.backend = value

    def rcm_active(self, epoch: int | None) -> bool:
        if not self.use_rcm:
            return False
        return not (self.training and epoch is not None and epoch < self.rcm_warmup_epochs)

    def rcm_boxes(self, seg_logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The boxes the RCM crops (:meth:`RCM.boxes`) from a feature map of `size` (default: the
        segmentation's grid) given `seg_logits`; None when this model's RCM crops nothing (no
        RCM, "rwm", "bg_rm"). For showing where the model looked; the forward pass does not call
        it."""
        return self.rcm.boxes(seg_logits, size) if self.use_rcm else None

    def forward(self, x: torch.Tensor, epoch: int | None = None) -> WALNetOutput:
        # The PGM takes its superpixels from the caller's [0, 1] image (TrainStep passes it the
        # batch itself), so normalising here reaches the encoder alone.
        f1, f2, f3, c4 = self.encoder(normalize(x, self.input_mean, self.input_std))
        if not self.use_pgm:
            return WALNetOutput(self.heads[0](c4.mean(dim=(2, 3))), None, ())
        gated = [gate(f, c4) for gate, f in zip(self.gates, (f1, f2, f3))]
        ys = [y for y, _ in gated]
        seg_logits = self.decoder(f1, c4)
        levels = ys + [c4]
        if self.rcm_active(epoch):
            levels = self.rcm(levels, seg_logits)
        pooled = [y.sum(dim=(2, 3)) for y in levels[:3]] + [levels[3].mean(dim=(2, 3))]
        logits = torch.stack([head(p) for head, p in zip(self.heads, pooled)]).mean(dim=0)
        return WALNetOutput(logits, seg_logits, tuple(a for _, a in gated))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_args(**args) -> None:
    """WAL-Net's arguments of plain types, each a ValueError naming it (a string "no" is no
    False, and a bool no number)."""
    for name in ("use_rcm", "use_pgm", "pretrained"):
        if not isinstance(args[name], bool):
            raise ValueError(f"{name} must be True or False, got {args[name]!r}")
    for name, low in (("num_classes", 2), ("attention_channels", 1), ("rcm_warmup_epochs", 0)):
        if not _is_int(args[name]) or args[name] < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {args[name]!r}")


class PseudoMaskGenerator(nn.Module):
    """The PGM (paper §3.1, docs/design.md §4): Felzenszwalb superpixels of the [0, 1] image at A1's
    size, the fused attention map's mean per superpixel, binarised. No gradient.

    ``forward(images [N,C,H,W] in [0,1], attention (A1, A2, A3)) -> uint8 [N,H1,W1]`` in
    {0, 1, 255}; 255 marks samples whose attention carries no information. The superpixel
    parameters default to the paper's (scale 64, sigma 0.5, min_size 10), not to
    :func:`walnet.ops.felzenszwalb`'s (scikit-image's), and are passed to it explicitly.
    """

    def __init__(self, scale: float = 64.0, sigma: float = 0.5, min_size: int = 10, threshold: float = 0.18,
                 backend: str = "auto"):
        super().__init__()
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.scale, self.sigma, self.min_size, self.threshold = scale, sigma, min_size, threshold
        self.backend = backend

    @torch.no_grad()
    def forward(self, images: torch.Tensor, attention) -> torch.Tensor:
        a1, a2, a3 = (a.detach() for a in attention)
        small = F.interpolate(images.detach().float(), size=a1.shape[-2:], mode="nearest")
        labels = ops.felzenszwalb(small, self.scale, self.sigma, self.min_size, backend=self.backend)
        return ops.pseudo_mask(a1, a2, a3, labels, self.threshold, backend=self.backend)


class LossParts(NamedTuple):
    """Total loss and its two parts (Eq. 3-5): classification CE and segmentation CE."""

    total: torch.Tensor
    cls: torch.Tensor
    seg: torch.Tensor


def walnet_loss(output: WALNetOutput, target: torch.Tensor, pseudo_mask: torch.Tensor | None,
                class_weights: torch.Tensor | None = None) -> LossParts:
    """``CE(logits, target) + CE(seg_logits, pseudo_mask, ignore_index=255)``.

    `class_weights` (float32 [num_classes], or None: equal) weigh the classification term as
    ``F.cross_entropy(weight=)`` does: its mean is weighted, sum(w[t_i] * ce_i) / sum(w[t_i]).
    The segmentation term averages over the pixels that are not ignored (0 when every pixel is,
    instead of PyTorch's NaN), without a host sync.
    """
    cls = F.cross_entropy(output.logits.float(), target, weight=class_weights)
    if pseudo_mask is None or output.seg_logits is None:
        seg = cls.new_zeros(())
    else:
        mask = pseudo_mask.long()
        total = F.cross_entropy(output.seg_logits.float(), mask, ignore_index=ops.IGNORE_INDEX, reduction="sum")
        seg = total / (mask != ops.IGNORE_INDEX).sum().clamp_min(1)
    return LossParts(cls + seg, cls, seg)
