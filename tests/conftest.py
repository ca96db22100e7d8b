"""Shared small settings so the suite stays fast on 2 CPU cores."""

import pytest
import torch

SMALL_DATA = dict(pool_size=8, tasks_per_batch=4, collect_steps=2, support_size=16, query_size=16,
                  buffer_capacity=200, adapt_budget=20, epsilon_adapt=0.25, learning_starts=40, retire_after=0,
                  n_val_tasks=4, n_test_tasks=4)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
