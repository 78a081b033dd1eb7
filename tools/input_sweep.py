"""Feed cnetlib bad input, as users would, and sort what happens (issue 20's sweep).

Each case calls a public function or CLI with one bad value and names the argument a
good error message must mention. The outcome is

- **clear**: an error whose message names that argument (or one of its aliases);
- **unclear**: an error that does not (a raw error from deep inside torch, numpy, PIL or
  diffusers, or a message that blames something else);
- **silent**: no error at all (the bad value was accepted).

Run from a checkout (it imports the ``cnetlib`` there)::

    python tools/input_sweep.py            # a table and the counts
    python tools/input_sweep.py --json F   # also every case's outcome and message

``tests/test_input_sweep.py`` runs the Python cases (not the CLIs, which take minutes) and
requires every one to be clear.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.getcwd())

NAN, INF = float("nan"), float("inf")


@dataclass
class Case:
    id: str
    names: tuple[str, ...]          # a clear message mentions one of these (case-insensitive)
    call: Callable[[], object] | None = None
    cli: list[str] | None = None    # or: a command line, run as `python -m ...`


CASES: list[Case] = []


def case(id: str, *names: str):
    def register(fn):
        CASES.append(Case(id, names, fn))
        return fn
    return register


def cli(id: str, names: tuple[str, ...], *args: str) -> None:
    CASES.append(Case(id, names, cli=list(args)))


def keyword_cases(fn: Callable[..., object], rows: list[tuple[str, dict, tuple[str, ...]]]) -> None:
    """One case per row: ``fn(**kwargs)`` with one bad keyword, and the names its error must mention."""
    for id_, kwargs, names in rows:
        CASES.append(Case(id_, names, (lambda kw: lambda: fn(**kw))(kwargs)))


# ------------------------------------------------------------------------------------------
# Tiny fixtures (built once, lazily)
# ------------------------------------------------------------------------------------------
_cache: dict = {}
TMP = Path(tempfile.mkdtemp(prefix="input_sweep_"))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def base():
    if "base" not in _cache:
        import torch

        from cnetlib.unet import ToyUNet, UNetConfig

        torch.manual_seed(0)
        _cache["base"] = ToyUNet(UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True))).eval()
    return _cache["base"]


def net():
    if "net" not in _cache:
        from cnetlib.controlnet import toy_controlnet

        _cache["net"] = toy_controlnet(base()).eval()
    return _cache["net"]


def cond(b: int = 2):
    import torch

    c, s, _ = net().condition_shape
    return torch.rand(b, c, s, s)


def data(n: int = 8):
    from cnetlib.data import Fill50k

    return Fill50k(n, size=16)


def sample(**kw):
    from cnetlib.guidance import Control, sample as toy_sample

    args = {"prompts": ["red circle with blue background"] * 2, "controls": [Control(net(), cond())], "steps": 1}
    args.update(kw)
    return toy_sample(base(), **args)


def train_cn(**kw):
    from cnetlib.controlnet import toy_controlnet
    from cnetlib.train import train_controlnet

    args = {"steps": 1, "batch_size": 2, "progress": False}
    args.update(kw)
    controlnet = args.pop("controlnet") if "controlnet" in args else toy_controlnet(base())
    return train_controlnet(base(), controlnet, args.pop("data") if "data" in args else data(), **args)


def train_den(**kw):
    from cnetlib.train import train_denoiser
    from cnetlib.unet import ToyUNet

    args = {"steps": 1, "batch_size": 2, "progress": False}
    args.update(kw)
    return train_denoiser(ToyUNet(base().config), data(), **args)


def folder(name: str, n: int = 2) -> Path:
    from cnetlib.data import write_fill50k

    root = TMP / name
    write_fill50k(root, n, size=16, progress=False)
    return root


def ckpt_file(name: str, content: bytes | None = None) -> Path:
    from cnetlib.checkpoint import save_checkpoint

    path = TMP / name
    if content is None:
        save_checkpoint(base(), path)
    else:
        path.write_bytes(content)
    return path


def load_unet(path):
    from cnetlib.checkpoint import load_checkpoint
    from cnetlib.unet import ToyUNet, UNetConfig

    return load_checkpoint(path, ToyUNet, UNetConfig)


def parts():
    if "parts" not in _cache:
        from cnetlib.sd import SDParts

        _cache["parts"] = SDParts.tiny()
    return _cache["parts"]


def sd_net():
    if "sd_net" not in _cache:
        from cnetlib.sd import SDControlNet

        _cache["sd_net"] = SDControlNet.from_unet(parts().unet)
    return _cache["sd_net"]


def sd_generate(**kw):
    import torch

    from cnetlib.sd import generate

    size = parts().unet.config.sample_size * parts().vae_scale_factor
    args = {"prompts": ["a red circle"], "controls": [(sd_net(), torch.rand(1, 3, size, size))], "steps": 1}
    args.update(kw)
    return generate(parts(), **args)


def sd_train(**kw):
    from cnetlib.train_sd import SDTrainConfig, train

    args = {"output_dir": str(TMP / "sd_run"), "steps": 1, "batch_size": 1, "resolution": 32, "progress": False,
            "validate_every": 100, "checkpoint_every": 100, "n_train": 4}
    args.update(kw)
    return train(SDTrainConfig(**args))


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
@case("Fill50k(n=2.5)", "n")
def _():
    from cnetlib.data import Fill50k
    Fill50k(2.5)


@case("Fill50k(n=0)", "n")
def _():
    from cnetlib.data import Fill50k
    Fill50k(0)


@case("Fill50k(size=7)", "size")
def _():
    from cnetlib.data import Fill50k
    Fill50k(2, size=7)


@case("Fill50k(palette=['no such colour'])", "palette", "colour", "color")
def _():
    from cnetlib.data import Fill50k
    Fill50k(2, palette=["no such colour", "red"])


@case("Fill50k(condition='depth')", "condition")
def _():
    from cnetlib.data import Fill50k
    Fill50k(2, condition="depth")


@case("write_fill50k(n=0)", "n")
def _():
    from cnetlib.data import write_fill50k
    write_fill50k(TMP / "w0", 0, progress=False)


@case("write_fill50k(size=0)", "size")
def _():
    from cnetlib.data import write_fill50k
    write_fill50k(TMP / "ws0", 2, size=0, progress=False)


@case("Fill50kFolder(no such folder)", "prompt.json", "no_such")
def _():
    from cnetlib.data import Fill50kFolder
    Fill50kFolder(TMP / "no_such")


@case("Fill50kFolder(absolute path outside the folder)", "source", "outside")
def _():
    from cnetlib.data import Fill50kFolder
    root = folder("abs")
    outside = TMP / "outside.png"
    (root / "source" / "0.png").rename(outside)
    lines = (root / "prompt.json").read_text().splitlines()
    first = json.loads(lines[0])
    first["source"] = str(outside)
    (root / "prompt.json").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    Fill50kFolder(root)


@case("Fill50kFolder(path with ..)", "source", "outside")
def _():
    from cnetlib.data import Fill50kFolder
    root = folder("dotdot")
    lines = (root / "prompt.json").read_text().splitlines()
    first = json.loads(lines[0])
    first["source"] = "../dotdot/source/0.png"
    (root / "prompt.json").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    Fill50kFolder(root)


@case("Fill50kFolder(malformed line)", "prompt.json")
def _():
    from cnetlib.data import Fill50kFolder
    root = folder("malformed")
    with open(root / "prompt.json", "a") as f:
        f.write("{not json\n")
    Fill50kFolder(root)


@case("Fill50kFolder(missing image)", "missing", "target")
def _():
    from cnetlib.data import Fill50kFolder
    root = folder("missing")
    (root / "target" / "1.png").unlink()
    Fill50kFolder(root)


@case("Fill50kFolder(limit=-1)", "limit:")
def _():
    from cnetlib.data import Fill50kFolder
    Fill50kFolder(folder("limit"), limit=-1)


@case("Fill50kFolder(limit=0)", "limit:")
def _():
    from cnetlib.data import Fill50kFolder
    Fill50kFolder(folder("limit0"), limit=0)


@case("Fill50kFolder(size=0)", "size")
def _():
    from cnetlib.data import Fill50kFolder
    Fill50kFolder(folder("size0"), size=0)


@case("source_to_tensor(float array)", "uint8", "images")
def _():
    import numpy as np
    from cnetlib.data import source_to_tensor
    source_to_tensor(np.random.rand(2, 16, 16, 3))


# ------------------------------------------------------------------------------------------
# Models and sampling (toy)
# ------------------------------------------------------------------------------------------
@case("UNetConfig(attention_levels of another length)", "attention_levels")
def _():
    from cnetlib.unet import UNetConfig
    UNetConfig(channels=(16, 32), attention_levels=(False,))


@case("UNetConfig(image_size=30)", "image_size")
def _():
    from cnetlib.unet import UNetConfig
    UNetConfig(image_size=30)


@case("UNetConfig(prediction='x')", "prediction")
def _():
    from cnetlib.unet import ToyUNet, UNetConfig
    ToyUNet(UNetConfig(prediction="x"))


@case("toy_controlnet(variant='foo')", "variant")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(base(), "foo")


@case("toy_controlnet(hint_channels=())", "hint_channels")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(base(), hint_channels=())


@case("toy_controlnet(connector_std=-1)", "connector_std")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(base(), "gaussian", connector_std=-1.0)


@case("toy_controlnet(connector_std=nan)", "connector_std")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(base(), "gaussian", connector_std=NAN)


@case("toy_controlnet(condition_encoder='x')", "condition_encoder")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(base(), condition_encoder="x")


@case("toy_controlnet(a ControlNet as base)", "base:")
def _():
    from cnetlib.controlnet import toy_controlnet
    toy_controlnet(net())


keyword_cases(sample, [
    ("sample(prompts='a string')", dict(prompts="red circle with blue background"), ("prompts",)),
    ("sample(prompts=[1, 2])", dict(prompts=[1, 2]), ("prompts",)),
    ("sample(steps=0)", dict(steps=0), ("steps",)),
    ("sample(steps=2.5)", dict(steps=2.5), ("steps",)),
    ("sample(guidance=nan)", dict(guidance=NAN), ("guidance",)),
    ("sample(mode='foo')", dict(mode="foo"), ("mode",)),
    ("sample(sampler='foo')", dict(sampler="foo"), ("sampler",)),
    ("sample(control_start=0.8, control_end=0.2)", dict(control_start=0.8, control_end=0.2), ("control_start", "control_end")),
    ("sample(conditioning_scale=inf)", dict(conditioning_scale=INF), ("conditioning_scale",)),
    ("sample(max_weight=0)", dict(max_weight=0.0), ("max_weight",)),
    ("sample(seed='a')", dict(seed="a"), ("seed:",)),
])


@case("sample(x_T of the wrong shape)", "x_T")
def _():
    import torch
    sample(x_T=torch.randn(2, 3, 8, 8))


@case("sample(x_T with NaN)", "x_T")
def _():
    import torch
    x = torch.randn(2, 3, 16, 16)
    x[0, 0, 0, 0] = NAN
    sample(x_T=x)


@case("condition: numpy array", "condition")
def _():
    sample(controls=[(net(), cond().numpy())])


@case("condition: float64 tensor", "condition")
def _():
    sample(controls=[(net(), cond().double())])


@case("condition: uint8 tensor", "condition")
def _():
    sample(controls=[(net(), (cond() * 255).to(__import__("torch").uint8))])


@case("condition: NaN", "condition")
def _():
    c = cond()
    c[0, 0, 0, 0] = NAN
    sample(controls=[(net(), c)])


@case("condition: 0-255 values", "condition")
def _():
    sample(controls=[(net(), cond() * 255)])


@case("condition: 1 channel", "condition")
def _():
    sample(controls=[(net(), cond()[:, :1])])


@case("condition: size not a multiple of the UNet's factor", "condition")
def _():
    import torch
    sample(controls=[(net(), torch.rand(2, 3, 33, 33))])


@case("condition: batch 3 for 2 prompts", "condition")
def _():
    sample(controls=[(net(), cond(3))])


@case("condition: a file path", "condition")
def _():
    sample(controls=[(net(), str(TMP / "hint.png"))])


@case("controls: a base UNet as the ControlNet", "controlnet")
def _():
    sample(controls=[(base(), cond())])


@case("controls: scale nan", "scale")
def _():
    sample(controls=[(net(), cond(), NAN)])


@case("ControlledUNet(base, base)", "controlnet")
def _():
    from cnetlib.controlled import ControlledUNet
    ControlledUNet(base(), base())


@case("ControlNet on another base", "base")
def _():
    from cnetlib.unet import ToyUNet, UNetConfig
    from cnetlib.guidance import Control, sample as toy_sample
    other = ToyUNet(UNetConfig(image_size=16, channels=(8, 8), attention_levels=(False, True)))
    toy_sample(other, ["a"] * 2, [Control(net(), cond())], steps=1)


@case("generate(guidance=nan)", "guidance")
def _():
    from cnetlib.base import generate
    generate(base(), ["red circle with blue background"], guidance=NAN, steps=1)


@case("generate(sampler='x')", "sampler")
def _():
    from cnetlib.base import generate
    generate(base(), ["red circle with blue background"], sampler="x", steps=1)


# ------------------------------------------------------------------------------------------
# Training (toy)
# ------------------------------------------------------------------------------------------
for _name, _value in (("steps", 0), ("steps", 2.5), ("batch_size", 0), ("lr", 0.0), ("lr", NAN),
                      ("eval_every", 0), ("checkpoint_every", 0), ("sample_every", 0), ("drop_prompt", 1.5),
                      ("drop_prompt", NAN), ("lr_schedule", "foo"), ("weight_decay", -1.0), ("weight_decay", NAN),
                      ("max_grad_norm", 0.0), ("max_grad_norm", NAN), ("seed", 1.5)):
    CASES.append(Case(f"train_controlnet({_name}={_value})", (_name + ":",),
                      (lambda n, v: lambda: train_cn(**{n: v}))(_name, _value)))

for _name, _value in (("steps", 0), ("batch_size", 0), ("lr", NAN), ("warmup", -1), ("ema_decay", 1.5),
                      ("drop_prompt", 2.0), ("weighting", "foo"), ("stop_at", 5), ("checkpoint_every", 0),
                      ("snapshot_every", 0), ("seed", "a")):
    CASES.append(Case(f"train_denoiser({_name}={_value})", (_name + ":",),
                      (lambda n, v: lambda: train_den(**{n: v}))(_name, _value)))


@case("train_controlnet(a base UNet as the ControlNet)", "controlnet")
def _():
    from cnetlib.unet import ToyUNet
    train_cn(controlnet=ToyUNet(base().config))


@case("train_controlnet(out_dir is a file)", "out_dir")
def _():
    path = TMP / "a_file"
    path.write_text("x")
    train_cn(out_dir=path)


@case("train_controlnet(data: an empty list)", "data")
def _():
    train_cn(data=[])


@case("train_controlnet(resume with another lr)", "lr")
def _():
    train_cn(out_dir=TMP / "resume_lr", steps=2, checkpoint_every=1)
    train_cn(out_dir=TMP / "resume_lr", steps=2, lr=1e-3)


@case("train_controlnet(resume with other data of the same length)", "data")
def _():
    from cnetlib.data import Fill50k
    train_cn(out_dir=TMP / "resume_data", steps=2, checkpoint_every=1, data=Fill50k(8, size=16, seed=0))
    train_cn(out_dir=TMP / "resume_data", steps=2, checkpoint_every=1, data=Fill50k(8, size=16, seed=1))


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------
@case("load_checkpoint(no such file)", "no_such.pt")
def _():
    load_unet(TMP / "no_such.pt")


@case("load_checkpoint(empty file)", "empty.pt")
def _():
    load_unet(ckpt_file("empty.pt", b""))


@case("load_checkpoint(garbage)", "garbage.pt")
def _():
    load_unet(ckpt_file("garbage.pt", os.urandom(2000)))


@case("load_checkpoint(truncated)", "truncated.pt")
def _():
    good = ckpt_file("good.pt").read_bytes()
    load_unet(ckpt_file("truncated.pt", good[: len(good) // 2]))


@case("load_checkpoint(a directory)", "ckdir")
def _():
    (TMP / "ckdir").mkdir(exist_ok=True)
    load_unet(TMP / "ckdir")


@case("load_checkpoint(NaN weights)", "nan.pt")
def _():
    import torch
    from cnetlib.checkpoint import save_checkpoint
    from cnetlib.unet import ToyUNet
    m = ToyUNet(base().config)
    with torch.no_grad():
        next(m.parameters()).fill_(NAN)
    save_checkpoint(m, TMP / "nan.pt")
    load_unet(TMP / "nan.pt")


@case("load_checkpoint(a ControlNet file as a UNet)", "cn.pt", "ControlNet", "config")
def _():
    from cnetlib.checkpoint import save_checkpoint
    save_checkpoint(net(), TMP / "cn.pt")
    load_unet(TMP / "cn.pt")


@case("save_checkpoint(to a directory)", "path:")
def _():
    from cnetlib.checkpoint import save_checkpoint
    (TMP / "ckdir2").mkdir(exist_ok=True)
    save_checkpoint(base(), TMP / "ckdir2")


# ------------------------------------------------------------------------------------------
# Stable Diffusion (tiny preset, offline)
# ------------------------------------------------------------------------------------------
@case("SDControlNet.from_original(garbage file)", "garbage.pth")
def _():
    from cnetlib.sd import SDControlNet
    SDControlNet.from_original(ckpt_file("garbage.pth", os.urandom(4000)))


@case("SDControlNet.from_original(a toy checkpoint)", "control_model")
def _():
    from cnetlib.sd import SDControlNet
    SDControlNet.from_original({"state_dict": {"model.x": __import__("torch").zeros(1), "foo.weight": __import__("torch").zeros(1)}})


@case("SDControlNet.from_original(no such file)", "no_such.pth")
def _():
    from cnetlib.sd import SDControlNet
    SDControlNet.from_original(TMP / "no_such.pth")


@case("SDControlNet.from_pretrained(no such folder)", "no_such_folder")
def _():
    from cnetlib.sd import SDControlNet
    SDControlNet.from_pretrained(TMP / "no_such_folder")


@case("SDControlNet.from_unet(a toy UNet)", "unet:")
def _():
    from cnetlib.sd import SDControlNet
    SDControlNet.from_unet(base())


@case("SDParts.from_pretrained(an id that is not there, offline)", "no-such/model")
def _():
    from cnetlib.sd import SDParts
    SDParts.from_pretrained("no-such/model")


keyword_cases(sd_generate, [
    ("sd.generate(height=60)", dict(height=60, width=64), ("height",)),
    ("sd.generate(guidance=nan)", dict(guidance=NAN), ("guidance",)),
    ("sd.generate(steps=0)", dict(steps=0), ("steps",)),
    ("sd.generate(mode='x')", dict(mode="x"), ("mode",)),
    ("sd.generate(control_start > control_end)", dict(control_start=0.9, control_end=0.1), ("control_start",)),
    ("sd.generate(conditioning_scale=nan)", dict(conditioning_scale=NAN), ("conditioning_scale",)),
    ("sd.generate(output='png')", dict(output="png"), ("output",)),
    ("sd.generate(prompts=[1])", dict(prompts=[1]), ("prompts",)),
    ("sd.generate(negative_prompt=None)", dict(negative_prompt=None), ("negative_prompt",)),
    ("sd.generate(condition: a file path that is not there)", dict(controls=[(sd_net(), str(TMP / "no_such.png"))]), ("control image", "condition")),
])


@case("sd.generate(a UNet as the ControlNet)", "controlnet")
def _():
    import torch
    sd_generate(controls=[(parts().unet, torch.rand(1, 3, 64, 64))])


@case("sd.generate(condition with NaN)", "control image", "condition")
def _():
    import torch
    c = torch.rand(1, 3, 64, 64)
    c[0, 0, 0, 0] = NAN
    sd_generate(controls=[(sd_net(), c)])


@case("sd.generate(condition: float numpy array of 0-255 values)", "control image", "condition")
def _():
    import numpy as np
    sd_generate(controls=[(sd_net(), np.random.rand(64, 64, 3) * 255)])


@case("sd.generate(condition: uint8 array (H, W))", "control image", "condition")
def _():
    import numpy as np
    sd_generate(controls=[(sd_net(), np.zeros((64, 64), np.uint8))])


@case("sd.generate(condition: 2 images for 1 prompt)", "control image")
def _():
    import torch
    sd_generate(controls=[(sd_net(), torch.rand(2, 3, 64, 64))])


@case("sd.annotate(kind='x')", "kind")
def _():
    import numpy as np
    from cnetlib.sd import annotate
    annotate(np.zeros((64, 64, 3), np.uint8), kind="x")


for _name, _value in (("steps", 0), ("batch_size", 0), ("lr", NAN), ("resolution", 60), ("mixed_precision", "fp8"),
                      ("preset", "x"), ("validate_every", 0), ("checkpoint_every", 0),
                      ("gradient_accumulation_steps", 0), ("drop_prompt", 2.0), ("max_grad_norm", -1.0),
                      ("lr_warmup_steps", -1), ("n_train", 0)):
    CASES.append(Case(f"SDTrainConfig({_name}={_value!r})", (_name,),
                      (lambda n, v: lambda: __import__("cnetlib.train_sd", fromlist=["x"]).SDTrainConfig(**{n: v}))(_name, _value)))


@case("SDTrainConfig(preset='tiny', model='x')", "model")
def _():
    from cnetlib.train_sd import SDTrainConfig
    SDTrainConfig(preset="tiny", model="x")


@case("train_sd: a used folder without resume", "resume")
def _():
    sd_train(output_dir=str(TMP / "sd_used"), checkpoint_every=1)
    sd_train(output_dir=str(TMP / "sd_used"), checkpoint_every=1)


@case("train_sd: resume with another lr", "lr")
def _():
    sd_train(output_dir=str(TMP / "sd_lr"), checkpoint_every=1)
    sd_train(output_dir=str(TMP / "sd_lr"), checkpoint_every=1, resume=True, steps=2, lr=1e-3)


@case("train_sd: resume with other data of the same length", "data")
def _():
    from cnetlib.data import write_fill50k
    a = TMP / "sd_data_a"
    write_fill50k(a, 4, size=32, seed=0, progress=False)
    sd_train(output_dir=str(TMP / "sd_data"), checkpoint_every=1, data=str(a))
    write_fill50k(a, 4, size=32, seed=1, progress=False)   # the same folder, other pairs
    sd_train(output_dir=str(TMP / "sd_data"), checkpoint_every=1, resume=True, steps=2, data=str(a))


@case("train_sd: resume with no checkpoint", "checkpoint")
def _():
    sd_train(output_dir=str(TMP / "sd_none"), resume=True)


@case("train_sd: data folder not there", "data", "no_such_data")
def _():
    sd_train(output_dir=str(TMP / "sd_nodata"), data=str(TMP / "no_such_data"))


@case("train_sd: output_dir is a file", "output_dir")
def _():
    (TMP / "a_file2").write_text("x")
    sd_train(output_dir=str(TMP / "a_file2"))


# ------------------------------------------------------------------------------------------
# Command lines (each a fresh python; slower)
# ------------------------------------------------------------------------------------------
cli("base --out <a directory>", ("--out",), "cnetlib.base", "--out", str(TMP), "--steps", "1", "--eval", "0")
cli("base --steps 0", ("steps",), "cnetlib.base", "--steps", "0", "--out", str(TMP / "b.pt"))
cli("base --batch-size 0", ("batch_size", "batch-size"), "cnetlib.base", "--batch-size", "0", "--out", str(TMP / "b.pt"))
cli("base --stop-at 9000", ("stop_at", "stop-at"), "cnetlib.base", "--stop-at", "9000", "--out", str(TMP / "b.pt"))
for _flag, _v in (("--steps", "0"), ("--batch-size", "0"), ("--lr", "0"), ("--n-train", "0"), ("--eval-every", "0"),
                  ("--drop-prompt", "2")):
    cli(f"sudden_convergence {_flag} {_v}", (_flag.lstrip("-").replace("-", "_"), _flag.lstrip("-")),
        "cnetlib.experiments.sudden_convergence", _flag, _v, "--out", str(TMP / "sc"))
for _flag, _v in (("--steps", "0"), ("--mixed-precision", "fp8"), ("--validate-every", "0"), ("--model", "foo"),
                  ("--resolution", "60")):
    cli(f"train_sd {_flag} {_v}", (_flag.lstrip("-").replace("-", "_"), _flag.lstrip("-")),
        "cnetlib.train_sd", _flag, _v, "--output-dir", str(TMP / "tsd"))
cli("runs no-such-run", ("run",), "cnetlib.experiments.runs", "no-such-run")


# ------------------------------------------------------------------------------------------
def judge(names: tuple[str, ...], message: str) -> str:
    """Clear: the message names the argument. A raw OS error ("[Errno 21] Is a directory: x.tmp")
    names a path, not the argument, so it is not clear whatever it contains."""
    low = message.lower()
    return "clear" if "[errno" not in low and any(n.lower() in low for n in names) else "unclear"


def run_case(c: Case, timeout: float = 120.0) -> dict:
    if c.cli is not None:
        try:
            p = subprocess.run([sys.executable, "-m", *c.cli], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "CNETLIB_SMOKE": "1"})
        except subprocess.TimeoutExpired:
            return {"outcome": "silent", "message": f"still running after {timeout:.0f} s"}
        if p.returncode == 0:
            return {"outcome": "silent", "message": p.stdout.strip()[-300:]}
        err = p.stderr.strip()
        last = err.splitlines()[-1] if err else ""
        outcome = "unclear" if "Traceback" in err else judge(c.names, last)
        return {"outcome": outcome, "message": last[:400]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c.call()
        except BaseException as e:  # noqa: BLE001 - sorting every outcome is the point
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = f"{type(e).__name__}: {e}"
            if isinstance(e, (ImportError, NameError)) and "cnetlib" in str(e):
                return {"outcome": "n/a", "message": msg[:400]}
            return {"outcome": judge(c.names, str(e)), "message": msg[:400],
                    "where": traceback.extract_tb(e.__traceback__)[-1].filename.split("site-packages/")[-1]}
    return {"outcome": "silent", "message": ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write every case's outcome here")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line cases (slow)")
    p.add_argument("--only-cli", action="store_true", help="only the command-line cases")
    p.add_argument("--timeout", type=float, default=120.0, help="a CLI still running after this many seconds "
                   "accepted its bad value: silent (default: %(default)s)")
    p.add_argument("-k", default=None, help="only cases whose id contains this")
    a = p.parse_args(argv)
    results = {}
    for c in CASES:
        if (a.no_cli and c.cli is not None) or (a.only_cli and c.cli is None) or (a.k and a.k not in c.id):
            continue
        r = run_case(c, a.timeout)
        results[c.id] = r
        print(f"{r['outcome']:8s} {c.id:60s} {r['message'][:150]}", flush=True)
    counts = {k: sum(r["outcome"] == k for r in results.values()) for k in ("clear", "unclear", "silent", "n/a")}
    print(json.dumps({"cases": len(results), **counts}))
    if a.json:
        a.json.write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
