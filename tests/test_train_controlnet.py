"""Training a ControlNet: resumable to bitwise-identical weights, logged, and measured."""
import json
import time

import numpy as np
import pytest
import torch

from cnetlib.controlnet import ControlNet
from cnetlib.controlled import ControlledUNet
from cnetlib.data import Fill50k, target_to_tensor
from cnetlib.fidelity import FidelityProbe, condition_iou
from cnetlib.train import train_controlnet
from tiny import tiny_base, tiny_controlnet



def fresh():
    base = tiny_base()
    return base, tiny_controlnet(base)


DATA = Fill50k(64, size=16)
KW = dict(batch_size=8, lr=1e-3, seed=3, progress=False, checkpoint_every=2)


def test_a_ctrl_c_inside_a_step_resumes_without_skipping_its_batch(tmp_path, monkeypatch):
    import cnetlib.train as train_module

    base, net = fresh()
    straight = train_controlnet(base, net, DATA, steps=5, **KW)
    calls = []
    real = train_module.diffusion_loss

    def interrupt_inside_step_3(*args, **kw):  # step 3 has drawn its batch and prompt drops
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    base, net = fresh()
    monkeypatch.setattr(train_module, "diffusion_loss", interrupt_inside_step_3)
    first = train_controlnet(base, net, DATA, steps=5, out_dir=tmp_path, **KW)
    assert first.interrupted and len(first.losses) == 3
    monkeypatch.setattr(train_module, "diffusion_loss", real)
    base, net = fresh()
    second = train_controlnet(base, net, DATA, steps=5, out_dir=tmp_path, **KW)
    assert second.resumed_from == 3 and second.losses == straight.losses
    for a, b in zip(straight.controlnet.state_dict().values(), second.controlnet.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_interrupt_gives_bitwise_identical_weights(tmp_path, schedule):
    kw = {**KW, "lr_schedule": schedule}
    base, net = fresh()
    straight = train_controlnet(base, net, DATA, steps=6, **kw)

    base, net = fresh()

    def stop_at_3(step, _):
        if step == 3:
            raise KeyboardInterrupt

    first = train_controlnet(base, net, DATA, steps=6, out_dir=tmp_path, on_step=stop_at_3, **kw)
    assert first.interrupted and len(first.losses) == 3 and (tmp_path / "state.pt").is_file()
    base, net = fresh()  # a new process: fresh objects, state from disk
    second = train_controlnet(base, net, DATA, steps=6, out_dir=tmp_path, **kw)
    assert second.resumed_from == 3 and not second.interrupted
    assert second.losses == straight.losses
    for (k, a), b in zip(straight.controlnet.state_dict().items(), second.controlnet.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_resumed_run_reports_the_wall_time_of_the_whole_run(tmp_path):
    """Resuming a finished run (or one stopped after its last step) must not report the seconds of the resume alone."""
    probe = FidelityProbe(n=2, size=16, steps=2, seed=2)
    base, net = fresh()
    first = train_controlnet(base, net, DATA, steps=4, probe=probe, eval_every=2, out_dir=tmp_path,
                             on_step=lambda *_: time.sleep(0.1), **KW)   # at least 0.4 s of training
    base, net = fresh()
    again = train_controlnet(base, net, DATA, steps=4, probe=probe, eval_every=2, out_dir=tmp_path, **KW)
    assert again.resumed_from == 4
    assert again.seconds >= first.log[-1]["seconds"] >= 0.4


def test_only_the_controlnet_trains_and_the_log_is_written(tmp_path):
    base, net = fresh()
    before_base = {k: v.clone() for k, v in base.state_dict().items()}
    before_net = {k: v.clone() for k, v in net.state_dict().items()}
    probe = FidelityProbe(n=4, size=16, steps=2, seed=2, keep_images=2)
    run = train_controlnet(base, net, DATA, steps=4, probe=probe, eval_every=2, sample_every=4, out_dir=tmp_path,
                           **KW)
    assert all(torch.equal(v, before_base[k]) for k, v in base.state_dict().items())
    assert any(not torch.equal(v, before_net[k]) for k, v in net.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and rows == run.log
    assert "iou" in rows[0] and "iou" not in rows[1] and "iou" in rows[2]
    assert all(0 <= r["proxy_iou"] <= 1 and r["seconds"] >= 0 for r in rows)
    assert sorted(run.samples) == [0, 4] and run.samples[4]["images"].shape == (2, 16, 16, 3)
    assert len(rows[0]["iou_per_sample"]) == 4


def test_condition_iou_is_one_on_the_truth_and_lower_when_shifted():
    ds = Fill50k(8, with_meta=True)
    truth = target_to_tensor(ds.targets)
    assert np.allclose(condition_iou(truth, ds.masks), 1.0)
    shifted = torch.roll(truth, shifts=6, dims=-1)
    assert condition_iou(shifted, ds.masks).mean() < 0.8
    with pytest.raises(ValueError, match=r"masks: expected shape \(8, 32, 32\)"):
        condition_iou(truth, ds.masks[:4])


def test_probe_on_a_fresh_controlnet_matches_the_base_alone():
    base, net = fresh()
    probe = FidelityProbe(n=4, size=16, steps=3, seed=2)
    model = ControlledUNet(base, net)
    a = probe.samples(model, True)
    from cnetlib.guidance import sample

    b = sample(base, probe.prompts, steps=3, guidance=probe.guidance)
    assert torch.equal(a, b)  # zero convs: the controlled sampler draws what the base draws


def test_bad_arguments():
    base, net = fresh()
    with pytest.raises(ValueError, match="steps: expected an integer >= 1, got 0"):
        train_controlnet(base, net, DATA, steps=0)
    with pytest.raises(TypeError, match="steps: expected an integer, got float 2.5"):
        train_controlnet(base, net, DATA, steps=2.5)
    for name, value in (("batch_size", 0), ("eval_every", 0), ("checkpoint_every", 0), ("sample_every", 0)):
        with pytest.raises(ValueError, match=f"{name}: expected an integer >= 1, got 0"):
            train_controlnet(base, net, DATA, steps=2, **{name: value})
    for lr in (0.0, float("nan"), -1e-3):
        with pytest.raises(ValueError, match="lr: expected a"):
            train_controlnet(base, net, DATA, steps=2, lr=lr)
    with pytest.raises(ValueError, match="lr_schedule: expected 'constant' or 'cosine'"):
        train_controlnet(base, net, DATA, steps=2, lr_schedule="linear")


def test_resume_with_other_settings_is_refused_and_nothing_is_overwritten(tmp_path):
    base, net = fresh()
    train_controlnet(base, net, DATA, steps=2, out_dir=tmp_path, **KW)
    state = (tmp_path / "state.pt").read_bytes()
    for change in ({"lr": 2e-3}, {"seed": 4}, {"steps": 3}):
        base, net = fresh()
        with pytest.raises(ValueError, match=f"other settings.*{next(iter(change))}: expected"):
            train_controlnet(base, net, DATA, steps=change.get("steps", 2), out_dir=tmp_path,
                             **{**KW, **{k: v for k, v in change.items() if k != "steps"}})
        assert (tmp_path / "state.pt").read_bytes() == state
    base = fresh()[0]
    other = ControlNet.from_unet(base, hint_channels=(4, 4, 8, 8, 8, 8, 16))
    with pytest.raises(ValueError, match="controlnet.hint_channels: expected"):
        train_controlnet(base, other, DATA, steps=2, out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match=r"drop_prompt: expected a number <= 1, got 1.5"):
        train_controlnet(base, fresh()[1], DATA, steps=2, drop_prompt=1.5, out_dir=tmp_path / "new", **KW)
    assert not (tmp_path / "new").exists()


def test_an_interrupted_experiment_writes_no_summary_and_resumes(tmp_path, monkeypatch):
    from dataclasses import replace

    import cnetlib.experiments.sudden_convergence as sc

    recipe = replace(sc.RECIPE, steps=4, batch_size=4, n_train=64, eval_every=2, sample_every=4, probe_n=2, final_probe_n=2,
                     probe_steps=2)
    real = sc.train_controlnet

    def interrupt_at_2(*args, **kw):
        def on_step(step, _):
            if step == 2:
                raise KeyboardInterrupt
        return real(*args, **kw, on_step=on_step)

    monkeypatch.setattr(sc, "train_controlnet", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt, match="interrupted after step 2; run the same command again"):
        sc.run_experiment(out=tmp_path, progress=False, recipe=recipe)
    assert (tmp_path / "state.pt").is_file() and not (tmp_path / "summary.json").exists()
    monkeypatch.setattr(sc, "train_controlnet", real)
    run, summary = sc.run_experiment(out=tmp_path, progress=False, recipe=recipe)
    assert run.resumed_from == 2 and len(run.losses) == 4 and (tmp_path / "summary.json").is_file()
    assert summary["final_probe_n"] == 2 and len(summary["per_sample_iou_after"]) == 2
    assert set(summary["placement"]) == {"with_prompt", "no_prompt", "no_prompt_guided"}
    assert 0.0 <= summary["placement"]["with_prompt"]["within_1px"] <= 1.0
    assert summary["no_prompt_guided"] == {"mode": recipe.no_prompt_mode, "guidance": recipe.no_prompt_guidance}


def test_the_cli_prints_a_summary_without_its_long_lists():
    import json

    from cnetlib.experiments.sudden_convergence import slim_summary

    summary = {"iou_after": 0.9, "per_sample_iou_after": [0.9] * 64, "jump": {"jump_step": 300},
               "per_sample": {"median": 300.0, "switch_steps": list(range(32))},
               "placement": {"with_prompt": {"within_1px": 1.0, "center_error_per_sample": [0.1] * 64}}}
    out = slim_summary(summary)
    assert out == {"iou_after": 0.9, "jump": {"jump_step": 300}, "per_sample": {"median": 300.0},
                   "placement": {"with_prompt": {"within_1px": 1.0}}}
    json.dumps(out)


def test_a_bad_output_path_fails_before_training(tmp_path):
    from cnetlib.checkpoint import atomic_save_npz, check_writable
    from cnetlib.experiments.sudden_convergence import run_experiment

    (tmp_path / "summary.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out \(summary.json\): expected a file path"):
        run_experiment(0, steps=1, out=tmp_path, progress=False)
    with pytest.raises(IsADirectoryError, match="--out: expected a file path"):
        check_writable(tmp_path, "--out")
    path = atomic_save_npz(tmp_path / "a" / "x.npz", k=np.arange(3))
    assert path.name == "x.npz" and np.load(path)["k"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.npz"]  # no temporary file left behind
