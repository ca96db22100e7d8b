"""Per-task replay buffers: disjoint support/query, ring wraparound, checkpointable tensors only."""

import io

import pytest
import torch

from mamldqn_pl.data import ReplayBuffers
from mamldqn_pl.seeding import make_generator


def fill(buffers: ReplayBuffers, n_steps: int, n_tasks: int) -> None:
    """Each transition's obs[0] is a unique id: task * 10_000 + step."""
    tasks = torch.arange(n_tasks)
    for step in range(n_steps):
        ids = (tasks * 10_000 + step).float()
        obs = ids.unsqueeze(1).repeat(1, 4)
        buffers.add(tasks, obs, torch.zeros(n_tasks, dtype=torch.long), torch.ones(n_tasks), obs + 0.5,
                    torch.zeros(n_tasks, dtype=torch.bool))


def test_support_and_query_never_share_a_transition():
    buffers = ReplayBuffers(n_tasks=6, capacity=50, obs_dim=4)
    fill(buffers, 40, 6)
    g = make_generator(0)
    for _ in range(20):
        tasks = torch.randperm(6, generator=g)[:3]
        support, query = buffers.sample_disjoint(tasks, 15, 25, g)
        assert support["obs"].shape == (3, 15, 4) and query["obs"].shape == (3, 25, 4)
        for i, task in enumerate(tasks.tolist()):
            s_ids = set(support["obs"][i, :, 0].tolist())
            q_ids = set(query["obs"][i, :, 0].tolist())
            assert len(s_ids) == 15 and len(q_ids) == 25 and not s_ids & q_ids
            assert all(task * 10_000 <= x < task * 10_000 + 40 for x in s_ids | q_ids)  # own task, filled slots


def test_ring_buffer_keeps_the_newest_transitions():
    buffers = ReplayBuffers(n_tasks=2, capacity=10, obs_dim=4)
    fill(buffers, 25, 2)
    assert buffers.size.tolist() == [10, 10] and buffers.pos.tolist() == [5, 5]
    assert sorted(buffers.obs[1, :, 0].tolist()) == [10_000 + s for s in range(15, 25)]


def test_sampling_refuses_buffers_that_are_too_small():
    buffers = ReplayBuffers(n_tasks=2, capacity=30, obs_dim=4)
    fill(buffers, 10, 2)
    try:
        buffers.sample_disjoint(torch.tensor([0, 1]), 8, 8, make_generator(0))
    except RuntimeError as err:
        assert "fewer than 16" in str(err)
    else:
        raise AssertionError("sampling 16 from 10 transitions must fail")


def test_state_dict_is_tensors_only_and_round_trips_with_weights_only():
    buffers = ReplayBuffers(n_tasks=3, capacity=20, obs_dim=4)
    fill(buffers, 13, 3)
    blob = io.BytesIO()
    torch.save(buffers.state_dict(), blob)
    blob.seek(0)
    restored = ReplayBuffers(n_tasks=3, capacity=20, obs_dim=4)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    for name, value in buffers.state_dict().items():
        assert torch.equal(value, getattr(restored, name))
    buffers.clear(torch.tensor([1]))
    assert buffers.size.tolist() == [13, 0, 13]


def test_keep_first_protects_the_warm_start_and_the_query_comes_after_it():
    buffers = ReplayBuffers(n_tasks=2, capacity=10, obs_dim=1, keep_first=4)
    tasks = torch.tensor([0, 1])
    for t in range(23):  # fills 0..9, then wraps to slot 4 (not 0) twice
        value = torch.full((2, 1), float(t))
        buffers.add(tasks, value, torch.zeros(2, dtype=torch.long), torch.zeros(2), value, torch.zeros(2))
    assert buffers.obs[0, :4, 0].tolist() == [0, 1, 2, 3]  # never overwritten
    assert sorted(buffers.obs[0, 4:, 0].tolist()) == list(range(17, 23))  # the 6 newest fill slots 4..9
    support, query = buffers.sample_after_first(tasks, 3, 5, make_generator(0))
    assert support["obs"][:, :, 0].tolist() == [[0, 1, 2], [0, 1, 2]]  # the first transitions, in order
    assert (query["obs"] >= 17).all() and all(len(set(q.tolist())) == 5 for q in query["obs"][:, :, 0])
    with pytest.raises(RuntimeError, match="not kept"):
        buffers.sample_after_first(tasks, 5, 1, make_generator(0))


def reference_add(b: ReplayBuffers, tasks, obs, actions, rewards, next_obs, terminated, ended) -> None:
    """The writes as plain torch indexing (ReplayBuffers.add before it wrote through NumPy views)."""
    pos = b.pos[tasks]
    b.obs[tasks, pos] = obs
    b.actions[tasks, pos] = actions
    b.rewards[tasks, pos] = rewards
    b.next_obs[tasks, pos] = next_obs
    b.terminated[tasks, pos] = terminated.float()
    b.ended[tasks, pos] = ended.bool()
    b.stamp[tasks, pos] = b.writes[tasks]
    b.writes[tasks] += 1
    b.pos[tasks] = torch.where(pos + 1 >= b.capacity, b.keep_first, pos + 1)
    b.size[tasks] = torch.clamp(b.size[tasks] + 1, max=b.capacity)


@pytest.mark.parametrize("keep_first", [0, 3])
def test_add_writes_what_plain_torch_indexing_writes(keep_first):
    """Random subsets of tasks, a float `terminated` and a bool `ended` (cast as torch casts them), through
    wraparound (with and without kept first transitions), clears and a state round trip: every field equal."""
    g = make_generator(7)
    fast, ref = (ReplayBuffers(n_tasks=5, capacity=9, obs_dim=3, keep_first=keep_first, n_step=2) for _ in range(2))
    for step in range(60):
        tasks = torch.randperm(5, generator=g)[: 1 + step % 5]
        n = len(tasks)
        fields = (torch.randn(n, 3, generator=g), torch.randint(3, (n,), generator=g),
                  torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                  (torch.rand(n, generator=g) < 0.3).float(), torch.rand(n, generator=g) < 0.4)
        fast.add(tasks, *fields)
        reference_add(ref, tasks, *fields)
        if step == 30:
            for b in (fast, ref):
                b.clear(torch.tensor([1, 3]))
        if step == 40:  # restored buffers are new tensors: the NumPy views must follow them
            fast.load_state_dict(fast.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name


@pytest.mark.parametrize("keep_first", [0, 3])
def test_add_steps_writes_what_that_many_single_adds_write(keep_first):
    """Blocks of 1 to 12 steps (the ring holds 9 - keep_first: the longer blocks overwrite their own first
    transitions and take the step-by-step path) for random task subsets, from every ring position, through
    clears: every field, stamp and counter equal to one plain add per step."""
    g = make_generator(8)
    fast, ref = (ReplayBuffers(n_tasks=5, capacity=9, obs_dim=3, keep_first=keep_first, n_step=2) for _ in range(2))
    for block in range(40):
        tasks = torch.randperm(5, generator=g)[: 1 + block % 5]
        n, steps = len(tasks), 1 + (block * 7) % 12
        fields = (torch.randn(steps, n, 3, generator=g), torch.randint(3, (steps, n), generator=g),
                  torch.randn(steps, n, generator=g), torch.randn(steps, n, 3, generator=g),
                  torch.rand(steps, n, generator=g) < 0.3, torch.rand(steps, n, generator=g) < 0.4)
        fast.add_steps(tasks.numpy(), *(f.numpy() for f in fields))
        for j in range(steps):
            reference_add(ref, tasks, *(f[j] for f in fields))
        if block == 20:
            for b in (fast, ref):
                b.clear(torch.tensor([0, 2]))
    for name, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name
