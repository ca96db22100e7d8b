"""n-step TD targets (data.n_step): each sampled transition's reward window, against a walk over the written stream."""

import numpy as np
import pytest
import torch
from conftest import reference_step

from mamldqn_pl.data import ReplayBuffers
from mamldqn_pl.data.collector import Collector
from mamldqn_pl.evaluation import collect, support_batch
from mamldqn_pl.meta import QNetwork, split_for_adaptation, td_target, td_target_of
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family


def write_stream(buffers: ReplayBuffers, rewards: list[float], terminated: list[bool], ended: list[bool]) -> None:
    """One task; obs[0] and next_obs[0] of write w are w and w + 0.5, so a transition names itself."""
    for w, (r, term, end) in enumerate(zip(rewards, terminated, ended)):
        obs = torch.full((1, 2), float(w))
        buffers.add(torch.tensor([0]), obs, torch.tensor([w % 2]), torch.tensor([r]), obs + 0.5,
                    torch.tensor([term]), torch.tensor([end]))


def expected_window(w: int, n: int, present: set[int], rewards, terminated, ended) -> tuple[list[float], int, bool]:
    """By hand: write w and the writes after it while the episode goes on and they are still in the buffer."""
    window, last = [rewards[w]], w
    while len(window) < n and not ended[last] and last + 1 in present:
        last += 1
        window.append(rewards[last])
    return window + [0.0] * (n - len(window)), last, terminated[last]


def test_n_step_targets_equal_a_hand_computation_on_a_known_trajectory():
    # writes 0-7: the episode terminates at 2, is truncated at 4; 7 is the newest
    rewards = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    terminated = [False, False, True, False, False, False, False, False]
    ended = [False, False, True, False, True, False, False, False]
    buffers = ReplayBuffers(n_tasks=1, capacity=8, obs_dim=2, n_step=3)
    write_stream(buffers, rewards, terminated, ended)
    batch = buffers.sequence()
    assert batch["reward_window"][0].tolist() == [[1, 2, 3], [2, 3, 0], [3, 0, 0], [4, 5, 0], [5, 0, 0],
                                                   [6, 7, 8], [7, 8, 0], [8, 0, 0]]
    assert batch["steps"][0].tolist() == [3, 2, 1, 2, 1, 3, 2, 1]
    assert batch["next_obs"][0, :, 0].tolist() == [2.5, 2.5, 2.5, 4.5, 4.5, 7.5, 7.5, 7.5]
    assert batch["terminated"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["rewards"][0].tolist() == rewards and batch["obs"][0, :, 0].tolist() == list(range(8))
    # targets with gamma 0.9 and max_a' Q(s') = 10 everywhere
    next_q = torch.full((1, 8, 2), 10.0)
    target = td_target_of(batch, next_q, 0.9)[0].tolist()
    by_hand = [1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3, 4 + 0.9 * 5 + 0.81 * 10, 5 + 0.9 * 10,
               6 + 0.9 * 7 + 0.81 * 8 + 0.729 * 10, 7 + 0.9 * 8 + 0.81 * 10, 8 + 0.9 * 10]
    assert target == pytest.approx(by_hand, rel=1e-6)


def test_the_window_stops_at_overwritten_and_unwritten_slots_and_follows_the_ring():
    rng = np.random.default_rng(0)
    for capacity, keep_first, n, writes in [(8, 0, 3, 11), (8, 3, 4, 20), (10, 0, 2, 10), (6, 2, 5, 40)]:
        rewards = rng.normal(size=writes).round(3).tolist()
        ended = (rng.random(writes) < 0.2).tolist()
        terminated = [e and bool(rng.random() < 0.5) for e in ended]
        buffers = ReplayBuffers(n_tasks=1, capacity=capacity, obs_dim=2, keep_first=keep_first, n_step=n)
        write_stream(buffers, rewards, terminated, ended)
        size = int(buffers.size[0])
        batch = buffers.gather(torch.tensor([0]), torch.arange(size).unsqueeze(0))
        present = {int(w) for w in batch["obs"][0, :, 0].tolist()}
        assert len(present) == size
        for i, w in enumerate(int(x) for x in batch["obs"][0, :, 0].tolist()):
            window, last, term = expected_window(w, n, present, rewards, terminated, ended)
            assert batch["reward_window"][0, i].tolist() == pytest.approx(window)
            assert int(batch["steps"][0, i]) == last - w + 1
            assert float(batch["next_obs"][0, i, 0]) == last + 0.5 and bool(batch["terminated"][0, i]) == term


def test_one_step_buffers_give_the_plain_transitions_and_target():
    buffers = ReplayBuffers(n_tasks=1, capacity=8, obs_dim=2)
    write_stream(buffers, [1.0, 2.0, 3.0], [False, True, False], [False, True, False])
    batch = buffers.sequence()
    assert set(batch) == {"obs", "actions", "rewards", "next_obs", "terminated"}
    next_q = torch.randn(1, 3, 2)
    assert torch.equal(td_target_of(batch, next_q, 0.9), td_target(batch["rewards"], batch["terminated"], next_q, 0.9))


def test_a_cleared_buffer_never_extends_a_window_into_the_old_tasks_transitions():
    buffers = ReplayBuffers(n_tasks=1, capacity=8, obs_dim=2, n_step=3)
    write_stream(buffers, [1.0] * 6, [False] * 6, [False] * 6)
    buffers.clear(torch.tensor([0]))
    buffers.add(torch.tensor([0]), torch.zeros(1, 2), torch.tensor([0]), torch.tensor([5.0]), torch.ones(1, 2),
                torch.tensor([False]))
    batch = buffers.gather(torch.tensor([0]), torch.tensor([[0]]))
    assert batch["reward_window"][0, 0].tolist() == [5.0, 0.0, 0.0] and int(batch["steps"][0, 0]) == 1


def test_the_collector_ends_windows_at_truncation_in_a_real_env():
    """nav2d truncates at 50 steps and rarely terminates: windows must stop at every episode end."""
    family = make_family("nav2d", None, None, None, None, None, "data.ranges")
    tasks = family.sample(3, make_generator(0))
    env = family.batched(tasks, make_generator(1))
    buffers = ReplayBuffers(3, 120, family.obs_dim, n_step=4)
    collector = Collector(env, buffers, make_generator(2))
    collect(collector, lambda obs: torch.zeros(len(obs), family.n_actions), 120, 1.0)
    assert len(collector.finished_returns) >= 6 and int(buffers.ended.sum()) == len(collector.finished_returns)
    assert bool((buffers.ended | (buffers.terminated == 0)).all())  # terminated implies ended
    batch = buffers.sequence()
    for task in range(3):
        for t in np.flatnonzero(buffers.ended[task].numpy()):  # an episode's last write, and the one before it
            assert int(batch["steps"][task, t]) == 1
            assert int(batch["steps"][task, t - 1]) == 2 and batch["reward_window"][task, t - 1, 2:].abs().sum() == 0
            if t + 4 < 120 and not bool(buffers.ended[task, t + 1:t + 4].any()):
                assert int(batch["steps"][task, t + 1]) == 4  # the next episode's first: a full window


def test_meta_test_support_targets_are_n_step():
    """support_batch (meta-test and `adapt`) gives the targets the init was trained with."""
    family = make_family("cartpole", None, True, None, None, None, "data.ranges")
    tasks = family.sample(4, make_generator(0))
    env = family.batched(tasks, make_generator(1))
    buffers = ReplayBuffers(4, 60, family.obs_dim, n_step=3)
    torch.manual_seed(0)
    net = QNetwork(family.obs_dim, family.n_actions, [16])
    collect(Collector(env, buffers, make_generator(2)), lambda obs: torch.zeros(len(obs), 2), 60, 1.0)
    split = split_for_adaptation(net, dict(net.named_parameters()), "head")
    support = support_batch(split, buffers, env.action_counts, family.n_actions, net, 0.99, torch.device("cpu"))
    with torch.no_grad():
        for task in range(4):
            for t in range(60):
                k, total = 0, 0.0
                while k < 3 and t + k < 60:
                    total += 0.99 ** k * float(buffers.rewards[task, t + k])
                    k += 1
                    if bool(buffers.ended[task, t + k - 1]):
                        break
                last = t + k - 1
                boot = 0.0 if bool(buffers.terminated[task, last]) else float(net(buffers.next_obs[task, last]).max())
                assert float(support["target"][task, t]) == pytest.approx(total + 0.99 ** k * boot, rel=1e-5)


def test_at_epsilon_one_the_collector_plays_at_random_without_asking_for_values():
    """The random support (data.epsilon_adapt 1.0, the default) skips the init's forward pass; the transitions
    are those of the same play with the values computed, bitwise."""
    family = make_family("cartpole", None, True, None, None, None, "data.ranges")
    tasks = family.sample(3, make_generator(0))
    filled = []
    for ask in (True, False):
        env = family.batched(tasks, make_generator(1))
        buffers = ReplayBuffers(3, 80, family.obs_dim)

        def values(obs: torch.Tensor, ask: bool = ask) -> torch.Tensor:
            assert ask, "the values were asked for at epsilon 1"
            return torch.randn(len(obs), family.n_actions)  # whatever they are, no action is greedy

        collector = Collector(env, buffers, make_generator(2))
        if ask:  # the reference: epsilon_greedy on real values, as before the shortcut
            for _ in range(80):
                reference_step(collector, np.arange(3), values, 1.0)
        else:
            collect(collector, values, 80, 1.0)
        filled.append(buffers.sequence())
    assert set(filled[0]) == set(filled[1])
    for key in filled[0]:
        assert torch.equal(filled[0][key], filled[1][key]), key
