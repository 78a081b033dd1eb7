"""The base's scores: cnetlib.base.score_base, the lever table, and the independent scorer."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from cnetlib.base import BaseRecipe, score_base, train_base
from cnetlib.checkpoint import save_checkpoint
from cnetlib.data import TOY_PALETTE, Fill50k, color_rgb
from cnetlib.unet import UNetConfig

TOOL = Path(__file__).parent.parent / "tools" / "score_base.py"
CFG = UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True), context_dim=16, groups=4,
                 text_layers=1)


def load_tool():
    spec = importlib.util.spec_from_file_location("score_base", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_independent_reader_scores_ground_truth_as_perfect_and_noise_as_not_clean():
    tool = load_tool()
    ds = Fill50k(16)
    rgb = np.array([color_rgb(c) for c in TOY_PALETTE])
    for img, prompt in zip(ds.targets, ds.prompts):
        r = tool.read(img, rgb)
        want_c, want_b = prompt.removesuffix(" background").split(" circle with ")
        assert TOY_PALETTE[r["circle"]] == want_c and TOY_PALETTE[r["bg"]] == want_b
        assert r["disk_iou"] > 0.97 and r["components"] == 1 and r["two_colours"] == 1.0
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    r = tool.read(noisy, rgb)
    assert r["two_colours"] < 0.97 or r["components"] > 1
    two = ds.targets[0].copy()
    two[:3, :3] = two[ds.masks[0]][0]
    assert tool.components(tool.snap(two, rgb) == tool.read(two, rgb)["circle"]) == 2


def test_score_base_and_the_tool_on_an_untrained_model(tmp_path, capsys):
    r = train_base(BaseRecipe(steps=1, n_train=16, batch_size=4, image_size=16, channels=(8, 16)), CFG,
                   progress=False)
    scores = score_base(r.model, 4, steps=2)
    assert set(scores) >= {"circle_accuracy", "background_accuracy", "disk_iou", "clean_share",
                           "unprompted_disk_iou", "unprompted_clean_share"}
    assert scores["unprompted_clean_share"] == 0.0       # one step of training draws no clean disk
    save_checkpoint(r.model, tmp_path / "b.pt", meta={"recipe": {}})
    code = load_tool().main([str(tmp_path / "b.pt"), "--n", "2", "--steps", "2"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and out["meets_targets"] is False and out["n"] == 2


def test_lever_results_are_read_with_a_clear_error_when_missing(tmp_path):
    from cnetlib.experiments.base_levers import LEVERS, load_results

    with pytest.raises(FileNotFoundError, match="python -m cnetlib.experiments.base_levers"):
        load_results(tmp_path / "none.json")
    assert all(isinstance(r, BaseRecipe) for r in LEVERS.values())
