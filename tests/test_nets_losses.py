import pytest
import torch

from glann.errors import WeightsError
from glann.losses import Lap1Loss, VGGLoss, make_loss
from glann.nets import Generator, Mapper, count_parameters


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (128, 1)])
def test_generator_output_shape_and_range(size, channels):
    G = Generator(nz=16, image_size=size, channels=channels, ngf=8, fc_dim=32).eval()
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1


def test_generator_at_28px_has_the_reference_size():
    n = count_parameters(Generator(nz=64, image_size=28, channels=1))
    assert 6.4e6 < n < 6.8e6  # reference _netG: about 6.6 M


def test_stem_bias_adds_the_stem_biases_and_shifts_the_output():
    plain = Generator(nz=16, image_size=28, ngf=8, fc_dim=32, batch_norm=False)
    biased = Generator(nz=16, image_size=28, ngf=8, fc_dim=32, batch_norm=False, stem_bias=True)
    missing = set(biased.state_dict()) - set(plain.state_dict())
    assert missing == {"stem.0.bias", "stem.2.bias"}
    assert count_parameters(biased) == count_parameters(plain) + 32 + 128 * 7 * 7 // 8  # c0 = 16 at ngf 8
    z = torch.randn(4, 16)
    with torch.no_grad():
        for name in ("stem.0.bias", "stem.2.bias"):
            biased.get_parameter(name).zero_()
        biased.load_state_dict(plain.state_dict(), strict=False)  # the same weights, zero biases
        assert torch.allclose(biased.eval()(z), plain.eval()(z))  # zero biases: the same network
        biased.get_parameter("stem.2.bias").fill_(0.5)
        assert not torch.allclose(biased(z), plain(z))


def test_generator_sees_codes_on_the_sphere():
    G = Generator(nz=8, image_size=28, fc_dim=16, ngf=8).eval()
    z = torch.randn(4, 8)
    assert torch.allclose(G(z), G(3.0 * z), atol=1e-6)


def test_mapper_shape():
    assert Mapper(32, 64, [128, 128])(torch.randn(5, 32)).shape == (5, 64)


@pytest.mark.parametrize("name", ["lap1", "l1", "l2"])
def test_losses_are_zero_on_equal_images_and_positive_otherwise(name):
    loss = make_loss(name, 3)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(4))
    assert (loss(x, x.flip(0)) > 0).all()


def test_lap1_weights_coarse_structure():
    # A global brightness shift is a coarse difference; Lap1 sees it only at the coarsest level.
    loss = Lap1Loss(1)
    x = torch.zeros(1, 1, 28, 28)
    noise = torch.randn(1, 1, 28, 28).sign() * 0.1
    assert loss(x + 0.1, x).item() < loss(x + noise, x).item()


def test_vgg_loss_with_random_weights_backpropagates_to_the_fake_only():
    loss = make_loss("vgg", 1, random_weights=True)
    fake = torch.rand(2, 1, 28, 28, requires_grad=True)
    real = torch.rand(2, 1, 28, 28)
    out = loss(fake, real)
    out.sum().backward()
    assert out.shape == (2,) and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_vgg_levels_compare_that_many_feature_maps():
    # Level 1 taps relu1_2 only; its backbone stops there. Same weights: the first level's term is
    # shared, so more levels add (non-negative) terms to the same pixel + relu1_2 loss.
    torch.manual_seed(0)
    one = VGGLoss(1, levels=1, random_weights=True)
    torch.manual_seed(0)
    three = VGGLoss(1, levels=3, random_weights=True)
    assert len(one.features) < len(three.features) and len(one.taps) == 1 and len(three.taps) == 3
    a, b = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    assert (three(a, b) > one(a, b)).all() and torch.allclose(one(a, a), torch.zeros(2))


def test_grey_vgg_equals_three_channel_vgg_on_repeated_input():
    torch.manual_seed(0)
    rgb = VGGLoss(3, random_weights=True)
    torch.manual_seed(0)
    grey = VGGLoss(1, random_weights=True)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert torch.allclose(grey(a, b), rgb(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_lpips_code_path_with_random_backbone():
    pytest.importorskip("lpips")
    loss = make_loss("lpips", 1, random_weights=True)
    a = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(loss(a, a), torch.zeros(2), atol=1e-6)
    assert (loss(a, -a) > 0).all()


@pytest.mark.parametrize("name", ["vgg", "lpips"])
def test_missing_imagenet_weights_offline_say_where_to_put_them(name, tmp_path, monkeypatch):
    if name == "lpips":
        pytest.importorskip("lpips")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"vgg16-397923af.pth.*checkpoints.*glo.loss=lap1"):
        make_loss(name, 1)
