"""model.init_checkpoint: a fit starts theta, theta^- and the EMA from another run's initialisation (its EMA where
it kept one), before the data module's first collection; a resumed run keeps its own weights; checkpoints that
do not fit are refused in one line."""

import pytest
import pytorch_lightning as pl
import torch
from conftest import SMALL_DATA, TINY, refused
from test_module import fit

from mamldqn_pl import MAMLDQN, MetaDQNDataModule
from mamldqn_pl.errors import ConfigError
from mamldqn_pl.metainit import init_weights


class AtStart(pl.Callback):
    """The module's networks and the first meta-batch, as the first meta-step sees them."""

    def __init__(self) -> None:
        self.nets: dict[str, dict[str, torch.Tensor]] = {}
        self.actions: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.actions is None:
            nets = {"net": pl_module.net, "target_net": pl_module.target_net}
            if pl_module.ema is not None:
                nets["ema"] = pl_module.ema.module
            self.nets = {k: {n: t.clone() for n, t in v.state_dict().items()} for k, v in nets.items()}
            self.actions = torch.cat([batch["support"]["actions"], batch["query"]["actions"]])


def source_checkpoint(path, ema_decay: float = 0.0) -> MAMLDQN:
    """A short multitask run whose theta always prefers action 1 (a head bias no random network has)."""
    torch.manual_seed(1)
    model = MAMLDQN(hidden=[16], algorithm="multitask", adapt="head", ema_decay=ema_decay)
    trainer = fit(model, 3)
    with torch.no_grad():
        for net in (model.net, *([model.ema.module] if model.ema is not None else [])):
            net.head.bias.copy_(torch.tensor([-100.0, 100.0]))
    trainer.save_checkpoint(path)
    return model


GREEDY = dict(epsilon_start=0.0, epsilon_end=0.0)  # collection by theta's greedy policy alone
GREEDY_DATA = dict(epsilon_adapt=0.0)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_a_fit_starts_from_the_checkpoints_initialisation_and_collects_with_it(tmp_path, ema_decay):
    src = source_checkpoint(tmp_path / "src.ckpt", ema_decay)
    handed_on = src.init_net.state_dict()  # the EMA where the source kept one
    if ema_decay:
        assert not torch.equal(src.ema.module.body[1].weight, src.net.body[1].weight)
    start = AtStart()
    model = MAMLDQN(hidden=[16], init_checkpoint=str(tmp_path / "src.ckpt"), ema_decay=0.5, **GREEDY)
    fit(model, 1, start, **GREEDY_DATA)
    for name, state in start.nets.items():
        assert state.keys() == handed_on.keys(), name
        assert all(torch.equal(state[k], handed_on[k]) for k in state), name
    # the warm start and the first collection ran after the load: every transition took the loaded greedy action, 1
    assert start.actions is not None and bool((start.actions == 1).all())
    # the same run without it starts from its own random weights, whose greedy actions are mixed
    plain = AtStart()
    fit(MAMLDQN(hidden=[16], ema_decay=0.5, **GREEDY), 1, plain, **GREEDY_DATA)
    assert not torch.equal(plain.nets["net"]["head.bias"], handed_on["head.bias"])
    assert not bool((plain.actions == 1).all())


def test_a_resumed_run_keeps_its_own_weights(tmp_path):
    source_checkpoint(tmp_path / "src.ckpt")
    model = MAMLDQN(hidden=[16], init_checkpoint=str(tmp_path / "src.ckpt"))
    trainer = fit(model, 2)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = {k: v.clone() for k, v in model.net.state_dict().items()}
    assert not torch.equal(saved["body.1.weight"], torch.load(tmp_path / "src.ckpt", weights_only=True)[
        "state_dict"]["net.body.1.weight"])  # two meta-steps moved theta away from the source
    start = AtStart()
    resumed = MAMLDQN(hidden=[16], init_checkpoint=str(tmp_path / "src.ckpt"))
    pl.seed_everything(0)
    pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[start], num_sanity_val_steps=0).fit(
        resumed, datamodule=MetaDQNDataModule(**SMALL_DATA), ckpt_path=tmp_path / "run.ckpt")
    assert all(torch.equal(start.nets["net"][k], saved[k]) for k in saved)


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    source_checkpoint(tmp_path / "src.ckpt")
    with pytest.raises(ConfigError, match=r"init_checkpoint .*nowhere.ckpt: no such file"):
        init_weights(tmp_path / "nowhere.ckpt", MAMLDQN(hidden=[16]).net.state_dict())
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="init_checkpoint .*junk.ckpt: not a readable checkpoint"):
        init_weights(tmp_path / "junk.ckpt", MAMLDQN(hidden=[16]).net.state_dict())
    with pytest.raises(ConfigError, match=r"weights \[16, 4\] \[2, 16\]\) does not fit this config's "
                                          r"\(weights \[8, 4\] \[2, 8\]\)"):
        init_weights(tmp_path / "src.ckpt", MAMLDQN(hidden=[8]).net.state_dict())
    with pytest.raises(ConfigError, match=r"observation scale .* differs from this config's \[2.0, 2.0, 2.0, 2.0\]"):
        init_weights(tmp_path / "src.ckpt", MAMLDQN(hidden=[16], obs_scale=[2.0] * 4).net.state_dict())


def test_the_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    code, err = refused(["fit", *TINY, "--run_dir", str(tmp_path / "run"), "--trainer.max_steps", "2",
                         "--model.init_checkpoint", str(tmp_path / "nowhere.ckpt")], capsys)
    assert code == 2 and len(err) == 1
    assert err[0] == f"mamldqn: error: --model.init_checkpoint {tmp_path / 'nowhere.ckpt'}: no such file; give the " \
                     "path of a checkpoint file"
