import json

import numpy as np
import pytest
import torch

from cnetlib.data import (
    CSS_COLORS, FULL_PALETTE, TOY_PALETTE, Fill50k, Fill50kFolder, color_rgb, make_sample, mask_from_target,
    parse_prompt, sample_spec, source_to_tensor, target_to_tensor, write_fill50k,
)


def test_css_table_is_complete_and_named_as_words():
    assert len(CSS_COLORS) == 148
    assert color_rgb("pale golden rod") == (238, 232, 170)
    assert color_rgb("palegoldenrod") == color_rgb("PaleGoldenRod") == (238, 232, 170)
    assert color_rgb("old lace") == (253, 245, 230)
    assert "light golden rod yellow" in CSS_COLORS


def test_unknown_colour_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown colour name 'pale goldenrodd'.*pale golden rod"):
        color_rgb("pale goldenrodd")
    with pytest.raises(ValueError, match="unknown colour"):
        Fill50k(4, palette=["red", "not a colour"])


def test_generator_is_deterministic_per_index():
    a, b = make_sample(7, seed=3), make_sample(7, seed=3)
    assert np.array_equal(a.target, b.target) and np.array_equal(a.source, b.source) and a.prompt == b.prompt
    # sample i does not depend on how many samples are generated
    assert Fill50k(3, seed=3).prompts[2] == Fill50k(10, seed=3).prompts[2]
    assert make_sample(7, seed=4).spec != a.spec


@pytest.mark.parametrize("size", [32, 64, 512])
def test_sample_images_match_mask_colours_and_prompt(size):
    s = make_sample(1, size=size, palette=FULL_PALETTE if size == 512 else TOY_PALETTE)
    c, b = parse_prompt(s.prompt)
    assert (c, b) == (s.spec.circle_color, s.spec.background_color) and c != b
    assert s.target.shape == (size, size, 3) and s.target.dtype == np.uint8
    assert (s.target[s.mask] == color_rgb(c)).all() and (s.target[~s.mask] == color_rgb(b)).all()
    # the outline is white on black and hugs the disk's edge
    vals = np.unique(s.source)
    assert set(vals.tolist()) <= {0, 255} and (s.source == 255).any()
    ring = s.source[..., 0] == 255
    assert ring.sum() < s.mask.sum()
    yy, xx = np.nonzero(ring)
    d = np.hypot(xx + 0.5 - s.spec.center_x, yy + 0.5 - s.spec.center_y)
    assert np.abs(d - s.spec.radius).max() <= max(1.0, size / 128) / 2 + 1e-9
    # the disk lies inside the image: the frame is pure background
    assert not s.mask[0].any() and not s.mask[-1].any() and not s.mask[:, 0].any() and not s.mask[:, -1].any()
    assert np.array_equal(mask_from_target(s.target, color_rgb(c), color_rgb(b)), s.mask)


def test_dataset_tensors_have_the_documented_ranges():
    ds = Fill50k(16, with_meta=True)
    item = ds[3]
    assert item["source"].shape == (3, 32, 32) and item["target"].shape == (3, 32, 32)
    assert item["source"].min() >= 0 and item["source"].max() <= 1
    assert item["target"].min() >= -1 and item["target"].max() <= 1
    assert torch.unique(item["target"].reshape(3, -1), dim=1).shape[1] == 2  # circle + background colours
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (32, 32)
    assert tuple(item["circle_rgb"].tolist()) == color_rgb(item["circle_color"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["source"].shape == (4, 3, 32, 32) and len(batch["prompt"]) == 4
    # every colour of the palette shows up, and circle != background always
    pairs = {parse_prompt(p) for p in Fill50k(400).prompts}
    assert {c for c, _ in pairs} == set(TOY_PALETTE) and all(c != b for c, b in pairs)


def test_tensor_conversion_checks_dtype_and_channels():
    img = make_sample(0).target
    assert target_to_tensor(img).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="expected uint8"):
        target_to_tensor(img.astype(np.float32))
    with pytest.raises(ValueError, match="3 RGB channels"):
        source_to_tensor(img[..., :2])


def test_round_trip_through_the_authors_layout(tmp_path):
    root = write_fill50k(tmp_path / "fill", 6, size=32, seed=5, palette=TOY_PALETTE, progress=False)
    lines = (root / "prompt.json").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"source", "target", "prompt"} and first["source"] == "source/0.png"
    folder, memory = Fill50kFolder(root, with_meta=True), Fill50k(6, seed=5, with_meta=True)
    assert folder.prompts == memory.prompts
    assert np.array_equal(folder.sources, memory.sources) and np.array_equal(folder.targets, memory.targets)
    for i in range(6):
        assert torch.equal(folder[i]["mask"], memory[i]["mask"])
        assert torch.equal(folder[i]["target"], memory[i]["target"])


def test_incomplete_folder_is_reported_not_half_read(tmp_path):
    root = write_fill50k(tmp_path / "fill", 4, size=32, progress=False)
    (root / "target" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\).*target/2.png"):
        Fill50kFolder(root)
    with pytest.raises(FileNotFoundError, match="prompt.json"):
        Fill50kFolder(tmp_path)
    (root / "prompt.json").write_text('{"source": "source/0.png"}\n')
    with pytest.raises(ValueError, match="expected keys source, target, prompt"):
        Fill50kFolder(root)


def test_folder_of_mixed_sizes_is_rejected_unless_resized(tmp_path):
    a = write_fill50k(tmp_path / "a", 2, size=32, progress=False)
    write_fill50k(tmp_path / "b", 1, size=64, progress=False)
    (tmp_path / "b" / "target" / "0.png").replace(a / "target" / "1.png")
    with pytest.raises(ValueError, match="one size"):
        Fill50kFolder(a)
    assert Fill50kFolder(a, size=32).targets.shape == (2, 32, 32, 3)


def test_bad_prompt_and_index():
    with pytest.raises(ValueError, match="expected '<colour> circle with <colour> background'"):
        parse_prompt("a red square")
    with pytest.raises(ValueError, match="index and seed must be >= 0"):
        sample_spec(-1)


def test_css_names_come_from_matplotlib_as_words():
    from matplotlib.colors import CSS4_COLORS, to_rgb

    from cnetlib.data import CSS_WORDS

    assert len(CSS_COLORS) == len(CSS4_COLORS) == 148
    for name, rgb in CSS_COLORS.items():
        joined = name.replace(" ", "")
        assert joined in CSS4_COLORS and set(name.split()) <= CSS_WORDS
        assert rgb == tuple(round(255 * v) for v in to_rgb(CSS4_COLORS[joined]))
    assert color_rgb("medium aqua marine") == color_rgb("medium aquamarine") == (102, 205, 170)  # old spelling
