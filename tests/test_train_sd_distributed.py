"""Scale-out: N processes × batch B train what one process trains at batch N·B (issue 18).

Each step draws one global batch (samples, latent noise, ε, t, prompt drops) from the
seeded generator and process r trains on its slice; DDP's gradient mean then equals one
process at the global batch. Checked on the CPU with two gloo processes.
"""
import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("diffusers")

from cnetlib.train_sd import SDTrainConfig, launch  # noqa: E402

KW = dict(resolution=32, n_train=16, lr=1e-4, validate_every=100, validation_n=1, validation_steps=1,
          progress=False, seed=3)


def weights(out) -> dict:
    from cnetlib.sd import SDControlNet

    return SDControlNet.from_pretrained(out / "controlnet").state_dict()


def assert_same(a: dict, b: dict, rtol: float = 1e-5) -> None:
    """The weights equal within ``rtol``, relative, over the whole model (‖a − b‖ / ‖a‖):
    the gradients of two processes are averaged by an all-reduce, not summed inside one
    batch, and AdamW's normalised steps carry that rounding into the weights (most into
    parameters whose gradient is near 0, so one tensor alone is a poor yardstick)."""
    assert a.keys() == b.keys()
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5
    norm = sum(float(a[k].double().pow(2).sum()) for k in a) ** 0.5
    assert diff <= rtol * norm, f"relative difference {diff / norm:.2e}"


def test_every_process_draws_its_own_slice_of_one_global_batch():
    from cnetlib.data import LazyPairs
    from cnetlib.train_sd import draw_batch

    data = LazyPairs(32, size=16, seed=0)
    one = draw_batch(data, 4, torch.Generator().manual_seed(1))
    parts = [draw_batch(data, 2, torch.Generator().manual_seed(1), rank=r, world=2) for r in range(2)]
    assert parts[0]["prompt"] + parts[1]["prompt"] == one["prompt"]
    assert torch.equal(torch.cat([p["target"] for p in parts]), one["target"])
    assert not torch.equal(parts[0]["target"], parts[1]["target"])          # the ranks see different samples


def test_the_command_line_rebuilds_the_config():
    from cnetlib.train_sd import parse_config, to_argv

    for cfg in (SDTrainConfig(output_dir="x", steps=7, lr=3e-4, gradient_checkpointing=True, progress=False),
                SDTrainConfig(resume=True, data="folder", lr_warmup_steps=5, mixed_precision="bf16")):
        argv = to_argv(cfg)
        assert parse_config(argv) == cfg, argv
    assert "--no-progress" in to_argv(SDTrainConfig(progress=False)) and "--data" not in to_argv(SDTrainConfig())


def test_two_processes_equal_one_at_twice_the_batch_and_resume_exactly(tmp_path):
    one = launch(SDTrainConfig(output_dir=str(tmp_path / "one"), steps=3, batch_size=4, checkpoint_every=100, **KW),
                 1, cpu=True, timeout=600)
    two = launch(SDTrainConfig(output_dir=str(tmp_path / "two"), steps=3, batch_size=2, checkpoint_every=100, **KW),
                 2, cpu=True, timeout=600)
    assert one["steps"] == two["steps"] == 3
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)   # the global batch's loss, logged
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "two"))
    out = str(tmp_path / "resumed")
    launch(SDTrainConfig(output_dir=out, steps=1, batch_size=2, checkpoint_every=1, **KW), 2, cpu=True, timeout=600)
    launch(SDTrainConfig(output_dir=out, steps=3, batch_size=2, checkpoint_every=1, resume=True, **KW), 2, cpu=True,
           timeout=600)
    assert_same(weights(tmp_path / "two"), weights(tmp_path / "resumed"))


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path, monkeypatch):
    import json
    from dataclasses import asdict

    from cnetlib.train_sd import check_run_folder

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    cfg = SDTrainConfig(output_dir=str(out), resume=True)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "num_processes": 2}))
    with pytest.raises(ValueError, match="num_processes: expected 2, given 1"):   # the global batch would change
        check_run_folder(cfg, out)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_run_folder(cfg, out)
