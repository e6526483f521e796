"""Golden test: openseer's faithful SwAV step equals facebookresearch/swav ``main_swav.py``'s step.

The reference here is re-written in plain torch from the text of ``main_swav.py`` (the version whose
``distributed_sinkhorn`` normalises rows by K and columns by B) and of apex's ``apex/parallel/LARC.py``:

* the lr array as ``main_swav.py`` builds it with numpy (``np.linspace`` warm-up, then the cosine list),
  assigned to every param group at every iteration;
* the prototypes re-normalised onto the unit sphere before the forward;
* ``ResNet.forward``: consecutive crops of one resolution through the backbone together, projection head,
  L2 normalisation, prototypes as a bias-free linear layer;
* for each crop in ``crops_for_assign``: the queue (used once its last row is non-zero, then shifted and
  refilled, newest first), the exp-domain Sinkhorn loop, and the swapped-prediction loss over every other crop;
* ``torch.optim.SGD(model.parameters(), momentum 0.9, weight_decay)`` - one group, every parameter - wrapped in
  ``LARC(trust_coefficient=0.001, clip=False)``, with the prototypes' gradients set to None for the first
  ``freeze_prototypes_niters`` iterations.

openseer runs the faithful preset ``swav-224`` (``optim.exclude_bias_and_norm: false``, every BN weight 1,
batch norm synchronised; shrunk to a tiny RegNet and 32/16 px crops, fp32) through the training loop's own
``build_trainer`` and ``train_step``. Both start from the same weights and see the same crops; the losses, the
codes and every parameter and buffer must agree after 3 steps.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openseer.methods.swav as swav_module
from openseer.config import derive, load_config
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
from openseer.ops.schedules import cosine_schedule
from openseer.ops.sinkhorn import sinkhorn_knopp
from openseer.train import build_trainer, train_step

STEPS = 3
BATCH = 8
STEPS_PER_EPOCH = 3  # dataset of 24 images at batch 8; 2 epochs = 6 steps, so the cosine is well under way
TINY = [
    "model.regnet_depth=6",
    "model.regnet_w0=8",
    "model.regnet_wa=8.0",
    "model.regnet_wm=2.0",
    "model.regnet_group_size=4",
    "model.channels_last=false",
    "aug.global_size=32",
    "aug.local_crops=4",
    "aug.local_size=16",
    "swav.hidden_dims=[32]",
    "swav.output_dim=16",
    "swav.num_prototypes=20",
    "swav.freeze_prototypes_steps=2",  # frozen for steps 0-1, trained at step 2
    "swav.queue_length=0",
    f"train.batch_size={BATCH}",
    "train.epochs=2",
    "train.precision=fp32",
    "optim.base_lr=150.0",  # peak lr 4.7 at batch 8, as SwAV's 4.8: LARC moves weights by ~0.5% a step
    "optim.weight_decay=0.01",  # large enough that decay on every parameter shows in 3 steps
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors this small run ~20x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------
# the reference, from main_swav.py and apex LARC


class ReferenceLARC:
    """apex ``LARC`` as written in apex/parallel/LARC.py: it rescales the gradients, then the SGD it wraps steps.

    For every parameter with a gradient whose norm and parameter norm are both non-zero, the weight decay of its
    group is folded into the gradient and the sum is scaled by ``trust * ||p|| / (||g|| + wd ||p|| + eps)``
    (``clip=False``); the wrapped SGD's own weight decay is switched off during its step and restored after.
    """

    def __init__(self, optimizer: torch.optim.SGD, trust_coefficient: float = 0.001, eps: float = 1e-8):
        self.optim = optimizer
        self.trust_coefficient = trust_coefficient
        self.eps = eps

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups

    def zero_grad(self) -> None:
        self.optim.zero_grad()

    def step(self) -> None:
        decays = []
        with torch.no_grad():
            for group in self.optim.param_groups:
                wd = group.get("weight_decay", 0)
                decays.append(wd)
                group["weight_decay"] = 0
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
                    if p_norm != 0 and g_norm != 0:
                        scale = self.trust_coefficient * p_norm / (g_norm + p_norm * wd + self.eps)
                        p.grad.data += wd * p.data
                        p.grad.data *= scale
        self.optim.step()
        for group, wd in zip(self.optim.param_groups, decays, strict=True):
            group["weight_decay"] = wd


def main_swav_lr_schedule(
    base_lr: float, final_lr: float, start_warmup: float, warmup_epochs: int, epochs: int, iters: int
) -> np.ndarray:
    """``lr_schedule`` as main_swav.py builds it (``base_lr`` there is the absolute peak lr)."""
    warmup = np.linspace(start_warmup, base_lr, iters * warmup_epochs)
    n = iters * (epochs - warmup_epochs)
    cosine = np.array([final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * t / n)) for t in np.arange(n)])
    return np.concatenate((warmup, cosine))


@torch.no_grad()
def main_swav_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """``distributed_sinkhorn`` on one process: Q is K x B; rows to 1/K, columns to 1/B; columns sum to 1."""
    q = torch.exp(out / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def reference_forward(model, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``ResNet.forward`` of swav src/resnet50.py with ``normalize=True``, on openseer's modules."""
    sizes = torch.tensor([inp.shape[-1] for inp in inputs])
    idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
    start, outputs = 0, []
    for end in idx_crops:
        outputs.append(model.backbone(torch.cat(inputs[start:end])))
        start = end
    x = model.head.mlp(torch.cat(outputs))
    x = F.normalize(x, dim=1, p=2)
    return x, F.linear(x, model.prototypes.weight)


class MainSwAV:
    """The per-iteration body of main_swav.py ``train()`` for one process, in fp32."""

    def __init__(self, model, cfg, lr_schedule: np.ndarray, queue_length: int):
        s = cfg.swav
        self.model, self.s, self.lr_schedule = model, s, lr_schedule
        self.nmb_crops = [cfg.aug.global_crops, cfg.aug.local_crops]
        sgd = torch.optim.SGD(
            model.parameters(), lr=float(lr_schedule[0]), momentum=0.9, weight_decay=cfg.optim.weight_decay
        )
        self.optimizer = ReferenceLARC(sgd, trust_coefficient=cfg.optim.trust_coefficient)
        self.queue = torch.zeros(len(s.crops_for_assign), queue_length, s.output_dim) if queue_length else None
        self.use_the_queue = False

    def step(self, iteration: int, inputs: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        model, s = self.model, self.s
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_schedule[iteration]
        with torch.no_grad():
            w = F.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
            model.prototypes.weight.copy_(w)
        embedding, output = reference_forward(model, inputs)
        embedding = embedding.detach()
        bs = inputs[0].size(0)
        loss, codes = 0, []
        for i, crop_id in enumerate(s.crops_for_assign):
            with torch.no_grad():
                out = output[bs * crop_id : bs * (crop_id + 1)].detach()
                if self.queue is not None:
                    if self.use_the_queue or not torch.all(self.queue[i, -1, :] == 0):
                        self.use_the_queue = True
                        out = torch.cat((torch.mm(self.queue[i], model.prototypes.weight.t()), out))
                    self.queue[i, bs:] = self.queue[i, :-bs].clone()
                    self.queue[i, :bs] = embedding[crop_id * bs : (crop_id + 1) * bs]
                q = main_swav_sinkhorn(out, s.epsilon, s.sinkhorn_iterations)[-bs:]
            codes.append(q)
            subloss = 0
            for v in np.delete(np.arange(np.sum(self.nmb_crops)), crop_id):
                x = output[bs * v : bs * (v + 1)] / s.temperature
                subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
            loss += subloss / (np.sum(self.nmb_crops) - 1)
        loss /= len(s.crops_for_assign)
        self.optimizer.zero_grad()
        loss.backward()
        if iteration < s.freeze_prototypes_steps:
            for name, p in model.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        self.optimizer.step()
        return float(loss.detach()), codes


# ---------------------------------------------------------------------------------------------------------
# openseer's faithful path


class OpenseerSwAV:
    """The training loop's own step (``openseer.train.train_step``) on the trainer ``build_trainer`` makes."""

    def __init__(self, method, cfg, derived):
        self.derived = derived
        self.trainer = build_trainer(cfg, method, derived, torch.device("cpu"))

    def step(self, step: int, crops: list[torch.Tensor], monkeypatch) -> tuple[float, list[torch.Tensor]]:
        codes: list[torch.Tensor] = []

        def recording_sinkhorn(*args, **kwargs):
            q = sinkhorn_knopp(*args, **kwargs)
            codes.append(q[-BATCH:].clone())
            return q

        monkeypatch.setattr(swav_module, "sinkhorn_knopp", recording_sinkhorn)
        result = train_step(self.trainer, [crops], step, step // self.derived.steps_per_epoch)
        assert result.finite
        return result.loss, codes


def _faithful_cfg(extra: list[str]):
    return load_config("swav-224", TINY + extra)


def _crops(cfg, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    a = cfg.aug
    sizes = [a.global_size] * a.global_crops + [a.local_size] * a.local_crops
    return [torch.randn(BATCH, 3, s, s, generator=g) for s in sizes]


def _run_both(cfg, monkeypatch):
    derived = derive(cfg, dataset_size=STEPS_PER_EPOCH * BATCH)
    torch.manual_seed(0)
    model = METHODS["swav"].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert derived.steps_per_epoch == STEPS_PER_EPOCH and derived.warmup_steps == 0
    lr = main_swav_lr_schedule(
        derived.peak_lr, derived.final_lr, 0.0, int(cfg.optim.warmup_epochs), cfg.train.epochs, STEPS_PER_EPOCH
    )
    ref = MainSwAV(reference, cfg, lr, queue_length=cfg.swav.queue_length)
    ours = OpenseerSwAV(model, cfg, derived)
    results = []
    for step in range(STEPS):
        crops = _crops(cfg, step)
        results.append((ref.step(step, [c.clone() for c in crops]), ours.step(step, crops, monkeypatch)))
    return initial, reference, model, results


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}


@pytest.mark.parametrize("queue", [False, True], ids=["no-queue", "queue"])
def test_three_faithful_steps_equal_main_swav(queue, monkeypatch):
    # the queue holds two batches from step 0: empty at step 0, filling at 1, used at step 2, as in main_swav.py
    cfg = _faithful_cfg([f"swav.queue_length={2 * BATCH}", "swav.queue_start_epoch=0"] if queue else [])
    assert not cfg.optim.exclude_bias_and_norm and not cfg.model.zero_init_residual
    initial, reference, model, results = _run_both(cfg, monkeypatch)
    for step, ((ref_loss, ref_codes), (loss, codes)) in enumerate(results):
        assert math.isclose(loss, ref_loss, rel_tol=1e-5), (step, loss, ref_loss)
        assert len(codes) == len(ref_codes) == 2
        for q, ref_q in zip(codes, ref_codes, strict=True):
            # codes are probabilities: fp32 rounding of the weights, amplified by 1/epsilon = 20, moves them by
            # ~3e-5 after a step (they agree to 1e-7 at step 0); a wrong update moves them by 1e-2 and more
            torch.testing.assert_close(q, ref_q, rtol=0, atol=1e-4)
    ref_state, state = _tensors(reference), _tensors(model)
    assert ref_state.keys() == state.keys()
    for name, value in state.items():
        moved = ref_state[name] - initial[name]
        if name.endswith("num_batches_tracked"):
            continue
        # every parameter and running statistic moved, prototypes included (frozen for 2 steps, then trained)
        assert moved.abs().max() > 0, f"{name} did not change in the reference"
        torch.testing.assert_close(value, ref_state[name], rtol=1e-5, atol=1e-5, msg=f"{name} after 3 steps")
        # and the update itself agrees, not only the (much larger) weights
        diff = ((value - initial[name]) - moved).norm() / moved.norm()
        assert diff < 1e-3, f"{name}: update differs from main_swav.py's by {float(diff):.2e} (relative)"


def test_the_golden_test_sees_the_bias_and_norm_exclusion(monkeypatch):
    """The comparison is sharp enough to fail: excluding biases and norms from LARC changes exactly those."""
    cfg = _faithful_cfg(["optim.exclude_bias_and_norm=true"])
    initial, reference, model, _ = _run_both(cfg, monkeypatch)
    ref_state, state = _tensors(reference), _tensors(model)
    vectors = [n for n, p in model.named_parameters() if p.ndim == 1]
    assert vectors
    for name in vectors:
        assert not torch.allclose(state[name], ref_state[name], rtol=1e-5, atol=1e-6), name


def test_lr_schedule_equals_main_swav_up_to_the_warmup_endpoint():
    """The lr values of SwAV's 800-epoch script (start 0.3, peak 4.8, final 0.0048, 10 warm-up epochs of 313
    iterations), over 100 epochs to keep the numpy loop short.

    The cosine part is identical. main_swav.py's warm-up is ``np.linspace(start, peak, W)``, which reaches the
    peak at its last warm-up step; openseer's reaches it at the first cosine step (W + 1 points, the last one
    dropped), so each warm-up lr is lower by at most (peak - start) / W = 0.03% of the peak here.
    """
    iters, warm, epochs = 313, 10, 100
    ref = main_swav_lr_schedule(4.8, 0.0048, 0.3, warm, epochs, iters)
    ours = cosine_schedule(4.8, 0.0048, iters * epochs, iters * warm, 0.3).numpy()
    w = iters * warm
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[w:], ref[w:], rtol=1e-12)
    assert ours[0] == ref[0] == 0.3
    gap = ref[:w] - ours[:w]
    assert gap.min() >= 0 and gap.max() <= (4.8 - 0.3) / w + 1e-12
    assert gap.max() > 0  # the one known difference, documented in docs/seer-fidelity.md
