"""Each initialiser draws from its formula; each loss gives seed 003's worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from initlab.nets.registry import LOSSES, init_linear

FAN_OUT, FAN_IN = 400, 900  # big enough for tight sampling tolerances


def draw(name: str, bias="zeros", **args) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = torch.empty(FAN_OUT, FAN_IN), torch.empty(FAN_OUT)
    init_linear(w, b, name, args, bias, torch.Generator().manual_seed(0))
    return w, b


def check_uniform(w: torch.Tensor, lo: float, hi: float) -> None:
    assert w.min() >= lo and w.max() < hi
    assert w.min() < lo + 0.01 * (hi - lo) and w.max() > hi - 0.01 * (hi - lo)
    assert w.mean().item() == pytest.approx((lo + hi) / 2, abs=0.01 * (hi - lo))
    assert w.std().item() == pytest.approx((hi - lo) / math.sqrt(12), rel=0.02)


def check_normal(w: torch.Tensor, mean: float, std: float) -> None:
    assert w.mean().item() == pytest.approx(mean, abs=0.01 * std + 1e-6)
    assert w.std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize(
    ("name", "args", "value"),
    [
        ("zeros", {}, 0.0),
        ("ones", {}, 1.0),
        ("constant", {"val": 0.77}, 0.77),
        ("constant", {"val": -5.0}, -5.0),
    ],
)
def test_constants_are_exact(name, args, value):
    w, b = draw(name, **args)
    assert torch.all(w == torch.tensor(value, dtype=torch.float32))
    assert torch.all(b == 0)


def test_uniform_and_normal_follow_their_arguments():
    check_uniform(draw("uniform", a=0.0, b=1.0)[0], 0.0, 1.0)
    check_uniform(draw("uniform", a=-0.5, b=0.5)[0], -0.5, 0.5)
    check_normal(draw("normal", mean=0.0, std=1.0)[0], 0.0, 1.0)


def test_rules_of_seed_001_use_one_over_sqrt_fan_in():
    y = 1 / math.sqrt(FAN_IN)
    check_uniform(draw("uniform_rule")[0], -y, y)
    check_normal(draw("normal_rule")[0], 0.0, y)


def test_xavier():
    a = math.sqrt(6 / (FAN_IN + FAN_OUT))
    check_uniform(draw("xavier_uniform")[0], -a, a)
    check_normal(draw("xavier_normal")[0], 0.0, math.sqrt(2 / (FAN_IN + FAN_OUT)))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_relu(mode):
    fan = FAN_IN if mode == "fan_in" else FAN_OUT
    bound = math.sqrt(2) * math.sqrt(3 / fan)
    check_uniform(draw("kaiming_uniform", mode=mode, nonlinearity="relu")[0], -bound, bound)
    check_normal(draw("kaiming_normal", mode=mode, nonlinearity="relu")[0], 0.0, math.sqrt(2) / math.sqrt(fan))


def test_default_equals_nn_linear_after_manual_seed():
    torch.manual_seed(7)
    ref = torch.nn.Linear(FAN_IN, FAN_OUT)
    w, b = torch.empty(FAN_OUT, FAN_IN), torch.empty(FAN_OUT)
    init_linear(w, b, "default", {}, "default", torch.Generator().manual_seed(7))
    assert torch.equal(w, ref.weight.data) and torch.equal(b, ref.bias.data)


def test_bias_can_be_a_constant():
    _, b = draw("constant", bias=-10.0, val=-5.0)
    assert torch.all(b == -10)


# Seed 003's worked numbers; the models axis is 1.
def loss(name, out, target):
    return LOSSES[name].fn(torch.tensor([out]), torch.tensor([target])).item()


def test_cross_entropy_seed_003():
    logits = [[1.5, 2.0, 0.5], [0.5, 1.0, 1.5]]
    assert loss("cross_entropy", logits, [1, 2]) == pytest.approx(0.6422, abs=5e-5)


def test_bce_seed_003():
    p = [[0.7], [0.2], [0.9], [0.7]]
    assert loss("bce", p, [[1.0], [0.0], [1.0], [0.0]]) == pytest.approx(0.4723, abs=5e-5)


def test_l1_and_mse_seed_003():
    assert loss("l1", [2.5, 5.0, 3.0], [2.0, 5.0, 2.5]) == pytest.approx(0.3333, abs=5e-5)
    assert loss("mse", [2.5, 5.0, 3.0], [3.0, 5.0, 2.5]) == pytest.approx(0.1667, abs=5e-5)


def test_bce_logits_equals_bce_on_sigmoid():
    z = torch.tensor([[0.3, -1.2, 2.0]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    assert LOSSES["bce_logits"].fn(z, t).item() == pytest.approx(
        LOSSES["bce"].fn(torch.sigmoid(z), t).item(), rel=1e-6
    )


def test_a_function_added_to_the_registry_is_a_valid_initialiser_in_params(monkeypatch):
    """Adding an initialiser is one registry entry plus params: nothing else lists the names."""
    from initlab.nets import registry
    from initlab.params.schema import InitSpec, StudyParams

    study = {
        "data": {"kind": "line"},
        "split": {},
        "inits": {"mine": {"name": "half"}},
        "train": {"lr": [0.1], "epochs": 1, "seeds": [0], "inits": ["mine"], "losses": ["mse"]},
    }
    with pytest.raises(ValueError, match="unknown initialiser 'half'; allowed: zeros, ones"):
        StudyParams.model_validate(study)
    monkeypatch.setitem(registry.INITIALIZERS, "half", lambda w, generator=None: w.fill_(0.5))
    sp = StudyParams.model_validate(study)
    assert sp.inits["mine"] == InitSpec(name="half")


def test_data_stages_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from initlab import cli; from initlab.params import schema, paths, variants; "
        "from initlab.data import prepare, raw, splits; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lecun_normal_and_large_random():
    check_normal(draw("lecun_normal")[0], 0.0, 1 / math.sqrt(FAN_IN))
    check_normal(draw("large_random")[0], 0.0, 10.0)  # deeplearning.ai: randn * 10
    check_normal(draw("large_random", scale=3.0)[0], 0.0, 3.0)


@pytest.mark.parametrize(("shape", "gain"), [((400, 900), 1.0), ((900, 400), 2.0)])
def test_orthogonal_rows_or_columns_are_orthonormal_times_gain(shape, gain):
    """W W^T = gain^2 I when rows are fewer, W^T W = gain^2 I when columns are (Saxe et al. 2014)."""
    w, b = torch.empty(*shape), torch.empty(shape[0])
    init_linear(w, b, "orthogonal", {"gain": gain}, "zeros", torch.Generator().manual_seed(0))
    small = w @ w.T if shape[0] <= shape[1] else w.T @ w
    torch.testing.assert_close(small, gain**2 * torch.eye(min(shape)), rtol=0, atol=1e-4)
    assert torch.linalg.svdvals(w).sub(gain).abs().max() < 1e-4  # every singular value is the gain


def test_lsuv_gives_each_layer_unit_output_std_on_its_batch():
    """LSUV (Mishkin & Matas 2016): orthonormal start, then each layer's pre-activation std on the
    batch within tol of 1, first layer to last; a model of another init in the stack is untouched."""
    from initlab.nets.models import StackedMLP
    from initlab.params.schema import InitSpec

    sizes = [20, 64, 64, 64, 3]
    stack = StackedMLP(2, sizes, "relu")
    specs = [InitSpec(name="lsuv"), InitSpec(name="xavier_uniform")]
    stack.initialise(specs, [torch.Generator().manual_seed(s) for s in (0, 1)])
    before = [w[1].clone() for w in stack.weights]
    x = 5 * torch.randn(256, 20, generator=torch.Generator().manual_seed(2))  # inputs of std 5
    rounds = stack.lsuv(x, [0], tol=[0.1], max_rounds=[10])
    for k in range(len(stack.weights)):
        assert abs(stack(x, upto=k)[0].std().item() - 1) <= 0.1
        assert torch.equal(stack.weights[k][1], before[k])
    assert 1 <= rounds[0] <= 10 * len(sizes[1:])
    capped = StackedMLP(1, sizes, "relu")
    capped.initialise(specs[:1], [torch.Generator().manual_seed(0)])
    assert capped.lsuv(x, [0], tol=[0.1], max_rounds=[0]) == [0]  # max_rounds bounds the rescaling
