"""Scale: the generator at exact sizes, early size checks, sampled evaluation, the benchmark's
arithmetic (docs/scale.md)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from guider.config import ModalityConfig, SyntheticConfig
from guider.identity import drop_neutral
from guider.data import DataError, generate
from guider.data.sampling import contains_sorted, sorted_unique
from guider.data.synthetic import PopularitySampler, adjust_total, descending_key, split_counts
from guider.evaluation import build_eval_set, evaluate, sample_users
from guider.sizecheck import ENV, SizeError, check_size, mem_available, parse_bytes

from .conftest import REPO
from .helpers import _signal_gap


def cfg(**kw) -> SyntheticConfig:
    base = dict(n_users=400, n_items=300, n_interactions=4321, candidates=8,
                min_interactions=5, max_interactions=60, noise_fraction=0.1,
                modalities={"image": ModalityConfig(8, 0.6), "text": ModalityConfig(4, 0.3)},
                seed=0)
    base.update(kw)
    return SyntheticConfig(**base)


def arrays(d):
    out = [d.train.users, d.train.items, d.valid.users, d.valid.items, d.test.users,
           d.test.items, d.train_noise]
    return out + [d.features[m] for m in sorted(d.features)]


def history_counts(d) -> np.ndarray:
    users = np.concatenate([d.train.users, d.valid.users, d.test.users])
    return np.bincount(users, minlength=d.n_users)


# --- the generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("candidates", [0, 8])
def test_generator_counts_are_exact(candidates):
    c = cfg(candidates=candidates)
    d = generate(c)
    assert (d.n_users, d.n_items) == (400, 300)
    assert len(d.train) + len(d.valid) + len(d.test) == 4321  # exactly n_interactions
    n = history_counts(d)
    assert n.min() >= 5 and n.max() <= 60  # min history, max_interactions
    keys = np.concatenate([s.keys(d.n_items) for s in (d.train, d.valid, d.test)])
    assert len(np.unique(keys)) == len(keys)  # no duplicate pair within or across splits
    v, t = split_counts(n)
    np.testing.assert_array_equal(np.bincount(d.valid.users, minlength=400), v)
    np.testing.assert_array_equal(np.bincount(d.test.users, minlength=400), t)
    assert int(d.train_noise.sum()) == round(0.1 * len(d.train))
    assert d.features["image"].shape == (300, 8) and d.features["text"].shape == (300, 4)


@pytest.mark.parametrize("candidates", [0, 8])
def test_generator_is_deterministic_in_the_seed(candidates):
    a, b = generate(cfg(candidates=candidates)), generate(cfg(candidates=candidates))
    for x, y in zip(arrays(a), arrays(b)):
        np.testing.assert_array_equal(x, y)
    c = generate(cfg(candidates=candidates, seed=1))
    assert not np.array_equal(a.train.items, c.train.items)


def test_candidate_sampler_without_n_interactions_follows_mean_interactions():
    d = generate(cfg(n_interactions=0, mean_interactions=12, n_users=2000))
    mean = history_counts(d).mean()
    assert 10.5 < mean < 13.0  # 12 minus a little clipping at max_interactions


def test_candidate_sampler_keeps_the_preference_signal():
    # the histories follow the latent factors: features built from the item factors place the
    # held-out items closer to the user's items than random items do, and the signal grows
    # toward the exact sampler's as the pool grows (observed: k=2 0.012, 8 0.084, 32 0.13,
    # exact 0.19)
    gap = {k: _signal_gap(generate(cfg(
        n_interactions=0, mean_interactions=12, n_users=200, n_items=150, max_interactions=200,
        modalities={"v": ModalityConfig(16, 1.0)}, seed=5, candidates=k))) for k in (2, 8, 32, 0)}
    assert gap[8] > 0.05, gap
    assert gap[2] < gap[8] < gap[32] < gap[0], gap


def test_candidate_sampler_fills_pools_when_popularity_is_concentrated(monkeypatch):
    # popularity 4 puts almost all the proposal mass on a few items: pools are mostly
    # duplicates and the uniform fill must complete them, still with exact counts
    import guider.data.synthetic as synthetic

    calls = []
    dedupe = synthetic.dedupe
    monkeypatch.setattr(synthetic, "dedupe", lambda *a: calls.append(1) or dedupe(*a))
    d = generate(cfg(popularity=4.0, candidates=2, n_items=120, max_interactions=50))
    assert len(calls) >= 2  # the pools were deduplicated, then filled at least once
    assert len(d.train) + len(d.valid) + len(d.test) == 4321
    keys = np.concatenate([s.keys(d.n_items) for s in (d.train, d.valid, d.test)])
    assert len(np.unique(keys)) == len(keys)
    assert history_counts(d).min() >= 5


def test_popularity_sampler_is_an_exact_inverse_cdf():
    rng = np.random.default_rng(0)
    p = rng.random(1000) ** 4
    s = PopularitySampler(p)
    draws = s.draw(np.random.default_rng(7), 50_000)
    u = np.random.default_rng(7).random(50_000)
    np.testing.assert_array_equal(draws, np.searchsorted(s.cdf, u, side="right"))
    assert draws.max() < 1000


def test_descending_key_orders_floats_descending():
    x = np.array([0.5, -3.0, 2.0, -0.0, 1e-30, -1e30, 7.5])
    np.testing.assert_array_equal(np.argsort(descending_key(x), kind="stable"),
                                  np.argsort(-x, kind="stable"))


def test_adjust_total_hits_the_total_within_bounds():
    rng = np.random.default_rng(0)
    for target in (500, 3000, 5900):
        n = rng.integers(5, 61, size=100)
        adjust_total(n, target, 5, 60, rng)
        assert n.sum() == target and n.min() >= 5 and n.max() <= 60


@pytest.mark.parametrize("kw,match", [
    (dict(n_interactions=100), "n_interactions=100 is impossible"),  # < 400 users x 5
    (dict(n_interactions=10 ** 6), "n_interactions=1000000 is impossible"),  # > 400 x 60
    (dict(candidates=1), "candidates=1"),
    (dict(candidates=-2), "candidates=-2"),
    (dict(min_interactions=40, n_items=60), "raise n_items or max_interactions"),
])
def test_generator_rejects_impossible_sizes(kw, match):
    with pytest.raises(DataError, match=match):
        generate(cfg(**kw))


def test_set_helpers_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 500, size=2000)
    np.testing.assert_array_equal(sorted_unique(x), np.unique(x))
    keys = rng.integers(0, 700, size=300)
    np.testing.assert_array_equal(contains_sorted(np.unique(x), keys), np.isin(keys, x))
    assert not contains_sorted(np.empty(0, dtype=np.int64), keys).any()


# --- early size checks -------------------------------------------------------------------------


def test_parse_bytes_and_meminfo(tmp_path):
    assert parse_bytes("123") == 123
    assert parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5G") == int(1.5 * 2**30)
    assert parse_bytes("12GiB") == 12 * 2**30
    with pytest.raises(ValueError, match=ENV):
        parse_bytes("lots")
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n")
    assert mem_available(str(fake)) == 1000 * 1024
    assert mem_available(str(tmp_path / "absent")) is None


def test_check_size_uses_the_override(monkeypatch):
    monkeypatch.setenv(ENV, "1M")
    check_size("small", 2**19, "knob")
    with pytest.raises(SizeError, match=r"big would need about 2\.0 MiB.*1\.0 MiB.*Reduce it "
                                        r"with the.knob"):
        check_size("big", 2**21, "the.knob")
    monkeypatch.setenv(ENV, "off")
    check_size("big", 2**60, "the.knob")
    assert issubclass(SizeError, ValueError) and issubclass(SizeError, MemoryError)


@contextlib.contextmanager
def allocation_peak():
    """Peak bytes allocated (Python and numpy, via tracemalloc) inside the block: a behavioural
    stand-in for "fails fast" that does not depend on the machine's speed or load."""
    result = {}
    tracemalloc.start()
    try:
        yield lambda: result["peak"]
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


ABSURD = dict(n_users=10 ** 8, n_items=10 ** 7, n_interactions=10 ** 9, max_interactions=200,
              candidates=8)


def test_absurd_request_fails_fast_with_the_knob(monkeypatch):
    monkeypatch.setenv(ENV, "24G")  # the reference machine, whatever this one has
    with allocation_peak() as peak, pytest.raises(SizeError) as err:
        generate(cfg(**ABSURD))
    assert peak() < 64 * 2**20  # refused before allocating anything of that size
    msg = str(err.value)
    assert "1,000,000,000 interactions" in msg and "dataset.synthetic.n_interactions" in msg
    assert "24.0 GiB" in msg and ENV in msg


@pytest.mark.skipif(mem_available() is None, reason="no /proc/meminfo on this system")
def test_absurd_request_fails_against_the_real_memavailable(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(SizeError, match="MemAvailable"):
        generate(cfg(n_users=10 ** 10, n_items=10 ** 8, n_interactions=10 ** 12,
                     max_interactions=200, candidates=8))


def test_absurd_request_fails_before_the_pipeline_does_any_work(monkeypatch, tiny_cfg):
    from guider.pipeline import prepare

    monkeypatch.setenv(ENV, "24G")
    with allocation_peak() as peak, pytest.raises(SizeError, match="dataset.synthetic.n_interactions"):
        prepare(tiny_cfg("dataset.synthetic.n_users=100000000",
                         "dataset.synthetic.n_items=10000000",
                         "dataset.synthetic.n_interactions=1000000000",
                         "dataset.synthetic.candidates=8"))
    assert peak() < 64 * 2**20


def test_exact_sampler_block_check_names_candidates(monkeypatch):
    monkeypatch.setenv(ENV, "2G")
    with pytest.raises(SizeError, match="dataset.synthetic.candidates"):
        generate(cfg(n_users=10_000, n_items=200_000, n_interactions=100_000, candidates=0))


def test_evaluation_block_check_names_batch_users(monkeypatch):
    es = build_eval_set(np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), np.array([1, 0]),
                        2, 1000)
    monkeypatch.setenv(ENV, "20K")  # 2 users x 1000 items x 12 bytes = 23.4 KiB
    with pytest.raises(SizeError, match="eval.batch_users"):
        evaluate(lambda u: torch.zeros(len(u), 1000), es, [5])
    # what the message asks for: fewer users per block (1 x 1000 x 12 bytes = 11.7 KiB)
    assert evaluate(lambda u: torch.zeros(len(u), 1000), es, [5], batch_users=1)


def test_knn_and_graph_checks_name_their_knobs(monkeypatch):
    from guider.graphs import bipartite_adjacency, knn_graph, knn_indices

    z = torch.randn(3000, 4)
    monkeypatch.setenv(ENV, "1M")  # 2048 x 3000 x 8 bytes = 47 MiB
    with pytest.raises(SizeError, match="denoise.amsc.knn_block"):
        knn_indices(z, 5, 2048, knob="denoise.amsc.knn_block")
    with pytest.raises(SizeError, match="backbone.knn_block_size"):
        knn_graph(z, 5, 2048, knob="backbone.knn_block_size")
    assert knn_indices(z, 5, block_size=16).shape == (3000, 5)  # 16 rows: 375 KiB
    users = torch.arange(20_000) % 100
    with pytest.raises(SizeError, match="n_interactions"):
        bipartite_adjacency(users, users % 7, 100, 7)


def test_distillation_check_names_kd_items(monkeypatch):
    from guider.denoise.guider.distill import Distiller, KDConfig

    monkeypatch.setenv(ENV, "1G")
    with pytest.raises(SizeError, match="denoise.kd.items"):
        Distiller(KDConfig(users=256, items=100_000), n_items=1_000_000, seed=0)
    Distiller(KDConfig(), n_items=1_000_000, seed=0)  # the defaults: 2,048 x 1,024 and a top-list block, ~130 MiB


def test_model_check_names_embedding_dim(monkeypatch, tiny_cfg):
    from guider.pipeline import prepare

    monkeypatch.setenv(ENV, "64M")  # 500 nodes x 100k dims x 48 bytes = 2.2 GiB
    with pytest.raises(SizeError, match="backbone.embedding_dim"):
        prepare(tiny_cfg("backbone.embedding_dim=100000"))


@pytest.mark.parametrize("denoiser, key", [("guider", "denoise.teacher.embedding_dim"),
                                           ("deca", "denoise.aux_dim")])
def test_a_denoisers_own_tables_are_checked_before_building(monkeypatch, tiny_cfg, denoiser, key):
    from guider.pipeline import prepare

    monkeypatch.setenv(ENV, "64M")
    with pytest.raises(SizeError, match=key.replace(".", r"\.")):
        prepare(tiny_cfg(f"denoise={denoiser}", f"{key}=100000"))


# --- eval.sample_users ----------------------------------------------------------------------


def _random_split(seed: int, n_users=60, n_items=40):
    rng = np.random.default_rng(seed)
    keys = rng.choice(n_users * n_items, size=900, replace=False)
    train = keys[: 700]
    held = keys[700:]
    # every user and item trains at least once, nothing is held out twice
    extra = np.arange(max(n_users, n_items))
    train = np.union1d(train, (extra % n_users) * n_items + extra % n_items)
    held = np.setdiff1d(held, train)
    return (train // n_items, train % n_items, held // n_items, held % n_items, n_users, n_items)


def test_sample_users_is_fixed_by_the_seed():
    tu, ti, eu, ei, nu, ni = _random_split(0)
    es = build_eval_set(tu, ti, eu, ei, nu, ni)
    a, b = sample_users([es], 20, 3), sample_users([es], 20, 3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 20 and np.all(np.diff(a) > 0) and np.isin(a, es.users.numpy()).all()
    assert not np.array_equal(a, sample_users([es], 20, 4))
    np.testing.assert_array_equal(sample_users([es], 0, 3), es.users.numpy())  # 0 = all
    np.testing.assert_array_equal(sample_users([es], 10 ** 6, 3), es.users.numpy())


def test_sampled_metrics_equal_a_full_evaluation_restricted_to_those_users():
    tu, ti, eu, ei, nu, ni = _random_split(1)
    scores = torch.as_tensor(np.random.default_rng(2).random((nu, ni)), dtype=torch.float32)
    es = build_eval_set(tu, ti, eu, ei, nu, ni)
    chosen = sample_users([es], 17, 0)
    sampled = evaluate(lambda u: scores[u].clone(), es.restrict(chosen), [1, 5, 10], batch_users=4)
    keep = np.isin(eu, chosen)  # an independent path: the held-out pairs of those users only
    direct = build_eval_set(tu, ti, eu[keep], ei[keep], nu, ni)
    assert direct.users.tolist() == chosen.tolist()
    full = evaluate(lambda u: scores[u].clone(), direct, [1, 5, 10])
    assert sampled == pytest.approx(full)
    everyone = evaluate(lambda u: scores[u].clone(), es, [1, 5, 10])
    assert sampled != pytest.approx(everyone)  # a sample, not the full evaluation


def test_run_records_the_sample_and_its_metrics_are_those_users(tiny_cfg, tmp_path):
    from guider.pipeline import prepare, run
    from guider.training import fit
    from guider.evaluation import build_eval_sets

    over = ("eval.sample_users=40", "eval.sample_seed=5", "train.epochs=2")
    metrics = run(tiny_cfg(*over), tmp_path / "a")
    on_disk = json.loads((tmp_path / "a" / "metrics.json").read_text())
    sample = on_disk["eval_sample"]
    assert sample["users"] == 40 and sample["seed"] == 5 and sample["sampled_users"] == 40
    assert sample["eligible_users"] == 300 and sample["valid_users"] == 40
    assert metrics["eval_sample"] == sample
    assert json.loads(json.dumps(run(tiny_cfg(), tmp_path / "b")))["eval_sample"] is None

    # the same users for valid and test, run after run; the test metrics are exactly a full
    # evaluation of the best model on those users' held-out pairs
    job = prepare(tiny_cfg(*over))
    valid, test, _ = build_eval_sets(job.data, job.root.eval)
    again, _, _ = build_eval_sets(prepare(tiny_cfg(*over)).data, job.root.eval)
    assert valid.users.tolist() == test.users.tolist() == again.users.tolist()
    result = fit(job.model, job.denoiser, job.data, job.root.train, job.root.eval, job.device,
                 job.root.seed, tmp_path / "c")
    d = job.data
    keep = np.isin(d.test.users, valid.users.numpy())
    direct = build_eval_set(d.train.users, d.train.items, d.test.users[keep], d.test.items[keep],
                            d.n_users, d.n_items)
    assert result.test == pytest.approx(evaluate(job.model.scorer(), direct, job.root.eval.topk))
    assert result.test == pytest.approx(metrics["test"])


def test_sample_users_must_not_be_negative(tiny_cfg):
    from guider.pipeline import validate

    with pytest.raises(ValueError, match="eval.sample_users=-1"):
        validate(tiny_cfg("eval.sample_users=-1"))


def test_new_keys_at_their_defaults_leave_run_identity_unchanged(tiny_cfg):
    from omegaconf import OmegaConf

    from guider.pipeline import prepare
    from guider.identity import config_hash

    c = tiny_cfg()
    plain = OmegaConf.to_container(c, resolve=True)
    for key in ("sample_users", "sample_seed"):
        del plain["eval"][key]
    for key in ("n_interactions", "candidates"):
        del plain["dataset"]["synthetic"][key]
    assert config_hash(c) == config_hash(plain)  # older run folders keep their hash
    assert config_hash(tiny_cfg("eval.sample_users=10")) != config_hash(c)
    assert config_hash(tiny_cfg("dataset.synthetic.candidates=8")) != config_hash(c)
    assert drop_neutral({"eval": {"sample_users": 0, "topk": [5]}}) == {"eval": {"topk": [5]}}
    fp = prepare(c).fingerprint
    assert "eval_sample" not in fp and "candidates" not in fp["dataset"]["synthetic"]


# --- the benchmark's arithmetic ----------------------------------------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location("benchmark_scale",
                                                  Path(REPO) / "scripts" / "benchmark_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_sizes_fit_and_prediction():
    bench = _bench()
    args = type("A", (), dict(sizes=None, min_users=10_000, max_users=1_000_000, step=4))
    assert bench.size_list(args) == [10_000, 40_000, 160_000, 640_000, 1_000_000]
    args.max_users = 40_000
    assert bench.size_list(args) == [10_000, 40_000]
    # y = 3 x^2 exactly: exponent 2
    b, a = bench.loglog_fit([10, 100, 1000], [300, 30_000, 3_000_000])
    assert b == pytest.approx(2.0) and np.exp(a) == pytest.approx(3.0)
    assert bench.loglog_fit([10], [1]) is None
    rows = [{"status": "ok", "n_interactions": 100, "t": 1.0},
            {"status": "ok", "n_interactions": 400, "t": 2.0}]
    # sub-linear measured growth is extrapolated as linear (never optimistic)
    assert bench.predict(rows, "t", 1600) == pytest.approx(8.0)
    rows[1]["t"] = 16.0  # exponent 2
    assert bench.predict(rows, "t", 1600) == pytest.approx(256.0)


def test_benchmark_measures_a_run_on_the_threads_asked_for(tmp_path):
    """scripts/benchmark.py: one epoch of MF on the default synthetic set, threads=1 honoured."""
    import torch

    spec = importlib.util.spec_from_file_location("benchmark", Path(REPO) / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # so that threads=1 must be applied to be seen
        row = mod.measure("synthetic", "mf", "none", str(tmp_path), epochs=1, evals=1,
                          overrides=["threads=1"])
    finally:
        torch.set_num_threads(before)
    assert row["threads"] == 1 and row["epoch_s"] > 0 and row["eval_pass_s"] > 0
    assert 0 < row["valid_recall20_after"] < 1
