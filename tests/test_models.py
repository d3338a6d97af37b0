"""WAL-Net model, PGM training step, ablations and baselines (small backbones and inputs, CPU)."""
from __future__ import annotations

import pytest
import torch

import walnet
from walnet import ops
from walnet.models import BASELINES, create_model, model_names

from conftest import spy_on

SMALL = dict(backbone="resnet18", attention_channels=16, rcm_warmup_epochs=2)


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize(
    "backbone, size, channels",
    [("resnet18", 64, (16, 8, 4)), ("resnest14d", 96, (24, 12, 6)), ("resnest50d", 64, (16, 8, 4))],
)
def test_shapes(backbone, size, channels):
    torch.manual_seed(0)
    model = walnet.WALNet(backbone=backbone, attention_channels=8).eval()
    x, _ = _batch(2, size)
    out = model(x)
    assert out.logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 2, channels[0], channels[0])
    for a, s in zip(out.attention, channels):
        assert a.shape == (2, 1, s, s)
        torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(2, 1), rtol=0, atol=1e-5)
        assert (a >= 0).all()


def test_training_reduces_loss_and_reaches_every_part():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).train()
    pgm = walnet.PseudoMaskGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _batch()
    losses = []
    for step in range(10):
        out = model(x, epoch=5)
        parts = walnet.walnet_loss(out, y, pgm(x, out.attention))
        opt.zero_grad()
        parts.total.backward()
        if step == 0:
            for name, module in [("encoder", model.encoder), ("decoder", model.decoder), ("gates", model.gates),
                                 ("heads", model.heads)]:
                grads = [p.grad for p in module.parameters() if p.grad is not None]
                assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reaches the {name}"
        opt.step()
        losses.append(parts.total.item())
        assert torch.isfinite(parts.cls) and torch.isfinite(parts.seg)
    assert losses[-1] < 0.8 * losses[0], losses


def test_rcm_warmup_and_eval(monkeypatch):
    calls = []
    real = ops.roi_crop

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "roi_crop", spy)
    model = walnet.WALNet(**SMALL)
    x, _ = _batch(2)
    model.train()
    model(x, epoch=0)
    model(x, epoch=1)
    assert not calls  # epochs 0, 1 < warm-up of 2
    model(x, epoch=2)
    assert len(calls) == 1
    model.eval()
    model(x, epoch=0)
    assert len(calls) == 2  # always on in evaluation
    walnet.WALNet(**SMALL, use_rcm=False).eval()(x)
    assert len(calls) == 2  # the no-RCM ablation never crops


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = walnet.WALNet(**SMALL).eval()
    torch.manual_seed(1)
    b = walnet.WALNet(**SMALL).eval()
    x, _ = _batch(2)
    assert not torch.equal(a(x).logits, b(x).logits)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x).logits, b(x).logits)


@pytest.mark.parametrize("method", ops.ROI_METHODS)
def test_kernels_and_reference_give_the_same_logits(method):
    """The RCM ops are bitwise equal to their reference, so the logits must be too (tolerance 0)."""
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL, roi_method=method).eval()
    x, _ = _batch(3)
    kernel = model(x).logits
    model.backend = "reference"
    assert torch.equal(model(x).logits, kernel)


def test_channels_last_and_batch_one_training_step():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).to(memory_format=torch.channels_last).train()
    x, y = _batch(1)
    out = model(x.contiguous(memory_format=torch.channels_last), epoch=10)
    parts = walnet.walnet_loss(out, y, walnet.PseudoMaskGenerator()(x, out.attention))
    parts.total.backward()
    assert torch.isfinite(parts.total)


def test_bf16_autocast_cpu():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).eval()
    x, _ = _batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out.logits.float()).all()
    assert out.logits.shape == (2, 3)


def test_torch_compile_forward():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).eval()
    x, _ = _batch(2)
    want = model(x).logits
    got = torch.compile(model)(x).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_loss_ignores_uninformative_samples():
    out = walnet.models.WALNetOutput(torch.zeros(2, 3), torch.zeros(2, 2, 4, 4), ())
    mask = torch.full((2, 4, 4), ops.IGNORE_INDEX, dtype=torch.uint8)
    parts = walnet.walnet_loss(out, torch.tensor([0, 1]), mask)
    assert parts.seg == 0 and torch.isfinite(parts.total)
    mask[0] = 1
    # uniform logits over 2 classes: CE = log 2 on the 16 counted pixels
    torch.testing.assert_close(walnet.walnet_loss(out, torch.tensor([0, 1]), mask).seg, torch.tensor(0.6931472))


def test_create_model_names():
    assert isinstance(create_model("walnet", **SMALL), walnet.WALNet)
    assert not create_model("walnet_no_rcm", **SMALL).use_rcm
    assert create_model("walnet_crop", **SMALL).roi_method == "crop"
    no_pgm = create_model("walnet_no_pgm", **SMALL).eval()
    assert no_pgm.decoder is None and not no_pgm.use_rcm and len(no_pgm.gates) == 0 and len(no_pgm.heads) == 1
    out = no_pgm(_batch(2)[0])
    assert out.seg_logits is None and out.attention == () and out.logits.shape == (2, 3)
    assert walnet.walnet_loss(out, torch.tensor([0, 1]), None).seg == 0
    with pytest.raises(ValueError, match="unknown model"):
        create_model("alexnet")
    # a variant's own setting may be repeated (walnet train --model walnet_no_pgm --no-pgm), not contradicted
    assert create_model("walnet_no_pgm", **SMALL, use_pgm=False).decoder is None
    with pytest.raises(ValueError, match="contradicts"):
        create_model("walnet_crop", **SMALL, roi_method="rwm")
    with pytest.raises(ValueError, match="roi_method"):
        walnet.WALNet(**SMALL, roi_method="blur")
    with pytest.raises(ValueError, match="backend"):
        walnet.WALNet(**SMALL, backend="exact")
    with pytest.raises(ValueError, match="backend"):
        walnet.PseudoMaskGenerator(backend="cuda")
    assert set(BASELINES) <= set(model_names())


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_build_and_run(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


def test_pgm_reference_backend_reaches_every_op(monkeypatch):
    """PseudoMaskGenerator(backend="reference") runs the reference Felzenszwalb and pseudo_mask
    (one backend word for every op), and its mask equals the kernels' bit for bit."""
    from walnet.ops import reference

    fz_calls = spy_on(monkeypatch, reference, "felzenszwalb")
    mask_calls = spy_on(monkeypatch, reference, "pseudo_mask")
    torch.manual_seed(0)
    images = torch.rand(2, 3, 24, 24)
    attention = [torch.rand(2, 1, 12, 12), torch.rand(2, 1, 6, 6), torch.rand(2, 1, 3, 3)]
    kernel = walnet.PseudoMaskGenerator()(images, attention)
    assert fz_calls == [] and mask_calls == []
    ref = walnet.PseudoMaskGenerator(backend="reference")(images, attention)
    assert len(fz_calls) == 1 and len(mask_calls) == 1
    assert torch.equal(ref, kernel)


# --- input normalisation (docs/design.md §3) ----------------------------------------------------


def _capture_input(module: torch.nn.Module) -> list:
    """Records the first argument of every call of `module` (a forward pre-hook)."""
    seen = []
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    return seen


def test_the_encoder_sees_the_normalised_image():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).eval()
    # the backbone's pretrained_cfg (ImageNet's), as persistent [1,3,1,1] buffers
    assert torch.equal(model.input_mean, torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
    assert torch.equal(model.input_std, torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert {"input_mean", "input_std"} <= set(model.state_dict())
    seen = _capture_input(model.encoder)
    x, _ = _batch(2)
    model(x)
    assert len(seen) == 1 and torch.equal(seen[0], (x - model.input_mean) / model.input_std)


def test_the_pgm_sees_the_raw_image_in_a_training_step(monkeypatch):
    """TrainStep gives the PGM the batch itself: its superpixels come from the [0, 1] image,
    while the encoder sees the normalised one."""
    from walnet.engine.step import TrainStep

    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).train()
    pgm = walnet.PseudoMaskGenerator()
    to_pgm, to_encoder = _capture_input(pgm), _capture_input(model.encoder)
    felzenszwalb = spy_on(monkeypatch, ops, "felzenszwalb")
    step = TrainStep(model, pgm, torch.optim.Adam(model.parameters(), lr=1e-3))
    x, y = _batch(2)
    step(x, y, epoch=0)
    assert len(to_pgm) == 1 and torch.equal(to_pgm[0], x)
    assert torch.equal(to_encoder[0], (x - model.input_mean) / model.input_std)
    size = model.encoder.feature_info.reduction()[0]
    small = torch.nn.functional.interpolate(x, size=(x.shape[-2] // size, x.shape[-1] // size), mode="nearest")
    assert len(felzenszwalb) == 1 and torch.equal(felzenszwalb[0][0], small)


def test_normalisation_buffers_follow_the_model():
    model = walnet.WALNet(**SMALL).eval()
    double = model.double()
    assert double.input_mean.dtype == double.input_std.dtype == torch.float64
    x, _ = _batch(2)
    assert double(x.double()).logits.dtype == torch.float64
    meta = walnet.WALNet(**SMALL).to("meta")
    assert meta.input_mean.device.type == meta.input_std.device.type == "meta"
    # they travel in the state dict: another model takes them over with its weights
    other = walnet.WALNet(**SMALL)
    other.input_mean.zero_()
    other.input_std.fill_(2.0)
    fresh = walnet.WALNet(**SMALL)
    fresh.load_state_dict(other.state_dict())
    assert torch.equal(fresh.input_mean, torch.zeros(1, 3, 1, 1)) and torch.equal(fresh.input_std,
                                                                                  torch.full((1, 3, 1, 1), 2.0))


def test_baselines_normalise_their_input():
    torch.manual_seed(0)
    model = create_model("resnest", num_classes=3).eval()
    assert torch.equal(model.input_std, torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    # timm's own keys stay as they are, plus the two buffers
    import timm

    plain = timm.create_model(BASELINES["resnest"], num_classes=3)
    assert set(model.state_dict()) == set(plain.state_dict()) | {"input_mean", "input_std"}
    seen = _capture_input(model.conv1)  # the stem: the first layer the image reaches
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got = model(x)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_")})
        want = plain.eval()((x - model.input_mean) / model.input_std)
    assert torch.equal(seen[0], (x - model.input_mean) / model.input_std)
    assert torch.equal(got, want)
    # a deep copy (the ONNX export's) normalises with its own buffers
    import copy

    twin = copy.deepcopy(model)
    twin.input_mean.zero_()
    twin.input_std.fill_(1.0)
    with torch.no_grad():
        assert torch.equal(twin(x), plain(x))


@pytest.mark.parametrize("name", ["walnet_no_pgm", "resnest"])
def test_integer_images_are_refused(name):
    """uint8 pixels (0..255) would pass the normalisation's arithmetic and be read as [0, 1]."""
    model = create_model(name, num_classes=3, **({"backbone": "resnet18"} if name.startswith("walnet") else {}))
    model = model.eval()
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"images is torch.uint8.*floating image in \[0, 1\].*\.float\(\) / 255"):
        model(pixels)
    with torch.no_grad():
        assert model(pixels.float() / 255) is not None


@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_rcm_module_is_roi_crop_and_its_boxes_are_what_it_crops(method):
    """walnet.models.rcm.RCM applies ops.roi_crop with its method, threshold and dilation, and
    its boxes are mask_boxes of the same mask, grown as the method grows them; WAL-Net's
    rcm_boxes are its RCM's (None without an RCM)."""
    from walnet.constants import RCM_DILATION, RCM_THRESHOLD
    from walnet.models.rcm import RCM

    g = torch.Generator().manual_seed(3)
    seg = torch.randn(3, 2, 12, 12, generator=g)
    levels = [torch.randn(3, 4, s, s, generator=g) for s in (12, 6, 3)]
    rcm = RCM(method)
    assert (rcm.threshold, rcm.dilation) == (RCM_THRESHOLD, RCM_DILATION) == (0.5, 1 / 7)
    for got, want in zip(rcm(levels, seg), ops.roi_crop(levels, seg, method, 0.5, 1 / 7)):
        assert torch.equal(got, want)
    boxes = rcm.boxes(seg, (6, 6))
    prob = seg.softmax(1)[:, 1]
    if method in ("rwm", "bg_rm"):
        assert boxes is None
    else:
        dilation = 1 / 7 if method == "dilated_crop" else 0.0
        assert torch.equal(boxes, ops.mask_boxes(prob, (6, 6), 0.5, dilation))
        # a crop method's boxes are where its crops come from: cropping with them is the RCM
        crop = ops.crop_resize(levels[1], boxes)
        if method != "bg_rm_crop":
            assert torch.equal(rcm(levels, seg)[1], crop)
    model = walnet.WALNet(**SMALL, roi_method=method).eval()
    assert model.roi_method == method and model.rcm.method == method
    got = model.rcm_boxes(seg)
    assert (got is None) == (boxes is None) and (got is None or torch.equal(got, rcm.boxes(seg)))
    assert walnet.WALNet(**SMALL, use_rcm=False).rcm_boxes(seg) is None
    with pytest.raises(ValueError, match="roi_method must be one of"):
        RCM("tight")


def test_walnet_backend_reaches_its_rcm():
    model = walnet.WALNet(**SMALL, backend="reference")
    assert model.backend == model.rcm.backend == "reference"
    model.backend = "auto"
    assert model.rcm.backend == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        model.backend = "fast"
    assert not any(k.startswith("rcm") for k in model.state_dict())  # the RCM holds no weights
