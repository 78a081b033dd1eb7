import numpy as np
import pytest
import torch

from cnetlib.data import TOY_PALETTE, Fill50k, color_rgb, target_to_tensor
from cnetlib.metrics import (
    background_color, disk_mask, fit_disk, iou, nearest_color, prompt_following, segment_circle,
)


def test_ground_truth_images_score_perfectly():
    ds = Fill50k(24, with_meta=True)
    imgs = target_to_tensor(ds.targets)  # float, [-1, 1], like a sampler's output
    r = prompt_following(imgs, ds.prompts, TOY_PALETTE)
    assert r.circle_accuracy == 1.0 and r.background_accuracy == 1.0
    assert r.mean_disk_iou > 0.9
    for i in range(24):
        assert np.array_equal(segment_circle(ds.targets[i]), ds.masks[i])


def test_swapped_colours_are_caught():
    ds = Fill50k(8)
    swapped = [f"{p.split(' circle with ')[1].removesuffix(' background')} circle with "
               f"{p.split(' circle with ')[0]} background" for p in ds.prompts]
    r = prompt_following(ds.targets, swapped, TOY_PALETTE)
    assert r.circle_accuracy == 0.0 and r.background_accuracy == 0.0


def test_blank_image_has_no_circle():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    r = prompt_following(img, ["red circle with black background"], TOY_PALETTE)
    assert r.background_accuracy == 1.0 and r.circle_accuracy == 0.0 and r.disk_iou[0] == 0.0


def test_fit_disk_and_iou_known_values():
    m = disk_mask(16, 16, 6, 32)
    cx, cy, r = fit_disk(m)
    assert (cx, cy) == pytest.approx((16, 16), abs=1e-9) and r == pytest.approx(6, abs=0.2)
    shifted = disk_mask(20, 16, 6, 32)
    # two equal disks of radius r at distance d: lens area / (2 pi r^2 - lens area)
    d, rr = 4.0, 6.0
    lens = 2 * rr**2 * np.arccos(d / (2 * rr)) - d / 2 * np.sqrt(4 * rr**2 - d**2)
    assert iou(m, shifted) == pytest.approx(lens / (2 * np.pi * rr**2 - lens), abs=0.03)
    assert iou(m, m) == 1.0 and iou(m, ~m) == 0.0


def test_ring_scores_a_low_disk_iou():
    ring = disk_mask(16, 16, 10, 32) & ~disk_mask(16, 16, 8, 32)
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0][ring] = 255
    r = prompt_following(img, ["white circle with black background"], TOY_PALETTE)
    assert r.circle_accuracy == 1.0 and r.disk_iou[0] < 0.6


def test_nearest_color_and_background():
    assert nearest_color((250, 10, 10), TOY_PALETTE) == "red"
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = color_rgb("gold")
    assert tuple(background_color(img)) == color_rgb("gold")


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"expected a float tensor \(B, 3, H, W\)"):
        prompt_following(torch.zeros(2, 1, 8, 8), ["a", "b"], TOY_PALETTE)
    with pytest.raises(ValueError, match="prompts: expected 2"):
        prompt_following(torch.zeros(2, 3, 8, 8), ["red circle with black background"], TOY_PALETTE)


# ---- clean disks and placement ------------------------------------------------------
from cnetlib.metrics import clean_disk, disk_quality, placement  # noqa: E402


def test_ground_truth_images_are_clean_disks_placed_exactly():
    ds = Fill50k(24)
    q = disk_quality(ds.targets)
    assert q.clean.all() and q.disk_iou.min() > 0.97   # pixel disks vs their best-fit disk
    p = placement(ds.targets, ds.masks)
    assert np.allclose(p.center_error, 0.0) and np.allclose(p.radius_error, 0.0) and p.within.all()
    assert p.summary()["within_1px"] == 1.0 and p.summary()["no_circle"] == 0.0


def test_speckle_gradient_and_second_blob_are_not_clean():
    ds = Fill50k(4)
    rng = np.random.default_rng(0)
    speckled = ds.targets.astype(np.int16) + rng.integers(-90, 90, ds.targets.shape)
    assert not any(clean_disk(im) for im in np.clip(speckled, 0, 255).astype(np.uint8))
    img = ds.targets[0].copy()
    img[1:4, 1:4] = img[ds.masks[0]][0]      # a second small blob of the circle's colour in a corner
    assert not clean_disk(img)
    grad = ds.targets[1].astype(np.float64)
    grad[..., :] = grad * np.linspace(0.3, 1.0, 32)[None, :, None]   # the whole image darkens to the left
    assert not clean_disk(np.clip(grad, 0, 255).astype(np.uint8))
    assert not clean_disk(np.zeros((32, 32, 3), np.uint8))          # nothing drawn
    assert clean_disk(ds.targets[2])


def test_placement_errors_are_in_pixels():
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[0][disk_mask(18.0, 16.0, 7.0, 32)] = 255      # shifted right by 2 px
    img[1][disk_mask(16.0, 16.0, 9.0, 32)] = 255      # 2 px too large
    truth = np.stack([disk_mask(16.0, 16.0, 7.0, 32), disk_mask(16.0, 16.0, 7.0, 32)])
    p = placement(img, truth)
    assert p.center_error[0] == pytest.approx(2.0, abs=0.05) and abs(p.radius_error[0]) < 0.1
    assert p.center_error[1] == pytest.approx(0.0, abs=0.05) and p.radius_error[1] == pytest.approx(2.0, abs=0.15)
    assert not p.within.any()
    blank = placement(np.zeros((1, 32, 32, 3), np.uint8), truth[:1])
    assert np.isnan(blank.center_error[0]) and not blank.within[0] and blank.summary()["no_circle"] == 1.0
    with pytest.raises(ValueError, match=r"masks: expected shape \(2, 32, 32\)"):
        placement(img, truth[:1])
