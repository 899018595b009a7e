"""Per-layer diagnostics: each statistic is what its definition says, and probing changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from initlab.nets.diagnostics import layer_stats
from initlab.nets.models import StackedMLP
from initlab.params.schema import StudyTrain
from initlab.params.variants import Variant
from initlab.training.loop import GroupLoss, train_group


def stack_of(activation: str, seeds=(0, 1), sizes=(5, 16, 8, 3)):
    from initlab.params.schema import InitSpec

    stack = StackedMLP(len(seeds), list(sizes), activation)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    stack.initialise([InitSpec(name="kaiming_normal")] * len(seeds), gens)
    return stack


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_stats_match_a_standalone_module(activation):
    """Means, stds, saturation, dead units and gradient norms agree with nn.Sequential + autograd."""
    stack = stack_of(activation)
    with torch.no_grad():
        stack.biases[0][1].fill_(-50.0)  # model 1's first layer: every ReLU dead, sigmoid/tanh saturated
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    gl = GroupLoss(["cross_entropy"] * 2, 3, "cpu")
    stats = layer_stats(stack, x, gl.targets(y), gl)
    for m in range(2):
        module = stack.to_module(m)
        h, k = x, 0
        for layer in module:
            h = layer(h)
            if isinstance(layer, torch.nn.Linear):
                pre = h
                assert stats["pre_mean"][m, k].item() == pytest.approx(pre.mean().item(), abs=1e-5)
                assert stats["pre_std"][m, k].item() == pytest.approx(pre.std(correction=0).item(), rel=1e-5)
                k += 1
            elif not isinstance(layer, torch.nn.Identity):
                want = h.std(correction=0).item()
                assert stats["act_std"][m, k - 1].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        grads = torch.autograd.grad(loss, [lin.weight for lin in module if isinstance(lin, torch.nn.Linear)])
        for k, gk in enumerate(grads):
            assert stats["grad_norm"][m, k].item() == pytest.approx(gk.norm().item(), rel=1e-4, abs=1e-9)
    assert math.isnan(stats["act_std"][0, 2])  # the output layer has no hidden activation
    if activation == "relu":
        assert stats["dead"][1, 0] == 1.0 and stats["dead"][0, 0] < 0.5
        assert math.isnan(stats["saturated"][0, 0])
    else:
        assert stats["saturated"][1, 0] == 1.0 and stats["saturated"][0, 0] < 0.5
        assert math.isnan(stats["dead"][0, 0])


def test_probing_changes_no_training_and_reports_each_point():
    """A model trains bit for bit the same with diagnostics at many steps as with none, or with
    the bench's probe that takes none; the rows hold init, each asked step and the end, and
    update ratios are the step's ||dW|| / ||W||."""
    from initlab.bench.loops import NoProbe

    base = dict(
        model={"hidden": [16, 8], "activation": "relu", "dropout": 0.2},
        optimizer="adam",
        lr=[0.01],
        batch_size=10,
        shuffle=True,
        epochs=3,
        seeds=[0],
        inits=["xavier_normal"],
        losses=["cross_entropy"],
        eval_train=False,
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(45, 5, generator=g), torch.randint(0, 3, (45,), generator=g)
    data = {"x_train": x, "y_train": y, "x_val": x[:9], "y_val": y[:9]}
    from initlab.params.schema import InitSpec

    inits = {"xavier_normal": InitSpec(name="xavier_normal"), "lsuv": InitSpec(name="lsuv")}
    group = [
        Variant("t", "xavier_normal", "cross_entropy", "none", 0.01, 3),
        Variant("t", "lsuv", "mse", "none", 0.01, 4),
    ]
    many = train_group(StudyTrain(**base, diagnostics={"at_steps": [0, 1, 5, 7, 200]}), group, inits, data, 3)
    few = train_group(StudyTrain(**base, diagnostics={"at_steps": []}), group, inits, data, 3)
    st = StudyTrain(**base, diagnostics={"at_steps": [0, 1, 5, 7, 200]})
    unprobed = train_group(st, group, inits, data, 3, make_probe=NoProbe)
    for a, b, c in zip(many, few, unprobed):
        for other in (b, c):
            pairs = zip(a.module.state_dict().values(), other.module.state_dict().values())
            assert all(torch.equal(p, q) for p, q in pairs)
            assert (a.step_loss == other.step_loss).all()
        assert c.diagnostics == []
    rows = many[0].diagnostics
    assert [(r["point"], r["step"]) for r in rows[::3]] == [
        ("init", 0),
        ("step1", 1),
        ("step5", 5),
        ("step7", 7),
        ("end", 15),
    ]  # 200 is past the 15 steps
    assert [r["layer"] for r in rows[:3]] == [1, 2, 3]
    assert all(r["update_ratio"] > 0 for r in rows)
    assert [r["point"] for r in few[0].diagnostics[::3]] == ["end"]
    assert abs(many[1].diagnostics[0]["pre_std"] - 1) <= 0.1  # LSUV: unit std on the probe at init
