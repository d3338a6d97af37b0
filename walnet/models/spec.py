"""What a model is, as a small frozen value: :class:`ModelSpec`.

A spec names a model of :func:`walnet.models.create_model` and every setting that shapes it (the
WAL-Net encoder, its RCM and PGM, the RCM warm-up, the attention channels), with the classes it
tells apart and the input size it was trained for. :meth:`ModelSpec.build` makes the model;
:meth:`ModelSpec.to_config` and :meth:`ModelSpec.from_config` are its form in an exported
folder's config.json. Whether a model has a PGM or an RCM is asked of its spec
(:attr:`ModelSpec.has_pgm`, :attr:`ModelSpec.has_rcm`) or of the model, never of its name: the
names of the WAL-Net variants (``walnet_no_rcm``, ``walnet_crop``, ...) are read by
:mod:`walnet.models.registry`, once (:meth:`ModelSpec.from_name`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from walnet import ops
from walnet.constants import PLAQUE_CLASSES
from walnet.models.backbone import check_backbone
from walnet.models.registry import BASELINES, DEFAULT_BACKBONE, WALNET_ARGS, model_names, variant_settings
from walnet.models.schema import ATTENTION_CHANNELS_RANGE, CLASSES_RANGE, RCM_WARMUP_RANGE, SIZE_RANGE, check_int


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model: ``name`` is ``"walnet"`` or a baseline of :data:`BASELINES`; the other fields
    shape a WAL-Net (a baseline is its own timm model: its spec keeps their defaults).

    Attributes:
        name: "walnet" or a baseline name.
        backbone: WAL-Net's timm encoder.
        roi_method: the RCM's method (one of ``walnet.ops.ROI_METHODS``).
        rcm: WAL-Net with its RCM.
        pgm: WAL-Net with its PGM (attention gates, segmentation decoder); without it, the plain
            classifier (and no RCM either).
        rcm_warmup: epochs with the RCM off at the start of training.
        attention_channels: inner channels of the attention gates.
        classes: class names in label order.
        size: input side in pixels.
    """

    name: str = "walnet"
    backbone: str = DEFAULT_BACKBONE
    roi_method: str = "dilated_crop"
    rcm: bool = True
    pgm: bool = True
    rcm_warmup: int = 20
    attention_channels: int = 2048
    classes: tuple[str, ...] = PLAQUE_CLASSES
    size: int = 224

    def __post_init__(self):
        if not isinstance(self.name, str) or (self.name != "walnet" and self.name not in BASELINES):
            raise ValueError(f"unknown model {self.name!r}; choose one of {model_names()}")
        if not isinstance(self.roi_method, str) or self.roi_method not in ops.ROI_METHODS:
            raise ValueError(f"roi_method must be one of {ops.ROI_METHODS}, got {self.roi_method!r}")
        if isinstance(self.classes, str) or not isinstance(self.classes, (list, tuple)):
            raise ValueError(f"classes must be a list of class names, got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.name != "walnet":  # a baseline is its own timm model: WAL-Net's settings do not apply
            for f in dataclasses.fields(self):
                if f.name in WALNET_ARGS:
                    object.__setattr__(self, f.name, f.default)
        self._check()

    def _check(self) -> None:
        low, high = CLASSES_RANGE
        if not low <= len(self.classes) <= high:
            raise ValueError(f"a model tells two or more classes apart (at most {high}), got "
                             f"{len(self.classes)}: {list(self.classes)[:5]}")
        if not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"class names must be strings, got {list(self.classes)}")
        folded = [c.casefold() for c in self.classes]
        if len(set(folded)) != len(folded):
            raise ValueError(f"class names must differ (ignoring case), got {list(self.classes)}")
        check_int("size", self.size, SIZE_RANGE)
        if not self.is_walnet:
            return
        check_backbone(self.backbone)
        for name in ("rcm", "pgm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int("attention_channels", self.attention_channels, ATTENTION_CHANNELS_RANGE)
        check_int("rcm_warmup", self.rcm_warmup, RCM_WARMUP_RANGE)

    @classmethod
    def from_name(cls, name: str, **fields) -> ModelSpec:
        """The spec of a model name (a WAL-Net variant or a baseline) with `fields`; a field the
        name fixes may be repeated, not contradicted (``walnet_no_rcm`` with ``rcm=True``)."""
        if name in BASELINES:
            return cls(name=name, **fields)
        if name not in model_names():
            raise ValueError(f"unknown model {name!r}; choose one of {model_names()}")
        return cls(name="walnet", **variant_settings(name, fields))

    @property
    def is_walnet(self) -> bool:
        return self.name == "walnet"

    @property
    def has_pgm(self) -> bool:
        """A WAL-Net with its PGM: it has attention gates and a segmentation decoder, and trains
        from pseudo masks."""
        return self.is_walnet and self.pgm

    @property
    def has_rcm(self) -> bool:
        return self.has_pgm and self.rcm

    @property
    def architecture(self) -> str:
        """The timm model the spec's weights start from: WAL-Net's backbone or the baseline's."""
        return self.backbone if self.is_walnet else BASELINES[self.name]

    def walnet_args(self) -> dict:
        """The :class:`walnet.WALNet` arguments of this spec (empty for a baseline)."""
        return {arg: getattr(self, field) for field, arg in WALNET_ARGS.items()} if self.is_walnet else {}

    def describe(self) -> str:
        """The model in a few words, for messages: "walnet (backbone resnet18, 8 attention channels)"."""
        if not self.is_walnet:
            return self.name
        without = " without its PGM" if not self.pgm else (" without its RCM" if not self.rcm else "")
        return f"walnet{without} (backbone {self.backbone}, {self.attention_channels} attention channels)"

    def build(self, *, pretrained: bool = False, pretrained_file: str | None = None,
              backend: str = "auto") -> nn.Module:
        """The model, freshly initialised; its backbone pretrained where asked (`pretrained`
        downloads; `pretrained_file` reads a local file and never downloads)."""
        from walnet.models.factory import create_model  # it builds on the variants above

        extra = {"backend": backend} if self.is_walnet else {}
        return create_model(self.name, num_classes=len(self.classes), pretrained=pretrained,
                            pretrained_file=pretrained_file, **self.walnet_args(), **extra)

    def to_config(self) -> dict:
        """The spec as an exported folder's config.json holds it: ``model``, ``kwargs`` (every
        WAL-Net argument spelled out, so the file says what the model is without walnet's
        defaults), ``num_classes``, ``classes`` and ``input`` with its ``size``."""
        return {"model": self.name, "kwargs": self.walnet_args(), "num_classes": len(self.classes),
                "classes": list(self.classes), "input": {"size": self.size}}

    @classmethod
    def from_config(cls, config: Mapping) -> ModelSpec:
        """The spec of a config.json (:meth:`to_config`; checked by
        :func:`walnet.models.pretrained.read_config`). Arguments no spec field gives are a
        ValueError naming them."""
        fields = {field: config["kwargs"][arg] for field, arg in WALNET_ARGS.items() if arg in config["kwargs"]}
        unknown = sorted(set(config["kwargs"]) - set(WALNET_ARGS.values()))
        if unknown:
            raise ValueError(f"model arguments {unknown} are not WAL-Net's ({sorted(WALNET_ARGS.values())})")
        return cls.from_name(config["model"], classes=tuple(config["classes"]), size=config["input"]["size"],
                             **fields)
