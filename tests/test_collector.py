"""Collector.run: many env steps in one call are the transitions, draws and counters of that many single steps."""

import numpy as np
import pytest
import torch
from conftest import reference_step

from mamldqn_pl.data import Collector, ReplayBuffers
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family

FAMILIES = {
    "cartpole": {"family": "cartpole"},
    "mixed": {"family": "mixed", "members": [{"family": "cartpole", "flip": False}, {"family": "mountaincar"}]},
}


def same(a, b) -> bool:
    """Nested dicts/lists of tensors (an env's state; a mixed env's holds its members') equal throughout."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_run_equals_that_many_single_steps(name):
    """A warm start's shape (a long block, epsilon 1 then epsilon 0.3), short collection blocks of random slot
    subsets, a block longer than the ring: buffers (stamps and windows' episode ends included), env state,
    counters, finished returns and every generator equal to the step-by-step reference."""
    family = make_family(name=FAMILIES[name]["family"], members=FAMILIES[name].get("members"))
    tasks = family.sample(6, make_generator(0))
    net = torch.nn.Linear(family.obs_dim, family.n_actions)

    def q_values(obs: torch.Tensor) -> torch.Tensor:
        return net(obs)

    collectors = []
    for _ in range(2):
        env = family.batched(tasks, make_generator(1))
        collectors.append(Collector(env, ReplayBuffers(6, 60, family.obs_dim, keep_first=5, n_step=3),
                                    make_generator(2)))
    fast, ref = collectors
    g = make_generator(3)
    blocks = [(np.arange(6), [1.0] * 40 + [0.3] * 10)]
    for _ in range(30):
        slots = torch.randperm(6, generator=g)[: 1 + int(torch.randint(6, (1,), generator=g))].numpy()
        blocks.append((slots, [0.3] * 4))
    blocks.append((np.array([4, 1]), [0.0] * 70))  # longer than the ring of 55
    for slots, epsilons in blocks:
        fast.run(slots, q_values, epsilons)
        for epsilon in epsilons:
            reference_step(ref, slots, q_values, epsilon)
    for key, value in ref.buffers.state_dict().items():
        assert torch.equal(fast.buffers.state_dict()[key], value), key
    assert same(fast.env.get_state(), ref.env.get_state())
    assert torch.equal(fast.env_steps, ref.env_steps) and torch.equal(fast.running_return, ref.running_return)
    assert fast.finished_returns == ref.finished_returns and len(ref.finished_returns) > 10
    assert torch.equal(fast.generator.get_state(), ref.generator.get_state())
    assert torch.equal(fast.env.generator.get_state(), ref.env.generator.get_state())
