"""The conditioning gap (callbacks/conditioning_gap.py): zero for a denoiser that ignores its labels, positive for
one that reads them, and the rolled conditioners give every image another image's labels."""

from __future__ import annotations

import pytest
import torch

from lcsbench.callbacks.conditioning_gap import ConditioningGap, conditioning_gap, rolled


def test_rolled_conditioners_move_every_image_to_another_ones():
    cond = torch.arange(5)
    assert (rolled(cond) != cond).all() and sorted(rolled(cond).tolist()) == cond.tolist()


def test_gap_is_zero_when_the_labels_are_ignored_and_opens_when_they_are_used():
    torch.manual_seed(0)
    values = torch.linspace(-0.8, 0.8, 6)
    images = values[:, None, None, None].expand(6, 3, 8, 8).clone()  # image i is the constant value i

    def ignores(x, sigma, cond):
        return x / (1 + sigma**2)

    def reads(x, sigma, cond):  # the label says the image's value; the noisy input adds a little
        return cond[:, None, None, None].expand_as(x) + 0.01 * x

    unused = conditioning_gap(ignores, images, values, [0.5, 2.0])
    used = conditioning_gap(reads, images, values, [0.5, 2.0])
    for sigma in (0.5, 2.0):
        assert unused[sigma]["gap"] == 0.0 and unused[sigma]["true"] == unused[sigma]["shuffled"]
        assert used[sigma]["shuffled"] > used[sigma]["true"] and used[sigma]["gap"] > 1.0


def test_gap_needs_two_images_and_positive_noise_levels():
    with pytest.raises(ValueError, match=">= 2 images"):
        conditioning_gap(lambda x, s, c: x, torch.zeros(1, 3, 4, 4), torch.zeros(1), [1.0])
    with pytest.raises(ValueError, match="positive sigmas"):
        ConditioningGap(sigmas=[0.0])
