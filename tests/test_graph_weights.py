"""A denoiser's flags reaching the graph: per-interaction edge weights rebuilt into every
user-item structure of the graph backbones (``Backbone.set_edge_weights``), FREEDOM's pruning
odds, GUIDER's ``graph`` switch end to end, and GUIDER's teacher chosen from the backbone
registry (``denoise/teacher=<name>``)."""

from __future__ import annotations

import pytest
import torch

from guider.backbones.freedom import Freedom
from guider.graphs import degree_sensitive_prune
from guider.backbones.lightgcn import LightGCN
from guider.backbones.mf import MF
from guider.eval_cli import main as guider_eval
from guider.pipeline import prepare, run

GRAPH_BACKBONES = ["lightgcn", "freedom", "bm3", "lattice", "lgmrec", "mgcn", "smore"]


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.layout != torch.strided else t


@pytest.mark.parametrize("backbone", GRAPH_BACKBONES)
def test_zero_weights_build_the_graphs_of_the_data_without_those_edges(tiny_cfg, backbone):
    weighted = prepare(tiny_cfg(f"backbone={backbone}", "train.epochs=1")).model
    removed = prepare(tiny_cfg(f"backbone={backbone}", "denoise=oracle", "denoise.graph=true",
                               "train.epochs=1"))
    labels = torch.as_tensor(removed.data.train_noise)
    names = list(weighted.edge_buffers(None))
    assert names and "adj" in names
    before = {n: dense(getattr(weighted, n)).clone() for n in names}
    assert weighted.set_edge_weights(torch.ones(len(labels)))  # ones: the graphs as built
    for n in names:
        assert torch.equal(dense(getattr(weighted, n)), before[n]), n
    assert weighted.set_edge_weights((~labels).float())
    for n in names:  # weight 0 on the labelled edges = the graph built without them
        torch.testing.assert_close(dense(getattr(weighted, n)), dense(getattr(removed.model, n)),
                                   msg=n)


def test_models_without_a_user_item_graph_say_so(tiny_cfg):
    job = prepare(tiny_cfg("backbone=mf"))
    assert job.model.set_edge_weights(torch.zeros(len(job.data.train))) is False


def test_freedom_prunes_in_proportion_to_the_weights():
    # one user with two items of weights 3 and 1: weighted degrees d_u = 4, d_i = 3 and 1, so
    # the odds are 3 / sqrt(12) and 1 / sqrt(4); one edge of two is kept
    users, items = torch.zeros(2, dtype=torch.long), torch.arange(2)
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([3.0, 1.0])
    odds = torch.tensor([3 / 12 ** 0.5, 1 / 4 ** 0.5])
    kept0 = sum(int(degree_sensitive_prune(users, items, 1, 2, 0.5, g, w)[0] == 0)
                for _ in range(4000))
    assert abs(kept0 / 4000 - float(odds[0] / odds.sum())) < 0.03
    # weight 0: never kept while positive-weight edges remain to fill the quota
    users, items = torch.arange(10), torch.arange(10)
    w = torch.tensor([0.0] * 5 + [1.0] * 5)
    for _ in range(50):
        kept = degree_sensitive_prune(users, items, 10, 10, 0.5, g, w)
        assert set(kept.tolist()) == set(range(5, 10))


def test_freedom_pruned_graph_never_holds_a_zero_weight_edge(tiny_cfg):
    job = prepare(tiny_cfg("backbone=freedom", "backbone.dropout=0.5"))
    model, n = job.model, len(job.data.train)
    w = torch.ones(n)
    w[: n // 3] = 0.0
    model.set_edge_weights(w)
    model.train()
    pruned = dense(model.prune())[: job.data.n_users, job.data.n_users:]
    users, items = model.edge_users, model.edge_items
    assert (pruned[users[: n // 3], items[: n // 3]] == 0).all()
    assert (pruned[users[n // 3:], items[n // 3:]] > 0).sum() > 0


GUIDER_GRAPH = ("denoise=guider", "denoise.graph=true", "denoise.dbpr.enabled=true",
                "denoise.amsc.warmup_epochs=1", "denoise.amsc.rho_max=0.2", "train.lr=0.01",
                "denoise.teacher_lr=0.01")


def test_guider_graph_flags_reach_student_and_teacher(tiny_cfg):
    job = prepare(tiny_cfg(*GUIDER_GRAPH))
    g = job.denoiser
    g.on_epoch(3)
    omega = g.edge_weights()
    assert omega is g.omega and (omega == 0).any()
    assert torch.equal(g.teacher.edge_weights, omega)
    flagged = torch.as_tensor(g.flagged())
    users, items = g.teacher.edge_users[flagged], g.teacher.edge_items[flagged]
    adj = dense(g.teacher.adj)[: job.data.n_users, job.data.n_users:]
    assert (adj[users, items] == 0).all()
    # without the switch neither graph is touched
    plain = prepare(tiny_cfg(*GUIDER_GRAPH[:1], *GUIDER_GRAPH[2:])).denoiser
    plain.on_epoch(3)
    assert plain.edge_weights() is None and plain.teacher.edge_weights is None


def test_guider_graph_run_is_reproduced_from_its_folder(tiny_cfg, tmp_path):
    trained = run(tiny_cfg(*GUIDER_GRAPH, "train.epochs=4"), tmp_path / "run")
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert best["edge_weights"] is not None and (best["edge_weights"] == 0).any()
    assert guider_eval([str(tmp_path / "run"), "device=cpu", "--out",
                        str(tmp_path / "e.json")]) == 0
    import json

    again = json.loads((tmp_path / "e.json").read_text())
    assert again["test"] == trained["test"]


# --- the teacher from the backbone registry -----------------------------------------------


def test_teacher_group_builds_any_backbone_with_its_preset(tiny_cfg):
    g = prepare(tiny_cfg("denoise=guider")).denoiser  # the default: the authors' FREEDOM
    assert isinstance(g.teacher, Freedom) and g.teacher.cfg.knn_k == 20
    g = prepare(tiny_cfg("denoise=guider", "denoise/teacher=lightgcn")).denoiser
    assert isinstance(g.teacher, LightGCN) and g.teacher.cfg.n_layers == 2
    g = prepare(tiny_cfg("denoise=guider", "denoise/teacher=mf")).denoiser
    assert isinstance(g.teacher, MF) and g.teacher.cfg.reg_weight == 1e-4
    g = prepare(tiny_cfg("denoise=guider", "denoise/teacher=freedom",
                         "denoise.teacher.knn_k=5")).denoiser
    t = g.teacher
    assert isinstance(t, Freedom)
    assert (t.cfg.knn_k, t.cfg.dropout, t.cfg.n_layers_ui) == (5, 0.1, 2)
    state = t.prune_rng_state.clone()
    g.on_epoch(0)  # the teacher's own epoch hook runs: a FREEDOM teacher prunes anew
    assert not torch.equal(state, t.prune_rng_state)


def test_teacher_mistakes_name_the_fix(tiny_cfg):
    with pytest.raises(ValueError, match="denoise/teacher=<name>"):
        prepare(tiny_cfg("denoise=guider", "denoise.teacher=mf"))
    with pytest.raises(ValueError, match=r"denoise.teacher \(lightgcn\).*bogus"):
        prepare(tiny_cfg("denoise=guider", "denoise/teacher=lightgcn", "+denoise.teacher.bogus=1"))
