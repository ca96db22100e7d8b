"""The dynamics inner solver (mamldqn_pl.meta.dynamics, model.inner_solver dynamics): the step is, per task,
the posterior over relabelings of the actions given the support's transitions under the outcome head, and the head
becomes its posterior-mean relabeling (M W, M b). Checked against a plain reference (a loop over tasks and
relabelings), values and meta-gradients, first and second order; a hidden flip read off real
MountainCar transitions; the one-step outcomes of n-step batches; and the module, meta-test, `adapt`,
init_checkpoint and the CLI with it."""

import csv
import itertools

import numpy as np
import pytest
import torch
from conftest import SMALL_DATA, refused
from test_module import fit

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.data.collector import Collector
from mamldqn_pl.data.replay import ReplayBuffers
from mamldqn_pl.meta import InnerLoop, QNetwork, split_for_adaptation
from mamldqn_pl.meta.dynamics import (
    allowed,
    dynamics_heads,
    dynamics_meta_losses,
    mixings,
    outcome_scale,
    outcomes,
    permutations,
    posterior,
    relabel_errors,
)
from mamldqn_pl.tasks import make_family

T, N, M, F, A, D = 4, 30, 12, 5, 3, 3


def batches(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, A, (T, N), generator=g)
    actions[0][actions[0] == 2] = 1  # task 0 never takes action 2: its mixing row must stay where it starts
    support = {"x": torch.randn(T, N, F, generator=g, dtype=dtype), "actions": actions,
               "g": torch.randn(T, N, A, D, generator=g, dtype=dtype),
               "y": torch.randn(T, N, D, generator=g, dtype=dtype),
               "target": torch.randn(T, N, generator=g, dtype=dtype)}
    query = {"x": torch.randn(T, M, F, generator=g, dtype=dtype), "actions": torch.randint(0, A, (T, M), generator=g),
             "g": torch.randn(T, M, A, D, generator=g, dtype=dtype),
             "y": torch.randn(T, M, D, generator=g, dtype=dtype),
             "target": 3 * torch.randn(T, M, generator=g, dtype=dtype)}
    head = torch.randn(A, F, generator=g, dtype=dtype), torch.randn(A, generator=g, dtype=dtype)
    return support, query, head


def reference_posterior(g, actions, y, temperature):
    """Per task, one relabeling at a time: the sum over rows of the mean squared outcome error when action a acts as
    canonical action perm[a]; softmax of minus those over temperature; the posterior mean of the relabeling matrix.
    Returns the posterior [T, H] and the mean [T, A, A]."""
    perms = list(itertools.permutations(range(A)))
    beliefs, means = [], []
    for t in range(g.shape[0]):
        errors = []
        for perm in perms:
            canonical = torch.tensor([perm[a] for a in actions[t].tolist()])
            predicted = g[t][torch.arange(g.shape[1]), canonical]  # [N, D]
            errors.append((predicted - y[t]).pow(2).mean(-1).sum())
        belief = torch.softmax(-torch.stack(errors) / temperature, dim=0)
        matrices = torch.stack([torch.eye(A, dtype=g.dtype)[list(perm)] for perm in perms])
        beliefs.append(belief)
        means.append((belief.view(-1, 1, 1) * matrices).sum(0))
    return torch.stack(beliefs), torch.stack(means)


def test_the_step_is_the_posterior_mean_relabeling():
    support, _, _ = batches()
    eye = torch.eye(A, dtype=torch.float64).expand(T, A, A)
    for temperature in (0.3, 1.0, 30.0):
        ms = mixings(support, temperature, 3)
        assert torch.equal(ms[0], eye)  # K = 0: the plain network
        _, mean = reference_posterior(support["g"], support["actions"], support["y"], temperature)
        torch.testing.assert_close(ms[1], mean)
        assert all(torch.equal(m, ms[1]) for m in ms[2:])  # one step is exact: every K >= 1 is the same
        torch.testing.assert_close(ms[1].sum(-1), torch.ones(T, A, dtype=torch.float64))  # doubly stochastic
        torch.testing.assert_close(ms[1].sum(-2), torch.ones(T, A, dtype=torch.float64))
    assert torch.equal(permutations(3)[0], torch.eye(3)) and len(permutations(4)) == 24


def test_a_flip_is_the_permuted_head():
    """Outcomes that are exactly another task's with the actions swapped (a 2 - a flip): the posterior sits on the
    swap, and the adapted Q-values are the plain network's with the actions swapped."""
    support, _, (w, b) = batches(1)
    support["actions"] = torch.arange(N).repeat(T, 1) % A  # every task takes every action
    flip = torch.eye(A, dtype=torch.float64)[[2, 1, 0]]
    truth = torch.stack([torch.eye(A, dtype=torch.float64), flip, flip, torch.eye(A, dtype=torch.float64)])
    onehot = torch.nn.functional.one_hot(support["actions"], A).to(torch.float64)
    support["y"] = torch.einsum("tna,tab,tnbd->tnd", onehot, truth, support["g"])
    torch.testing.assert_close(mixings(support, 0.01, 1)[1], truth)
    hw, hb = dynamics_heads(w, b, support, 0.01, 1)[1]
    x = torch.randn(7, F, dtype=torch.float64)
    torch.testing.assert_close(x @ hw[1].T + hb[1], (x @ w.T + b)[:, [2, 1, 0]])
    torch.testing.assert_close(x @ hw[0].T + hb[0], x @ w.T + b)


def reference_meta_losses(w, b, support, query, temperature, steps, first_order, weight):
    perms = [torch.eye(A, dtype=w.dtype)[list(p)] for p in itertools.permutations(range(A))]
    if steps:
        beliefs, means = reference_posterior(support["g"], support["actions"], support["y"], temperature)
    else:
        beliefs = torch.zeros(T, len(perms), dtype=w.dtype)
        beliefs[:, 0] = 1
        means = torch.eye(A, dtype=w.dtype).expand(T, A, A)
    losses = []
    for t in range(T):
        used = means[t].detach() if first_order else means[t]
        q = query["x"][t] @ (used @ w).T + used @ b
        q_sa = q.gather(-1, query["actions"][t].unsqueeze(-1)).squeeze(-1)
        loss = torch.nn.functional.smooth_l1_loss(q_sa, query["target"][t])
        for belief, perm in zip(beliefs[t], perms):
            predicted = torch.stack([perm[a] @ query["g"][t, n] for n, a in enumerate(query["actions"][t].tolist())])
            loss = loss + weight * belief * (predicted - query["y"][t]).pow(2).mean()
        losses.append(loss)
    return torch.stack(losses)


def test_meta_losses_and_gradients_equal_the_reference():
    for first_order in (False, True):
        for steps, weight in ((0, 1.0), (1, 0.0), (3, 0.5)):
            support, query, (w, b) = batches(steps)
            leaves = [w.requires_grad_(), b.requires_grad_(), support["g"].requires_grad_(),
                      query["x"].requires_grad_(), query["g"].requires_grad_()]
            got = dynamics_meta_losses(w, b, support, query, 0.7, steps, first_order=first_order, weight=weight)
            ref = reference_meta_losses(w, b, support, query, 0.7, steps, first_order, weight)
            torch.testing.assert_close(got, ref)
            scale = torch.linspace(0.5, 1.5, T, dtype=torch.float64)
            got_grads = torch.autograd.grad((got * scale).sum(), leaves, allow_unused=True)
            ref_grads = torch.autograd.grad((ref * scale).sum(), leaves, allow_unused=True)
            for a, r in zip(got_grads, ref_grads, strict=True):
                if a is None or r is None:  # unused: no gradient at all, or zeros
                    assert all(v is None or not v.abs().sum() for v in (a, r))
                else:
                    torch.testing.assert_close(a, r)
            if steps and not first_order and weight == 0:
                assert got_grads[2].abs().sum() > 0  # the TD loss alone reaches the outcome head via the posterior


def test_outcomes_are_one_env_step_also_in_n_step_batches():
    """With n-step windows next_obs is the window's last observation; the outcome is s' - s of one step, the same
    as a one-step buffer holding the same transitions gives."""
    family = make_family("mountaincar", flip=True)
    tasks = family.sample(3, torch.Generator().manual_seed(0))
    batched = {}
    for n_step in (1, 3):
        env = family.batched(tasks, torch.Generator().manual_seed(0))
        buffers = ReplayBuffers(3, 50, family.obs_dim, n_step=n_step)
        Collector(env, buffers, torch.Generator().manual_seed(1)).run(np.arange(3), None, [1.0] * 40)
        batched[n_step] = buffers.sequence()
    assert not torch.equal(batched[3]["next_obs"], batched[1]["next_obs"])
    torch.testing.assert_close(outcomes(batched[3]), outcomes(batched[1]))
    y = outcomes(batched[1])
    torch.testing.assert_close(y[..., :2], batched[1]["next_obs"] - batched[1]["obs"])
    assert bool((y[..., 2] == -1).all())  # MountainCar pays -1 a step
    scale = outcome_scale(y)
    assert scale.shape == (3, 1, 3)
    torch.testing.assert_close((y / scale).pow(2).mean(1), torch.ones(3, 3))


def test_a_hidden_flip_is_read_off_real_transitions():
    """MountainCar tasks, half flipped, 200 random steps each. Outcome predictions g that know only the unflipped
    physics (the env's own step from the same state, per canonical action) solve to mixings near the identity on
    unflipped tasks and near the swap of actions 0 and 2 on flipped ones: the support's transitions carry the flip."""
    family = make_family("mountaincar", flip=True)
    tasks = family.sample(4, torch.Generator().manual_seed(3), balanced=True)
    flipped = torch.tensor([t.flip < 0 for t in tasks])
    assert flipped.sum() == 2
    env = family.batched(tasks, torch.Generator().manual_seed(0))
    buffers = ReplayBuffers(4, 200, family.obs_dim)
    Collector(env, buffers, torch.Generator().manual_seed(1)).run(np.arange(4), None, [1.0] * 200)
    data = buffers.sequence()
    # the canonical actions' outcomes from each row's state: MountainCar's equations with each task's own physics
    force = torch.tensor([t.params["force"] for t in tasks]).view(4, 1, 1)
    gravity = torch.tensor([t.params["gravity"] for t in tasks]).view(4, 1, 1)
    pos, vel = data["obs"][..., :1], data["obs"][..., 1:]
    push = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 3)
    new_vel = (vel + push * force - torch.cos(3 * pos) * gravity).clamp(-0.07, 0.07)
    new_pos = (pos + new_vel).clamp(-1.2, 0.6)
    g = torch.stack([new_pos - pos, new_vel - vel, -torch.ones_like(new_vel)], dim=-1)  # [4, N, 3, 3]
    scale = outcome_scale(outcomes(data))
    support = {"g": g / scale.unsqueeze(2), "y": outcomes(data) / scale, "actions": data["actions"]}
    mixing = mixings(support, 1.0, 1)[-1]
    swap = torch.eye(3)[[2, 1, 0]]
    for t in range(4):
        expected = swap if flipped[t] else torch.eye(3)
        assert (mixing[t] - expected).abs().max() < 0.2, (t, mixing[t])


def test_module_meta_step_with_dynamics_trains_every_head_and_keeps_adapted_weights_out():
    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=2, n_actions=3, hidden=[16], algorithm="anil", inner_solver="dynamics", gamma=0.95)
    assert model.net.dyn is not None and model.net.arch()["dynamics"]
    g = torch.Generator().manual_seed(0)

    def sampled(n):
        return {"obs": torch.randn(4, n, 2, generator=g), "actions": torch.randint(3, (4, n), generator=g),
                "rewards": -torch.ones(4, n), "next_obs": torch.randn(4, n, 2, generator=g),
                "terminated": torch.zeros(4, n)}

    batch = {"support": sampled(12), "query": sampled(10)}
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    loss, _, _ = model.meta_objective(batch, with_pre=False)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.parameters())  # dyn.* too
    assert all(torch.equal(before[k], v) for k, v in model.net.named_parameters())
    assert all(p.grad is None for p in model.target_net.parameters())
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), "head")
    support, query = model._support_and_query(split, batch)
    scale = outcome_scale(outcomes(batch["support"]))
    torch.testing.assert_close(query["y"], outcomes(batch["query"]) / scale)  # the query in the support's scale
    torch.testing.assert_close(support["g"], model.net.dyn(model.net.body(batch["support"]["obs"])).view(4, 12, 3, 3))
    q = model.adapted_q_values(batch["support"], None)(batch["support"]["obs"][:, 0])
    hw, hb = dynamics_heads(model.net.head.weight, model.net.head.bias, support, 1.0, model.inner.steps)[-1]
    x = model.net.body(batch["support"]["obs"][:, 0])
    torch.testing.assert_close(q, torch.einsum("mf,maf->ma", x, hw) + hb)
    # the outcome error is part of the objective: without it, the query's outcome rows change nothing
    off = MAMLDQN(obs_dim=2, n_actions=3, hidden=[16], inner_solver="dynamics", dynamics_loss_weight=0.0)
    off.load_state_dict(model.state_dict())
    moved = {**batch, "query": {**batch["query"], "next_obs_1": batch["query"]["next_obs"] + 1}}  # not the TD's
    torch.testing.assert_close(off.meta_objective(batch, False)[0], off.meta_objective(moved, False)[0])
    assert not torch.allclose(model.meta_objective(batch, False)[0], model.meta_objective(moved, False)[0])


def test_a_short_fit_and_the_meta_test_protocol_with_dynamics_steps():
    from mamldqn_pl.evaluation import Protocol, evaluate_init

    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=2, n_actions=3, hidden=[16], inner_solver="dynamics", inner_steps=2)
    trainer = fit(model, 4, family="mountaincar", flip=True, n_step=3)
    assert trainer.global_step == 4
    dm = MetaDQNDataModule(family="mountaincar", flip=True, **{**SMALL_DATA, "n_val_tasks": 2})
    dm.setup("fit")
    protocol = Protocol(adapt_budget=30, epsilon_adapt=1.0, ks=(0, 1, 2), episodes=1, seeds=(0,))
    rows = {}
    for solver in ("sgd", "dynamics"):
        inner = InnerLoop(lr=0.05, steps=2, solver=solver)
        rows[solver] = evaluate_init(model.net, dict(model.net.named_parameters()), dm.family, dm.val_tasks, "head",
                                     inner, 0.99, protocol)
    k0 = [[r["return"] for r in rows[s] if r["k"] == 0] for s in rows]
    assert k0[0] == k0[1] and len(rows["dynamics"]) == 2 * 3


def test_adapt_api_and_init_checkpoint_with_the_outcome_head(tmp_path):
    import gymnasium as gym

    from mamldqn_pl.metainit import MetaInit, init_weights

    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=2, n_actions=3, inner_solver="dynamics")
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    env = gym.make("MountainCar-v0")
    agent = MetaInit(model, {"family": "mountaincar", "adapt_budget": 40, "epsilon_adapt": 1.0}).adapt(
        env, k=2, episodes=1)
    assert [r["k"] for r in agent.report["returns"]] == [0, 1, 2]
    assert torch.equal(agent.net.body[1].weight, model.net.body[1].weight)
    assert not torch.equal(agent.net.head.weight, model.net.head.weight)
    assert all(torch.equal(before[k], v) for k, v in model.net.named_parameters())
    # a plain network (a multitask run's) starts a dynamics run: its Q-network, the run's own outcome head; and back
    plain = MAMLDQN(obs_dim=2, n_actions=3, algorithm="multitask")
    trainer = fit(plain, 1, family="mountaincar")
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    weights = init_weights(tmp_path / "plain.ckpt", model.net.state_dict())
    assert torch.equal(weights["head.weight"], plain.net.head.weight) and torch.equal(weights["dyn.weight"],
                                                                                      model.net.dyn.weight)
    fit(model, 1, family="mountaincar").save_checkpoint(tmp_path / "dyn.ckpt")
    back = init_weights(tmp_path / "dyn.ckpt", plain.net.state_dict())
    assert back.keys() == plain.net.state_dict().keys()
    assert torch.equal(back["head.weight"], model.net.head.weight)


def test_dynamics_bad_settings_are_refused_in_one_line(capsys):
    base = ["fit", "--config", "configs/mountaincar_flip.yaml", "--trainer.max_steps", "1"]
    cases = [(["--model.inner_solver", "dynamics", "--model.algorithm", "maml"], "model.inner_solver dynamics"),
             (["--model.inner_solver", "dynamics", "--model.algorithm", "multitask"], "model.inner_solver dynamics"),
             (["--model.inner_solver", "dynamics", "--model.algorithm", "metasgd"], "model.inner_solver dynamics"),
             (["--model.inner_solver", "dynamics", "--model.td_normalize", "true"], "model.td_normalize"),
             (["--model.inner_solver", "dynamics", "--model.dynamics_loss_weight", "-1"],
              "model.dynamics_loss_weight: -1"),
             (["--model.inner_solver", "dynamics", "--model.dynamics_temperature", "0"],
              "model.dynamics_temperature: 0")]
    for extra, needle in cases:
        code, err = refused(base + extra, capsys)
        assert code != 0 and len(err) == 1 and needle in err[0], (extra, err)


def test_a_mixed_familys_tasks_relabel_only_their_own_actions():
    """With an action mask ("valid") the posterior puts no mass on a relabeling that moves an action the task lacks:
    a two-action task of a three-action network chooses between the identity and the swap of its two actions, by
    the same errors renormalised; a task with every action is untouched, bitwise; with all tasks complete the mask
    changes nothing at all."""
    support, query, (w, b) = batches(2)
    valid = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [True, True, True]])
    masked = {**support, "valid": valid}
    hypotheses = permutations(A, torch.float64)
    got = mixings(masked, 0.7, 1)[1]
    assert torch.equal(got[[1, 3]], mixings(support, 0.7, 1)[1][[1, 3]])  # the tasks with every action: as unmasked
    belief = posterior(masked, hypotheses, 0.7)
    assert belief[0, ~allowed(valid, hypotheses)[0]].sum() == 0 and belief[0].sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(got[2], torch.eye(A, dtype=torch.float64))  # one action: nothing to relabel
    errors = relabel_errors(support, hypotheses)[0]
    own = [h for h in range(len(hypotheses)) if torch.equal(hypotheses[h][2], torch.eye(A, dtype=torch.float64)[2])]
    assert len(own) == 2  # the identity and the swap of actions 0 and 1
    expected = torch.softmax(-errors[own] / 0.7, 0)
    torch.testing.assert_close(got[0], (expected.view(-1, 1, 1) * hypotheses[own]).sum(0))
    assert got[0][2, 2] == 1 and got[0][2, :2].abs().sum() == 0  # the masked action's row stays its own
    full = {**support, "valid": torch.ones(T, A, dtype=torch.bool)}
    assert torch.equal(dynamics_meta_losses(w, b, full, query, 0.7, 2), dynamics_meta_losses(w, b, support, query,
                                                                                            0.7, 2))


def test_a_mixed_family_fits_and_meta_tests_with_dynamics_steps():
    """The seed's CartPole + MountainCar family with the dynamics solver: a short fit runs; the module's batches carry
    each task's action mask to the posterior, so its CartPole tasks never relabel MountainCar's third action (that
    row of their mixing stays the identity's); the meta-test protocol gives every K's returns."""
    from mamldqn_pl.evaluation import Protocol, evaluate_init

    members = [{"family": "cartpole", "flip": False}, {"family": "mountaincar"}]
    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=4, n_actions=3, hidden=[16], algorithm="anil", inner_solver="dynamics",
                    dynamics_temperature=1e-3)
    trainer = fit(model, 3, family="mixed", members=members, n_step=3)
    assert trainer.global_step == 3
    batch = trainer.datamodule.next_batch()
    counts = batch["action_mask"].sum(-1)
    assert set(counts.tolist()) == {2, 3}, counts  # both members in the batch
    support, _ = model._support_and_query(split_for_adaptation(model.net, dict(model.net.named_parameters()), "head"),
                                          batch)
    assert torch.equal(support["valid"], batch["action_mask"])
    mixing = mixings(support, 1e-3, 1)[1]
    two = counts == 2
    assert torch.equal(mixing[two][:, 2], torch.eye(3)[2].expand(int(two.sum()), 3))
    unmasked = mixings({k: v for k, v in support.items() if k != "valid"}, 1e-3, 1)[1]
    assert (unmasked[two][:, 2, 2] < 0.5).any()  # without the mask some would (a sharp posterior, an untrained g)
    dm = MetaDQNDataModule(family="mixed", members=members, **{**SMALL_DATA, "n_val_tasks": 4})
    dm.setup("fit")
    protocol = Protocol(adapt_budget=30, epsilon_adapt=1.0, ks=(0, 1), episodes=1, seeds=(0,))
    rows = evaluate_init(model.net, dict(model.net.named_parameters()), dm.family, dm.val_tasks, "head",
                         model.inner, 0.99, protocol)
    assert len(rows) == 4 * 2 and all(np.isfinite(r["return"]) for r in rows)


def test_a_plain_network_has_no_outcome_head():
    net = QNetwork(2, 3)
    assert net.dyn is None and "dynamics" not in net.arch() and not any(k.startswith("dyn.") for k in net.state_dict())
    assert QNetwork(**QNetwork(2, 3, dynamics=True).arch()).dyn is not None


def test_the_dynamics_configs_are_their_base_configs_with_the_screened_flags():
    """The README's dynamics rows were trained as the base config plus these flags (benchmarks/families.py
    --variant nstep3_dyn_ema for mountaincar_flip, nstep3_dyn_ema_12k_rs_ez8 for acrobot_flip and acrobot); the
    shipped configs must stay exactly that."""
    import yaml
    from conftest import ROOT

    for name in ("mountaincar_flip", "acrobot_flip", "acrobot"):
        base = yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())
        shipped = yaml.safe_load((ROOT / f"configs/{name}_dynamics.yaml").read_text())
        assert shipped["model"].pop("inner_solver") == "dynamics" and shipped["data"].pop("n_step") == 3
        assert shipped["model"].pop("ema_decay") == 0.998
        if name in ("acrobot_flip", "acrobot"):
            assert shipped["data"].pop("epsilon_adapt") == 1.0  # the twentieth session's random support
            assert shipped["trainer"]["max_steps"] == 12000
            shipped["trainer"]["max_steps"] = base["trainer"]["max_steps"]
            assert shipped["data"].pop("explore_duration") == 8  # the twenty-fourth session's held exploration
        assert shipped.pop("run_dir") == f"lightning_logs/{name}_dynamics"
        assert base.pop("run_dir") == f"lightning_logs/{name}"
        assert shipped == base


def test_dynamics_posteriors_script_prints_each_tasks_posterior(tmp_path, monkeypatch, capsys):
    """benchmarks/dynamics_posteriors.py on a tiny dynamics run: one line per task with its posterior; a checkpoint
    of another solver is refused in one line."""
    from conftest import TINY
    from test_benchmarks import script

    from mamldqn_pl.cli import main

    tiny = ["--config", "configs/mountaincar_flip_dynamics.yaml", *TINY[2:]]
    main(["fit", *tiny, "--trainer.max_steps", "6", "--run_dir", str(tmp_path / "dyn")])
    code, out, err = script("dynamics_posteriors", [str(tmp_path / "dyn/checkpoints/last.ckpt"), "--tasks", "4",
                                                    "--budget", "30", "--validate", "1e-3", "--val-epsilon", "1",
                                                    "--val-ks", "0", "--val-episodes", "1"], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    lines = out.strip().splitlines()
    validation = [line for line in lines if line.startswith("validation")]
    lines = [line for line in lines if not line.startswith("validation")]
    assert len(lines) == 4 and all("max posterior" in line for line in lines)
    # meta_val's protocol at the trained temperature: the return the run logged at its last check
    rows = csv.DictReader((tmp_path / "dyn/metrics.csv").read_text().splitlines())
    logged = [r for r in rows if r.get("meta_val/return_k3")][-1]
    assert len(validation) == 3 and "temperature 1, support epsilon 0.25:" in validation[0]
    assert "temperature 0.001, support epsilon 0.25:" in validation[1]
    assert "temperature 1, support epsilon 1:" in validation[2]
    values = [float(line.split(": ")[1]) for line in validation]
    assert abs(values[0] - float(logged["meta_val/return_k3"])) < 0.05
    assert values[2] != values[0]  # another support, another adapted head: the setting reaches the protocol
    assert {line.split("(")[1].split(")")[0] for line in lines} == {"flip", "noflip"}  # balanced draw
    main(["fit", *TINY, "--trainer.max_steps", "2", "--run_dir", str(tmp_path / "sgd")])
    code, _, err = script("dynamics_posteriors", [str(tmp_path / "sgd/checkpoints/last.ckpt")], monkeypatch, capsys)
    assert code != 0 and "not dynamics" in err
