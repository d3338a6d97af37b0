"""The Felzenszwalb tests' oracle itself: the corpus is varied, the stable-argsort patch takes
effect, and the tie rule matters on the corpus (so a wrong tie rule in walnet would be caught)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from felzenszwalb_oracle import (ARGSORT_CALLS, GRAY_NAMES, GROUP_NAMES, PARAMS, RGB_NAMES, corpus, oracle,
                                 shipped, skimage_labels)


def test_corpus_size_and_variety():
    g = corpus()
    assert set(g) == set(GROUP_NAMES)
    assert sum(len(x) for x in g.values()) >= 200
    present = [n for n in RGB_NAMES + GRAY_NAMES if shipped(n) is not None]
    assert len(present) >= 20, present  # the images ship with skimage: none should be missing
    channels = {x.images.shape[1] for x in g.values()}
    assert channels == {1, 2, 3, 4}
    assert {x.images.dtype for x in g.values()} == {torch.float32, torch.float64}


def test_oracle_patch_takes_effect():
    """The stable argsort patch is really called by skimage, and the tie rule really matters on
    the tie images (the stable and the opposite tie rule give different segmentations)."""
    g = corpus()["ties56-rgb-u8"]
    img = g.sk_inputs[g.names.index("ties/checker4")]
    before = dict(ARGSORT_CALLS)
    stable = skimage_labels(img, 64, 0.5, 10, tie_rule="stable")
    anti = skimage_labels(img, 64, 0.5, 10, tie_rule="antistable")
    assert ARGSORT_CALLS["stable"] == before["stable"] + 1
    assert ARGSORT_CALLS["antistable"] == before["antistable"] + 1
    assert not np.array_equal(stable, anti)
    assert np.array_equal(stable, skimage_labels(img, 64, 0.5, 10, tie_rule="stable"))


@pytest.mark.parametrize("group", ["ties56-rgb-u8", "ties56-gray-f64", "ship-gray56-u8", "rand56-rgb-u8"])
def test_corpus_exercises_ties(group):
    """On these groups the tie rule changes skimage's output for several images, so a walnet
    that broke ties differently from the stable rule would be caught."""
    differ = 0
    for params in (PARAMS[0], PARAMS[5]):
        stable = oracle(group, params)
        anti = oracle(group, params, "antistable")
        differ += sum(not np.array_equal(a, b) for a, b in zip(stable, anti))
    assert differ >= 3, differ
