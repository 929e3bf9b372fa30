"""Sweep reporting on hand-made run folders, run identity, skip/resume decisions, threads, and
the pinned experiment configs (no training here; tests/test_sweeps.py runs real sweeps)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from guider.reporting.callback import SummaryCallback
from guider.identity import config_hash, run_id
from guider.reporting.runs import prepare_sweep_job
from guider.threads import auto_threads
from guider.reporting.summary import collect_runs, summarize

from .conftest import REPO, TINY, compose_config


def hydra_cfg(*overrides: str):
    """The composed config with its hydra node (sweeper, launcher, sweep dirs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from guider.config import CONF_DIR, register_schemas

    register_schemas()  # the structured schemas the config's defaults name
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def make_run(root: Path, name: str, *, denoise: str, ratio: float, seed: int, recall: float | None,
             ndcg: float | None = None, auc: float | None = None, error: str | None = None,
             extra_overrides: tuple[str, ...] = (), write_metrics: bool = True,
             stop_reason: str = "early_stopping") -> Path:
    """A run folder as guider-train writes it: config.yaml, metrics.json, .hydra/overrides.yaml."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "data_dir": "data", "device": "cpu", "threads": 0,
           "dataset": {"name": "synthetic", "kind": "synthetic"},
           "backbone": {"name": "lightgcn", "n_layers": 3},
           "denoise": {"name": denoise},
           "noise": {"type": "random", "ratio": ratio, "modality": None, "seed": 0},
           "train": {"epochs": 4, "lr": 0.001, "resume": False, "progress": False}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = ["noise=random", f"noise.ratio={ratio}", f"denoise={denoise}", f"seed={seed}",
                 "train.epochs=4", *extra_overrides]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if not write_metrics:
        return run
    if error is not None:
        metrics = {"status": "failed", "error": error}
    else:
        metrics = {"status": "completed", "seed": seed, "best_epoch": 3, "epochs_run": 4,
                   "stop_reason": stop_reason,
                   "valid_metric": "Recall@20", "valid": {"Recall@20": recall},
                   "test": {"Recall@20": recall, "NDCG@20": ndcg},
                   "detection": {"auc": auc} if auc is not None else None,
                   "seconds": {"train": 1.0, "eval": 0.5, "total": 2.0 + seed}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def set_denoise_key(run: Path, key: str, value: object) -> Path:
    """Set ``denoise.<key>`` in a made run's saved configs (config.yaml and .hydra/config.yaml)."""
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        cfg = yaml.safe_load(path.read_text())
        cfg["denoise"][key] = value
        path.write_text(yaml.safe_dump(cfg))
    return run


NONE_RECALL = {0.0: [0.30, 0.32, 0.34], 0.2: [0.20, 0.25, 0.27]}
GUIDER_RECALL = {0.0: [0.31, 0.35, 0.36], 0.2: [0.29, 0.30]}  # seed 2 at 0.2 failed


@pytest.fixture
def noise_sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for denoise, table in (("none", NONE_RECALL), ("guider", GUIDER_RECALL)):
        for ratio, values in table.items():
            for seed, recall in enumerate(values):
                make_run(root, f"{denoise}-{ratio}-{seed}", denoise=denoise, ratio=ratio, seed=seed,
                         recall=recall, ndcg=recall / 2,
                         auc=(0.8 + seed / 100) if denoise == "guider" else None)
    make_run(root, "guider-0.2-2", denoise="guider", ratio=0.2, seed=2, recall=None,
             error="NonFiniteLoss: loss became nan at epoch 3")
    make_run(root, "none-0.5-0", denoise="none", ratio=0.5, seed=0, recall=None, write_metrics=False)
    (root / "multirun.yaml").write_text("{}\n")
    return root


def test_runs_table_keeps_every_run_with_status_and_error(noise_sweep):
    runs, varying = collect_runs(noise_sweep)
    assert len(runs) == 6 + 5 + 1 + 1  # completed (none, guider) + failed + unfinished: none dropped
    assert varying == ["denoise", "noise.ratio", "seed"]  # train.epochs is the same everywhere
    failed = runs[runs["status"] == "failed"]
    assert failed["run"].tolist() == ["guider-0.2-2"]
    assert failed["error"].iloc[0] == "NonFiniteLoss: loss became nan at epoch 3"
    assert math.isnan(failed["test.Recall@20"].iloc[0])
    unfinished = runs[runs["status"] == "incomplete"]
    assert unfinished["run"].tolist() == ["none-0.5-0"] and "no metrics.json" in unfinished["error"].iloc[0]
    assert runs.loc[runs["run"] == "none-0.2-1", "test.Recall@20"].iloc[0] == 0.25


def test_runs_stopped_by_their_time_budget_are_flagged(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "a", denoise="none", ratio=0.0, seed=0, recall=0.3)
    make_run(root, "b", denoise="none", ratio=0.0, seed=1, recall=0.2, stop_reason="time_budget")
    runs, _ = collect_runs(root)
    assert runs.set_index("run")["stop_reason"].to_dict() == {"a": "early_stopping",
                                                              "b": "time_budget"}
    md = summarize(root).markdown
    assert "1 completed run(s) ended by their time budget" in md and "(b)" in md
    assert "time budget" not in summarize(root / "a").markdown


def test_an_unfinished_runs_saved_config_resolves_the_config_resolvers(tmp_path):
    """A run killed before it wrote config.yaml is read from .hydra/config.yaml, unresolved as
    Hydra saved it; guider-summarize (a process that never imports guider.config) must still
    resolve ${guider_times:} there, or the whole config falls back to unresolved strings."""
    import subprocess
    import sys

    cfg = compose_config(["denoise=guider", "+experiment/variant=budget_teacher2x"])
    hydra_dir = tmp_path / "sweep" / "killed" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # interpolations kept
    assert "${guider_times:2,${train.lr}}" in (hydra_dir / "config.yaml").read_text()
    code = ("from guider.reporting.summary import collect_runs; import sys; "
            "r, _ = collect_runs(sys.argv[1]); "
            "print(r.loc[0, 'cfg.denoise.teacher_lr'], r.loc[0, 'status'])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sweep")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(2 * cfg.train.lr), "incomplete"]


def test_aggregation_mean_std_count_exact(noise_sweep):
    result = summarize(noise_sweep)
    s = result.summary
    assert s[["denoise", "noise.ratio"]].values.tolist() == [
        ["guider", 0.0], ["guider", 0.2], ["none", 0.0], ["none", 0.2], ["none", 0.5]]
    for denoise, table in (("none", NONE_RECALL), ("guider", GUIDER_RECALL)):
        for ratio, values in table.items():
            row = s[(s["denoise"] == denoise) & (s["noise.ratio"] == ratio)].iloc[0]
            assert row["test.Recall@20 mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert row["test.Recall@20 std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert row["test.Recall@20 count"] == len(values)
            assert row["test.NDCG@20 mean"] == pytest.approx(statistics.mean(values) / 2, abs=1e-12)
    partial = s[(s["denoise"] == "guider") & (s["noise.ratio"] == 0.2)].iloc[0]
    assert (partial["runs"], partial["completed"], partial["failed"], partial["status"]) == (3, 2, 1, "partial")
    assert "NonFiniteLoss" in partial["error"]
    assert partial["detection.auc count"] == 2
    assert partial["detection.auc mean"] == pytest.approx(0.805)
    assert s[s["denoise"] == "none"]["detection.auc count"].tolist() == [0, 0, 0]
    lonely = s[s["noise.ratio"] == 0.5].iloc[0]
    assert (lonely["runs"], lonely["completed"], lonely["status"]) == (1, 0, "incomplete")
    assert lonely["test.Recall@20 count"] == 0 and math.isnan(lonely["test.Recall@20 mean"])

    on_disk = pd.read_csv(noise_sweep / "summary.csv")
    assert len(on_disk) == 5 and "test.Recall@20 std" in on_disk.columns
    runs_csv = pd.read_csv(noise_sweep / "runs.csv")
    assert len(runs_csv) == 13 and set(runs_csv["status"]) == {"completed", "failed", "incomplete"}


def test_markdown_table_marks_best_and_lists_failures(noise_sweep):
    md = summarize(noise_sweep).markdown
    assert (noise_sweep / "summary.md").read_text() == md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| denoise"))
    assert header == ("| denoise | noise.ratio | n | valid Recall@20 | test Recall@20 | test NDCG@20 | "
                      "detection AUC | seconds | status |")
    guider_clean = next(line for line in lines if line.startswith("| guider | 0 |"))
    # best test Recall@20 mean: guider at ratio 0 (0.34) -> bold, with its std
    best = statistics.mean(GUIDER_RECALL[0.0])
    assert f"**{best:.4f} ± {statistics.stdev(GUIDER_RECALL[0.0]):.4f}**" in guider_clean
    assert guider_clean.count("**") == 2 * 4  # valid and test Recall, NDCG, AUC are best here
    none_noisy = next(line for line in lines if line.startswith("| none | 0.2 |"))
    assert "**" not in none_noisy.split("|")[8] and "3/3" in none_noisy
    assert "| none | 0.5 | 0/1 | n/a |" in md
    # seconds: lowest is best: guider at 0.2 only has seeds 0 and 1 (2 s and 3 s)
    assert "| guider | 0.2 | 2/3 |" in md and "| **2.5 ± 0.7** | partial |" in md
    assert "Runs that did not complete" in md
    assert "| guider-0.2-2 | guider | 0.2 | 2 | failed | NonFiniteLoss: loss became nan at epoch 3 |" in md
    assert "Same in every run: dataset=synthetic, backbone=lightgcn, noise=random." in md


def test_figures_line_per_denoiser_when_noise_ratio_varies(noise_sweep):
    files = summarize(noise_sweep).files
    pngs = sorted(p.name for p in files if p.suffix == ".png")
    assert "test_recall_20_vs_noise_ratio.png" in pngs and "detection_auc_vs_noise_ratio.png" in pngs
    for name in pngs:
        data = (noise_sweep / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_ablation_style_folder_gives_bars_and_variant_column(tmp_path):
    root = tmp_path / "ablation"
    for variant, base in (("full", 0.40), ("no_kd", 0.35)):
        for seed in (0, 1):
            make_run(root, f"{variant}-{seed}", denoise="guider", ratio=0.0, seed=seed,
                     recall=base + seed / 100, ndcg=0.1,
                     extra_overrides=(f"+experiment/variant={variant}", "experiment=ablation"))
    result = summarize(root)
    assert result.group_keys == ["variant", "seed"]
    assert result.summary["variant"].tolist() == ["full", "no_kd"]
    assert result.summary["test.Recall@20 mean"].tolist() == pytest.approx([0.405, 0.355])
    names = {p.name for p in result.files}
    assert "test_recall_20_bars.png" in names and not any("noise_ratio" in n for n in names)
    assert "| full | 2/2 |" in result.markdown


def test_empty_folder_and_callback(tmp_path):
    result = summarize(tmp_path)
    assert len(result.runs) == 0 and "No run folders found" in result.markdown
    # the callback summarises the folder Hydra swept into and never raises
    make_run(tmp_path / "sw", "a", denoise="none", ratio=0.0, seed=0, recall=0.3, ndcg=0.1)
    cb = SummaryCallback()
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sw")}}})
    cb.on_multirun_start(cfg)
    cb.on_multirun_end(cfg)
    assert (tmp_path / "sw" / "summary.md").is_file()
    SummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nope")}}}))


# ---------------------------------------------------------------------------------------------
# run identity, skip / resume


def test_config_hash_matches_saved_config_and_ignores_resume_keys(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))  # what pipeline.run writes
    saved = OmegaConf.to_container(OmegaConf.load(path))
    assert config_hash(cfg) == config_hash(saved)
    assert config_hash(cfg) == config_hash(tiny_cfg("train.resume=true", "train.progress=true",
                                                    "threads=3", "train.skip_completed=false"))
    assert config_hash(cfg) != config_hash(tiny_cfg("seed=1"))
    assert config_hash(cfg) != config_hash(tiny_cfg("train.lr=0.002"))
    name = run_id(cfg)
    assert name.startswith("synthetic-lightgcn-none-none-seed0-") and name.endswith(config_hash(cfg))
    assert run_id(tiny_cfg("noise=random", "noise.ratio=0.2")).startswith("synthetic-lightgcn-none-random0.2-seed0-")


def test_sweep_subdir_resolver_names_the_folder_by_config():
    cfg = compose_config([*TINY, "seed=2"])
    full = hydra_cfg(*TINY, "seed=2")
    assert str(full.hydra.sweep.subdir) == run_id(cfg)


def test_ablation_variants_get_folders_of_their_own_names():
    names = {variant: str(hydra_cfg(*TINY, "experiment=ablation",
                                    f"+experiment/variant={variant}").hydra.sweep.subdir)
             for variant in ("full", "dbpr_only")}
    # (TINY's denoise=none wins over the experiment's default denoiser)
    assert names["dbpr_only"].startswith("synthetic-lightgcn-none-dbpr_only-none-seed0-")
    assert names["full"].startswith("synthetic-lightgcn-none-full-none-seed0-")


def test_guider_summarize_command(noise_sweep, capsys):
    from guider.reporting.summarize_cli import main

    assert main([str(noise_sweep), "--reference", "none"]) == 0
    out = capsys.readouterr().out
    assert "## Paired differences to denoise=none" in out and "wrote" in out
    assert (noise_sweep / "summary.md").is_file()


def test_prepare_sweep_job_skips_resumes_or_redoes(tiny_cfg, tmp_path):
    made = iter(range(100))

    def folder(status: str | None, last: bool, cfg_overrides=()) -> Path:
        run = tmp_path / f"run{next(made)}"
        run.mkdir()
        (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg(*cfg_overrides), resolve=True))
        if status:
            (run / "metrics.json").write_text(json.dumps({"status": status, "valid": {"Recall@20": 0.5}}))
        if last:
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.pt").write_bytes(b"x")
        return run

    cfg = tiny_cfg()
    assert prepare_sweep_job(cfg, folder("completed", True))["valid"]["Recall@20"] == 0.5
    assert cfg.train.resume is False
    redo = tiny_cfg("train.skip_completed=false")
    assert prepare_sweep_job(redo, folder("completed", True)) is None and redo.train.resume is False
    for status in (None, "failed"):  # killed, or failed after some epochs: continue from last.pt
        cfg = tiny_cfg()
        assert prepare_sweep_job(cfg, folder(status, True)) is None and cfg.train.resume is True
    cfg = tiny_cfg()
    assert prepare_sweep_job(cfg, folder(None, False)) is None and cfg.train.resume is False
    cfg = tiny_cfg()  # a folder written by another configuration is never resumed from
    assert prepare_sweep_job(cfg, folder("completed", True, ["seed=5"])) is None
    assert cfg.train.resume is False
    assert prepare_sweep_job(cfg, tmp_path / "empty") is None


def test_auto_threads_leave_the_cores_other_processes_keep_busy():
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    assert auto_threads(basic, 2, {}, busy=0.0) == 2
    assert auto_threads(basic, 2, {}, busy=0.4) == 2  # a little background noise: ignored
    assert auto_threads(basic, 2, {}, busy=1.0) == 1
    assert auto_threads(basic, 2, {}, busy=3.0) == 1  # never fewer than one
    assert auto_threads(basic, 16, {}, busy=5.2) == 11
    assert auto_threads(basic, 2, {}, busy=None) == 2  # no /proc/stat: cores per job


def test_busy_cores_sees_a_busy_process():
    import subprocess
    import sys

    from guider.threads import busy_cores

    idle = busy_cores(0.3)
    if idle is None:
        pytest.skip("no /proc/stat on this system")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        busy = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.8  # the spinner's core (plus whatever else runs here)


def test_auto_threads_divides_cores_between_parallel_jobs():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    env: dict[str, str] = {}
    assert auto_threads({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, env) == 16
    assert auto_threads({"_target_": joblib, "n_jobs": 2}, 16, env) == 8
    assert auto_threads({"_target_": joblib, "n_jobs": 2}, 2, env) == 1
    assert auto_threads({"_target_": joblib, "n_jobs": -1}, 16, env) == 1
    assert auto_threads({"_target_": joblib, "n_jobs": -2}, 16, env) == 1
    assert auto_threads({"_target_": joblib, "n_jobs": 3}, 2, env) == 1
    assert auto_threads({"_target_": joblib, "n_jobs": 2}, 16, {"OMP_NUM_THREADS": "4"}) == 4
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert auto_threads({"_target_": slurm, "cpus_per_task": 6}, 64, env) == 6
    assert auto_threads({"_target_": slurm, "cpus_per_task": None}, 4, env) == 4
    assert auto_threads({"_target_": local, "cpus_per_task": None}, 16, env) == 1
    assert auto_threads(None, 3, env) == 3


# ---------------------------------------------------------------------------------------------
# pinned experiments


def test_pinned_experiments_define_the_grids():
    from hydra.types import RunMode

    _hydra_cfg = hydra_cfg

    noise = _hydra_cfg("experiment=noise_sweep")
    assert noise.hydra.mode == RunMode.MULTIRUN and noise.noise.type == "random"
    assert dict(noise.hydra.sweeper.params) == {
        "noise.ratio": "0.0,0.05,0.1,0.2,0.3,0.5", "denoise": "none,guider", "seed": "0,1,2"}
    base = _hydra_cfg("experiment=baselines")
    assert dict(base.hydra.sweeper.params) == {"denoise": "glob(*)", "seed": "0,1,2"}
    abl = _hydra_cfg("experiment=ablation")
    assert abl.denoise.name == "guider"
    assert dict(abl.hydra.sweeper.params) == {
        "+experiment/variant": "defaults,full,dbpr_only,graph_only,no_calibration,kd_ot,"
                               "lightgcn_teacher,spec", "seed": "0,1,2"}
    rec = _hydra_cfg("experiment=recipe_ablation")
    assert rec.denoise.name == "guider" and rec.train.patience == 50
    assert dict(rec.hydra.sweeper.params) == {
        "+experiment/variant": "recipe,recipe_kd_only,recipe_dbpr_only,recipe_graph_only",
        "seed": "0,1,2"}
    tune = _hydra_cfg("experiment=tune")
    assert "optuna" in tune.hydra.sweeper._target_.lower() and tune.hydra.sweeper.direction == "maximize"
    assert set(tune.hydra.sweeper.params) == {"train.lr", "denoise.kd.weight", "denoise.kd.tau"}
    assert _hydra_cfg("hydra/launcher=parallel").hydra.launcher.n_jobs == 2


@pytest.mark.parametrize("variant, reference, key, value", [
    ("full", "defaults", "denoise.dbpr.enabled", True),
    ("kd_ot", "defaults", "denoise.kd.type", "ot"),
    ("no_calibration", "full", "denoise.amsc.calibrate", False),
])
def test_ablation_variants_flip_one_switch(variant, reference, key, value):
    base = [o for o in TINY if not o.startswith("denoise=")] + ["experiment=ablation"]
    ref = compose_config([*base, f"+experiment/variant={reference}"])
    cfg = compose_config([*base, f"+experiment/variant={variant}"])
    assert ref.denoise.name == "guider"
    assert OmegaConf.select(cfg, key) == value and OmegaConf.select(ref, key) != value
    assert config_hash(cfg) != config_hash(ref)
    flat = lambda c: {k: v for k, v in pd.json_normalize(OmegaConf.to_container(c, resolve=True)).iloc[0].items()}  # noqa: E731
    diff = {k for k in flat(cfg) if flat(cfg)[k] != flat(ref).get(k)}
    assert diff == {key}


def test_defaults_variant_is_the_plain_default():
    base = [o for o in TINY if not o.startswith("denoise=")]
    plain = compose_config([*base, "denoise=guider"])
    dflt = compose_config([*base, "experiment=ablation", "+experiment/variant=defaults"])
    assert OmegaConf.to_container(dflt.denoise, resolve=True) == OmegaConf.to_container(
        plain.denoise, resolve=True)
    assert plain.denoise.dbpr.enabled is False


@pytest.mark.parametrize("variant, reference, expected", [
    ("dbpr_only", "full", {"denoise.student_dbpr": True, "denoise.kd.type": "none"}),
    ("graph_only", "full", {"denoise.graph": True, "denoise.kd.type": "none"}),
    ("fast", "defaults", {"denoise.teacher_every": 2}),
    ("mean_teacher", "defaults", {"denoise.teacher_update": "ema"}),
    ("frozen_teacher", "defaults", {"denoise.teacher_patience": 10,
                                    "denoise.teacher_min_epochs": 30}),
    ("budget", "defaults", {"denoise.teacher_patience": 10, "denoise.teacher_min_epochs": 30,
                            "denoise.kd.users": 256}),
    ("budget_teacher2x", "defaults", {"denoise.teacher_patience": 10,
                                      "denoise.teacher_min_epochs": 30, "denoise.kd.users": 256,
                                      "denoise.teacher_lr": 0.002}),  # 2 x TINY's train.lr
    ("oracle_flags", "full", {"denoise.dbpr.flags": "oracle"}),
    ("student_flags", "full", {"denoise.dbpr.flags": "student"}),
    ("lightgcn_teacher", "defaults", {"denoise.teacher.name": "lightgcn",
                                      "denoise.teacher.n_layers": 2}),
    ("spec", "full", {"denoise.teacher.name": "lightgcn", "denoise.student_dbpr": True,
                      "denoise.kd.type": "ot", "denoise.kd.weight": 0.1, "denoise.kd.users": 256,
                      "denoise.kd.items": 256, "denoise.kd.candidates": "batch"}),
])
def test_ablation_variants_that_change_the_teacher_or_several_keys(variant, reference, expected):
    """The defaults are the authors' teacher and distillation (FREEDOM teacher, KL over the
    teacher's candidates, the student's loss untouched, AMSC + DBPR off); `full` turns DBPR on.
    These variants set exactly the named keys against their reference (a teacher: its group), and
    each validates."""
    from guider.pipeline import validate

    base = [o for o in TINY if not o.startswith("denoise=")] + ["experiment=ablation"]
    ref = compose_config([*base, f"+experiment/variant={reference}"])
    assert ref.denoise.teacher.name == "freedom" and ref.denoise.kd.type == "kl"
    assert ref.denoise.kd.candidates == "teacher" and not ref.denoise.student_dbpr
    assert ref.denoise.dbpr.enabled == (reference == "full")
    cfg = compose_config([*base, f"+experiment/variant={variant}"])
    flat = lambda c: {k: v for k, v in pd.json_normalize(OmegaConf.to_container(c, resolve=True)).iloc[0].items()}  # noqa: E731
    changed = {k for k in flat(cfg) if flat(cfg)[k] != flat(ref).get(k)}
    changed |= {k for k in flat(ref) if k not in flat(cfg)}
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    teacher = {k for k in changed if k.startswith("denoise.teacher.")}
    assert changed - teacher == {k for k in expected if not k.startswith("denoise.teacher.")}
    assert bool(teacher) == ("denoise.teacher.name" in expected)
    validate(cfg)


@pytest.mark.parametrize("variant, expected", [
    ("recipe", {"denoise.student_dbpr": False, "denoise.dbpr.enabled": True,
                "denoise.kd.type": "kl", "denoise.kd.candidates": "all", "denoise.graph": False}),
    ("recipe_kd_only", {"denoise.student_dbpr": False, "denoise.dbpr.enabled": False,
                        "denoise.kd.type": "kl", "denoise.kd.candidates": "all"}),
    ("recipe_dbpr_only", {"denoise.student_dbpr": True, "denoise.dbpr.enabled": True,
                          "denoise.kd.type": "none", "denoise.graph": False}),
    ("recipe_graph_only", {"denoise.student_dbpr": False, "denoise.dbpr.enabled": True,
                           "denoise.kd.type": "none", "denoise.graph": True}),
])
def test_recipe_variants_set_the_recipe_and_its_parts(variant, expected):
    """Each variant of experiment=recipe_ablation: the FREEDOM teacher with the authors' preset,
    and the switches that isolate one part; each validates."""
    from guider.pipeline import validate

    base = [o for o in TINY if not o.startswith("denoise=")] + ["experiment=recipe_ablation"]
    cfg = compose_config([*base, f"+experiment/variant={variant}"])
    assert cfg.denoise.teacher.name == "freedom" and cfg.denoise.teacher.knn_k == 20
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    validate(cfg)


# --- paired comparisons ----------------------------------------------------------------------


def test_paired_differences_hand_worked(noise_sweep):
    """guider - none, seed by seed: ratio 0 -> 0.01, 0.03, 0.02 (mean 0.02, std 0.01, se
    0.01/sqrt 3); ratio 0.2 -> 0.09, 0.05 (seed 2 failed: unpaired), mean 0.07, se 0.02."""
    result = summarize(noise_sweep)
    table = result.paired.table.set_index("noise.ratio")
    assert table["denoise"].tolist() == ["guider", "guider"]
    assert table.loc[0.0, "pairs"] == 3 and table.loc[0.2, "pairs"] == 2
    assert table.loc[0.0, "test.Recall@20 diff"] == pytest.approx(0.02, abs=1e-12)
    assert table.loc[0.0, "test.Recall@20 se"] == pytest.approx(0.01 / math.sqrt(3), abs=1e-12)
    assert table.loc[0.2, "test.Recall@20 diff"] == pytest.approx(0.07, abs=1e-12)
    assert table.loc[0.2, "test.Recall@20 se"] == pytest.approx(0.02, abs=1e-12)
    assert table.loc[0.2, "test.NDCG@20 diff"] == pytest.approx(0.035, abs=1e-12)
    unpaired = result.paired.unpaired
    assert unpaired["run"].tolist() == ["guider-0.2-2"]
    assert unpaired["why"].iloc[0] == "run not completed"
    md = result.markdown
    assert "## Paired differences to denoise=none" in md
    assert "| 0.2 | guider | 2 | +0.0700 ± 0.0200 |" in md
    assert "Unpaired runs (1)" in md and "guider-0.2-2" in md
    on_disk = pd.read_csv(noise_sweep / "summary.csv")
    row = on_disk[(on_disk["denoise"] == "guider") & (on_disk["noise.ratio"] == 0.0)].iloc[0]
    assert row["test.Recall@20 diff vs none"] == pytest.approx(0.02, abs=1e-12)
    assert row["pairs vs none"] == 3
    assert (noise_sweep / "figures" / "paired_test_recall_20_vs_none.png").is_file()


def test_a_missing_reference_run_leaves_its_partner_unpaired(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "none-0", denoise="none", ratio=0.2, seed=0, recall=0.20)
    make_run(root, "none-1", denoise="none", ratio=0.2, seed=1, recall=None,
             error="RuntimeError: boom")  # the reference of seed 1 failed
    for seed, recall in enumerate([0.26, 0.27, 0.28]):  # seed 2 has no reference at all
        make_run(root, f"oracle-{seed}", denoise="oracle", ratio=0.2, seed=seed, recall=recall)
        make_run(root, f"oracleg-{seed}", denoise="oracle", ratio=0.2, seed=seed,
                 recall=recall + 0.01, extra_overrides=("denoise.graph=true",))
    result = summarize(root)
    table = result.paired.table
    assert result.paired.config_keys == ["denoise", "denoise.graph"]
    assert table["pairs"].tolist() == [1, 1]
    graph = table["denoise.graph"].map(lambda v: v == "true")
    assert table.loc[~graph, "test.Recall@20 diff"].item() == pytest.approx(0.06)
    assert table.loc[graph, "test.Recall@20 diff"].item() == pytest.approx(0.07)
    assert math.isnan(table["test.Recall@20 se"].iloc[0])  # one pair: no standard error
    unpaired = result.paired.unpaired
    assert sorted(unpaired["run"]) == ["oracle-1", "oracle-2", "oracleg-1", "oracleg-2"]
    assert set(unpaired["why"]) == {"no completed denoise=none run with the same seed and settings"}
    # another reference: graph=true against the plain oracle (whose denoise.graph is unset)
    other = summarize(root, reference="oracle").paired.table.set_index("denoise")
    assert other.loc["oracle", "pairs"] == 3  # graph=true vs the plain oracle, seeds 0-2
    assert other.loc["oracle", "test.Recall@20 diff"] == pytest.approx(0.01)
    assert other.loc["none", "pairs"] == 1  # the reference itself, where it completed
    assert other.loc["none", "test.Recall@20 diff"] == pytest.approx(-0.06)


def test_pairs_never_cross_noise_seeds(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "none", denoise="none", ratio=0.2, seed=0, recall=0.2)
    run = make_run(root, "guider", denoise="guider", ratio=0.2, seed=0, recall=0.3)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["noise"]["seed"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    paired = summarize(root).paired
    assert paired.table["pairs"].tolist() == [0]
    assert paired.unpaired["run"].tolist() == ["guider"]


def test_detection_table_carries_the_trivial_scores(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        run = make_run(root, f"g{seed}", denoise="guider", ratio=0.2, seed=seed, recall=0.3,
                       auc=0.7)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["detection"].update(degree_auc=0.81, popularity_auc=0.8, band_auc=0.6 + seed / 10,
                                    degree_band_auc=0.5,
                                    bands={"1": {"n": 10, "auc": 0.55},
                                           "2": {"n": 0, "auc": None}})
        (run / "metrics.json").write_text(json.dumps(metrics))
    md = summarize(root).markdown
    assert "## Noise detection" in md
    assert "degree-only AUC" in md and "AUC, n_u 1" in md and "AUC, n_u 2" not in md
    assert "| 2/2 | 0.7000 ± 0.0000 | 0.6500 ± 0.0707 | 0.8100 ± 0.0000 |" in md


def test_the_reference_is_the_denoisers_default_configuration():
    from guider.reporting.summary import _at_default

    assert _at_default("oracle", "denoise.graph", None)
    assert _at_default("oracle", "denoise.graph", False) and _at_default("oracle", "denoise.graph", "false")
    assert not _at_default("oracle", "denoise.graph", True)
    assert _at_default("oracle", "denoise.false_weight", 0) and not _at_default("oracle", "denoise.false_weight", 0.5)
    assert _at_default("guider", "denoise.amsc.rho_max", 0.1)
    assert not _at_default("guider", "denoise.amsc.rho_max", 0.2)
    assert not _at_default("oracle", "variant", "no_kd")


def test_summary_of_metrics_evaluated_again(noise_sweep):
    """--eval NAME: valid/test from eval-NAME.json; a completed run without it is incomplete."""
    for run in noise_sweep.iterdir():
        metrics = run / "metrics.json"
        if run.is_dir() and metrics.is_file() and "none-0.0" in run.name:
            test = json.loads(metrics.read_text())["test"]
            again = {"valid": {"Recall@20": 0.5}, "test": {**test, "Recall@20": test["Recall@20"] + 0.1}}
            (run / "eval-clean.json").write_text(json.dumps(again))
    result = summarize(noise_sweep, evaluation="clean")
    runs = result.runs.set_index("run")
    assert runs.loc["none-0.0-1", "test.Recall@20"] == pytest.approx(0.42)
    assert runs.loc["guider-0.0-1", "status"] == "incomplete"
    assert "eval-clean.json" in runs.loc["guider-0.0-1", "error"]
    assert "(valid/test metrics of eval-clean.json)" in result.markdown


def test_teacher_choice_is_a_denoiser_column_and_its_default_is_the_plain_reference():
    from guider.reporting.summary import _at_default, _column_for, denoiser_columns

    assert _column_for("denoise/teacher", set()) == ("denoise.teacher", None)
    assert denoiser_columns(["backbone", "denoise", "denoise.teacher"]) == ["denoise",
                                                                            "denoise.teacher"]
    assert _at_default("guider", "denoise.teacher", "freedom")
    assert not _at_default("guider", "denoise.teacher", "lightgcn")


def test_one_identity_for_hash_fingerprint_and_summary():
    from guider.identity import is_setting_column

    assert not any(is_setting_column(k) for k in (
        "threads", "train.progress", "graph_cache.dir", "eval.save_topk", "data_dir",
        "experiment", "hydra.sweep.dir"))
    assert all(is_setting_column(k) for k in ("device", "seed", "backbone.knn_k",
                                              "denoise/teacher", "experiment/variant"))


def test_guider_runs_keep_the_identity_they_had_before_the_teacher_group():
    """A GUIDER run written before the teacher group (teacher: lightgcn, teacher_dim, ...) hashes
    to the name of its folder, and so does the same run composed today."""
    run = (REPO / "docs" / "results" / "tiktok_random0.2" / "runs" /
           "tiktok-freedom-guider-random0.2-seed0-66d2ddc3fa5e")
    if not run.is_dir():
        pytest.skip(f"{run} is not in this checkout")
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert saved["denoise"]["teacher"] == "lightgcn"  # the older form
    # GUIDER's defaults of then, set explicitly since the defaults moved to the authors' recipe
    then = ["denoise/teacher=lightgcn", "denoise.student_dbpr=true", "denoise.kd.type=ot",
            "denoise.kd.weight=0.1", "denoise.kd.users=256", "denoise.kd.items=256",
            "denoise.kd.candidates=batch", "denoise.dbpr.enabled=true"]
    common = ["dataset=tiktok", "data_dir=/work/shared/data", "noise=random", "noise.ratio=0.2",
              "train.patience=50", "train.progress=false", "backbone=freedom", "denoise=guider",
              "seed=0", *then]
    today = compose_config(common)
    assert config_hash(saved) == config_hash(today) == "66d2ddc3fa5e"
    other = compose_config([*common, "denoise.graph=true"])
    assert config_hash(other) != config_hash(today)


def test_kd_keys_that_cannot_act_leave_the_identity_alone():
    """The top lists' schedule is inert without the teacher's candidates, and kd.top_every with
    the lists at every batch: such runs keep one identity whatever those keys say; where the
    keys act, they are part of it."""
    base = ["denoise=guider"]

    def h(*extra):
        return config_hash(compose_config([*base, *extra]))

    batch = "denoise.kd.candidates=batch"
    assert h(batch) == h(batch, "denoise.kd.top_refresh=batch") \
        == h(batch, "denoise.kd.top_every=3") == h(batch, "denoise.kd.top_refresh=batch",
                                                   "denoise.kd.top_every=3")
    per_batch = ("denoise.kd.candidates=teacher", "denoise.kd.top_refresh=batch")
    assert h(*per_batch) == h(*per_batch, "denoise.kd.top_every=3")
    assert h(*per_batch) != h("denoise.kd.candidates=teacher", "denoise.kd.top_refresh=epoch")
    per_epoch = ("denoise.kd.candidates=teacher", "denoise.kd.top_refresh=epoch")
    assert h(*per_epoch) != h(*per_epoch, "denoise.kd.top_every=3")
    assert h(*per_epoch) == h(*per_epoch, "denoise.kd.top_every=1")


def test_teacher_keys_a_mean_teacher_cannot_use_leave_the_identity_alone():
    """teacher_update=ema copies the student: the teacher's model and rate are unused there, and
    the moving average is unused by an in-sync teacher; the in-sync default keeps the hash it had
    before the key existed."""
    def h(*extra):
        return config_hash(compose_config(["denoise=guider", *extra]))

    ema = "denoise.teacher_update=ema"
    assert h(ema) == h(ema, "denoise/teacher=lightgcn") == h(ema, "denoise.teacher_lr=0.01")
    assert h(ema) != h(ema, "denoise.teacher_ema=0.9") != h()
    assert h() == h("denoise.teacher_ema=0.9") == h("denoise.teacher_update=sync")
    assert h() != h("denoise/teacher=lightgcn")


def test_metrics_json_layout_is_the_typed_record(tiny_cfg, tmp_path):
    """The pipeline writes RunRecord's fields, in its order; the one reader gives them back."""
    from dataclasses import fields

    from guider.pipeline import run
    from guider.record import RunRecord, is_completed, read_record

    written = run(tiny_cfg("train.epochs=1"), tmp_path)
    again = read_record(tmp_path)
    assert again == written and is_completed(again)
    expected = ["status"] + [f.name for f in fields(RunRecord)
                             if f.name not in ("status", "extra", "recommendations")]
    assert list(again) == expected
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        read_record(tmp_path)
    assert read_record(tmp_path / "nothing") is None


def test_pairing_across_backbones_hand_worked(tmp_path):
    """--reference-backbone: DA-MRS (a model that denoises by itself) against LightGCN with
    denoise=none, seed by seed: 0.03, 0.01, 0.03 -> mean 0.0233, se 0.0115 / sqrt 3."""
    from guider.reporting.summary import summarize

    root = tmp_path / "sweep"
    for backbone, values in (("lightgcn", [0.30, 0.32, 0.34]), ("damrs", [0.33, 0.33, 0.37])):
        for seed, recall in enumerate(values):
            run = make_run(root, f"{backbone}-{seed}", denoise="none", ratio=0.2, seed=seed,
                           recall=recall, ndcg=recall / 2,
                           extra_overrides=(f"backbone={backbone}",))
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["backbone"] = {"name": backbone}
            for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
                path.write_text(yaml.safe_dump(cfg))
    within = summarize(root, tmp_path / "within")
    assert "Paired differences" not in within.markdown  # no other denoiser to pair within
    result = summarize(root, tmp_path / "across", reference_backbone="lightgcn")
    assert "## Paired differences to denoise=none on backbone=lightgcn" in result.markdown
    row = [line for line in result.markdown.splitlines() if line.startswith("| damrs")][-1]
    assert "+0.0233 ± 0.0067" in row


def test_a_default_teacher_is_named_in_the_summary_not_left_blank(tmp_path):
    """Runs that choose denoise/teacher and runs that leave it at its default share one column;
    the latter read the teacher's name from their saved config; other denoisers stay empty."""
    root = tmp_path / "sweep"

    def set_teacher(run: Path, teacher: object) -> Path:
        return set_denoise_key(run, "teacher", teacher)

    make_run(root, "none-0", denoise="none", ratio=0.2, seed=0, recall=0.20)
    set_teacher(make_run(root, "lightgcn-0", denoise="guider", ratio=0.2, seed=0, recall=0.22,
                         extra_overrides=("denoise/teacher=lightgcn",)), {"name": "lightgcn"})
    set_teacher(make_run(root, "default-0", denoise="guider", ratio=0.2, seed=0, recall=0.25),
                {"name": "freedom", "knn_k": 20})
    set_teacher(make_run(root, "older-0", denoise="guider", ratio=0.2, seed=0, recall=0.21,
                         extra_overrides=("train.lr=0.002",)), "mf")  # the form before the group
    runs = collect_runs(root)[0].set_index("run")
    assert runs.loc["default-0", "denoise.teacher"] == "freedom"
    assert runs.loc["lightgcn-0", "denoise.teacher"] == "lightgcn"
    assert runs.loc["older-0", "denoise.teacher"] == "mf"
    assert pd.isna(runs.loc["none-0", "denoise.teacher"])


def test_a_teacher_key_of_an_older_run_is_read_from_its_older_name(tmp_path):
    """A run written before the teacher group holds ``teacher_dim`` where newer runs hold
    ``teacher.embedding_dim``: once a sweep varies the teacher's width, the older run shows the
    width it had (64) and pairs with the newer run of the same width, apart from the 32 one."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(root, f"none-{seed}", denoise="none", ratio=0.2, seed=seed, recall=0.20)
        narrow = make_run(root, f"narrow-{seed}", denoise="guider", ratio=0.2, seed=seed,
                          recall=0.22, extra_overrides=("denoise.teacher.embedding_dim=32",))
        set_denoise_key(narrow, "teacher", {"name": "lightgcn", "embedding_dim": 32})
    older = make_run(root, "older-0", denoise="guider", ratio=0.2, seed=0, recall=0.25)
    set_denoise_key(set_denoise_key(older, "teacher", "lightgcn"), "teacher_dim", 64)
    newer = make_run(root, "newer-1", denoise="guider", ratio=0.2, seed=1, recall=0.27)
    set_denoise_key(newer, "teacher", {"name": "lightgcn", "embedding_dim": 64})
    result = summarize(root)
    runs = result.runs.set_index("run")
    assert runs.loc["older-0", "denoise.teacher.embedding_dim"] == 64
    assert pd.isna(runs.loc["none-0", "denoise.teacher.embedding_dim"])
    table = result.paired.table.set_index("denoise.teacher.embedding_dim")
    assert table.loc[64, "pairs"] == 2
    assert table.loc[64, "test.Recall@20 diff"] == pytest.approx(0.06)
    assert table.loc[32, "test.Recall@20 diff"] == pytest.approx(0.02)


def test_runs_older_than_a_key_group_with_newer_runs_at_its_neutral_value(tmp_path):
    """A GUIDER run made before denoise.kd.candidates existed behaved as candidates=batch: it
    groups and pairs with a newer default run (whose config holds the key), apart from the runs
    that set another value; other denoisers get no value for GUIDER's key."""
    root = tmp_path / "sweep"

    def set_candidates(run: Path, value: str) -> Path:
        return set_denoise_key(run, "kd", {"candidates": value})

    for seed in (0, 1):
        make_run(root, f"none-{seed}", denoise="none", ratio=0.2, seed=seed, recall=0.20)
        teacher = make_run(root, f"teacher-{seed}", denoise="guider", ratio=0.2, seed=seed,
                           recall=0.25, extra_overrides=("denoise.kd.candidates=teacher",))
        set_candidates(teacher, "teacher")
    make_run(root, "guider-0", denoise="guider", ratio=0.2, seed=0, recall=0.21)  # older: no key
    set_candidates(make_run(root, "guider-1", denoise="guider", ratio=0.2, seed=1, recall=0.23),
                   "batch")
    result = summarize(root)
    runs = result.runs.set_index("run")
    assert runs.loc["guider-0", "denoise.kd.candidates"] == "batch"
    assert pd.isna(runs.loc["none-0", "denoise.kd.candidates"])
    table = result.paired.table.set_index("denoise.kd.candidates")
    assert table.loc["batch", "pairs"] == 2
    assert table.loc["batch", "test.Recall@20 diff"] == pytest.approx(0.02)
    assert table.loc["teacher", "test.Recall@20 diff"] == pytest.approx(0.05)


def test_paired_validation_curves_hand_worked(tmp_path):
    """Seed 0: guider validates epochs 0-2 (0.1, 0.2, 0.3), none epochs 0-4 (0.1, 0.15, 0.25, 0.3,
    0.35); seed 1: guider epochs 0-3 (0.2 each), none epochs 0-1 (0.1, 0.3). Differences by epoch:
    0 -> 0.0 and 0.1 (mean 0.05), 1 -> 0.05 and -0.1, 2 -> 0.05 (one pair). The last epoch both
    pairs reached is 1: mean -0.025, se std(0.05, -0.1) / sqrt 2; best up to it: 0.2 - 0.15 and
    0.2 - 0.3, the same mean."""
    root = tmp_path / "sweep"
    histories = {("guider", 0): [0.1, 0.2, 0.3], ("none", 0): [0.1, 0.15, 0.25, 0.3, 0.35],
                 ("guider", 1): [0.2] * 4, ("none", 1): [0.1, 0.3]}
    for (denoise, seed), values in histories.items():
        run = make_run(root, f"{denoise}-{seed}", denoise=denoise, ratio=0.2, seed=seed,
                       recall=values[-1], stop_reason="time_budget")
        pd.DataFrame({"epoch": range(len(values)), "loss": 1.0, "Recall@20": values}).to_csv(
            run / "history.csv", index=False)
    result = summarize(root)
    curves = pd.read_csv(root / "paired_curves.csv").set_index("epoch")
    assert curves["pairs"].to_dict() == {0: 2, 1: 2, 2: 1}
    assert curves.loc[0, "diff"] == pytest.approx(0.05, abs=1e-12)
    assert curves.loc[1, "diff"] == pytest.approx(-0.025, abs=1e-12)
    assert curves.loc[1, "se"] == pytest.approx(statistics.stdev([0.05, -0.1]) / math.sqrt(2),
                                                abs=1e-12)
    assert curves.loc[2, "diff"] == pytest.approx(0.05, abs=1e-12) and math.isnan(curves.loc[2, "se"])
    se = f"{statistics.stdev([0.05, -0.1]) / math.sqrt(2):.4f}"
    assert (f"| guider | 2 | 1 | -0.0250 ± {se} | -0.0250 ± {se} |") in result.markdown
    assert (root / "figures" / "paired_valid_curve_vs_none.png").is_file()
    # without histories (exported results keep metrics and configs only): no section, no file
    for denoise, seed in histories:
        (root / f"{denoise}-{seed}" / "history.csv").unlink()
    again = summarize(root)
    assert "equal epochs" not in again.markdown and not (root / "paired_curves.csv").exists()
    assert not (root / "figures" / "paired_valid_curve_vs_none.png").exists()


def test_runs_before_and_after_a_default_changed_are_never_one_configuration(tmp_path):
    """Two GUIDER runs per seed that no override tells apart, saved with different values of a
    key (a default that changed between them): the key becomes a column, two rows, two pairings."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(root, f"none-{seed}", denoise="none", ratio=0.0, seed=seed, recall=0.30)
        for value, recall in (("batch", 0.31), ("epoch", 0.33)):
            set_denoise_key(make_run(root, f"guider-{value}-{seed}", denoise="guider", ratio=0.0,
                                     seed=seed, recall=recall), "kd", {"top_refresh": value})
    runs, varying = collect_runs(root)
    assert "denoise.kd.top_refresh" in varying
    result = summarize(root)
    table = result.paired.table.set_index("denoise.kd.top_refresh")
    assert table.loc["batch", "pairs"] == 2 and table.loc["epoch", "pairs"] == 2
    assert table.loc["epoch", "test.Recall@20 diff"] == pytest.approx(0.03, abs=1e-12)
    # the same runs with one value only: no extra column
    for seed in (0, 1):
        shutil.rmtree(root / f"guider-batch-{seed}")
    assert "denoise.kd.top_refresh" not in collect_runs(root)[1]


def test_paired_curves_when_a_pair_lacks_the_last_common_epoch(tmp_path):
    """Seed 0 validated at epochs 0, 2, 4 (both runs), seed 1 at 0, 2, 3 (a last validation off the
    grid): the last common epoch is 3; seed 0 is read at its last epoch before it (2)."""
    root = tmp_path / "sweep"
    rows = {("guider", 0): ([0, 2, 4], [0.2, 0.3, 0.4]), ("none", 0): ([0, 2, 4], [0.1, 0.2, 0.3]),
            ("guider", 1): ([0, 2, 3], [0.2, 0.2, 0.5]), ("none", 1): ([0, 2, 3], [0.2, 0.2, 0.2])}
    for (denoise, seed), (epochs, values) in rows.items():
        run = make_run(root, f"{denoise}-{seed}", denoise=denoise, ratio=0.2, seed=seed,
                       recall=values[-1])
        pd.DataFrame({"epoch": epochs, "Recall@20": values}).to_csv(run / "history.csv",
                                                                    index=False)
    md = summarize(root).markdown
    se = f"{statistics.stdev([0.1, 0.3]) / math.sqrt(2):.4f}"
    assert f"| guider | 2 | 3 | +0.2000 ± {se} | +0.2000 ± {se} |" in md


def test_detection_over_training_hand_worked(tmp_path):
    """Two tce seeds trace their detection (seed 0 epochs 0-2, seed 1 epochs 0-1), none has no
    trace: per epoch the mean and s.e. over the runs that reached it, tce's rows only."""
    root = tmp_path / "sweep"
    traces = {0: [0.6, 0.7, 0.8], 1: [0.8, 0.9]}
    for seed, aucs in traces.items():
        run = make_run(root, f"tce-{seed}", denoise="tce", ratio=0.2, seed=seed, recall=0.3)
        pd.DataFrame({"epoch": range(len(aucs)), "loss": 1.0, "Recall@20": 0.3,
                      "detect_auc": aucs, "detect_precision": [0.5] * len(aucs)}).to_csv(
            run / "history.csv", index=False)
        run = make_run(root, f"none-{seed}", denoise="none", ratio=0.2, seed=seed, recall=0.3)
        pd.DataFrame({"epoch": range(3), "loss": 1.0, "Recall@20": 0.3}).to_csv(
            run / "history.csv", index=False)
    result = summarize(root)
    curves = pd.read_csv(root / "detection_curves.csv")
    assert set(curves["denoise"]) == {"tce"} and set(curves["metric"]) == {"detect_auc",
                                                                          "detect_precision"}
    auc = curves[curves["metric"] == "detect_auc"].set_index("epoch")
    assert auc["runs"].to_dict() == {0: 2, 1: 2, 2: 1}
    assert auc.loc[0, "mean"] == pytest.approx(0.7) and auc.loc[2, "mean"] == pytest.approx(0.8)
    assert auc.loc[1, "se"] == pytest.approx(statistics.stdev([0.7, 0.9]) / math.sqrt(2))
    assert math.isnan(auc.loc[2, "se"])
    assert (root / "figures" / "detection_over_training.png").is_file()
    assert "detection_curves.csv" in result.markdown
    for seed in traces:  # no trace left: no file, no figure
        (root / f"tce-{seed}" / "history.csv").unlink()
    summarize(root)
    assert not (root / "detection_curves.csv").exists()
    assert not (root / "figures" / "detection_over_training.png").exists()


def test_detection_figure_keeps_a_configuration_in_one_colour(tmp_path, monkeypatch):
    """A run without flags traces only its AUC; the configurations after it keep their colour in
    the precision panel instead of taking the one the colour cycle would hand out next."""
    from guider.reporting import curves as curves_module
    rows = [{"denoise": d, "metric": m, "epoch": e, "runs": 1, "mean": 0.5, "se": 0.0}
            for d, metrics in (("damrs", ["detect_auc"]),
                               ("guider", ["detect_auc", "detect_precision"]),
                               ("tce", ["detect_auc", "detect_precision"]))
            for m in metrics for e in (0, 1)]
    saved = {}
    monkeypatch.setattr(curves_module.figures, "save",
                        lambda fig, path: saved.setdefault("fig", fig) and path)
    curves_module.write_detection_figure(pd.DataFrame(rows), ["denoise"], tmp_path)
    panels = saved["fig"].axes
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in panels]
    assert set(colours[0]) == {"damrs", "guider", "tce"} and set(colours[1]) == {"guider", "tce"}
    assert colours[1] == {k: colours[0][k] for k in ("guider", "tce")}
    assert len(set(colours[0].values())) == 3


def test_a_configuration_as_the_reference_hand_worked(tmp_path, capsys):
    """--reference 'guider denoise.amsc.rho_max=0.1': a lever against the setting it would
    replace, seed by seed. The flags at rho 0.2 (0.28, 0.30) against those at 0.1 (0.25, 0.26):
    +0.03, +0.04; a key the reference leaves unnamed (student_dbpr) stays at its default; a key
    every candidate sets (dbpr.enabled) is kept as set; an ambiguous or unknown setting is an
    error that says what to name."""
    from guider.reporting.summarize_cli import main as summarize_main
    from guider.reporting.summary import parse_reference

    root = tmp_path / "sweep"
    flags = ("denoise.dbpr.enabled=true",)
    runs = {"none": ((), [0.20, 0.22]),
            "r01": ((*flags, "denoise.amsc.rho_max=0.1"), [0.25, 0.26]),
            "r02": ((*flags, "denoise.amsc.rho_max=0.2"), [0.28, 0.30]),
            "r01sd": ((*flags, "denoise.amsc.rho_max=0.1", "denoise.student_dbpr=true"),
                      [0.24, 0.24])}
    for name, (overrides, values) in runs.items():
        for seed, recall in enumerate(values):
            make_run(root, f"{name}-{seed}", denoise="none" if name == "none" else "guider",
                     ratio=0.2, seed=seed, recall=recall, extra_overrides=overrides)
    result = summarize(root, tmp_path / "out", reference="guider denoise.amsc.rho_max=0.1")
    table = result.paired.table
    assert "## Paired differences to denoise=guider denoise.amsc.rho_max=0.1" in result.markdown
    row = table[table["denoise.amsc.rho_max"].astype(str) == "0.2"].iloc[0]
    assert row["pairs"] == 2 and row["test.Recall@20 diff"] == pytest.approx(0.035)
    assert row["test.Recall@20 se"] == pytest.approx(0.005)
    sd = table[table["denoise.student_dbpr"].astype(str).str.lower() == "true"].iloc[0]
    assert sd["test.Recall@20 diff"] == pytest.approx(-0.015)  # not its own reference
    plain = table[table["denoise"] == "none"].iloc[0]
    assert plain["test.Recall@20 diff"] == pytest.approx(-0.045)
    assert len(table) == 3  # every configuration but the reference's
    # the student_dbpr runs picked by naming the key
    other = summarize(root, tmp_path / "out2",
                      reference="guider denoise.amsc.rho_max=0.1 denoise.student_dbpr=true")
    row = other.paired.table[other.paired.table["denoise.amsc.rho_max"].astype(str) == "0.2"]
    assert row["test.Recall@20 diff"].item() == pytest.approx(0.05)
    # a setting no run has, a setting that is not the denoiser's, a malformed one
    for bad, words in (("guider denoise.kd.tau=2", "no run in this folder has a setting"),
                       ("guider seed=0", "not a denoiser's setting"),
                       ("guider rho", "is not key=value"),
                       ("rho=0.1", "start with a denoiser's name")):
        with pytest.raises(SystemExit):
            summarize_main([str(root), "--out", str(tmp_path / "bad"), "--reference", bad,
                            "--quiet"])
        assert words in capsys.readouterr().err, bad
    assert parse_reference("guider  variant=x a.b=1") == ("guider", {"variant": "x", "a.b": "1"})
    # two configurations left, neither at the default of the key they differ in: an error
    for flags in ("student", "oracle"):
        make_run(root, f"r03{flags}-0", denoise="guider", ratio=0.2, seed=0, recall=0.3,
                 extra_overrides=(f"denoise.dbpr.flags={flags}", "denoise.amsc.rho_max=0.3"))
    with pytest.raises(ValueError, match="matches 2 configurations"):
        summarize(root, tmp_path / "out3", reference="guider denoise.amsc.rho_max=0.3")
    picked = summarize(root, tmp_path / "out4",
                       reference="guider denoise.amsc.rho_max=0.3 denoise.dbpr.flags=oracle")
    row = picked.paired.table[picked.paired.table["denoise.dbpr.flags"] == "student"]
    assert row["test.Recall@20 diff"].item() == pytest.approx(0.0)


def guider_run_with_teacher(root: Path, name: str, seed: int, *, denoise_keys: dict,
                            teacher_validated: int | None = None,
                            frozen_key: object = "absent") -> Path:
    """A GUIDER run of 4 epochs for the whole-run cost: its teacher keys in the saved config, a
    history.csv whose teacher_Recall@20 column holds values for the first ``teacher_validated``
    epochs (None: no history), and ``denoiser.teacher_frozen_epoch`` in metrics.json unless
    ``frozen_key`` is "absent" (runs older than the key)."""
    run = make_run(root, name, denoise="guider", ratio=0.2, seed=seed, recall=0.3)
    for key, value in denoise_keys.items():
        set_denoise_key(run, key, value)
    if teacher_validated is not None:
        teacher = [0.1] * teacher_validated + [None] * (4 - teacher_validated)
        pd.DataFrame({"epoch": range(4), "loss": 0.5, "Recall@20": 0.2,
                      "teacher_Recall@20": teacher}).to_csv(run / "history.csv", index=False)
    if frozen_key != "absent":
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["denoiser"] = {"amsc": None, "teacher_frozen_epoch": frozen_key}
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_whole_run_cost_counts_the_epochs_before_the_teacher_froze(tmp_path, capsys):
    """guider/reporting/cost.py and scripts/run_cost.py on hand-made runs of 4 epochs priced at
    base 1 s, in sync 3 s, frozen 1.5 s: the frozen epoch from metrics.json's key (2), from the
    history's teacher column where the key is absent (values for epochs 0-2: frozen from 3), from
    teacher_epochs (1), and a teacher that never froze (every epoch validated); then with the
    teacher's validation passes priced too."""
    import importlib.util

    from guider.reporting.cost import EpochCosts, frozen_epoch

    costs = EpochCosts(base=1.0, sync=3.0, frozen=1.5)
    assert costs.multiple(10, 4) == pytest.approx((4 * 3 + 6 * 1.5) / 10)
    assert costs.multiple(4, 9) == 3.0 and costs.multiple(4, 0) == 1.5
    with pytest.raises(ValueError, match="frozen seconds per epoch"):
        EpochCosts(base=1.0, sync=3.0, frozen=0.0)
    assert EpochCosts(1.0, 3.0, 1.5, teacher_eval=0.5).multiple(10, 4, 4) == pytest.approx(2.3)
    root = tmp_path / "sweep"
    patience = {"teacher_patience": 10, "teacher_epochs": 0}
    runs = {
        "key": guider_run_with_teacher(root, "key", 0, denoise_keys=patience, frozen_key=2),
        "history": guider_run_with_teacher(root, "history", 1, denoise_keys=patience,
                                           teacher_validated=3),
        "epochs": guider_run_with_teacher(root, "epochs", 2, denoise_keys={"teacher_epochs": 1}),
        "never": guider_run_with_teacher(root, "never", 3, denoise_keys=patience,
                                         teacher_validated=4),
    }
    make_run(root, "none", denoise="none", ratio=0.2, seed=0, recall=0.25)
    assert {name: frozen_epoch(run) for name, run in runs.items()} == {
        "key": 2, "history": 3, "epochs": 1, "never": None}
    assert frozen_epoch(root / "none") is None
    # a run that ended between two validations, its teacher validated at every one: never froze
    tail = guider_run_with_teacher(tmp_path / "other", "tail", 0, denoise_keys=patience)
    pd.DataFrame({"epoch": range(4), "Recall@20": [0.2, 0.2, 0.2, None],
                  "teacher_Recall@20": [0.1, 0.1, 0.1, None]}).to_csv(tail / "history.csv")
    assert frozen_epoch(tail) is None
    (runs["history"] / "history.csv").unlink()
    with pytest.raises(FileNotFoundError, match="teacher_<metric>"):
        frozen_epoch(runs["history"])
    guider_run_with_teacher(root, "history2", 1, denoise_keys=patience, teacher_validated=3)
    shutil.rmtree(runs["history"])

    spec = importlib.util.spec_from_file_location("run_cost", REPO / "scripts" / "run_cost.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_csv = tmp_path / "cost.csv"
    assert script.main([str(root), "--where", "denoise=guider", "--base", "1", "--sync", "3",
                        "--frozen", "1.5", "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    # (2x3 + 2x1.5)/4 = 2.25, (3x3 + 1.5)/4 = 2.625, (3 + 3x1.5)/4 = 1.875, 3: mean 2.4375
    assert "4 runs: mean 2.44x, range 1.88-3.00x, pooled 2.44x; 3 above 2x" in out
    table = pd.read_csv(out_csv).set_index("seed")
    assert table["cost_x"].to_dict() == pytest.approx({0: 2.25, 1: 2.625, 2: 1.875, 3: 3.0})
    assert table["in_sync_epochs"].to_dict() == {0: 2, 1: 3, 2: 1, 3: 4}
    # the teacher's validation passes (0.5 s each), one per train.eval_every epochs in sync, with
    # teacher_patience only: 2, 3, 0 and (a validation every 2 epochs) 2 of them
    for path in (runs["never"] / "config.yaml", runs["never"] / ".hydra" / "config.yaml"):
        cfg = yaml.safe_load(path.read_text())
        cfg["train"]["eval_every"] = 2
        path.write_text(yaml.safe_dump(cfg))
    assert script.main([str(root), "--where", "denoise=guider", "--base", "1", "--sync", "3",
                        "--frozen", "1.5", "--teacher-eval", "0.5", "--csv", str(out_csv)]) == 0
    capsys.readouterr()
    table = pd.read_csv(out_csv).set_index("seed")
    assert table["teacher_validations"].to_dict() == {0: 2, 1: 3, 2: 0, 3: 2}
    assert table["cost_x"].to_dict() == pytest.approx({0: 2.5, 1: 3.0, 2: 1.875, 3: 3.25})
    with pytest.raises(SystemExit):
        script.main([str(root), "--where", "nope=1", "--base", "1", "--sync", "3", "--frozen", "1"])
    assert "no column 'nope'" in capsys.readouterr().err
