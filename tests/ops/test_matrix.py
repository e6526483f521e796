"""off_diagonal: every entry off the diagonal, row by row, against an explicit loop."""

import pytest
import torch

from openseer.ops.matrix import off_diagonal


def test_off_diagonal_lists_every_off_diagonal_entry_in_row_order():
    x = torch.arange(16.0).reshape(4, 4)
    expected = torch.tensor([float(x[i, j]) for i in range(4) for j in range(4) if i != j])
    assert torch.equal(off_diagonal(x), expected)
    assert off_diagonal(torch.ones(1, 1)).numel() == 0


def test_off_diagonal_refuses_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.ones(2, 3))
