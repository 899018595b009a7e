"""Training: the sources' reproductions against loops written independently, and stacked models
equal to models trained alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import initlab.training.stacks as stacks_mod
from initlab.nets.models import DropoutStreams, StackedMLP
from initlab.nets.optim import StackedAdam, StackedSGD
from initlab.params.variants import Variant
from initlab.training.loop import Stopped, train_group
from initlab.training.stacks import Stack, run_stacks, split_group, stacks_for
from initlab.training.study import group_data, load_study_data, train_study


def narrowed(params, study, **update):
    sp = params.studies[study]
    sp = sp.model_copy(update={"train": sp.train.model_copy(update=update)})
    return params.model_copy(update={"studies": {**params.studies, study: sp}})


def test_circles_reproduction_seed_002(params, small_root):
    p = narrowed(params, "circles", inits=["default"], losses=["bce"], seeds=[0], lr=[0.1], normalize=["none"])
    res = [r for r in train_study(p, "circles", small_root, show_progress=False) if r.variant.reproduce]
    assert round(res[0].final["train_loss_last_step"], 4) == 0.0016


def test_line_reproduction_is_logistic_regression_written_out_by_hand(params, small_root):
    """Line's reproduction rows (w = -5, b = -10; SGD lr 2 on batches of 2 in order, 50 epochs)
    end where logistic regression written out by hand ends: p = sigmoid(w x + b), and for a batch
    of B points, dL/dz = 2 (p - y) p (1 - p) / B (MSE on p) or (p - y) / B (BCE on p), then
    w -= lr * sum(dL/dz * x), b -= lr * sum(dL/dz). No autograd, no nn.Module, no optimiser."""
    from initlab.training.study import load_study_data

    data = load_study_data("line", "none", small_root, "cpu", all_data=False)
    x, y = data["x_train"][:, 0], data["y_train"].float()
    assert torch.equal(x, torch.arange(-2, 2, 0.1)) and torch.equal(y, (x > 0.2).float())  # the 40 points
    p = narrowed(params, "line", inits=["default"], losses=["bce"], seeds=[0])
    trained = {
        r.variant.loss: r for r in train_study(p, "line", small_root, show_progress=False) if r.variant.reproduce
    }
    for loss, r in trained.items():
        w, b = torch.tensor(-5.0), torch.tensor(-10.0)
        for _ in range(50):
            for i in range(0, 40, 2):
                xb, yb = x[i : i + 2], y[i : i + 2]
                prob = torch.sigmoid(w * xb + b)
                dz = (2 * (prob - yb) * prob * (1 - prob) if loss == "mse" else prob - yb) / len(xb)
                w, b = w - 2.0 * (dz * xb).sum(), b - 2.0 * dz.sum()
        state = r.module.state_dict()
        ours = torch.stack([state["0.weight"].flatten()[0], state["0.bias"].flatten()[0]])
        torch.testing.assert_close(ours, torch.stack([w, b]), rtol=1e-4, atol=1e-5)
        accuracy = ((torch.sigmoid(w * x + b) > 0.5).float() == y).float().mean().item()
        assert r.final["train_accuracy"] == accuracy
    # source 000's figures: MSE stuck at 0.575 (23 of 40 points), BCE at 1.0
    assert trained["mse"].final["train_accuracy"] == pytest.approx(23 / 40, abs=1e-6)
    assert trained["bce"].final["train_accuracy"] == 1.0


def test_stacked_models_equal_models_trained_alone(params, small_root):
    """Three models trained together give what each gives alone (shuffled minibatches, Adam,
    dropout; different inits, learning rates, losses (so heads) and input normalisations)."""
    st = params.studies["circles"].train.model_copy(
        update={
            "epochs": 5,
            "batch_size": 32,
            "shuffle": True,
            "model": params.studies["circles"].train.model.model_copy(
                update={"hidden": [8], "dropout": 0.2, "activation": "relu"}
            ),
        }
    )
    group = [
        Variant("circles", i, loss, norm, lr, 3)
        for i, lr, loss, norm in (
            ("default", 0.1, "bce_logits", "zscore"),
            ("xavier_normal", 0.01, "bce", "none"),
            ("kaiming_uniform_in", 0.05, "bce_logits", "zscore"),
        )
    ]
    by_norm = {n: load_study_data("circles", n, small_root, "cpu", False) for n in ("none", "zscore")}
    together = train_group(st, group, params.studies["fashion_mnist"].inits, group_data(group, by_norm), 2)
    assert group_data(group, by_norm)["x_train"].dim() == 3  # one input per model
    for v, r in zip(group, together):
        alone = train_group(st, [v], params.studies["fashion_mnist"].inits, by_norm[v.normalize], 2)[0]
        np.testing.assert_allclose(r.step_loss, alone.step_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(r.module.state_dict().values(), alone.module.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_each_stacked_model_is_its_standalone_module(params, batchnorm):
    """``to_module(m)`` computes what the stack computes for model m, for wide layers (stored
    transposed) and narrow ones (stored as nn.Linear's), and it holds the weights drawn for m."""
    sizes = [6, 40, 8, 3]  # wide, narrow, narrow
    stack = StackedMLP(3, sizes, "tanh", dropout=0.5, batchnorm_input=batchnorm, head="softmax")
    inits = [params.studies["fashion_mnist"].inits[n] for n in ("xavier_normal", "kaiming_uniform_in", "uniform")]
    stack.initialise(inits, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    stack.eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    out = stack(x)
    for m, spec in enumerate(inits):
        module = stack.to_module(m)
        torch.testing.assert_close(module(x), out[m], rtol=1e-6, atol=1e-6)
        alone = StackedMLP(1, sizes, "tanh", 0.5, batchnorm, "softmax")
        alone.initialise([spec], [torch.Generator().manual_seed(m + 1)])
        for a, b in zip(module.state_dict().values(), alone.to_module(0).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dropout_masks_are_their_seeds_stream():
    """A model's masks depend on its seed alone: models of one seed share them, another seed's
    differ, a stack of one draws what the stack of three draws for it; nn.Dropout's rate and scale."""
    three = DropoutStreams([3, 3, 5])

    def steps(streams):  # 4 steps: (4, models, 200, 50)
        return torch.stack([streams.mask((200, 50), 0.2) for _ in range(4)])

    m3 = steps(three)
    alone = [steps(DropoutStreams([3])), steps(DropoutStreams([5]))]
    torch.testing.assert_close(m3[:, 0], m3[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(m3[:, 0:1], alone[0], rtol=0, atol=0)
    torch.testing.assert_close(m3[:, 2:3], alone[1], rtol=0, atol=0)
    assert not torch.equal(m3[:, 0], m3[:, 2]) and not torch.equal(m3[0], m3[1])  # seeds, steps
    assert set(m3.unique().tolist()) == {0.0, 1.25}
    assert (m3 > 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
    # Not the init stream: the first mask is not seed 3's first uniform draws.
    first = torch.rand(200, 50, generator=torch.Generator().manual_seed(3)).lt(0.8) * 1.25
    assert not torch.equal(m3[0, 0], first)


def test_a_group_of_mixed_seeds_equals_its_models_alone(params, small_root):
    """Full-batch models of different seeds share a group; each keeps its own seed's dropout."""
    st = params.studies["circles"].train.model_copy(
        update={
            "epochs": 20,
            "batch_size": None,
            "model": params.studies["circles"].train.model.model_copy(
                update={"hidden": [8], "dropout": 0.3, "activation": "relu"}
            ),
        }
    )
    group = [Variant("circles", "xavier_normal", "bce_logits", "none", 0.1, s) for s in (1, 2, 1)]
    data = load_study_data("circles", "none", small_root, "cpu", False)
    together = train_group(st, group, params.studies["fashion_mnist"].inits, data, 2)
    assert not np.allclose(together[0].step_loss, together[1].step_loss)
    for v, r in zip(group, together):
        alone = train_group(st, [v], params.studies["fashion_mnist"].inits, data, 2)[0]
        np.testing.assert_allclose(r.step_loss, alone.step_loss, rtol=1e-5, atol=1e-6)


def test_divergence_is_a_result_not_a_crash(params, small_root):
    st = params.studies["heart_rate"].train.model_copy(update={"epochs": 50, "optimizer": "sgd"})
    group = [Variant("heart_rate", "ones", "bce_logits", "none", lr, 0) for lr in (1e38, 0.01)]
    data = load_study_data("heart_rate", "none", small_root, "cpu", False)
    st = st.model_copy(update={"model": st.model.model_copy(update={"activation": "relu"})})
    blown, fine = train_group(st, group, params.studies["fashion_mnist"].inits, data, 2)
    assert blown.final["diverged"] == 1 and np.isnan(blown.final["train_accuracy"])
    assert 0 <= blown.final["diverged_step"] < len(blown.step_loss) + 1
    assert fine.final["diverged"] == 0 and np.isfinite(fine.final["train_loss"])


@pytest.mark.parametrize("cls", ["sgd", "adam"])
def test_stacked_optimisers_match_torch(cls):
    torch.manual_seed(0)
    w = torch.randn(3, 4, 5)
    lrs = torch.tensor([0.1, 0.01, 0.5])
    mine = w.clone().requires_grad_()
    opt = (StackedSGD if cls == "sgd" else StackedAdam)([mine], lrs)
    refs = [w[m].clone().requires_grad_() for m in range(3)]
    ref_opts = [
        (torch.optim.SGD if cls == "sgd" else torch.optim.Adam)([r], lr=float(lr)) for r, lr in zip(refs, lrs)
    ]
    for step in range(20):
        g = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(step))
        mine.grad = g.clone()
        opt.step()
        for m, (r, o) in enumerate(zip(refs, ref_opts)):
            r.grad = g[m].clone()
            o.step()
    for m in range(3):
        torch.testing.assert_close(mine.detach()[m], refs[m].detach(), rtol=1e-5, atol=1e-6)


def test_heavy_groups_split_across_threads_light_ones_stay_whole(params):
    group = [Variant("fashion_mnist", f"i{k}", "mse", "none", 1e-3, 0) for k in range(28)]
    assert [len(c) for c in split_group(group, 1.4e8, workers=2)] == [14, 14]
    assert [len(c) for c in split_group(group, 1.4e8, workers=3)] == [9, 10, 9]
    assert split_group(group, 1e3, workers=2) == [group]  # light: dispatch-bound, one stack
    assert split_group(group[:10], 1.4e8, workers=2) == [group[:10]]  # parts under MIN_SPLIT
    assert split_group(group, 1.4e8, workers=1) == [group]


def test_stacks_in_threads_equal_stacks_in_turn(params, small_root, monkeypatch):
    """Two stacks trained at once in two threads give what each gives trained alone."""
    st = params.studies["circles"].train.model_copy(
        update={
            "epochs": 4,
            "batch_size": 32,
            "shuffle": True,
            "model": params.studies["circles"].train.model.model_copy(
                update={"hidden": [8], "dropout": 0.2, "activation": "relu"}
            ),
        }
    )
    group = [
        Variant("circles", i, loss, "none", lr, 3)
        for i, lr, loss in (
            ("default", 0.1, "bce_logits"),
            ("xavier_normal", 0.01, "bce"),
            ("kaiming_uniform_in", 0.05, "bce_logits"),
            ("xavier_uniform", 0.05, "bce"),
        )
    ]
    data = load_study_data("circles", "none", small_root, "cpu", False)
    monkeypatch.setattr(stacks_mod, "SMALL_STEP_FLOPS", 0.0)  # treat these tiny stacks as heavy
    monkeypatch.setattr(stacks_mod, "MIN_SPLIT", 2)
    monkeypatch.setattr(stacks_mod, "SPLIT_STEP_FLOPS", 0.0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # as on a 2-core machine
    stacks = stacks_for(st, group, data, 2)
    assert [len(s.group) for s in stacks] == [2, 2]
    seen_threads = set()

    def fit(s, stop):
        seen_threads.add(threading.current_thread().name)
        return train_group(st, s.group, params.studies["fashion_mnist"].inits, s.data, 2, "cpu", None, stop)

    together = [r for out in run_stacks(stacks, fit) for r in out]
    assert all(name.startswith("initlab-train") for name in seen_threads)
    assert [r.variant for r in together] == group
    for v, r in zip(group, together):
        alone = train_group(st, [v], params.studies["fashion_mnist"].inits, data, 2)[0]
        np.testing.assert_allclose(r.step_loss, alone.step_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(r.module.state_dict().values(), alone.module.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_failing_stack_stops_the_others(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    stacks = [Stack([], {}, 1e9, 10), Stack([], {}, 1e9, 10)]
    stopped = threading.Event()

    def fit(s, stop):
        if s is stacks[0]:
            time.sleep(0.05)
            raise ValueError("boom")
        while not stop.is_set():  # a training loop checks `stop` at every step
            time.sleep(0.001)
        stopped.set()
        raise Stopped

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="boom"):
        run_stacks(stacks, fit)
    assert stopped.is_set() and time.perf_counter() - t0 < 5


def test_stacked_training_equals_a_plain_torch_loop(params):
    """Two models trained as one stack end where nn.Sequential + torch.optim.Adam + torch's own
    losses end, from the same initial weights on the same shuffled mini-batches."""
    from initlab.params.schema import StudyTrain

    st = StudyTrain(
        model={"hidden": [16, 8], "activation": "relu"},
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
    group = [
        Variant("t", "xavier_normal", "cross_entropy", "none", 0.01, 3),
        Variant("t", "kaiming_uniform_in", "mse", "none", 0.01, 3),
    ]
    results = train_group(st, group, params.studies["fashion_mnist"].inits, data, 3)
    for v, r in zip(group, results):
        start = StackedMLP(1, [5, 16, 8, 3], "relu", 0.0, False, "none")
        start.initialise([params.studies["fashion_mnist"].inits[v.init]], [torch.Generator().manual_seed(v.seed)])
        module = start.to_module(0)
        opt = torch.optim.Adam(module.parameters(), lr=v.lr)
        order_gen = torch.Generator().manual_seed(v.seed)
        for _ in range(st.epochs):
            order = torch.randperm(len(x), generator=order_gen)
            for i in range(0, len(x), st.batch_size):
                idx = order[i : i + st.batch_size]
                out = module(x[idx])
                if v.loss == "cross_entropy":
                    loss = torch.nn.functional.cross_entropy(out, y[idx])
                else:  # MSE on the softmax, against one-hot targets
                    one_hot = torch.nn.functional.one_hot(y[idx], 3).float()
                    loss = torch.nn.functional.mse_loss(out.softmax(-1), one_hot)
                opt.zero_grad()
                loss.backward()
                opt.step()
        trained = list(r.module.state_dict().values())
        plain = list(module.state_dict().values())
        assert len(trained) == len(plain) == 6
        for a, b in zip(trained, plain):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert not torch.equal(plain[0], start.to_module(0).state_dict()["0.weight"])  # it trained


def test_cross_entropy_on_two_classes_is_a_params_error(params, small_root):
    from initlab.errors import ParamsError

    p = narrowed(params, "circles", losses=["cross_entropy"])
    with pytest.raises(
        ParamsError,
        match="studies.circles.train.losses: cross_entropy is for 3 classes or more, "
        "and circles's data has 2; allowed here: l1, mse, bce, bce_logits",
    ):
        train_study(p, "circles", small_root, show_progress=False)


@pytest.mark.parametrize("loss", ["bce_logits", "bce"])
def test_a_binary_loss_on_three_classes_is_a_params_error(params, tmp_path, loss):
    from initlab.data.prepare import prepare
    from initlab.data.raw import download
    from initlab.data.splits import normalize_stats
    from initlab.errors import ParamsError
    from initlab.params.paths import Paths
    from initlab.params.schema import StudyParams

    sp = params.study("circles").model_dump(exclude_unset=True)
    sp["data"] = {
        "kind": "sklearn",
        "generator": "make_blobs",
        "args": {"n_samples": 60, "centers": 3, "random_state": 0},
    }
    sp["train"] = {**sp["train"], "losses": ["mse", loss], "reproduce": None}
    p = params.model_copy(update={"studies": {"blobs": StudyParams.model_validate(sp)}})
    paths = Paths(tmp_path)
    download("blobs", p.study("blobs"), paths)
    prepare("blobs", p.study("blobs"), paths)
    normalize_stats("blobs", paths)
    with pytest.raises(
        ParamsError,
        match=f"studies.blobs.train.losses: {loss} is for 2 classes, and blobs's "
        "data has 3; allowed here: l1, mse, cross_entropy",
    ):
        train_study(p, "blobs", paths, show_progress=False)


def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated(params, small_root, monkeypatch):
    import time

    from initlab.errors import ParamsError
    from initlab.params.schema import ModelSpec
    from initlab.training import loop as train

    sp = params.studies["line"]
    # 3 * 10**11 parameters a model: more memory than any machine has, so the real check refuses it
    p = narrowed(params, "line", model=ModelSpec(hidden=[10**11]), inits=["default"], losses=["bce"], seeds=[0])
    allocated = []
    monkeypatch.setattr(train, "StackedMLP", lambda *a, **k: allocated.append(a))
    t0 = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        train_study(p, "line", small_root, show_progress=False)
    message = str(err.value)
    assert message.startswith("studies.line.train.model.hidden = [100000000000]: ") and "\n" not in message
    assert "models of 300,000,000,001 parameters" in message and "bytes available" in message
    assert allocated == [] and time.perf_counter() - t0 < 5 and sp.train.model.hidden == []
