"""The ridge inner solver (mamldqn_pl.meta.ridge, model.inner_solver ridge): each step is the exact proximal
least-squares fit of each task's head, per action, to the support's TD targets; later steps bootstrap from the
head reached. Checked against a plain primal reference (a loop over tasks and actions, normal equations), values
and meta-gradients, first and second order; the refresh's targets against the TD-target functions; and the
module, meta-test and the CLI with it."""

import torch
from conftest import SMALL_DATA, refused

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.meta import InnerLoop, QNetwork, split_for_adaptation
from mamldqn_pl.meta.ridge import refresh_fields, refreshed_targets, ridge_heads, ridge_meta_losses
from mamldqn_pl.meta.td import bootstrap_parts, td_target_of

T, N, M, F, A = 5, 24, 16, 6, 3


def sampled(seed: int, tasks: int, n: int, obs_dim: int = 2, n_actions: int = 5) -> dict:
    """A [tasks, n] batch as the replay buffers give it."""
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(tasks, n, obs_dim, generator=g),
            "actions": torch.randint(n_actions, (tasks, n), generator=g),
            "rewards": torch.randn(tasks, n, generator=g), "next_obs": torch.randn(tasks, n, obs_dim, generator=g),
            "terminated": (torch.rand(tasks, n, generator=g) > 0.8).float()}


def reference_step(w, b, x, actions, target, lam):
    """The primal solve, one task and one action at a time: argmin ||X_a theta - y_a||^2 + lam ||theta - start||^2."""
    new_w, new_b = [], []
    for t in range(x.shape[0]):
        rows_w, rows_b = [], []
        for a in range(w.shape[1]):
            taken = actions[t] == a
            xa = torch.cat([x[t][taken], torch.ones(int(taken.sum()), 1, dtype=x.dtype)], dim=1)
            start = torch.cat([w[t, a], b[t, a].unsqueeze(0)])
            gram = xa.T @ xa + lam * torch.eye(xa.shape[1], dtype=x.dtype)
            theta = torch.linalg.solve(gram, xa.T @ target[t][taken] + lam * start)
            rows_w.append(theta[:-1])
            rows_b.append(theta[-1])
        new_w.append(torch.stack(rows_w))
        new_b.append(torch.stack(rows_b))
    return torch.stack(new_w), torch.stack(new_b)


def support_and_query(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, A, (T, N), generator=g)
    actions[0][actions[0] == 2] = 1  # task 0 never takes action 2: its head must stay where it starts
    support = {"x": torch.randn(T, N, F, generator=g, dtype=dtype), "actions": actions,
               "target": 3 * torch.randn(T, N, generator=g, dtype=dtype),
               "x_next": torch.randn(T, N, F, generator=g, dtype=dtype),
               "ret": torch.randn(T, N, generator=g, dtype=dtype),
               "discount": 0.9 * (torch.rand(T, N, generator=g) > 0.2).to(dtype)}
    query = {"x": torch.randn(T, M, F, generator=g, dtype=dtype), "actions": torch.randint(0, A, (T, M), generator=g),
             "target": 3 * torch.randn(T, M, generator=g, dtype=dtype)}
    head = torch.randn(A, F, generator=g, dtype=dtype), torch.randn(A, generator=g, dtype=dtype)
    return support, query, head


def ridge_step(w, b, x, actions, target, lam):
    """One ridge step of the heads on rows x (what `ridge_heads` takes first)."""
    return ridge_heads(w, b, {"x": x, "actions": actions, "target": target}, lam, 1)[1]


def test_ridge_step_is_each_actions_proximal_least_squares_fit():
    support, _, (w, b) = support_and_query()
    w, b = w.expand(T, A, F), b.expand(T, A)
    for lam in (0.01, 1.0, 30.0):
        got = ridge_step(w, b, support["x"], support["actions"], support["target"], lam)
        ref = reference_step(w, b, support["x"], support["actions"], support["target"], lam)
        torch.testing.assert_close(got, ref)
    assert torch.equal(got[0][0, 2], w[0, 2]) and torch.equal(got[1][0, 2], b[0, 2])  # action 2 never taken
    # a tiny lambda fits the support's targets (at most 7 rows per action here: they can be met exactly)
    few = support["x"][:, :7], support["actions"][:, :7], support["target"][:, :7]
    fit_w, fit_b = ridge_step(w, b, *few, 1e-9)
    q = torch.baddbmm(fit_b.unsqueeze(1), few[0], fit_w.transpose(1, 2))
    torch.testing.assert_close(q.gather(-1, few[1].unsqueeze(-1)).squeeze(-1), few[2], rtol=1e-6, atol=1e-6)


def test_later_steps_bootstrap_from_the_head_reached():
    support, _, (w, b) = support_and_query(1)
    w, b = w.expand(T, A, F).clone(), b.expand(T, A).clone()
    first, second = ({"head.weight": hw, "head.bias": hb} for hw, hb in ridge_heads(w, b, support, 0.5, 2)[1:])
    q_next = torch.baddbmm(first["head.bias"].unsqueeze(1), support["x_next"], first["head.weight"].transpose(1, 2))
    target = support["ret"] + support["discount"] * q_next.max(-1).values
    ref = reference_step(first["head.weight"], first["head.bias"], support["x"], support["actions"], target, 0.5)
    torch.testing.assert_close((second["head.weight"], second["head.bias"]), ref)
    assert not torch.allclose(second["head.weight"], first["head.weight"])
    # a mixed family's missing action never wins the max
    valid = torch.ones(T, 1, A, dtype=torch.bool)
    valid[:, :, 0] = False
    masked = refreshed_targets(first["head.weight"], first["head.bias"], {**support, "valid": valid})
    torch.testing.assert_close(masked, support["ret"] + support["discount"] * q_next[..., 1:].max(-1).values)


def test_bootstrap_parts_rebuild_the_td_targets():
    g = torch.Generator().manual_seed(2)
    next_q = torch.randn(4, 10, A, generator=g)
    one = {"rewards": torch.randn(4, 10, generator=g), "terminated": (torch.rand(4, 10, generator=g) > 0.7).float()}
    window = {"reward_window": torch.randn(4, 10, 3, generator=g), "steps": torch.randint(1, 4, (4, 10), generator=g),
              "terminated": one["terminated"]}
    for data in (one, window):
        ret, discount = bootstrap_parts(data, 0.9)
        torch.testing.assert_close(ret + discount * next_q.max(-1).values, td_target_of(data, next_q, 0.9))


def reference_meta_losses(w, b, support, query, lam, steps, first_order):
    """Per task: the primal steps one after another (refreshing targets from the head reached), then the query's
    Huber loss; plain autograd through torch.linalg.solve."""
    losses = []
    for t in range(T):
        s = {k: v[t:t + 1] for k, v in support.items()}
        hw, hb = w.unsqueeze(0), b.unsqueeze(0)
        for k in range(steps):
            target = s["target"] if k == 0 else refreshed_targets(hw, hb, s)
            nw, nb = reference_step(hw, hb, s["x"], s["actions"], target.detach(), lam)
            if first_order:
                nw, nb = hw + (nw - hw).detach(), hb + (nb - hb).detach()
            hw, hb = nw, nb
        q = (query["x"][t] @ hw[0].T + hb[0]).gather(-1, query["actions"][t].unsqueeze(-1)).squeeze(-1)
        losses.append(torch.nn.functional.smooth_l1_loss(q, query["target"][t]))
    return torch.stack(losses)


def test_ridge_meta_losses_and_gradients_equal_the_reference():
    for first_order in (False, True):
        for steps in (0, 1, 3):
            support, query, (w, b) = support_and_query(steps)
            leaves = [w.requires_grad_(), b.requires_grad_(), support["x"].requires_grad_(),
                      query["x"].requires_grad_()]
            weights = torch.linspace(0.5, 1.5, T, dtype=torch.float64)
            got = ridge_meta_losses(w, b, support, query, 0.7, steps, first_order=first_order)
            ref = reference_meta_losses(w, b, support, query, 0.7, steps, first_order)
            torch.testing.assert_close(got, ref)
            got_grads = torch.autograd.grad((got * weights).sum(), leaves, allow_unused=True)
            ref_grads = torch.autograd.grad((ref * weights).sum(), leaves, allow_unused=True)
            for a, r in zip(got_grads, ref_grads, strict=True):
                if r is None:
                    assert a is None or not a.abs().sum()
                else:
                    torch.testing.assert_close(a, r)
            if steps and not first_order:
                assert got_grads[2].abs().sum() > 0  # second order: the support's features get a meta-gradient


def test_module_meta_step_with_ridge_trains_and_keeps_adapted_weights_out():
    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=2, n_actions=5, algorithm="anil", inner_solver="ridge", ridge_lambda=1.0, gamma=0.95)
    support = sampled(0, 4, 12)
    batch = {"support": support, "query": sampled(1, 4, 10)}
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    loss, _, post = model.meta_objective(batch, with_pre=False)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.net.named_parameters())
    assert all(p.grad is None for p in model.target_net.parameters())
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), "head")
    fields = model._inner_batch(split, support, None)
    assert {"x_next", "ret", "discount"} <= set(fields)
    torch.testing.assert_close(fields["x_next"], model.net.body(support["next_obs"]))
    q = model.adapted_q_values(support, None)(support["obs"][:, 0])
    assert q.shape == (4, 5) and torch.isfinite(q).all()


def test_meta_test_protocol_runs_ridge_steps_on_nav2d():
    from mamldqn_pl.evaluation import Protocol, evaluate_init

    torch.manual_seed(0)
    dm = MetaDQNDataModule(family="nav2d", **{**SMALL_DATA, "n_val_tasks": 2})
    dm.setup("fit")
    net = QNetwork(2, 5)
    protocol = Protocol(adapt_budget=30, epsilon_adapt=1.0, ks=(0, 1, 2), episodes=1, seeds=(0,))
    rows = {}
    for solver in ("sgd", "ridge"):
        inner = InnerLoop(lr=0.05, steps=2, solver=solver, ridge_lambda=1.0)
        rows[solver] = evaluate_init(net, dict(net.named_parameters()), dm.family, dm.val_tasks, "head", inner,
                                     0.95, protocol)
    k0 = [[r["return"] for r in rows[s] if r["k"] == 0] for s in rows]
    assert k0[0] == k0[1]  # the same init and support: K = 0 does not depend on the solver
    assert [r["return"] for r in rows["sgd"] if r["k"] == 2] != [r["return"] for r in rows["ridge"] if r["k"] == 2]


def test_refresh_fields_of_a_sampled_batch():
    net = QNetwork(2, 5)
    support = sampled(3, 2, 7)
    fields = refresh_fields(support, net.body, 0.95)
    torch.testing.assert_close(fields["discount"], 0.95 * (1 - support["terminated"]))
    assert not fields["x_next"].requires_grad


def test_ridge_bad_settings_are_refused_in_one_line(capsys):
    base = ["fit", "--config", "configs/nav2d.yaml", "--trainer.max_steps", "1"]
    cases = [(["--model.inner_solver", "ridge", "--model.algorithm", "maml"], "model.inner_solver ridge"),
             (["--model.inner_solver", "ridge", "--model.algorithm", "metasgd"], "model.inner_solver ridge"),
             (["--model.inner_solver", "ridge", "--model.td_normalize", "true"], "model.td_normalize"),
             (["--model.inner_solver", "ridge", "--model.double_dqn", "true"], "model.double_dqn"),
             (["--model.inner_solver", "ridge", "--model.ridge_lambda", "0"], "model.ridge_lambda: 0"),
             (["--model.inner_solver", "newton"], "newton")]
    for extra, needle in cases:
        code, err = refused(base + extra, capsys)
        assert code != 0 and len(err) == 1 and needle in err[0], (extra, err)


def test_adapt_api_takes_ridge_steps_on_a_users_env():
    import gymnasium as gym

    from mamldqn_pl.metainit import MetaInit

    torch.manual_seed(0)
    model = MAMLDQN(obs_dim=2, n_actions=5, inner_solver="ridge", gamma=0.95)
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    env = gym.make("mamldqn_pl/Nav2D-v0", goal_x=0.3, goal_y=-0.2)
    agent = MetaInit(model, {"family": "nav2d", "adapt_budget": 40, "epsilon_adapt": 1.0}).adapt(env, k=2, episodes=1)
    assert [r["k"] for r in agent.report["returns"]] == [0, 1, 2]
    assert torch.equal(agent.net.body[1].weight, model.net.body[1].weight)
    assert not torch.equal(agent.net.head.weight, model.net.head.weight)
    assert all(torch.equal(before[k], v) for k, v in model.net.named_parameters())  # the init is untouched


def test_nav2d_ridge_config_is_nav2d_with_the_screened_flags():
    """The README's nav2d_ridge rows were trained as configs/nav2d.yaml plus these flags (benchmarks/families.py
    --variant ridge1_rs_qta); the shipped config must stay exactly that."""
    import yaml
    from conftest import ROOT

    base = yaml.safe_load((ROOT / "configs/nav2d.yaml").read_text())
    ridge = yaml.safe_load((ROOT / "configs/nav2d_ridge.yaml").read_text())
    flags = {"model": {"inner_solver": "ridge", "ridge_lambda": 1.0, "query_target": "adapted"},
             "data": {"epsilon_adapt": 1.0}}
    for section, values in flags.items():
        assert {k: ridge[section].pop(k) for k in values} == values
    assert ridge.pop("run_dir") == "lightning_logs/nav2d_ridge" and base.pop("run_dir") == "lightning_logs/nav2d"
    assert base["model"].pop("inner_lr") == 0.05  # the default; no ridge step reads it
    assert ridge == base


def test_adapted_query_targets_with_ridge_steps_equal_a_hand_computation():
    """query_target adapted with the ridge solver: theta^- adapted per task by primal ridge steps (each later one on
    targets refreshed from theta_i^-'s head), then the query's r + gamma (1 - terminated) max Q(s'; theta_i^-)."""
    from test_module import fit

    torch.manual_seed(0)
    model = MAMLDQN(hidden=[16], algorithm="anil", inner_steps=2, inner_solver="ridge", ridge_lambda=0.5,
                    query_target="adapted")
    batch = fit(model, 3).datamodule.next_batch()
    split = split_for_adaptation(model.net, dict(model.net.named_parameters()), "head")
    _, query = model._support_and_query(split, batch)
    net, gamma, s, q = model.target_net, model.hparams.gamma, batch["support"], batch["query"]
    with torch.no_grad():
        x, x_next = net.body(s["obs"]).double(), net.body(s["next_obs"]).double()
        w = net.head.weight.double().expand(x.shape[0], -1, -1)
        b = net.head.bias.double().expand(x.shape[0], -1)
        target = (s["rewards"] + gamma * (1 - s["terminated"]) * net(s["next_obs"]).max(-1).values).double()
        for k in range(2):
            if k:
                q_next = torch.baddbmm(b.unsqueeze(1), x_next, w.transpose(1, 2)).max(-1).values
                target = s["rewards"].double() + gamma * (1 - s["terminated"].double()) * q_next
            w, b = reference_step(w, b, x, s["actions"], target, 0.5)
        q_next = torch.baddbmm(b.unsqueeze(1), net.body(q["next_obs"]).double(), w.transpose(1, 2)).max(-1).values
        expected = q["rewards"] + gamma * (1 - q["terminated"]) * q_next.float()
    torch.testing.assert_close(query["target"], expected, rtol=1e-4, atol=1e-4)
    shared = model._inner_batch(split, q, None)["target"]
    assert not torch.allclose(query["target"], shared)
