"""DINO against the reference formulas (facebookresearch/dino main_dino.py DINOLoss, utils.cosine_scheduler,
vision_transformer.DINOHead), re-implemented here in float64 from the reference text."""

import math
from types import SimpleNamespace

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from openseer.config import ConfigError, ModelConfig, derive, load_config
from openseer.methods.base import RunInfo, StepContext
from openseer.methods.dino import DINO, Config, dino_loss, teacher_temperature, validate
from openseer.methods.registry import METHODS, get_method
from openseer.models.backbone import check_crop_sizes
from openseer.models.heads import DINOProjection, WeightNormLinear
from openseer.train import build_trainer, train_step

INFO = RunInfo(global_batch=4, local_batch=4, world_size=1, accumulate_steps=1, steps_per_epoch=3, total_steps=12)


def tiny_vit() -> nn.Module:
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
    )


def tiny_dino(**kw) -> DINO:
    torch.manual_seed(0)
    cfg = Config(out_dim=32, hidden_dim=24, bottleneck_dim=8, warmup_teacher_temp_epochs=2, **kw)
    return DINO(tiny_vit(), cfg, n_global=2, info=INFO)


def crops(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(batch, 3, 8, 8, generator=g) for _ in range(3)
    ]


def ctx(step=0, epoch=0):
    return StepContext(step=step, epoch=epoch, info=INFO)


# ---- float64 reference, written from main_dino.py DINOLoss ------------------------------------------------
def reference_loss(student_output, teacher_output, center, temp, student_temp, ncrops):
    student_out = (student_output.double() / student_temp).chunk(ncrops)
    teacher_out = torch.softmax((teacher_output.double() - center.double()) / temp, dim=-1).chunk(2)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * torch.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def reference_center(center, teacher_output, momentum):
    batch_center = teacher_output.double().sum(0, keepdim=True) / len(teacher_output)
    return center.double() * momentum + batch_center * (1 - momentum)


def test_loss_matches_reference_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    batch, k, ncrops = 3, 11, 5
    student = torch.randn(ncrops * batch, k, generator=g) * 3
    teacher = torch.randn(2 * batch, k, generator=g) * 3
    center = torch.randn(1, k, generator=g)
    loss, entropy = dino_loss(student, teacher, center, 0.04, 0.1, n_global=2)
    assert float(loss) == pytest.approx(float(reference_loss(student, teacher, center, 0.04, 0.1, ncrops)), rel=1e-5)
    q = torch.softmax((teacher.double() - center.double()) / 0.04, dim=-1)
    assert float(entropy) == pytest.approx(float(-(q * q.log()).sum(-1).mean()), rel=1e-4, abs=1e-6)
    # uniform teacher and student: ln K, the trivial loss
    flat, _ = dino_loss(torch.zeros(ncrops * batch, k), torch.zeros(2 * batch, k), torch.zeros(1, k), 0.04, 0.1, 2)
    assert float(flat) == pytest.approx(math.log(k))


def test_module_loss_and_centre_follow_the_reference():
    model = tiny_dino()
    model.center.normal_()  # a non-trivial centre
    center0 = model.center.clone()
    x = crops()
    out = model(x, ctx(epoch=1))
    with torch.no_grad():
        t, s = model.teacher, model
        teacher_output = t.last_layer(t.head(t.backbone(torch.cat(x[:2]))))
        student_output = torch.cat(
            [s.last_layer(s.head(s.backbone(torch.cat(x[:2])))), s.last_layer(s.head(s.backbone(torch.cat(x[2:]))))]
        )
    temp = 0.07  # epoch 1 of a 2-epoch warm-up 0.04 -> 0.07 is its end
    expected = reference_loss(student_output, teacher_output, center0, temp, 0.1, 5)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    assert float(out.scalars["kl"]) == pytest.approx(float(out.loss.detach()) - float(out.scalars["teacher_entropy"]))
    assert torch.equal(model.center, center0)  # the centre moves once per optimizer step, in after_step
    model.after_step(ctx(epoch=1))
    torch.testing.assert_close(model.center.double(), reference_center(center0, teacher_output, 0.9))


def test_teacher_gets_no_gradient_and_student_does():
    model = tiny_dino()
    model(crops(), ctx()).loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    student = [p for n, p in model.named_parameters() if not n.startswith("teacher.")]
    assert student and all(p.grad is not None and p.grad.abs().sum() > 0 for p in student)
    assert model.export_module() is model.teacher.backbone


def test_momentum_schedule_and_ema_update():
    model = tiny_dino()
    n = INFO.total_steps
    for i in (0, 5, n - 1):  # dino cosine_scheduler(0.996, 1, epochs, niter)
        expected = 1 + 0.5 * (0.996 - 1) * (1 + math.cos(math.pi * i / n))
        assert model.teacher_momentum(i) == pytest.approx(expected, abs=1e-12)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))  # the student moved away from the teacher
    before = {n: p.detach().double().clone() for n, p in model.teacher.named_parameters()}
    student = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    model.after_step(ctx(step=5))
    m = model.teacher_momentum(5)
    for name, p in model.teacher.named_parameters():
        torch.testing.assert_close(p.double(), before[name] * m + (1 - m) * student[name], rtol=1e-6, atol=1e-7)


def test_teacher_temperature_warmup():
    cfg = Config(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    ramp = [0.04 + (0.07 - 0.04) * e / 29 for e in range(30)]  # np.linspace(0.04, 0.07, 30)
    assert [teacher_temperature(e, cfg) for e in range(30)] == pytest.approx(ramp)
    assert teacher_temperature(30, cfg) == teacher_temperature(99, cfg) == 0.07
    assert teacher_temperature(0, Config(warmup_teacher_temp_epochs=0, teacher_temp=0.05)) == 0.05


def test_param_groups_last_layer_freeze_and_weight_decay_schedule_through_train_step():
    """AdamW through the loop's train_step: the last layer (and its Adam moments) stay untouched during the
    first epoch; weight decay follows the cosine 0.04 -> 0.4 (DINO's wd_schedule); none on biases/norms."""
    cfg = load_config(
        "dino-cifar10",
        [
            "aug.global_size=16",
            "aug.local_size=8",
            "aug.local_crops=3",
            "model.patch_size=4",
            "train.batch_size=4",
            "train.epochs=2",
            "dino.freeze_last_layer_epochs=1",
            "train.precision=fp32",
            "optim.warmup_epochs=0",
        ],
    )
    derived = derive(cfg, 8)  # 2 steps per epoch, 4 in all
    torch.manual_seed(0)
    method = get_method("dino").build(cfg, tiny_vit(), RunInfo.of(cfg, derived))
    trainer = build_trainer(cfg, method, derived, torch.device("cpu"))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    groups = {g.name: g for g in trainer.groups}
    assert set(groups) == {"default", "default_no_wd", "last_layer"}
    assert groups["last_layer"].freeze_steps == derived.steps_per_epoch
    assert groups["default_no_wd"].wd_scale == 0 and all(p.ndim == 1 for p in groups["default_no_wd"].params)
    assert not any(p is q for g in groups.values() for p in g.params for q in method.teacher.parameters())
    last, first = method.last_layer.weight, method.head.mlp[0].weight
    before, other = last.detach().clone(), first.detach().clone()
    for step in range(4):
        result = train_step(trainer, [[c[:4] for c in crops(seed=step)]], step=step, epoch=step // 2)
        wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * step / 4))  # dino cosine_scheduler
        assert result.finite and result.wd == pytest.approx(wd)
        decay = {g["name"]: g["weight_decay"] for g in trainer.optimizer.param_groups}
        assert decay["default"] == pytest.approx(wd) and decay["default_no_wd"] == 0
        if step == 1:  # end of epoch 0: the last layer and its Adam state are untouched, the rest moved
            assert torch.equal(last, before) and not trainer.optimizer.state.get(last)
            assert not torch.equal(first, other)
    assert not torch.equal(last, before)


def test_gradient_accumulation_is_exact():
    """Two micro-batches of 2 (loss / 2 each, one after_step) = one batch of 4: loss, gradients, centre."""
    big, small = tiny_dino(), tiny_dino()
    x = crops(batch=4)
    big(x, ctx()).loss.backward()
    total = 0.0
    for half in (slice(0, 2), slice(2, 4)):
        out = small([c[half] for c in x], ctx())
        (out.loss / 2).backward()
        total += float(out.loss.detach()) / 2
    assert total == pytest.approx(float(big(x, ctx()).loss), rel=1e-5)
    for (name, p), q in zip(big.named_parameters(), small.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    big.before_step(ctx())  # drop the pending centre of the extra loss evaluation above
    big(x, ctx())
    big.after_step(ctx())
    small.after_step(ctx())
    torch.testing.assert_close(big.center, small.center)


def test_skipped_step_leaves_the_centre():
    model = tiny_dino()
    model(crops(), ctx())
    model.skipped_step(ctx())
    model.after_step(ctx())
    assert torch.equal(model.center, torch.zeros_like(model.center))


def test_head_shapes_normalisation_and_weight_norm_equivalence():
    torch.manual_seed(0)
    head, last = DINOProjection(12, hidden_dim=16, bottleneck_dim=8), WeightNormLinear(8, 40)
    x = torch.randn(5, 12)
    z = head(x)
    assert z.shape == (5, 8) and last(z).shape == (5, 40)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))  # the L2-normalised bottleneck
    torch.testing.assert_close(last.normalized_weight().norm(dim=1), torch.ones(40))
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2 and sum(isinstance(m, nn.Linear) for m in head.mlp) == 3
    assert len(list(last.parameters())) == 1  # norm_last_layer: no learned g
    # the same function as torch's weight_norm with its norm g set to 1
    ref = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 40, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.fill_(1)
        ref.parametrizations.weight.original1.copy_(last.weight)
    torch.testing.assert_close(last(z), ref(z))
    assert all(abs(float(m.weight.std()) - 0.02) < 0.01 for m in head.mlp if isinstance(m, nn.Linear))
    free = WeightNormLinear(8, 40, learn_norm=True)
    assert free.norm.shape == (40, 1) and free.norm.requires_grad
    assert set(free.state_dict()) == {"weight", "norm"}
    model = tiny_dino(norm_last_layer=False)  # a learned g is decayed (2-d, as weight_g in the reference)
    groups = {g.name: g for g in model.param_groups(model.named_parameters(), SimpleNamespace())}
    assert any(p is model.last_layer.norm for p in groups["last_layer"].params)
    assert torch.equal(model.cluster_weights(), model.teacher.last_layer.normalized_weight())


def test_vit_patch_size_must_divide_crops():
    vit = ModelConfig(backbone="vit_tiny_patch16_224", patch_size=4)
    check_crop_sizes(vit, {"aug.global_size": 32, "aug.local_size": 16})
    with pytest.raises(ConfigError, match=r"aug.local_size=18 .*patch size 4"):
        check_crop_sizes(vit, {"aug.global_size": 32, "aug.local_size": 18})
    with pytest.raises(ConfigError, match=r"aug.global_size=200 .*patch size 16"):
        check_crop_sizes(ModelConfig(backbone="vit_small_patch16_224"), {"aug.global_size": 200})
    with pytest.raises(ConfigError, match=r"aug.global_size=20 .*patch size 16 of test_vit"):
        check_crop_sizes(ModelConfig(backbone="test_vit"), {"aug.global_size": 20})  # read from the model
    check_crop_sizes(ModelConfig(backbone="regnety_004"), {"aug.global_size": 30})  # convnets take any size


def test_validate_names_bad_fields():
    def cfg(**dino):
        return SimpleNamespace(
            dino=Config(**dino),
            aug=SimpleNamespace(global_crops=2, local_crops=2, global_size=32, local_size=16),
            model=ModelConfig(backbone="vit_tiny_patch16_224", patch_size=4),
        )

    validate(cfg())
    with pytest.raises(ConfigError, match="dino.teacher_temp"):
        validate(cfg(teacher_temp=0.0))
    with pytest.raises(ConfigError, match="dino.out_dim"):
        validate(cfg(out_dim=0))
    assert METHODS["dino"].config is Config and METHODS["dino"].validate is validate


def test_info_counts_the_teacher_without_gradients_or_optimizer_state():
    from openseer.info import model_info

    info = model_info(load_config("dino-vit-small"), world_size=16)
    assert info.params_backbone == pytest.approx(21.7e6, rel=0.01)  # ViT-S/16
    assert info.params_trainable * 2 == info.params_total  # student and its EMA copy
    assert info.memory["optimizer"] == 2 * info.memory["gradients"]  # AdamW: two moments per trained parameter
    assert info.teacher_flops_per_image == 2 * info.flops_by_crop[224]  # 2 global crops through the teacher
