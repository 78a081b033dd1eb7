"""cnetlib.sd against diffusers: residuals, key maps, save/load, the pipeline; all offline, tiny."""
import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint  # noqa: E402

from cnetlib.guidance import Control  # noqa: E402
from cnetlib.sd import (  # noqa: E402
    SD15_UNET_CONFIG, TINY_UNET_CONFIG, SDControlNet, SDParts, annotate, controlnet_config, fill_zero_layers, generate,
)

CONFIGS = {
    "tiny": TINY_UNET_CONFIG,
    # more than one transformer layer per block, SD-2-style linear projections, per-level heads
    "sd2_style": {**TINY_UNET_CONFIG, "transformer_layers_per_block": 2, "use_linear_projection": True,
                  "attention_head_dim": [2, 4], "cross_attention_dim": 24},
    # three levels, one layer each, an attention-free last level
    "three_levels": {**TINY_UNET_CONFIG, "block_out_channels": [16, 32, 32], "layers_per_block": 1,
                     "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 16},
}


def trained_like(net: SDControlNet, seed: int = 0) -> SDControlNet:
    """Every zero layer random, as after training (otherwise the residuals are all zero)."""
    net = fill_zero_layers(net, seed=seed).eval()
    assert all(p.abs().sum() > 0 for p in net.parameters())
    return net


def make(config, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    return unet, trained_like(SDControlNet.from_unet(unet), seed)


def inputs(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = config["sample_size"]
    return (torch.randn(batch, 4, s, s, generator=g), torch.tensor(421),
            torch.randn(batch, 7, config["cross_attention_dim"], generator=g), torch.rand(batch, 3, 8 * s, 8 * s, generator=g))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_residuals_match_diffusers(name):
    unet, ours = make(CONFIGS[name])
    theirs = ours.to_diffusers().eval()
    x, t, ehs, cond = inputs(CONFIGS[name])
    with torch.no_grad():
        d, m = ours(x, t, ehs, cond, conditioning_scale=0.7)
        d_ref, m_ref = theirs(x, t, ehs, cond, conditioning_scale=0.7, return_dict=False)
        assert len(d) == len(d_ref) == len(ours.connections) - 1
        for a, b in zip(d, d_ref):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(m, m_ref)
        assert m.abs().max() > 0
        dg, mg = ours(x, t, ehs, cond, guess_mode=True)
        dg_ref, mg_ref = theirs(x, t, ehs, cond, guess_mode=True, return_dict=False)
        for a, b in zip([*dg, mg], [*dg_ref, mg_ref]):
            torch.testing.assert_close(a, b)


def test_a_diffusers_controlnet_loads_into_ours():
    torch.manual_seed(3)
    theirs = ControlNetModel.from_unet(UNet2DConditionModel(**TINY_UNET_CONFIG))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ours = SDControlNet.from_diffusers(theirs).eval()
    x, t, ehs, cond = inputs(TINY_UNET_CONFIG)
    with torch.no_grad():
        d, m = ours(x, t, ehs, cond)
        d_ref, m_ref = theirs.eval()(x, t, ehs, cond, return_dict=False)
    for a, b in zip([*d, m], [*d_ref, m_ref]):
        torch.testing.assert_close(a, b)


def test_from_unet_copies_the_encoder_and_starts_at_zero():
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    net = SDControlNet.from_unet(unet)
    for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(net, part).state_dict(), getattr(unet, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(p.requires_grad for p in net.parameters())
    x, t, ehs, cond = inputs(TINY_UNET_CONFIG)
    with torch.no_grad():
        d, m = net(x, t, ehs, cond)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in d) and torch.equal(m, torch.zeros_like(m))


def test_sd15_has_13_connections_and_a_361m_copy():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        net = SDControlNet.from_unet(unet)
    hs = [c.resolution for c in net.connections]
    assert len(net.connections) == 13 and hs == [64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8]
    assert [c.index for c in net.connections] == list(range(13))
    assert [c.kind for c in net.connections] == ["input conv"] + (["resnet"] * 2 + ["downsample"]) * 3 + ["resnet"] * 2 + ["middle"]
    n = sum(p.numel() for p in net.parameters())
    assert 355e6 < n < 365e6, n  # about 361 M (the paper's reference checkpoint size)
    assert 855e6 < sum(p.numel() for p in unet.parameters()) < 865e6


def test_original_layout_key_map_agrees_with_diffusers_converter():
    unet, ours = make(TINY_UNET_CONFIG)
    orig = ours.original_state_dict()
    assert "control_model.input_hint_block.14.weight" in orig and "control_model.middle_block_out.0.bias" in orig
    assert "control_model.zero_convs.0.0.weight" in orig and "control_model.time_embed.0.weight" in orig
    # diffusers' own converter, applied to our original-layout keys, gives diffusers' keys and tensors
    converted = convert_controlnet_checkpoint(orig, {"layers_per_block": TINY_UNET_CONFIG["layers_per_block"]})
    ref = ours.to_diffusers().state_dict()
    assert converted.keys() == ref.keys() and all(torch.equal(converted[k], ref[k]) for k in ref)
    back = SDControlNet.from_original(orig, TINY_UNET_CONFIG)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    # a full checkpoint carries SD's own weights too: they are skipped
    full = {**orig, "model.diffusion_model.out.0.weight": torch.zeros(1), "cond_stage_model.x": torch.zeros(1)}
    SDControlNet.from_original({"state_dict": full}, TINY_UNET_CONFIG)
    with pytest.raises(ValueError, match="does not fit the config"):
        SDControlNet.from_original({k: v for k, v in orig.items() if "zero_convs.1." not in k}, TINY_UNET_CONFIG)


def test_save_and_load_round_trip(tmp_path):
    unet, ours = make(CONFIGS["sd2_style"])
    ours.save_pretrained(tmp_path / "cn")
    assert (tmp_path / "cn" / "config.json").is_file()
    again = SDControlNet.from_pretrained(tmp_path / "cn")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
    theirs = ControlNetModel.from_pretrained(tmp_path / "cn")  # diffusers reads what we wrote
    x, t, ehs, cond = inputs(CONFIGS["sd2_style"])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, ehs, cond)[1], theirs.eval()(x, t, ehs, cond, return_dict=False)[1])
    torch.save(ours.original_state_dict(), tmp_path / "orig.pth")
    cfg2 = CONFIGS["sd2_style"]
    assert torch.equal(SDControlNet.from_original(tmp_path / "orig.pth", cfg2).zero_convs[0].weight, ours.zero_convs[0].weight)


@pytest.fixture(scope="module")
def tiny():
    parts = SDParts.tiny()
    net = trained_like(SDControlNet.from_unet(parts.unet), seed=1)
    rng = np.random.default_rng(0)
    image = Image.fromarray(((rng.random((64, 64)) > 0.85) * 255).astype(np.uint8)).convert("RGB")
    return parts, net, image


@pytest.mark.parametrize("mode,guess", [("both", False), ("guess", True)])
def test_generate_matches_the_diffusers_pipeline(tiny, mode, guess):
    parts, net, image = tiny
    pipe = StableDiffusionControlNetPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                             unet=parts.unet, controlnet=net.to_diffusers(), scheduler=parts.scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "blue"]
    ref = pipe(prompts, image=image, num_inference_steps=3, guidance_scale=5.0, output_type="pt", guess_mode=guess,
               generator=torch.Generator().manual_seed(7), controlnet_conditioning_scale=0.8).images
    ours = generate(parts, prompts, [(net, image, 0.8)], mode=mode, guidance=5.0, steps=3, seed=7)
    assert ours.shape == (2, 3, 64, 64)
    torch.testing.assert_close((ours + 1) / 2, ref)   # ours in [-1, 1], the pipeline's in [0, 1]


def test_tiny_pipeline_end_to_end_and_multi_control(tiny):
    parts, net, image = tiny
    plain = generate(parts, "a circle", steps=3, seed=1)
    one = generate(parts, "a circle", Control(net, image), steps=3, seed=1)
    halves = generate(parts, "a circle", [Control(net, image, 0.5), Control(net, image, 0.5)], steps=3, seed=1)
    assert plain.shape == (1, 3, 64, 64) and -1 <= plain.min() and plain.max() <= 1   # the book's output range
    assert not torch.equal(plain, one)                      # control changes the image
    torch.testing.assert_close(one, halves)                 # r/2 + r/2 = r: summing is per connection
    assert torch.equal(one, generate(parts, "a circle", Control(net, image), steps=3, seed=1))
    for mode in ("cond_only", "resolution_weighted"):
        out = generate(parts, "a circle", Control(net, image), mode=mode, steps=3, seed=1)
        assert out.shape == one.shape and not torch.equal(out, one)
    off = generate(parts, "a circle", Control(net, image), steps=3, seed=1, control_start=0.9)
    assert torch.equal(off, plain)                          # control never on: the plain image


def test_annotators_canny_offline_and_a_clear_error_for_the_others():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = 255
    edges = np.asarray(annotate(img + rng.integers(0, 5, img.shape, dtype=np.uint8), "canny"))
    assert edges.shape[:2] == (64, 64) and edges.max() == 255 and (edges > 0).mean() < 0.3
    with pytest.raises(RuntimeError, match="needs the weights of 'lllyasviel/Annotators'.*'canny' works offline"):
        annotate(img, "hed")
    with pytest.raises(ValueError, match="kind: expected one of the annotators"):
        annotate(img, "sketchify")
    with pytest.raises(ValueError, match="image: expected at least 64 px on each side.*got 32x48"):
        annotate(np.zeros((48, 32, 3), np.uint8), "canny")


def test_the_first_annotation_prints_no_third_party_warnings():
    """controlnet-aux's import prints deprecations of torch and timm; a reader's notebook must not show them."""
    import subprocess
    import sys

    code = "import numpy as np; from cnetlib.sd import annotate; annotate(np.zeros((64, 64, 3), np.uint8))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]


def test_bad_input_names_what_was_expected(tiny):
    parts, net, image = tiny
    x, t, ehs, cond = inputs(TINY_UNET_CONFIG)
    with pytest.raises(ValueError, match=r"controlnet_cond: expected spatial size 64x64, got 32x32"):
        net(x, t, ehs, cond[..., :32, :32])
    with pytest.raises(ValueError, match=r"controlnet_cond: expected values in \[0.0, 1.0\]"):
        net(x, t, ehs, cond * 2 - 1)
    with pytest.raises(ValueError, match="class_embed_type: expected None"):
        controlnet_config({**TINY_UNET_CONFIG, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="connection_scales: expected 7 values"):
        net(x, t, ehs, cond, connection_scales=[1.0] * 3)
    with pytest.raises(ValueError, match="mode: expected one of"):
        generate(parts, "x", Control(net, image), mode="literal", steps=2)
    with pytest.raises(OSError, match="SDParts.tiny"):
        SDParts.from_pretrained("/nonexistent/folder")


def test_sd_training_resumes_exactly_and_costs_are_measured(tmp_path):
    from cnetlib.costs import compare_costs
    from cnetlib.train_sd import SDTrainConfig, train

    kw = dict(preset="tiny", resolution=64, batch_size=2, lr=1e-4, checkpoint_every=2, validate_every=4,
              validation_n=2, validation_steps=2, progress=False, gradient_accumulation_steps=2,
              lr_warmup_steps=3)  # the resume at step 2 lands inside the warm-up
    straight = train(SDTrainConfig(output_dir=str(tmp_path / "a"), steps=4, **kw))
    no_warmup = train(SDTrainConfig(output_dir=str(tmp_path / "n"), steps=4, **{**kw, "lr_warmup_steps": 0}))
    assert no_warmup["losses"][0] == straight["losses"][0] and no_warmup["losses"][1:] != straight["losses"][1:]
    train(SDTrainConfig(output_dir=str(tmp_path / "b"), steps=2, **kw))
    resumed = train(SDTrainConfig(output_dir=str(tmp_path / "b"), steps=4, resume=True, **kw))
    assert resumed["losses"] == straight["losses"]
    for a, b in zip(straight["controlnet"].state_dict().values(), resumed["controlnet"].state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "a" / "controlnet" / "config.json").is_file() and straight["log"][-1]["step"] == 4
    assert 0 <= straight["log"][-1]["iou"] <= 1
    with pytest.raises(FileNotFoundError, match="no complete checkpoint-N folder"):
        train(SDTrainConfig(output_dir=str(tmp_path / "c"), steps=2, resume=True, **kw))
    parts = SDParts.tiny()
    cost = compare_costs(parts.unet, batch_size=2, text_tokens=32, repeats=1)
    assert cost["controlnet"]["trainable_parameters"] < cost["finetune"]["trainable_parameters"]
    assert cost["time_ratio"] > 0 and cost["memory_ratio"] > 0
    assert not any(p.requires_grad for p in parts.unet.parameters())  # the UNet is left frozen
    gc = compare_costs(parts.unet, batch_size=2, text_tokens=32, repeats=1, gradient_checkpointing=True)
    for what in ("controlnet", "finetune"):  # checkpointing the whole UNet in both arms saves activations in both
        assert gc[what]["activation_bytes"] < cost[what]["activation_bytes"]
    assert not parts.unet.is_gradient_checkpointing                    # and is switched off again


def test_benchmark_script_runs_on_the_tiny_preset(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "sd_controlnet.py"
    spec = importlib.util.spec_from_file_location("sd_controlnet_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--preset", "tiny", "--repeats", "1"])
    assert res["max_residual_diff"] == 0.0                       # same weights, same residuals as diffusers
    for k in ("forward_s", "forward_backward_s"):
        assert res[k]["cnetlib"] > 0 and res[k]["diffusers"] > 0
    cost = res["training_step"]
    assert cost["controlnet"]["trainable_parameters"] < cost["finetune"]["trainable_parameters"]
    assert cost["time_ratio"] > 0 and cost["memory_ratio"] > 0
    assert "ratio" in capsys.readouterr().out                     # it prints the side-by-side table


def test_random_parts_have_sd15s_architecture():
    # built on the meta device: SD 1.5's shapes without allocating its weights
    parts = SDParts.random(device="meta")
    counts = [sum(p.numel() for p in m.parameters()) for m in (parts.unet, parts.vae, parts.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]   # SD 1.5's UNet, VAE and CLIP ViT-L/14 text model
    assert parts.tokenizer.model_max_length == 77 and parts.vae.config.scaling_factor == 0.18215
    with pytest.raises(ValueError, match="vocab_size 100 is smaller"):
        SDParts.random(TINY_UNET_CONFIG, text_config={"vocab_size": 100, "num_hidden_layers": 1}, device="meta")


def test_training_benchmark_runs_both_arms_on_the_tiny_preset(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "sd_training.py"
    spec = importlib.util.spec_from_file_location("sd_training_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit, match="needs a GPU"):
        bench.main(["--precisions", "fp16"])
    res = bench.main(["--batch-sizes", "1", "--gradient-checkpointing", "off", "on", "--repeats", "1",
                      "--warmup", "1"])
    rows = {r["gradient_checkpointing"]: r for r in res["rows"]}
    assert set(rows) == {False, True} and all(r["batch_size"] == 1 for r in rows.values())
    for r in rows.values():
        for arm in ("cnetlib", "diffusers"):
            assert r[arm]["samples_per_s"] > 0 and np.isfinite(r[arm]["loss"])
        # same ControlNet, same frozen parts, same batch: the same weights and saved activations
        assert r["memory_ratio"] == pytest.approx(1.0, rel=0.02)
    for arm in ("cnetlib", "diffusers"):   # checkpointing keeps fewer activations in both arms
        assert rows[True][arm]["memory_bytes"] < rows[False][arm]["memory_bytes"]
    assert res["batch_1_memory_floor_bytes"]["cnetlib"] == rows[True]["cnetlib"]["memory_bytes"]
    assert "memory floor" in capsys.readouterr().out


def test_no_removed_hub_id_anywhere_in_the_repo():
    from pathlib import Path

    from cnetlib.sd import SD15_ID

    root = Path(__file__).resolve().parent.parent
    removed = "runwayml/" + "stable-diffusion-v1-5"
    hits = [str(p.relative_to(root)) for sub in ("cnetlib", "chapters", "tests", "tools", "benchmarks")
            for p in (root / sub).rglob("*") if p.suffix in {".py", ".ipynb", ".md"} and removed in p.read_text()]
    hits += [n for n in ("README.md",) if removed in (root / n).read_text()]
    assert hits == [] and SD15_ID == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_a_model_that_does_not_load_names_its_one_cause(tmp_path, monkeypatch):
    from cnetlib.sd import load_failure

    err = OSError("raw diffusers message")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    msg = load_failure(tmp_path / "half", "a Stable Diffusion model", err)
    assert "is a folder but not a Stable Diffusion model" in msg and "lacks vae, text_encoder, tokenizer, scheduler" in msg
    assert "no such folder" in load_failure(tmp_path / "nothing" / "here", "a Stable Diffusion model", err)
    assert "HF_HUB_OFFLINE=1" in load_failure("someone/some-model", "a Stable Diffusion model", err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    msg = load_failure("someone/some-model", "a Stable Diffusion model", err)
    assert "could not fetch 'someone/some-model'" in msg and "OSError: raw diffusers message" in msg
    assert "HF_HUB_OFFLINE" not in msg


def test_from_pretrained_errors_say_why(tmp_path):
    from cnetlib.sd import SDControlNet, SDParts

    (tmp_path / "vae").mkdir()
    with pytest.raises(OSError, match="lacks text_encoder, tokenizer, unet, scheduler"):
        SDParts.from_pretrained(str(tmp_path))
    with pytest.raises(OSError, match="could not load the ControlNet: .*lacks config.json"):
        SDControlNet.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="not in the local Hugging Face cache"):
        SDControlNet.from_pretrained("nobody-here/no-such-controlnet")


def test_train_sd_never_swaps_a_named_model_for_the_tiny_one(tmp_path):
    from cnetlib.train_sd import SDTrainConfig, load_parts, main

    out = tmp_path / "run"
    with pytest.raises(ValueError, match="preset 'tiny' trains SD-shaped random weights; pass --preset pretrained"):
        main(["--model", str(tmp_path / "my-sd"), "--output-dir", str(out), "--steps", "1", "--no-progress"])
    with pytest.raises(OSError, match="no such folder"):
        main(["--preset", "pretrained", "--model", str(tmp_path / "my" / "sd"), "--output-dir", str(out),
              "--steps", "1", "--no-progress"])
    assert not (out / "controlnet").exists() and not (out / "log.jsonl").exists()   # nothing trained, nothing written
    with pytest.raises(ValueError, match="preset: expected 'tiny' or 'pretrained', got 'small'"):
        load_parts(SDTrainConfig(preset="small"))


@pytest.mark.parametrize("options, error, message", [
    (dict(steps=0), ValueError, "steps: expected an integer >= 1, got 0"),
    (dict(steps=-1), ValueError, "steps: expected an integer >= 1"),
    (dict(validate_every=0), ValueError, "validate_every: expected an integer >= 1"),
    (dict(gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps: expected an integer >= 1"),
    (dict(mixed_precision="fp8"), ValueError, "mixed_precision: expected 'no', 'fp16' or 'bf16'"),
    (dict(resolution=60), ValueError, "resolution: expected a multiple of 8"),
    (dict(lr=float("nan")), ValueError, "lr: expected a finite number"),
    (dict(batch_size=2.5), TypeError, "batch_size: expected an integer, got float"),
])
def test_bad_training_settings_are_refused_before_anything_loads(options, error, message):
    from cnetlib.train_sd import SDTrainConfig

    with pytest.raises(error, match=message):
        SDTrainConfig(**options)


def test_a_used_run_folder_needs_resume_and_the_same_settings(tmp_path):
    import json
    from dataclasses import asdict

    from cnetlib.train_sd import SDTrainConfig, check_run_folder

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(asdict(SDTrainConfig(output_dir=str(out), lr=1e-4))))
    with pytest.raises(FileExistsError, match="pass --resume"):
        check_run_folder(SDTrainConfig(output_dir=str(out), lr=1e-4), out)
    with pytest.raises(ValueError, match="lr: expected 0.0001, given 0.001"):
        check_run_folder(SDTrainConfig(output_dir=str(out), lr=1e-3, resume=True), out)
    check_run_folder(SDTrainConfig(output_dir=str(out), lr=1e-4, steps=50, resume=True), out)  # longer: fine
    check_run_folder(SDTrainConfig(output_dir=str(tmp_path / "new")), tmp_path / "new")       # fresh: fine


def test_generate_refuses_sizes_the_vae_cannot_make_and_nan_guidance():
    from cnetlib.sd import generate

    parts = SDParts.tiny()
    with pytest.raises(ValueError, match="height: expected a multiple of 8"):
        generate(parts, ["a"], height=60, steps=1)
    with pytest.raises(ValueError, match="guidance: expected a finite number"):
        generate(parts, ["a"], guidance=float("nan"), steps=1)
    with pytest.raises(ValueError, match="expected start < end"):
        generate(parts, ["a"], control_start=0.8, control_end=0.2, steps=1)
