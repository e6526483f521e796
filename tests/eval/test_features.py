"""Tests of feature extraction with a tiny stand-in backbone and dataset."""

import pytest
import torch
from torch import nn

from openseer.eval import Features, extract_features


class _Dataset(torch.utils.data.Dataset):
    """Stand-in for openseer.data.LabelledDataset; every index in ``failed`` is an undecodable image."""

    def __init__(self, num_items=11, failed=(2, 3, 9), with_names=True):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(num_items, 3, 8, 8, generator=generator)
        self.labels = [i % 3 for i in range(num_items)]
        self.failed = set(failed)
        if with_names:
            self.source = type("Source", (), {"name": staticmethod(lambda i: f"img{i}.png")})()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i in self.failed:
            return torch.zeros(3, 8, 8), self.labels[i], False
        return self.images[i], self.labels[i], True


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.norm = nn.BatchNorm2d(6)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert not self.training, "features must be extracted in eval mode"
        assert x.abs().sum(dim=(1, 2, 3)).min() > 0, "failed images must not reach the backbone"
        return self.norm(self.conv(x)).relu().mean(dim=(2, 3))


def test_drops_and_counts_failed_images():
    backbone, dataset = _Backbone(), _Dataset()
    backbone.train()
    result = extract_features(backbone, dataset, batch_size=4)
    assert isinstance(result, Features)
    assert result.num_failed == 3
    assert result.features.shape == (8, 6) and result.features.dtype == torch.float32
    assert result.labels.dtype == torch.int64
    kept = [i for i in range(11) if i not in dataset.failed]
    assert result.labels.tolist() == [dataset.labels[i] for i in kept]
    assert result.names == [f"img{i}.png" for i in kept]
    assert backbone.training, "previous train mode must be restored"
    # Batch order and batching do not change the rows (eval-mode BatchNorm, no shuffling).
    single = extract_features(backbone, dataset, batch_size=1)
    torch.testing.assert_close(single.features, result.features)
    expected = backbone.eval()(dataset.images[kept])
    torch.testing.assert_close(result.features, expected)


def test_batch_of_only_failed_images_is_skipped():
    backbone = _Backbone().eval()
    result = extract_features(backbone, _Dataset(num_items=6, failed=(0, 1, 2), with_names=False), batch_size=3)
    assert backbone.calls == 1 and result.num_failed == 3 and len(result) == 3
    assert result.names is None
    assert not backbone.training


def test_all_failed_gives_empty_features():
    result = extract_features(_Backbone(), _Dataset(num_items=2, failed=(0, 1)))
    assert result.features.shape[0] == 0 and result.labels.shape == (0,) and result.num_failed == 2


def test_bf16_is_float32_and_close_to_fp32():
    backbone, dataset = _Backbone(), _Dataset()
    fp32 = extract_features(backbone, dataset, batch_size=4)
    bf16 = extract_features(backbone, dataset, batch_size=4, precision="bf16", channels_last=True)
    assert bf16.features.dtype == torch.float32
    torch.testing.assert_close(bf16.features, fp32.features, atol=0.05, rtol=0.05)


def test_rejects_bad_precision_and_unpooled_output():
    with pytest.raises(ValueError, match="precision"):
        extract_features(_Backbone(), _Dataset(), precision="fp8")
    backbone = nn.Conv2d(3, 2, 1)
    backbone.train()
    with pytest.raises(ValueError, match="pooled"):
        extract_features(backbone, _Dataset())
    assert backbone.training
