"""Bad input gets an error that names the argument, and nothing is lost (issue 20).

The Python cases of ``tools/input_sweep.py`` (every class of bad value the sweep found: NaN
and infinities, empty or inverted ranges, wrong types and sizes, zero intervals, broken
checkpoints, swapped models, used run folders, other data on resume) each run here and must
raise an error whose message names the argument. Below them, what must survive an
interrupt or a crash in SD training.
"""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("input_sweep", ROOT / "tools" / "input_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["input_sweep"] = sweep
_spec.loader.exec_module(sweep)
PY_CASES = [c for c in sweep.CASES if c.call is not None]


def test_the_sweep_covers_every_class_of_the_issue():
    ids = " ".join(c.id for c in sweep.CASES)
    for needle in ("nan", "inf", "control_start=0.8", "hint_channels=()", "batch_size=0", "steps=0", "height=60",
                   "absolute path", "write_fill50k(n=0)", "resume with another lr", "other data of the same length",
                   "a used folder", "float64", "a string", "file path", "not a multiple", "x_T of the wrong shape",
                   "eval_every=0", "checkpoint_every=0", "truncated", "garbage", "a base UNet as the ControlNet",
                   "a UNet as the ControlNet", "fp8", "--out <a directory>", "model='x'"):
        assert needle in ids, needle
    assert len(PY_CASES) >= 120


@pytest.mark.parametrize("case", PY_CASES, ids=[c.id for c in PY_CASES])
def test_bad_input_is_refused_naming_the_argument(case):
    result = sweep.run_case(case)
    assert result["outcome"] == "clear", f"{case.id}: {result['outcome']}: {result['message']}"


def test_valid_inputs_next_to_the_bad_ones_still_work():
    """The checks refuse what is wrong, not what is merely unusual."""
    import numpy as np

    out = sweep.sample(controls=[(sweep.net(), torch.rand(2, 3, 24, 24))])   # another size the base can take
    assert out.shape == (2, 3, 24, 24)
    img = sweep.sd_generate(controls=[(sweep.sd_net(), np.random.rand(64, 64, 3))])  # floats in [0, 1], as diffusers
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


# ------------------------------------------------------------------------------------------
# Nothing lost: SD training (the toy trainers' interrupt tests live beside them)
# ------------------------------------------------------------------------------------------
KW = dict(preset="tiny", resolution=32, batch_size=2, lr=1e-4, validate_every=2, validation_n=1,
          validation_steps=1, progress=False, n_train=8)


def test_sd_ctrl_c_inside_a_step_resumes_bitwise_and_the_cli_says_how(tmp_path, monkeypatch, capsys):
    import cnetlib.train_sd as ts

    straight = ts.train(ts.SDTrainConfig(output_dir=str(tmp_path / "a"), steps=4, checkpoint_every=100, **KW))
    real, calls = ts.controlnet_loss, {"n": 0}

    def interrupt_in_step_3(parts, controlnet, batch, g, *a, **kw):   # after step 3 drew its batch and noise
        calls["n"] += 1
        loss = real(parts, controlnet, batch, g, *a, **kw)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return loss

    monkeypatch.setattr(ts, "controlnet_loss", interrupt_in_step_3)
    argv = ["--output-dir", str(tmp_path / "b"), "--steps", "4", "--checkpoint-every", "100", "--resolution", "32",
            "--batch-size", "2", "--lr", "1e-4", "--validate-every", "2", "--validation-n", "1",
            "--validation-steps", "1", "--n-train", "8", "--no-progress"]
    with pytest.raises(SystemExit) as stop:
        ts.main(argv)
    assert stop.value.code == 130
    assert "run the same command with --resume" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(ts, "controlnet_loss", real)
    resumed = ts.train(ts.SDTrainConfig(output_dir=str(tmp_path / "b"), steps=4, checkpoint_every=100, resume=True,
                                        **KW))
    assert resumed["losses"] == straight["losses"]
    for a, b in zip(straight["controlnet"].state_dict().values(), resumed["controlnet"].state_dict().values()):
        assert torch.equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]   # one row per validation, none repeated by the resume


def test_sd_resume_skips_a_half_written_checkpoint_and_refuses_other_data(tmp_path):
    from cnetlib.data import write_fill50k
    from cnetlib.train_sd import SDTrainConfig, latest_checkpoint, train

    data = write_fill50k(tmp_path / "pairs", 8, size=32, progress=False)
    out = tmp_path / "run"
    kw = {**KW, "data": str(data)}
    train(SDTrainConfig(output_dir=str(out), steps=2, checkpoint_every=1, **kw))
    assert not list(out.glob(".checkpoint-*"))                         # renamed into place when complete
    half = out / "checkpoint-9"                                        # a crash mid-save, as older versions left it
    shutil.copytree(out / "checkpoint-2", half)
    (half / "train_state.json").unlink()
    assert latest_checkpoint(out) == out / "checkpoint-2"
    resumed = train(SDTrainConfig(output_dir=str(out), steps=3, checkpoint_every=1, resume=True, **kw))
    assert resumed["step"] == 3
    write_fill50k(data, 8, size=32, seed=1, progress=False)            # same folder, same length, other pairs
    with pytest.raises(ValueError, match="--resume: data: .* was trained on other data"):
        train(SDTrainConfig(output_dir=str(out), steps=4, checkpoint_every=1, resume=True, **kw))
    shutil.rmtree(out / "checkpoint-9")
    for p in out.glob("checkpoint-*"):
        (p / "train_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint-N folder .* incomplete: delete them"):
        latest_checkpoint(out)


def test_a_finished_toy_run_is_not_rerun_over_its_summary(tmp_path):
    from cnetlib.experiments.sudden_convergence import run_experiment

    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a finished run"):
        run_experiment(0, steps=1, out=tmp_path, progress=False)


def test_a_toy_run_resumes_only_on_its_own_data(tmp_path):
    from cnetlib.data import Fill50k
    from cnetlib.train import data_fingerprint

    a, b = Fill50k(8, size=16, seed=0), Fill50k(8, size=16, seed=1)
    assert data_fingerprint(a) == data_fingerprint(Fill50k(8, size=16, seed=0)) != data_fingerprint(b)
    sweep.train_cn(out_dir=tmp_path, steps=2, checkpoint_every=1, data=a)
    with pytest.raises(ValueError, match="data: expected '[0-9a-f]+', given '[0-9a-f]+'"):
        sweep.train_cn(out_dir=tmp_path, steps=2, checkpoint_every=1, data=b)
    state = torch.load(tmp_path / "state.pt", weights_only=False)     # a state from before fingerprints were kept
    del state["settings"]["data"]
    torch.save(state, tmp_path / "state.pt")
    run = sweep.train_cn(out_dir=tmp_path, steps=2, checkpoint_every=1, data=a)
    assert run.resumed_from == 2


def test_a_command_line_answers_a_bad_value_with_one_line_not_a_traceback():
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "cnetlib.train_sd", "--steps", "0"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "python -m cnetlib.train_sd: error: steps: expected an integer >= 1, got 0"
    p = subprocess.run([sys.executable, "-m", "cnetlib.train_sd", "--steps", "0"], capture_output=True, text=True,
                       env={**env, "CNETLIB_TRACEBACK": "1"}, cwd=ROOT)
    assert p.returncode == 1 and "Traceback" in p.stderr          # for a bug report
