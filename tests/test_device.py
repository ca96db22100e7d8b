"""The module on another device than the environments, buffers and masks (which stay on the CPU): collection with
adapted policies, the meta-objective and its gradient, and the meta-test protocol. On the CPU this is the ordinary
path; MAMLDQN_TEST_DEVICE=cuda runs it on a GPU (benchmarks/gpu_check.sh), where a tensor left on the wrong side
fails."""

import pytest
import torch
from conftest import DEVICE, SMALL_DATA, to_device
from test_mixed import MEMBERS

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.evaluation import Protocol, evaluate_shared


@pytest.mark.parametrize("algorithm", ["anil", "maml"])
def test_meta_step_and_protocol_run_with_the_module_on_the_device(algorithm):
    torch.manual_seed(0)
    dm = MetaDQNDataModule(**{**SMALL_DATA, "family": "mixed", "members": MEMBERS, "collect_adapted": 0.5,
                              "n_step": 3})
    dm._build(rank=0)
    model = MAMLDQN(obs_dim=dm.obs_dim, n_actions=dm.n_actions, hidden=[16, 16], algorithm=algorithm).to(DEVICE)
    dm.attach_policy(model.q_values, lambda: 0.3, model.adapted_q_values)
    batch = dm.next_batch()  # the warm start, then collection: half of the tasks act with their adapted policy
    assert not batch["action_mask"].all()
    batch = to_device(batch)
    loss, pre, post = model.meta_objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and pre.device.type == post.device.type == DEVICE.type
    assert all(p.grad is not None and p.grad.device.type == DEVICE.type and torch.isfinite(p.grad).all()
               for p in model.net.parameters())
    protocol = Protocol(adapt_budget=20, ks=(0, 1), episodes=1, seeds=(0,), n_step=3)
    rows = evaluate_shared(model.net, dm.family, dm.val_tasks[:2], model.adapt, model.inner, 0.99, protocol)
    assert len(rows) == 2 * 2 and all(abs(r["return"]) < 1e4 for r in rows)
