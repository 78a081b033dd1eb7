import pytest
import torch

from cnetlib.base import BaseRecipe, evaluation_prompts, generate, load_base, load_or_train_base, train_base
from cnetlib.checkpoint import save_checkpoint
from cnetlib.data import Fill50k
from cnetlib.train import drop_prompts, train_denoiser
from cnetlib.unet import ToyUNet, UNetConfig

TINY = UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True), context_dim=16, groups=4,
                  text_layers=1)


def test_training_lowers_the_loss_and_is_reproducible():
    data = Fill50k(64, size=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(train_denoiser(ToyUNet(TINY), data, steps=30, batch_size=16, lr=3e-3, warmup=5,
                                   seed=1, progress=False))
    a, b = runs
    assert a.losses == b.losses  # same seeds, same CPU: bitwise the same run
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    first, last = sum(a.losses[:5]) / 5, sum(a.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert not a.model.training and not any(p.requires_grad for p in a.model.parameters())


def test_drop_prompts_rate_and_range():
    g = torch.Generator().manual_seed(0)
    out = drop_prompts(["x"] * 4000, 0.5, g)
    assert 0.45 < out.count("") / 4000 < 0.55
    assert drop_prompts(["x"] * 10, 0.0, g) == ["x"] * 10 and drop_prompts(["x"] * 10, 1.0, g) == [""] * 10
    with pytest.raises(ValueError, match=r"drop_prompt: expected a probability in \[0, 1\], got 1.5"):
        drop_prompts(["x"], 1.5, g)


def test_load_or_train_uses_the_checkpoint_and_never_saves_in_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("CNETLIB_SMOKE", "1")
    path = tmp_path / "base.pt"
    recipe = BaseRecipe(steps=3, n_train=32, image_size=16, batch_size=4)
    model = load_or_train_base(path, recipe, TINY, progress=False)
    assert not path.exists() and isinstance(model, ToyUNet)
    save_checkpoint(model, path)
    loaded = load_or_train_base(path, recipe, TINY, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters())
    monkeypatch.setenv("CNETLIB_SMOKE", "0")
    path2 = tmp_path / "trained.pt"
    load_or_train_base(path2, recipe, TINY, progress=False)
    assert load_base(path2).config == TINY


def test_generate_shapes_seeds_and_bad_sampler():
    torch.manual_seed(0)
    m = ToyUNet(TINY).eval()
    prompts = evaluation_prompts(3)
    a = generate(m, prompts, steps=4, seed=1)
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, generate(m, prompts, steps=4, seed=1))
    assert not torch.equal(a, generate(m, prompts, steps=4, seed=2))
    with pytest.raises(ValueError, match="sampler: expected 'ddim' or 'ddpm'"):
        generate(m, prompts, sampler="euler")


def test_evaluation_prompts_cover_every_pair_once_before_repeating():
    ps = evaluation_prompts(56)
    assert len(set(ps)) == 56
    assert evaluation_prompts(57)[56] == ps[0]


def test_train_base_runs_with_a_small_recipe():
    r = train_base(BaseRecipe(steps=2, n_train=16, batch_size=4, image_size=16), config=TINY, progress=False)
    assert len(r.losses) == 2 and r.seconds > 0


def test_an_interrupted_base_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import cnetlib.train as train

    recipe = BaseRecipe(steps=6, n_train=32, image_size=16, batch_size=4)
    straight = train_base(recipe, TINY, progress=False)
    real, calls = train.diffusion_loss, {"n": 0}

    def interrupt_inside_step_4(*args, **kw):   # after step 4 drew its batch: a Ctrl-C mid-step
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train, "diffusion_loss", interrupt_inside_step_4)
    first = train_base(recipe, TINY, progress=False, out_dir=tmp_path, snapshot_every=2)
    assert first.interrupted and len(first.losses) == 3 and (tmp_path / "state.pt").is_file()
    monkeypatch.setattr(train, "diffusion_loss", real)
    second = train_base(recipe, TINY, progress=False, out_dir=tmp_path, snapshot_every=2)
    assert second.resumed_from == 3 and second.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["ema_2.pt", "ema_4.pt", "ema_6.pt"]
    assert second.raw is not None and not torch.equal(second.raw.out[2].weight, second.model.out[2].weight)
    before = (tmp_path / "state.pt").read_bytes()
    with pytest.raises(ValueError, match="other settings.*lr: expected"):
        train_base(BaseRecipe(steps=6, n_train=32, image_size=16, batch_size=4, lr=1e-3), TINY, progress=False,
                   out_dir=tmp_path)
    assert (tmp_path / "state.pt").read_bytes() == before


def test_recipe_builds_its_unet_and_min_snr_trains():
    recipe = BaseRecipe(steps=3, n_train=16, batch_size=4, image_size=16, channels=(8, 16), weighting="min_snr")
    cfg = recipe.config()
    assert cfg.channels == (8, 16) and cfg.attention_levels == (False, True) and cfg.image_size == 16
    r = train_base(recipe, progress=False)
    assert len(r.losses) == 3 and all(l == l for l in r.losses)   # finite


def test_stop_at_ends_inside_the_schedule_and_a_later_call_continues(tmp_path):
    from dataclasses import replace

    recipe = BaseRecipe(steps=6, n_train=32, image_size=16, batch_size=4)
    straight = train_base(recipe, TINY, progress=False)
    part = train_base(replace(recipe, stop_at=4), TINY, progress=False, out_dir=tmp_path)
    assert len(part.losses) == 4 and part.losses == straight.losses[:4]   # same schedule, cut at step 4
    rest = train_base(recipe, TINY, progress=False, out_dir=tmp_path)  # stop_at is not a setting: resumes
    assert rest.resumed_from == 4 and rest.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), rest.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stop_at: expected a step in 1..steps=6, got 7"):
        train_base(replace(recipe, stop_at=7), TINY, progress=False)
