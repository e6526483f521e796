import math

import torch

from openseer.ops.schedules import cosine_schedule, step_function_schedule


def test_cosine_with_warmup_values():
    s = cosine_schedule(peak=1.0, final=0.01, total_steps=110, warmup_steps=10, warmup_start=0.0)
    assert len(s) == 110
    assert s[0] == 0.0
    assert math.isclose(float(s[5]), 0.5)
    assert math.isclose(float(s[10]), 1.0)  # first cosine step is the peak
    i = 50  # cosine step 40 of 100
    assert math.isclose(float(s[10 + i]), 0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * i / 100)))
    assert float(s[-1]) > 0.01 and math.isclose(float(s[-1]), 0.01, abs_tol=1e-3)
    assert torch.all(s[10:-1] >= s[11:])  # non-increasing after warm-up


def test_no_warmup_and_warmup_longer_than_run():
    assert float(cosine_schedule(2.0, 0.0, 5, 0)[0]) == 2.0
    s = cosine_schedule(1.0, 0.0, 4, warmup_steps=10)
    assert len(s) == 4 and torch.all(s[1:] > s[:-1])


def test_step_function():
    s = step_function_schedule(6, 2, 0.0, 1.0)
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert step_function_schedule(3, 10, 0.0, 1.0).tolist() == [0.0, 0.0, 0.0]
