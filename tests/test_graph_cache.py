"""The on-disk cache of frozen kNN item graphs: same results, keys that change with every input,
learned graphs never cached, never inside the data folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guider import graphs
from guider.graphs.cache import GraphCache, interactions_digest, use_graph_cache
from guider.graphs import frozen_knn_topk, knn_graph, knn_topk, unit_rows
from guider.pipeline import prepare, run
from guider.identity import config_hash


def rows(n: int = 50, d: int = 8, seed: int = 0) -> torch.Tensor:
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def scope(users=(0, 1, 2), items=(3, 4, 5), n_users=3, n_items=6) -> str:
    return interactions_digest(np.array(users), np.array(items), n_users, n_items)


def test_cached_topk_equals_the_direct_computation_and_is_loaded_the_second_time(tmp_path,
                                                                                 monkeypatch):
    z = rows()
    cache = GraphCache(tmp_path, scope(), min_work=0)
    expected = knn_topk(z, 5, block_size=16, exclude_self=True)
    with use_graph_cache(cache):
        first = frozen_knn_topk(z, 5, block_size=16, exclude_self=True)
    assert len(list(tmp_path.glob("knn-*.pt"))) == 1
    # the second call must not compute: make computing fail
    monkeypatch.setattr(graphs, "knn_topk", lambda *a, **k: pytest.fail("recomputed"))
    with use_graph_cache(cache):
        second = frozen_knn_topk(z, 5, block_size=16, exclude_self=True)
    for a, b, c in zip(expected, first, second):
        assert torch.equal(a, b) and torch.equal(a, c)
    # outside the block the cache is inactive again: computing is attempted
    with pytest.raises(pytest.fail.Exception):
        frozen_knn_topk(z, 5, block_size=16, exclude_self=True)


def test_key_changes_with_features_interactions_and_parameters(tmp_path):
    z = rows()
    cache = GraphCache(tmp_path, scope())
    base = cache.key(z, 5, 16, True)
    assert cache.key(z.clone(), 5, 16, True) == base  # same content, same key
    z2 = z.clone()
    z2[7, 3] += 1e-6  # one feature of one item
    assert cache.key(z2, 5, 16, True) != base
    assert cache.key(z[:-1], 5, 16, True) != base  # one item fewer
    # the training interactions (after noise injection) are part of the key
    assert GraphCache(tmp_path, scope(items=(3, 4, 4))).key(z, 5, 16, True) != base
    assert GraphCache(tmp_path, scope(n_items=7)).key(z, 5, 16, True) != base
    assert GraphCache(tmp_path, scope(users=(0, 2, 1))).key(z, 5, 16, True) != base
    # and every parameter
    assert cache.key(z, 6, 16, True) != base
    assert cache.key(z, 5, 32, True) != base
    assert cache.key(z, 5, 16, False) != base


def test_a_changed_input_never_reuses_a_stale_graph(tmp_path):
    z = rows()
    cache = GraphCache(tmp_path, scope(), min_work=0)
    with use_graph_cache(cache):
        frozen_knn_topk(z, 5)
        z2 = rows(seed=1)
        got = frozen_knn_topk(z2, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, knn_topk(z2, 5)))
    assert len(list(tmp_path.glob("knn-*.pt"))) == 2


def test_a_damaged_entry_is_rebuilt(tmp_path):
    z = rows()
    cache = GraphCache(tmp_path, scope(), min_work=0)
    with use_graph_cache(cache):
        frozen_knn_topk(z, 5)
        (entry,) = tmp_path.glob("knn-*.pt")
        entry.write_bytes(b"not a torch file")
        got = frozen_knn_topk(z, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, knn_topk(z, 5)))
    assert torch.load(entry, weights_only=True)["key"] == cache.key(z, 5, 2048, True)


def test_small_graphs_are_not_cached(tmp_path):
    with use_graph_cache(GraphCache(tmp_path, scope(), min_work=1e12)):
        knn_graph(rows(), 5)
    assert not list(tmp_path.glob("*"))


def test_runs_share_the_graph_and_give_identical_results(tiny_cfg, tmp_path):
    cache_dir = tmp_path / "cache"
    over = ["backbone=freedom", "train.epochs=2", f"graph_cache.dir={cache_dir}",
            "graph_cache.min_work=0"]
    first = run(tiny_cfg(*over), tmp_path / "a")
    entries = sorted(cache_dir.glob("knn-*.pt"))
    assert len(entries) == 2  # the synthetic set's two modalities
    stamps = [p.stat().st_mtime_ns for p in entries]
    second = run(tiny_cfg(*over), tmp_path / "b")
    assert [p.stat().st_mtime_ns for p in entries] == stamps  # loaded, not rewritten
    assert first["test"] == second["test"] and first["valid"] == second["valid"]
    uncached = run(tiny_cfg("backbone=freedom", "train.epochs=2", "graph_cache.dir=null"),
                   tmp_path / "c")
    assert uncached["test"] == first["test"]
    # noise changes the training interactions: new entries, the old ones untouched
    run(tiny_cfg(*over, "noise=random", "noise.ratio=0.2"), tmp_path / "d")
    assert len(list(cache_dir.glob("knn-*.pt"))) == 4


def test_lattice_caches_its_original_graphs_never_its_learned_ones(tiny_cfg, tmp_path):
    cache_dir = tmp_path / "cache"
    run(tiny_cfg("backbone=lattice", "train.epochs=2", f"graph_cache.dir={cache_dir}",
                 "graph_cache.min_work=0"), tmp_path / "run")
    assert len(list(cache_dir.glob("knn-*.pt"))) == 2  # one original graph per modality


def test_cache_inside_the_data_folder_is_refused(short_cfg, tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{0 if i < 3 else 1 + (i % 2)}"
                                         for u in range(6) for i in range(5)]
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    cfg = short_cfg("dataset=tiktok", "dataset.name=toy", "dataset.features={}",
                    f"data_dir={tmp_path}", f"graph_cache.dir={folder / 'cache'}")
    with pytest.raises(ValueError, match="never go into the data folder"):
        prepare(cfg)


def test_graph_cache_settings_are_not_part_of_the_run_identity(tiny_cfg, tmp_path):
    assert config_hash(tiny_cfg()) == config_hash(tiny_cfg(f"graph_cache.dir={tmp_path}",
                                                           "graph_cache.min_work=5"))
