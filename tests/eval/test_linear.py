"""Linear probes: separable features are learnt, heads of a grid train independently, splits are sound."""

import math

import pytest
import torch

from openseer.eval.linear import linear_probe, stratified_split, topk_accuracy, train_linear_heads


def _blobs(n, num_classes=4, dim=8, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % num_classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_separable_features_reach_full_accuracy():
    x, y = _blobs(400)
    xt, yt = _blobs(100, seed=1)
    result = linear_probe(x, y, xt, yt, lrs=(0.1, 1.0), wds=(0.0, 1e-4), epochs=10, batch_size=64)
    assert result["top1"] >= 0.99 and result["top5"] == 1.0
    assert result["selection"] == "validation" and len(result["grid"]) == 4
    assert result["num_train"] + result["num_val"] == 400


def test_random_labels_stay_near_chance():
    x, _ = _blobs(400)
    y = torch.randint(4, (400,), generator=torch.Generator().manual_seed(5))
    xt, _ = _blobs(400, seed=2)
    yt = torch.randint(4, (400,), generator=torch.Generator().manual_seed(6))
    assert linear_probe(x, y, xt, yt, epochs=5)["top1"] < 0.4


def _reference_head(x, y, num_classes, lr, wd, epochs, batch_size, seed):
    """One head with autograd gradients and momentum SGD, drawing the same init and batches as the grid."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.empty(x.shape[1], num_classes).normal_(0.0, 0.01, generator=g).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    bufs = [torch.zeros_like(weight), torch.zeros_like(bias)]
    total = epochs * math.ceil(len(x) / batch_size)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            step_lr = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = torch.nn.functional.cross_entropy(x[idx] @ weight + bias, y[idx])
            grad_w, grad_b = torch.autograd.grad(loss, [weight, bias])
            with torch.no_grad():  # SGD with momentum 0.9 and L2 decay on the weight (torch.optim.SGD's rule)
                bufs[0].mul_(0.9).add_(grad_w + wd * weight)
                bufs[1].mul_(0.9).add_(grad_b)
                weight -= step_lr * bufs[0]
                bias -= step_lr * bufs[1]
            step += 1
    return weight.detach(), bias.detach()


@pytest.mark.parametrize("lr,wd", [(0.5, 0.0), (0.2, 1e-2)])
def test_single_head_matches_autograd_sgd_reference(lr, wd):
    x, y = _blobs(100, dim=6)
    w, b = train_linear_heads(x, y, 4, [lr], [wd], epochs=3, batch_size=32, seed=7)
    w_ref, b_ref = _reference_head(x, y, 4, lr, wd, 3, 32, 7)
    torch.testing.assert_close(w[0], w_ref, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(b[0], b_ref, atol=1e-4, rtol=1e-3)


def test_grid_heads_are_independent():
    # zero-lr heads never move from their initialisation whatever the others in the grid do
    x, y = _blobs(120)
    w, _ = train_linear_heads(x, y, 4, [0.0, 1.0], [0.0, 0.0], epochs=2, batch_size=32, seed=3)
    w0, _ = train_linear_heads(x, y, 4, [0.0, 0.0], [0.0, 0.0], epochs=2, batch_size=32, seed=3)
    assert torch.equal(w[0], w0[0]) and not torch.equal(w[1], w0[1])


def test_stratified_split_is_balanced_disjoint_and_seeded():
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 2)
    fit, val = stratified_split(labels, 0.2, seed=1)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == len(labels)
    assert torch.bincount(labels[val]).tolist() == [4, 2, 1]  # >= 1, never the last image of a class
    assert torch.equal(val, stratified_split(labels, 0.2, seed=1)[1])
    assert not torch.equal(val, stratified_split(labels, 0.2, seed=2)[1])


def test_single_image_per_class_uses_fixed_setting():
    x, y = _blobs(4)
    result = linear_probe(x, y, *_blobs(40, seed=3), epochs=20, batch_size=4)
    assert result["selection"] == "fixed" and result["num_val"] == 0 and result["top1"] > 0.9


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk_accuracy(logits, torch.tensor([1, 2]), (1, 2, 5)) == {1: 0.5, 2: 1.0, 5: 1.0}


def test_bad_inputs():
    with pytest.raises(ValueError):
        linear_probe(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError):
        stratified_split(torch.zeros(3), 1.0)
