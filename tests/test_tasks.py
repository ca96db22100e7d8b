"""Task families: gymnasium parity of the batched env, real differences between tasks, bad ranges."""

import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from mamldqn_pl.errors import ConfigError
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import BatchedCartPole, CartPoleFamily, Task, make_family

RANGES = {"length": [0.25, 1.0], "masspole": [0.05, 0.5], "masscart": [0.5, 2.0], "force_mag": [5.0, 15.0]}


def reference_env(task: Task) -> CartPoleEnv:
    """gymnasium's CartPoleEnv built by hand with the task's constants (the derived ones from their definitions)."""
    env = CartPoleEnv()
    env.length, env.masspole = task.params["length"], task.params["masspole"]
    env.masscart, env.force_mag = task.params["masscart"], task.flip * task.params["force_mag"]
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    return env


def test_task_env_steps_exactly_like_gymnasium_cartpole_with_same_constants():
    tasks = CartPoleFamily(RANGES, flip=True).sample(6, make_generator(0))
    assert {t.flip for t in tasks} == {1, -1}
    rng = np.random.default_rng(0)
    for task in tasks:
        ours, ref = CartPoleFamily.make_env(task), reference_env(task)
        obs, _ = ours.reset(seed=3)
        ref.reset(seed=3)
        for _ in range(300):
            a = int(rng.integers(2))
            o1, r1, te1, tr1, _ = ours.step(a)
            o2, r2, te2, tr2, _ = ref.step(a)
            assert np.array_equal(o1, o2) and r1 == r2 and te1 == te2
            if te1 or tr1:
                ours.reset(seed=int(rng.integers(1 << 30)))
                ref.state = ours.unwrapped.state.copy()
                ref.steps_beyond_terminated = None


def test_batched_env_matches_gymnasium_step_for_step_with_autoreset():
    tasks = CartPoleFamily(RANGES, flip=True).sample(5, make_generator(1))
    batched = BatchedCartPole(tasks, make_generator(2))
    refs = [CartPoleFamily.make_env(t) for t in tasks]
    for i, env in enumerate(refs):
        env.reset(seed=i)
        env.unwrapped.state = batched.state[i].copy()
    rng = np.random.default_rng(1)
    episodes_ended = 0
    for _ in range(1200):
        actions = rng.integers(2, size=len(tasks))
        next_obs, reward, terminated, truncated = batched.step(actions)
        for i, env in enumerate(refs):
            o, r, te, tr, _ = env.step(int(actions[i]))
            np.testing.assert_allclose(next_obs[i], o, rtol=0, atol=1e-6)
            assert (reward[i], terminated[i], truncated[i]) == (r, te, tr)
            if te or tr:  # the batched slot already reset itself: continue the reference from its new state
                episodes_ended += 1
                env.reset()
                env.unwrapped.state = batched.state[i].copy()
                assert np.all(np.abs(batched.state[i]) <= 0.05)
    assert episodes_ended > 20


def test_sampled_tasks_really_differ_in_dynamics():
    tasks = CartPoleFamily(RANGES, flip=False).sample(4, make_generator(0))
    batched = BatchedCartPole(tasks, make_generator(0))
    batched.state[:] = np.array([0.1, 0.2, 0.05, -0.1])
    next_obs, *_ = batched.step(np.ones(4, dtype=np.int64))
    assert len({tuple(row) for row in next_obs.round(7)}) == 4


def test_flip_reverses_the_action_meaning():
    base = {"length": 0.5, "masspole": 0.1, "masscart": 1.0, "force_mag": 10.0}
    env = BatchedCartPole([Task(base, flip=1), Task(base, flip=-1)], make_generator(0))
    env.state[:] = np.array([0.0, 0.1, 0.02, 0.0])
    next_obs, *_ = env.step(np.array([1, 0]))
    np.testing.assert_array_equal(next_obs[0], next_obs[1])


def test_derived_constants_are_recomputed():
    task = Task({"length": 0.9, "masspole": 0.4, "masscart": 1.5, "force_mag": 7.0})
    core = CartPoleFamily.make_env(task).unwrapped
    assert core.total_mass == pytest.approx(1.9) and core.polemass_length == pytest.approx(0.36)


def test_task_sets_use_their_own_seeds_and_ranges():
    fam = CartPoleFamily(RANGES)
    a, b = fam.sample(10, make_generator(1)), fam.sample(10, make_generator(2))
    assert [t.params for t in a] != [t.params for t in b]
    assert [t.params for t in a] == [t.params for t in fam.sample(10, make_generator(1))]
    for t in a:
        for name, (lo, hi) in RANGES.items():
            assert lo <= t.params[name] <= hi
    far = CartPoleFamily({"length": [1.5, 2.0]}).sample(5, make_generator(2))
    assert all(1.5 <= t.params["length"] <= 2.0 for t in far)


@pytest.mark.parametrize("ranges, needle", [
    ({"pole_len": [0.1, 1.0]}, "unknown task parameter 'pole_len'"),
    ({"length": [1.0, 0.1]}, "inverted"),
    ({"length": []}, "must be [low, high]"),
    ({"masspole": [-1.0, 1.0]}, "must lie above 0.0"),
])
def test_bad_ranges_name_the_value(ranges, needle):
    with pytest.raises(ConfigError, match=None) as err:
        make_family("cartpole", ranges, flip=True)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown family 'pendulum'"):
        make_family("pendulum", {}, flip=True)


def test_reset_noise_comes_from_the_generator():
    tasks = CartPoleFamily(RANGES).sample(3, make_generator(0))
    a = BatchedCartPole(tasks, make_generator(5)).state
    b = BatchedCartPole(tasks, make_generator(5)).state
    c = BatchedCartPole(tasks, make_generator(6)).state
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.is_tensor(make_generator(0).get_state())
