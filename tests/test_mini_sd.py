"""Mini SD (cnetlib.sd.mini): its parts, its resumable training loop, the independent scorer,
and the shipped folders loaded with diffusers' classes alone (chapters 08-09)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from cnetlib.colours import TOY_PALETTE  # noqa: E402
from cnetlib.data import LazyPairs, colour_hint, make_sample  # noqa: E402
from cnetlib.runtime import DATA_DIR  # noqa: E402
from cnetlib.sd import mini, mini_check  # noqa: E402

MINI, MINI_CN, MINI_HINT = DATA_DIR / "mini_sd", DATA_DIR / "mini_sd_controlnet", DATA_DIR / "mini_sd_colour_controlnet"


def test_tokenizer_spells_every_word_as_one_token_and_every_prompt_fits():
    tok = mini.word_tokenizer(mini.palette_words())
    for w in mini.palette_words() + ["circle", "with", "background"]:
        assert tok.tokenize(w) == [w + "</w>"]
    longest = max(len(tok(f"{a} circle with {b} background").input_ids) for a in TOY_PALETTE for b in TOY_PALETTE)
    assert longest <= mini.MINI_MAX_LENGTH
    assert tok.tokenize("zebra")                     # unknown words fall back to characters, no error


def test_lr_warms_up_then_decays_to_zero():
    lrs = [mini._lr(s, 1e-3, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-5


def test_training_resumes_exactly(tmp_path):
    """Two runs of 6 steps, one stopped after 3 and resumed from its state file, end equal."""
    def run(work, steps):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        loss = lambda step, g: model(torch.randn(8, 4, generator=g)).pow(2).mean()  # noqa: E731
        curve = mini._run("toy", model, loss, steps, 1e-2, 2, work, autocast=False, every=3, log_every=1)
        return model, curve

    straight, c1 = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed, c2 = run(tmp_path / "b", 6)
    torch.testing.assert_close(resumed.weight, straight.weight, rtol=0, atol=0)
    assert c1["loss"] == c2["loss"] and c1["step"] == list(range(1, 7))


def test_read_disk_on_a_drawn_pair():
    s = make_sample(3, size=64, seed=mini_check.EVAL_SEED, palette=TOY_PALETTE)
    r = mini_check.read_disk(s.target)
    assert mini_check.iou(r["mask"], s.mask) > 0.97 and mini_check.iou(r["mask"], r["disk"]) > 0.95
    got = mini_check.score_images(s.target[None], [s.prompt], s.mask[None])
    assert got["both_right"] == 1.0 and got["iou"] > 0.97
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert mini_check.score_images(flat[None], [s.prompt])["circle_right"] == 0.0   # no circle is not right


def test_built_parts_save_and_load_with_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    parts = mini.build_parts(0)
    mini.save_folder(parts, 0.5, tmp_path / "m")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.vae.config.scaling_factor == 0.5 and pipe.unet.config.sample_size == 8
    torch.testing.assert_close(pipe.unet.conv_in.weight, parts[3].conv_in.weight)
    out = pipe(["red circle with gold background"], height=64, width=64, num_inference_steps=2,
               output_type="np").images
    assert out.shape == (1, 64, 64, 3)


def test_colour_hint_condition_in_lazy_pairs():
    outline = LazyPairs(2, size=64, seed=0, palette=TOY_PALETTE)
    hint = LazyPairs(2, size=64, seed=0, palette=TOY_PALETTE, condition="colour_hint")
    item = hint[1]
    want = colour_hint(make_sample(1, size=64, seed=0, palette=TOY_PALETTE).target)
    torch.testing.assert_close(item["source"], torch.from_numpy(want).permute(2, 0, 1).float() / 255)
    assert hint.fingerprint() != outline.fingerprint()
    with pytest.raises(ValueError, match="condition: expected one of"):
        LazyPairs(2, condition="depth")


# ----------------------------------------------------------------------------------
# The shipped folders: diffusers' classes alone, offline
# ----------------------------------------------------------------------------------
def _size_mb(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def test_shipped_mini_sd_is_small_and_its_scores_meet_the_targets():
    assert _size_mb(MINI) <= 30 and _size_mb(MINI_CN) <= 12 and _size_mb(MINI_HINT) <= 12   # the issue: mini SD ≤ 30 MB
    scores = json.loads((MINI / "scores.json").read_text())
    assert scores["base"]["disk_iou"] >= 0.90 and scores["base"]["circle_right"] >= 0.90
    assert scores["controlnet_prompt"]["iou"] >= 0.85
    assert scores["settings"] == {"n": 64, "seed": mini_check.EVAL_SEED, "steps": mini_check.STEPS,
                                  "guidance": mini_check.GUIDANCE, "size": mini_check.SIZE}


def test_shipped_scores_are_what_diffusers_draws_now():
    """8 held-out samples, drawn here with diffusers' pipelines (not cnetlib's sampler or metrics), are
    disks of the prompt's colours on the outline's place (a batch of 8 draws other noise than the
    shipped batch of 64, so the bars are a little below the shipped figures)."""
    conds, prompts, masks = mini_check.held_out(8)
    base = mini_check.score_images(mini_check.base_images(MINI, prompts), prompts)
    cn = mini_check.score_images(mini_check.controlnet_images(MINI, MINI_CN, conds, prompts), prompts, masks)
    assert base["disk_iou"] >= 0.85 and base["circle_right"] >= 0.75 and cn["iou"] >= 0.80


def test_shipped_controlnets_load_with_diffusers_controlnetmodel():
    from diffusers import ControlNetModel

    for folder in (MINI_CN, MINI_HINT):
        net = ControlNetModel.from_pretrained(folder)
        assert net.config.block_out_channels == mini.MINI_UNET_CONFIG["block_out_channels"]


def test_train_sd_refuses_unknown_palette_and_condition_and_uses_the_toy_colours():
    from cnetlib.train_sd import SDTrainConfig, make_dataset

    with pytest.raises(ValueError, match="palette: expected one of"):
        SDTrainConfig(palette="pastel")
    with pytest.raises(ValueError, match="condition: expected one of"):
        SDTrainConfig(condition="depth")
    data = make_dataset(SDTrainConfig(palette="toy", condition="colour_hint", n_train=8))
    assert data.palette == TOY_PALETTE and data.condition == "colour_hint"
    assert {w for i in range(8) for w in [data[i]["prompt"].split(" circle with ")[0]]} <= set(TOY_PALETTE)


def test_outline_fingerprint_is_unchanged_by_conditions():
    """Runs checkpointed before ``condition`` existed still resume: the outline fingerprint is the old one."""
    import hashlib

    d = LazyPairs(5, size=64, seed=3, palette=TOY_PALETTE)
    old = hashlib.sha1(json.dumps([5, 64, 3, list(TOY_PALETTE)]).encode()).hexdigest()[:16]
    assert d.fingerprint() == old


def test_build_runs_every_stage_and_writes_a_loadable_folder(tmp_path):
    """The whole recipe at 2 steps per stage: VAE, latents, UNet, folder; a second call resumes (trains nothing)."""
    from diffusers import StableDiffusionPipeline

    cfg = mini.MiniConfig(vae_steps=2, vae_batch=2, n_latents=8, unet_steps=2, unet_batch=4, warmup=1)
    rep = mini.build(tmp_path / "m", tmp_path / "work", cfg)
    assert rep["vae_curve"]["step"][-1] == 2 and rep["unet_curve"]["step"][-1] == 2
    assert set(rep["vae_error"]) == {"mean_abs_levels", "psnr_db", "n"} and rep["scaling_factor"] > 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.vae.config.scaling_factor == pytest.approx(rep["scaling_factor"])
    again = mini.build(tmp_path / "m", tmp_path / "work", cfg)
    assert again["unet_curve"] == rep["unet_curve"]          # resumed from the finished state, not retrained


def test_ship_run_copies_the_controlnet_and_its_curves(tmp_path):
    from diffusers import ControlNetModel

    from cnetlib.train_sd import SDTrainConfig, train

    cfg = SDTrainConfig(output_dir=str(tmp_path / "run"), steps=2, batch_size=2, checkpoint_every=2, validate_every=1,
                        validation_n=1, validation_steps=1, progress=False)
    train(cfg)
    rec = mini.ship_run(tmp_path / "run", tmp_path / "net", keep_validations=[1])
    assert rec["steps"] == 2 and len(rec["losses"]) == 2 and [r["step"] for r in rec["log"]] == [1, 2]
    assert rec["seconds"] > 0                                 # the run's wall time, kept in its checkpoint
    assert (tmp_path / "net" / "training" / "validation-000001.png").is_file()
    ControlNetModel.from_pretrained(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="not a finished train_sd run"):
        mini.ship_run(tmp_path / "nothing", tmp_path / "net2")


def test_scheduler_file_is_sd15s_so_other_samplers_made_from_it_do_not_clip_latents(tmp_path):
    from diffusers import DDIMScheduler, PNDMScheduler

    parts = mini.build_parts(0)
    mini.save_folder(parts, 1.0, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "PNDMScheduler" and cfg["beta_schedule"] == "scaled_linear"
    assert (cfg["beta_start"], cfg["beta_end"], cfg["clip_sample"], cfg["steps_offset"]) == (0.00085, 0.012, False, 1)
    assert DDIMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler").config.clip_sample is False
    assert isinstance(PNDMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler"), PNDMScheduler)


@pytest.mark.parametrize("name", sorted(mini.CONTROLNET_RUNS))
def test_shipped_controlnet_runs_were_trained_with_the_settings_in_the_code(name):
    folder = DATA_DIR / (mini.SHIPPED[name] or mini.SHIPPED["outline"])
    run = json.loads((folder / ("training" if mini.SHIPPED[name] else "training_bf16") / "run.json").read_text())
    want = {**mini.CONTROLNET_SETTINGS, **mini.CONTROLNET_RUNS[name]}
    assert {k: run["config"][k] for k in want} == want
    assert run["steps"] == want["steps"] and len(run["losses"]) == want["steps"]
    assert [r["step"] for r in run["log"]] == list(range(want["validate_every"], want["steps"] + 1, want["validate_every"]))


def test_two_trainings_in_one_process_may_use_different_precisions(tmp_path):
    """Chapter 09 times fp32 and bf16 in one kernel: accelerate's process-wide state must not refuse the second."""
    from cnetlib.train_sd import SDTrainConfig, train

    kw = dict(steps=1, batch_size=2, resolution=32, n_train=4, validate_every=10, validation_n=1, validation_steps=1,
              progress=False)
    train(SDTrainConfig(output_dir=str(tmp_path / "a"), mixed_precision="no", **kw))
    r = train(SDTrainConfig(output_dir=str(tmp_path / "b"), mixed_precision="bf16", **kw))
    assert r["step"] == 1 and all(p.dtype == torch.float32 for p in r["controlnet"].parameters())
