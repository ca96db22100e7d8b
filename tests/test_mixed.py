"""Mixed families: zero padding and action masking, so a masked action is never chosen or bootstrapped from."""

import numpy as np
import pytest
import torch
from conftest import ROOT, refused

from mamldqn_pl.data import MetaDQNDataModule, epsilon_greedy
from mamldqn_pl.data.collector import masked_argmax
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.meta import td_target
from mamldqn_pl.seeding import make_generator
from mamldqn_pl.tasks import make_family

MEMBERS = [{"family": "cartpole", "flip": False}, {"family": "mountaincar"}]


def test_mixed_env_pads_observations_and_reports_action_counts():
    family = make_family("mixed", members=MEMBERS)
    assert (family.obs_dim, family.n_actions) == (4, 3)
    tasks = family.sample(6, make_generator(0))
    assert [t.member for t in tasks] == [0, 1, 0, 1, 0, 1]
    assert [t.group for t in tasks] == ["cartpole", "mountaincar"] * 3
    env = family.batched(tasks, make_generator(0))
    assert env.action_counts.tolist() == [2, 3, 2, 3, 2, 3]
    obs = env.obs
    assert np.all(obs[1::2, 2:] == 0.0) and np.all(obs[0::2, 2:] != 0.0)
    np.testing.assert_allclose(obs[1::2, 0] * 1.2, env.envs[1].obs[1::2, 0], rtol=1e-6)  # scaled per member
    next_obs, reward, *_ = env.step(np.array([1, 2, 0, 0, 1, 1]))
    assert np.all(next_obs[1::2, 2:] == 0.0) and reward.tolist() == [1, -1] * 3


def test_epsilon_greedy_never_picks_a_masked_action():
    counts = torch.tensor([2, 3] * 500)
    q = torch.zeros(1000, 3)
    q[:, 2] = 100.0  # the masked action looks best
    g = make_generator(0)
    for eps in (0.0, 0.5, 1.0):
        actions = epsilon_greedy(q, eps, g, counts)
        assert (actions < counts).all()
        if eps == 1.0:
            assert set(actions[1::2].tolist()) == {0, 1, 2} and set(actions[0::2].tolist()) == {0, 1}
    assert masked_argmax(q, counts)[0::2].eq(0).all() and masked_argmax(q, counts)[1::2].eq(2).all()


def test_td_target_never_bootstraps_from_a_masked_action():
    next_q = torch.tensor([[1.0, 2.0, 50.0], [1.0, 2.0, 50.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    target = td_target(torch.zeros(2), torch.zeros(2), next_q, 1.0, mask)
    assert target.tolist() == [2.0, 50.0]


def test_mixed_meta_batches_carry_masks_and_only_valid_actions():
    dm = MetaDQNDataModule(family="mixed", members=MEMBERS, pool_size=6, tasks_per_batch=4, support_size=16,
                           query_size=16, learning_starts=40, adapt_budget=20, buffer_capacity=100, n_val_tasks=2,
                           n_test_tasks=2, retire_after=0)
    dm._build(rank=0)
    dm.attach_policy(lambda obs: torch.tensor([[0.0, 0.0, 9.0]]).expand(len(obs), 3), lambda: 0.3)
    batch = dm.next_batch()
    counts = torch.from_numpy(dm.env.action_counts)[batch["tasks"]]
    assert torch.equal(batch["action_mask"].sum(1), counts)
    for part in ("support", "query"):
        assert (batch[part]["actions"] < counts.unsqueeze(1)).all()
    cartpole_slots = torch.from_numpy(dm.env.owner == 0)
    assert (dm.buffers.actions[cartpole_slots] < 2).all()


def test_retired_tasks_are_replaced_from_their_own_member_so_the_pool_keeps_its_shares():
    """Tasks retire one or two at a time; `sample(n)` deals members in turn from the first, so replacing them with it
    filled the pool with CartPole (MountainCar's share of the seed's example fell from 1/2 to 1/64 in 12,000
    meta-steps). `sample_like` draws each replacement from the member of the task it replaces; for a single family
    it is `sample` itself, the same draws (every other family's task stream is unchanged)."""
    family = make_family("mixed", members=MEMBERS)
    old = family.sample(6, make_generator(0))
    picked = [old[3], old[1], old[4]]  # mountaincar, mountaincar, cartpole
    fresh = family.sample_like(picked, make_generator(1))
    assert [t.member for t in fresh] == [1, 1, 0] and [t.group for t in fresh] == ["mountaincar"] * 2 + ["cartpole"]
    assert [t.index for t in fresh] == [0, 1, 2]
    assert family.sample_like([old[1]], make_generator(2))[0].member == 1  # one at a time: still its own member
    cartpole = make_family("cartpole")
    single = cartpole.sample(3, make_generator(0))
    assert cartpole.sample_like(single, make_generator(5)) == cartpole.sample(3, make_generator(5))
    dm = MetaDQNDataModule(family="mixed", members=MEMBERS, pool_size=6, tasks_per_batch=3, support_size=16,
                           query_size=16, learning_starts=40, adapt_budget=20, buffer_capacity=100, n_val_tasks=2,
                           n_test_tasks=2, retire_after=50, collect_steps=4)
    dm._build(rank=0)
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 3), lambda: 0.5)
    members = [t.member for t in dm.pool]
    replaced = 0
    for _ in range(120):
        before = list(dm.pool)
        dm.next_batch()
        replaced += sum(a is not b for a, b in zip(before, dm.pool))
        assert [t.member for t in dm.pool] == members
    assert replaced >= 6  # tasks did retire, several times each slot on average
    assert (dm.env.action_counts == np.array([2, 3] * 3)).all()


SHARED = [{**MEMBERS[0], "pool_share": 1}, {**MEMBERS[1], "pool_share": 3}]


def test_pool_shares_weigh_the_training_pool_and_leave_the_held_out_tasks_balanced():
    """`pool_share` gives MountainCar 3/4 of the seed example's training slots, spread evenly over the pool; the
    validation and test tasks still alternate members; retirements keep every slot's member; equal shares draw
    exactly the tasks of no shares."""
    family = make_family("mixed", members=SHARED)
    pool = [t.member for t in family.sample(64, make_generator(0))]
    assert sum(pool) == 48 and sum(pool[:32]) == 24 and sum(pool[:4]) == 3
    assert [t.member for t in family.sample(5, make_generator(0))] == [1, 1, 0, 1, 1]  # 1.25 / 3.75: largest rest
    assert [t.member for t in family.sample(6, make_generator(0), balanced=True)] == [0, 1] * 3
    with pytest.raises(ConfigError, match="leaves member 0 no slot of the 4 in the pool"):
        make_family("mixed", members=[{**MEMBERS[0], "pool_share": 1}, {**MEMBERS[1], "pool_share": 15}]).sample(
            4, make_generator(0))
    equal = make_family("mixed", members=[{**m, "pool_share": 2.5} for m in MEMBERS])
    assert equal.sample(9, make_generator(3)) == make_family("mixed", members=MEMBERS).sample(9, make_generator(3))
    dm = MetaDQNDataModule(family="mixed", members=SHARED, pool_size=8, tasks_per_batch=3, support_size=16,
                           query_size=16, learning_starts=40, adapt_budget=20, buffer_capacity=100, n_val_tasks=4,
                           n_test_tasks=4, retire_after=50, collect_steps=4)
    dm._build(rank=0)
    assert [t.member for t in dm.val_tasks] == [t.member for t in dm.test_tasks] == [0, 1, 0, 1]
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 3), lambda: 0.5)
    members = [t.member for t in dm.pool]
    assert sum(members) == 6
    for _ in range(60):
        dm.next_batch()
        assert [t.member for t in dm.pool] == members


@pytest.mark.parametrize("shares, needle", [
    ([0, 1], "data.members[0].pool_share: 0; allowed: a number > 0"),
    (["half", 1], "data.members[0].pool_share: 'half'; allowed: a number > 0"),
    ([None, 2], "data.members: pool_share given for members [1] only; give it to every member or to none"),
])
def test_a_bad_pool_share_is_refused_in_one_line(shares, needle, capsys):
    members = [{**m, **({"pool_share": s} if s is not None else {})} for m, s in zip(MEMBERS, shares)]
    code, lines = refused(["fit", "--config", str(ROOT / "configs/seed_cartpole_mountaincar.yaml"), "--data.members",
                           str(members).replace("False", "false").replace("None", "null")], capsys)
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_member_feature_appends_a_one_hot_of_the_game_to_every_observation():
    """`data.env_kwargs: {member_feature: true}`: after the zero-padded, scaled state comes a one-hot of the member,
    in reset and step observations alike (the collector, the replay and evaluation all read these), and in the
    meta-batches' support and query; without it the observation is the padded state as before."""
    plain = make_family("mixed", members=MEMBERS)
    family = make_family("mixed", members=MEMBERS, env_kwargs={"member_feature": True})
    assert (plain.obs_dim, family.obs_dim, family.state_dim) == (4, 6, 4) and len(family.obs_scale) == 6
    tasks = family.sample(4, make_generator(0))
    env, ref = family.batched(tasks, make_generator(1)), plain.batched(tasks, make_generator(1))
    for _ in range(3):
        assert np.array_equal(env.obs[:, :4], ref.obs)
        assert np.array_equal(env.obs[:, 4:], np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
        actions = np.array([1, 2, 0, 0])
        (o, r, _, _), (o_ref, r_ref, _, _) = env.step(actions), ref.step(actions)
        assert np.array_equal(o[:, :4], o_ref) and np.array_equal(r, r_ref)
        assert np.array_equal(o[:, 4:], np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    dm = MetaDQNDataModule(family="mixed", members=MEMBERS, env_kwargs={"member_feature": True}, pool_size=6,
                           tasks_per_batch=3, support_size=16, query_size=16, learning_starts=40, adapt_budget=20,
                           buffer_capacity=100, n_val_tasks=2, n_test_tasks=2)
    assert dm.obs_dim == 6
    dm._build(rank=0)
    dm.attach_policy(lambda obs: torch.zeros(len(obs), 3), lambda: 0.5)
    batch = dm.next_batch()
    members = torch.from_numpy(dm.env.owner)[batch["tasks"]]
    for part in ("support", "query"):
        for key in ("obs", "next_obs"):
            assert torch.equal(batch[part][key][..., 4:], torch.eye(2)[members].unsqueeze(1).expand(-1, 16, -1))


@pytest.mark.parametrize("kwargs, needle", [
    ("{member_feature: 1}", "data.env_kwargs.member_feature: 1; allowed: true, false"),
    ("{directions: 4}", "data.env_kwargs: unknown keys ['directions'] for data.family mixed; allowed: member_feature"),
])
def test_a_bad_mixed_family_option_is_refused_in_one_line(kwargs, needle, capsys):
    code, lines = refused(["fit", "--config", str(ROOT / "configs/seed_cartpole_mountaincar.yaml"), "--data.env_kwargs",
                           kwargs], capsys)
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_seed_dynamics_config_is_the_seed_example_with_the_screened_flags():
    """The README's seed_cartpole_mountaincar_dynamics rows were trained as configs/seed_cartpole_mountaincar.yaml
    plus these flags (benchmarks/families.py --variant nstep3_anil_dyn_ema_12k_rs_mf_ln); the shipped config must
    stay exactly that."""
    import yaml

    base = yaml.safe_load((ROOT / "configs/seed_cartpole_mountaincar.yaml").read_text())
    variant = yaml.safe_load((ROOT / "configs/seed_cartpole_mountaincar_dynamics.yaml").read_text())
    flags = {"model": {"algorithm": "anil", "inner_solver": "dynamics", "ema_decay": 0.998, "layer_norm": True},
             "data": {"n_step": 3, "env_kwargs": {"member_feature": True}, "epsilon_adapt": 1.0},
             "trainer": {"max_steps": 12000}}
    for section, values in flags.items():
        assert {k: variant[section].pop(k) for k in values} == values
        base[section] = {k: v for k, v in base[section].items() if k not in values}
    assert variant.pop("run_dir") == "lightning_logs/seed_cartpole_mountaincar_dynamics"
    assert base.pop("run_dir") == "lightning_logs/seed_cartpole_mountaincar"
    assert variant == base
