"""Chapter 02's probes, chapter 07's second condition, chapter 09's lazy pairs, chapter 06's prompt settings."""
import json

import numpy as np
import pytest
import torch

from cnetlib.data import Fill50k, LazyPairs, colour_hint, source_to_tensor, target_to_tensor, write_fill50k
from cnetlib.fidelity import PROMPT_SETTINGS, prompt_setting
from cnetlib.probes import GROUPS, count_by_group, first_nonzero_step, gaussian_damage, gradient_front
from tiny import tiny_base, tiny_controlnet



def tiny():
    base = tiny_base()
    return base, tiny_controlnet(base)


def test_gradient_front_advances_one_zero_layer_per_step():
    base, net = tiny()
    ds = Fill50k(4, size=16)
    rows = gradient_front(base, net, target_to_tensor(ds.targets), source_to_tensor(ds.sources), ds.prompts, steps=3)
    assert first_nonzero_step(rows) == {GROUPS[0]: 0, GROUPS[1]: 1, GROUPS[2]: 2, GROUPS[3]: 1}
    assert [r["group"] for r in rows if r["step"] == 0 and r["moved"]] == [GROUPS[0]]
    assert sum(count_by_group(net).values()) == sum(p.numel() for p in net.parameters())


def test_gaussian_damage_is_zero_for_zero_convs_and_grows_with_std():
    base, _ = tiny()
    ds = Fill50k(4, size=16)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = gaussian_damage(base, [0.0, 0.01, 0.1, 1.0], x, torch.tensor([10, 300, 600, 900]), ds.prompts,
                           source_to_tensor(ds.sources), hint_channels=(4, 4, 8, 8, 8, 8, 8))
    assert rows[0]["max_abs"] == 0.0 and rows[0]["rel_l2"] == 0.0
    assert all(a["rel_l2"] < b["rel_l2"] for a, b in zip(rows, rows[1:]))


def test_colour_hint_is_blockwise_mean_and_keeps_both_colours():
    ds = Fill50k(6, with_meta=True)
    h = colour_hint(ds.targets)
    assert h.shape == ds.targets.shape and h.dtype == np.uint8
    block = ds.targets[0, :8, :8].reshape(-1, 3).mean(axis=0)
    assert np.abs(h[0, 0, 0].astype(float) - block).max() <= 0.5 and (h[0, :8, :8] == h[0, 0, 0]).all()
    hinted = Fill50k(6, condition="colour_hint")
    assert np.array_equal(hinted.sources, h) and np.array_equal(hinted.targets, ds.targets)
    with pytest.raises(ValueError, match="condition: expected one of"):
        Fill50k(2, condition="depth")
    with pytest.raises(ValueError, match="divisible by 4"):
        colour_hint(np.zeros((1, 30, 30, 3), np.uint8))


def test_lazy_pairs_render_and_read_folders(tmp_path):
    lazy = LazyPairs(3, size=32, palette=("red", "blue", "gold"))
    eager = Fill50k(3, size=32, palette=("red", "blue", "gold"))
    item = lazy[2]
    assert torch.equal(item["target"], target_to_tensor(eager.targets[2])) and item["prompt"] == eager.prompts[2]
    assert torch.equal(item["mask"], torch.from_numpy(eager.masks[2]))
    write_fill50k(tmp_path, 3, size=32, palette=("red", "blue", "gold"), progress=False)
    folder = LazyPairs.from_folder(tmp_path, size=32)
    assert len(folder) == 3 and torch.equal(folder[1]["source"], source_to_tensor(eager.sources[1]))
    (tmp_path / "target" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete dataset: 1 image"):
        LazyPairs.from_folder(tmp_path, size=32)


def test_prompt_settings():
    prompts = ["red circle with gold background", "blue circle with white background"]
    palette = ("red", "gold", "lime green", "deep sky blue", "blue", "dark violet", "white", "black")
    assert prompt_setting("no prompt", prompts, palette) == ["", ""]
    assert prompt_setting("insufficient", prompts, palette) == ["circle", "circle"]
    assert prompt_setting("full", prompts, palette) == prompts
    conflicting = prompt_setting("conflicting", prompts, palette)
    assert conflicting == ["deep sky blue circle with blue background", "black circle with gold background"]
    assert set(PROMPT_SETTINGS) == {"no prompt", "insufficient", "conflicting", "full"}
    with pytest.raises(ValueError, match="setting: expected one of"):
        prompt_setting("vague", prompts, palette)


def test_summaries_and_run_folders(tmp_path):
    from cnetlib.experiments.runs import load_run
    from cnetlib.experiments.sudden_convergence import summarize
    from cnetlib.train import ControlNetRun

    steps = np.arange(0, 2001, 25)
    rng = np.random.default_rng(0)
    log = []
    for s in steps:
        per = np.where(s >= rng.integers(600, 1000, 8), 0.85, 0.45)
        row = {"step": int(s), "seconds": float(s) * 0.3, "loss": 0.13, "proxy_iou": float(per.mean()),
               "proxy_iou_per_sample": per.tolist()}
        if s % 100 == 0:
            row.update(iou=float(per.mean()), iou_per_sample=per.tolist(), iou_no_prompt=0.3, circle_accuracy=1.0,
                       background_accuracy=1.0)
        log.append(row)
    summary = summarize(ControlNetRun(None, log=log))
    assert summary["jump"]["converged"] and 600 <= summary["jump"]["jump_step"] <= 1000
    assert summary["per_sample_proxy"]["switched"] == 1.0 and summary["iou_after"] > 0.8
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    with pytest.raises(FileNotFoundError, match="missing summary.json"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    run = load_run(tmp_path, "fake")
    assert run.curve("iou")[0].tolist() == list(range(0, 2001, 100))
    assert run.seconds_at(summary["jump"]["jump_step"]) == pytest.approx(summary["jump"]["jump_step"] * 0.3)
