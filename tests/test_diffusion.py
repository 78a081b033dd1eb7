import math

import pytest
import torch

from cnetlib.diffusion import (
    classifier_free_guidance, cosine_schedule, ddim_sample, ddim_timesteps, ddpm_sample, diffusion_loss,
    linear_schedule, make_schedule, prediction_target, q_sample, to_x0_eps,
)


def test_linear_schedule_is_stable_diffusions():
    s = linear_schedule()
    assert s.T == 1000
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)
    # SD's "scaled linear": sqrt(beta) is linear
    d = torch.diff(s.betas.sqrt())
    torch.testing.assert_close(d, d[0].expand_as(d))
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=2e-4)


def test_cosine_schedule_reaches_zero_signal():
    s = cosine_schedule()
    ab = s.alphas_cumprod
    assert (torch.diff(ab) < 0).all() and ab[0] > 0.999 and ab[-1] < 1e-6
    t = torch.tensor([499])
    assert ab[t].item() == pytest.approx(math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2
                                         / math.cos(0.008 / 1.008 * math.pi / 2) ** 2, rel=1e-3)
    with pytest.raises(ValueError, match="expected one of"):
        make_schedule("sigmoid")


def test_q_sample_matches_closed_form_and_statistics():
    s = linear_schedule()
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((20000,), 300)
    xt = q_sample(x0, t, noise, s)
    ab = s.alphas_cumprod[300].item()
    torch.testing.assert_close(xt, ab**0.5 * 0.5 + (1 - ab) ** 0.5 * noise)
    assert xt.mean().item() == pytest.approx(ab**0.5 * 0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.03)
    with pytest.raises(ValueError, match=r"timesteps in \[0, 999\]"):
        q_sample(x0[:1], torch.tensor([1000]), noise[:1], s)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_prediction_conversions_are_exact(prediction):
    s = cosine_schedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900])
    xt = q_sample(x0, t, noise, s)
    x0_hat, eps_hat = to_x0_eps(prediction_target(x0, noise, t, s, prediction), xt, t, s, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)


def test_loss_is_zero_for_the_oracle_and_positive_otherwise():
    s = linear_schedule()
    x0 = torch.rand(8, 3, 4, 4) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    # the oracle knows the noise: replay the generator the loss uses (t first, then ε)
    torch.randint(0, s.T, (8,), generator=g2)
    noise = torch.randn(x0.shape, generator=g2)
    assert diffusion_loss(lambda x, tt: noise, x0, s, "epsilon", generator=g1).item() == 0.0
    assert diffusion_loss(lambda x, tt: torch.zeros_like(x), x0, s, "epsilon").item() > 0.5


def test_cfg_is_a_linear_combination():
    c = lambda x, t: torch.ones_like(x) * 3.0  # noqa: E731
    u = lambda x, t: torch.ones_like(x)  # noqa: E731
    x, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(classifier_free_guidance(c, u, 1.0)(x, t), c(x, t))
    torch.testing.assert_close(classifier_free_guidance(c, u, 0.0)(x, t), u(x, t))
    torch.testing.assert_close(classifier_free_guidance(c, u, 2.5)(x, t), torch.full_like(x, 1 + 2.5 * 2))


def test_ddim_timesteps_are_trailing_and_unique():
    ts = ddim_timesteps(1000, 50)
    assert ts[0] == 999 and len(ts) == 50 and ts == sorted(set(ts), reverse=True) and ts[-1] == 19
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_samplers_recover_a_known_image_from_an_oracle(prediction):
    """With a network that knows x0, both samplers must land on x0."""
    s = cosine_schedule(200)
    x0 = torch.rand(2, 3, 4, 4) * 1.6 - 0.8

    def oracle(x, t):
        a, sig = s.coefficients(t, x)
        eps = (x - a * x0) / sig
        return eps if prediction == "epsilon" else a * eps - sig * x0

    g = torch.Generator().manual_seed(0)
    assert torch.allclose(ddim_sample(oracle, x0.shape, s, prediction, steps=20, generator=g), x0, atol=1e-4)
    assert torch.allclose(ddpm_sample(oracle, x0.shape, s, prediction, generator=g), x0, atol=1e-4)


def test_ddim_is_deterministic_and_ddpm_is_seeded():
    s = linear_schedule(100)
    f = lambda x, t: 0.1 * x  # noqa: E731
    a = ddim_sample(f, (1, 3, 4, 4), s, "epsilon", steps=10, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(f, (1, 3, 4, 4), s, "epsilon", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    c = ddpm_sample(f, (1, 3, 4, 4), s, "epsilon", generator=torch.Generator().manual_seed(0))
    d = ddpm_sample(f, (1, 3, 4, 4), s, "epsilon", generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c, d)


def test_min_snr_weights():
    from cnetlib.diffusion import loss_weights

    s = make_schedule("cosine")
    t = torch.tensor([0, 300, 999])
    snr = s.snr[t].float()
    assert torch.equal(loss_weights(t, s, "v"), torch.ones(3))
    w_v, w_eps = loss_weights(t, s, "v", "min_snr", gamma=5.0), loss_weights(t, s, "epsilon", "min_snr", gamma=5.0)
    torch.testing.assert_close(w_v, snr.clamp(max=5.0) / (snr + 1))
    torch.testing.assert_close(w_eps, snr.clamp(max=5.0) / snr)
    assert w_v[0] < 0.01 and w_eps[2] == pytest.approx(1.0)   # t = 0: SNR huge, capped; t = T: SNR < γ
    with pytest.raises(ValueError, match="weighting: expected one of"):
        loss_weights(t, s, "v", "p2")


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_x0_and_epsilon_weightings_are_those_losses_whatever_the_prediction(prediction):
    """The weighted loss of any prediction equals the x_0 loss ("x0") or the ε loss ("epsilon")
    of the same model output, sample by sample (chapter 05's recipe variants)."""
    from cnetlib.diffusion import diffusion_loss, q_sample, to_x0_eps

    s = make_schedule("cosine")
    x0 = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))   # any model's output
    for weighting in ("x0", "epsilon"):
        g = torch.Generator().manual_seed(2)
        got = diffusion_loss(lambda x, t: out, x0, s, prediction, generator=g, weighting=weighting)
        g = torch.Generator().manual_seed(2)   # the same t and ε as diffusion_loss drew
        t = torch.randint(0, s.T, (6,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = q_sample(x0, t, noise, s)
        x0_hat, eps_hat = to_x0_eps(out, x_t, t, s, prediction)
        want = ((x0_hat - x0) if weighting == "x0" else (eps_hat - noise)).pow(2).flatten(1).mean(1).mean()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cubic_timesteps_favour_high_noise_and_stay_in_range():
    from cnetlib.diffusion import sample_timesteps

    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, 1000, "cubic", g)
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    # P(t >= 875) = P(u^3 <= 1/8) = P(u <= 1/2) = 1/2; uniform gives 1/8
    assert abs(float((t >= 875).float().mean()) - 0.5) < 0.02
    u = sample_timesteps(20000, 1000, "uniform", g)
    assert abs(float((u >= 875).float().mean()) - 0.125) < 0.02
    with pytest.raises(ValueError, match="timesteps: expected one of"):
        sample_timesteps(4, 1000, "logit_normal", g)
