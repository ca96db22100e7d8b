"""Task families: gymnasium parity of every batched env, real differences between tasks, bad config."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.utils.env_checker import check_env

from mamldqn_pl.errors import ConfigError
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import BatchedCartPole, CartPoleFamily, Nav2DEnv, Task, make_family

RANGES = {"length": [0.25, 1.0], "masspole": [0.05, 0.5], "masscart": [0.5, 2.0], "force_mag": [5.0, 15.0]}
FAMILIES = {
    "cartpole": lambda: make_family("cartpole", RANGES, flip=True),
    "mountaincar": lambda: make_family("mountaincar", {"force": [0.0008, 0.0016], "gravity": [0.002, 0.003],
                                                       "goal_position": [0.3, 0.5]}, flip=True),
    "acrobot": lambda: make_family("acrobot", {"link_length_1": [0.6, 1.4], "link_length_2": [0.6, 1.4],
                                               "link_mass_1": [0.6, 1.4], "link_mass_2": [0.6, 1.4]}),
    "nav2d": lambda: make_family("nav2d"),
    "nav2d8": lambda: make_family("nav2d", env_kwargs={"directions": 8}, flip=True),
}


def copy_state(env: gym.Env, state: np.ndarray) -> None:
    """Put the batched slot's state into gymnasium's env (after its own reset, which restarts TimeLimit)."""
    core = env.unwrapped
    if isinstance(core, Nav2DEnv):
        core.pos = state.copy()
    else:
        core.state = state.copy()
        if hasattr(core, "steps_beyond_terminated"):
            core.steps_beyond_terminated = None


def reference_cartpole(task: Task) -> CartPoleEnv:
    """gymnasium's CartPoleEnv built by hand with the task's constants, the derived ones from their definition."""
    env = CartPoleEnv()
    env.length, env.masspole = task.params["length"], task.params["masspole"]
    env.masscart, env.force_mag = task.params["masscart"], task.flip * task.params["force_mag"]
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    return env


def test_task_env_steps_exactly_like_gymnasium_cartpole_with_same_constants():
    family = CartPoleFamily(RANGES, flip=True)
    tasks = family.sample(6, make_generator(0))
    assert {t.flip for t in tasks} == {1, -1}
    rng = np.random.default_rng(0)
    for task in tasks:
        ours, ref = family.make_env(task), reference_cartpole(task)
        ours.reset(seed=3)
        ref.reset(seed=3)
        for _ in range(300):
            a = int(rng.integers(2))
            o1, r1, te1, tr1, _ = ours.step(a)
            o2, r2, te2, _, _ = ref.step(a)
            assert np.array_equal(o1, o2) and r1 == r2 and te1 == te2
            if te1 or tr1:
                ours.reset(seed=int(rng.integers(1 << 30)))
                copy_state(ref, ours.unwrapped.state)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batched_env_matches_gymnasium_step_for_step_with_autoreset(name):
    family = FAMILIES[name]()
    tasks = family.sample(6, make_generator(1), balanced=True)
    batched = family.batched(tasks, make_generator(2))
    refs = [family.make_env(t) for t in tasks]
    for i, env in enumerate(refs):
        env.reset(seed=i)
        copy_state(env, batched.state[i])
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(700):
        actions = rng.integers(family.n_actions, size=len(tasks))
        next_obs, reward, terminated, truncated = batched.step(actions)
        for i, env in enumerate(refs):
            o, r, te, tr, _ = env.step(int(actions[i]))
            np.testing.assert_allclose(next_obs[i], o, rtol=1e-6, atol=1e-7)
            assert reward[i] == pytest.approx(r, abs=1e-6) and (terminated[i], truncated[i]) == (te, tr)
            if te or tr:  # the batched slot already reset itself: continue the reference from its new state
                ended += 1
                env.reset()
                copy_state(env, batched.state[i])
    assert ended >= 6


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sampled_tasks_really_differ_in_dynamics(name):
    family = FAMILIES[name]()
    tasks = [Task(t.params) for t in family.sample(4, make_generator(0))]  # physics alone, no flip
    batched = family.batched(tasks, make_generator(0))
    if name.startswith("nav2d"):  # same move, different hidden goal: the reward differs
        _, reward, _, _ = batched.step(np.ones(4, dtype=np.int64))
        assert len(set(np.round(reward, 6))) == 4
        return
    batched.state[:] = batched.state[0] + 0.05
    next_obs, *_ = batched.step(np.zeros(4, dtype=np.int64))
    assert len({tuple(row) for row in next_obs.round(7)}) == 4


@pytest.mark.parametrize("name", ["cartpole", "mountaincar", "acrobot", "nav2d8"])
def test_flip_reverses_the_action_meaning(name):
    family = FAMILIES[name]()
    base = family.sample(1, make_generator(0))[0].params
    env = family.batched([Task(base, flip=1), Task(base, flip=-1)], make_generator(0))
    env.state[1] = env.state[0]
    last = family.n_actions - 1
    next_obs, *_ = env.step(np.array([last, 0]))
    np.testing.assert_array_equal(next_obs[0], next_obs[1])


def test_derived_constants_are_recomputed():
    family = CartPoleFamily(RANGES)
    core = family.make_env(Task({"length": 0.9, "masspole": 0.4, "masscart": 1.5, "force_mag": 7.0})).unwrapped
    assert core.total_mass == pytest.approx(1.9) and core.polemass_length == pytest.approx(0.36)
    acro = make_family("acrobot").make_env(Task({"link_length_1": 1.4, "link_mass_2": 0.8})).unwrapped
    assert (acro.LINK_LENGTH_1, acro.LINK_COM_POS_1, acro.LINK_MASS_2) == (1.4, 0.7, 0.8)


def test_nav2d_is_registered_and_passes_the_env_checker():
    env = gym.make("mamldqn_pl/Nav2D-v0", goal_x=0.3, goal_y=-0.2)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0] and env.action_space.n == 5
    for _ in range(49):
        _, r, term, trunc, _ = env.step(1)
        assert not term and not trunc
    _, r, term, trunc, _ = env.step(0)
    assert trunc and r == pytest.approx(-np.hypot(2.0 - 0.3, 0.2))  # clipped at the border x = 2
    check_env(gym.make("mamldqn_pl/Nav2D-v0", directions=8).unwrapped, skip_render_check=True)


def test_task_sets_use_their_own_seeds_and_ranges():
    fam = CartPoleFamily(RANGES)
    a, b = fam.sample(10, make_generator(1)), fam.sample(10, make_generator(2))
    assert [t.params for t in a] != [t.params for t in b]
    assert [t.params for t in a] == [t.params for t in fam.sample(10, make_generator(1))]
    for t in a:
        for name, (lo, hi) in RANGES.items():
            assert lo <= t.params[name] <= hi
    assert sum(t.flip < 0 for t in fam.sample(20, make_generator(3), balanced=True)) == 10
    far = CartPoleFamily({"length": [1.5, 2.0]}).sample(5, make_generator(2))
    assert all(1.5 <= t.params["length"] <= 2.0 for t in far)


def test_generic_gym_family_from_an_env_id():
    family = make_family("gym", {"gravity": [8.0, 12.0]}, env_id="CartPole-v1")
    tasks = family.sample(3, make_generator(0))
    env = family.batched(tasks, make_generator(0))
    obs, reward, terminated, truncated = env.step(np.ones(3, dtype=np.int64))
    assert obs.shape == (3, 4) and family.n_actions == 2
    assert family.make_env(tasks[0]).unwrapped.gravity == tasks[0].params["gravity"]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="cartpole", ranges={"pole_len": [0.1, 1.0]}), "unknown task parameter 'pole_len'"),
    (dict(name="cartpole", ranges={"length": [1.0, 0.1]}), "inverted"),
    (dict(name="cartpole", ranges={"length": []}), "must be [low, high]"),
    (dict(name="cartpole", ranges={"masspole": [-1.0, 1.0]}), "must lie above 0.0"),
    (dict(name="pendulum"), "unknown family 'pendulum'"),
    (dict(name="gym", env_id="NoSuchEnv-v9"), "'NoSuchEnv-v9' is not a gymnasium env id"),
    (dict(name="gym", env_id="Pendulum-v1"), "DQN needs Discrete"),
    (dict(name="gym", env_id="CartPole-v1", ranges={"wind": [0, 1]}), "no plain float attribute 'wind'"),
    (dict(name="gym"), "needs an env id"),
    (dict(name="nav2d", env_kwargs={"directions": 6}), "directions: 6 must be 4 or 8"),
    (dict(name="mixed", members=[{"family": "cartpole"}]), "at least two member families"),
    (dict(name="mixed", members=[{"family": "cartpole"}, {"family": "mountaincar", "rangez": {}}]), "unknown keys"),
])
def test_bad_family_config_names_the_value(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        make_family(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_reset_noise_comes_from_the_generator():
    tasks = CartPoleFamily(RANGES).sample(3, make_generator(0))
    a = BatchedCartPole(tasks, make_generator(5)).state
    b = BatchedCartPole(tasks, make_generator(5)).state
    c = BatchedCartPole(tasks, make_generator(6)).state
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.is_tensor(make_generator(0).get_state())
