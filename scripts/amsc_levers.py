"""AMSC's detection under its levers, from a trained GUIDER run, without training again.

Loads a GUIDER run folder (config.yaml and checkpoints/best.pt, which holds the teacher at the
student's best epoch; of any other run only the student's signals below are measured), rebuilds
the run's data, and scores every training interaction with AMSC at the end of its schedule
(lambda and rho at their maxima) under each setting of its levers (docs/guider.md): the
detection metrics of guider.evaluation.detection, overall, against the
trivial degree and popularity scores, and within bands of user degree. score_ema needs a
sequence of refreshes and is not measured here. Beside AMSC, the same metrics for other signals
one could flag with (``SIGNALS``): the teacher's and the student's own score of each interaction
(low = suspicious; the small-loss idea of T-CE, read off a model), raw and standardised within
each user, and the student's set against what else it could have scored (``centred_scores``:
along the user's row of the catalogue, along the item's column of users, double-centred), each
flagging its lowest rho_max share as AMSC would; and content signals (``CONTENT_SIGNALS``: the
student's content score e_u . W f_i where its backbone has one, the mean feature cosine to the
user's other items, raw or centred, ID + content standardised, ID + the item's popularity
standardised), with every row's AUC within fifths of item degree (``item q1`` the rarest).
``--only student,centred`` keeps the rows whose label has one of those words; ``--rho
0.05,0.1,0.2`` measures every row at each of these flagged shares instead of the run's rho_max
(the AUCs do not depend on it; the flagged set's precision and recall do: how many flags a
detector can afford).

    python scripts/amsc_levers.py <run folder> [<run folder> ...] --data-dir ../shared/data \
        --out docs/results/amsc_levers.csv
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

LEVERS = {
    "as specified": {},
    "per_user": {"per_user": True},
    "conf_floor=0.5": {"conf_floor": 0.5},
    "conf_floor=1 (content only, calibrated alpha)": {"conf_floor": 1.0},
    "user_cap=0.5": {"user_cap": 0.5},
    "conf_floor=0.5, user_cap=0.5": {"conf_floor": 0.5, "user_cap": 0.5},
    "calibrate=false (raw content)": {"calibrate": False},
}


# the other signals: (label, whose representations, standardised within each user, centring)
SIGNALS = [("teacher score", "teacher", False, None),
           ("teacher score, per user", "teacher", True, None),
           ("student score", "student", False, None),
           ("student score, per user", "student", True, None),
           ("student score vs the catalogue", "student", False, "catalogue"),
           ("student score vs the item's users", "student", False, "item"),
           ("student score, double-centred", "student", False, "both")]

# signals from the items' content, for rare items, which a collaborative score knows little of
# (labels; computed in levers_of_run, the student's content score only where its backbone has one)
CONTENT_SIGNALS = ["student content score", "mean feature cosine to the user's other items",
                   "mean feature cosine, centred features",
                   "student score + content score (z-sum)",
                   "student score + item popularity (z-sum)"]


def content_score(model, users_e: torch.Tensor, users: torch.Tensor,
                  items: torch.Tensor) -> torch.Tensor | None:
    """The student's score of each (u, i) from i's content alone, e_u . sum_m W_m f_im: the
    term FREEDOM-like backbones train beside the ID score (``mm_bpr``; the bias b_m never
    enters their BPR, so it is left out). None for a backbone without such projections."""
    from guider.denoise.guider.amsc import rowwise_dot

    projections = getattr(model, "proj", None)
    if not projections:
        return None
    s = torch.zeros(len(users))
    with torch.no_grad():
        for k, proj in enumerate(projections):
            content = getattr(model, f"feat_{k}").float() @ proj.weight.float().T
            s += rowwise_dot(users_e, users, content, items)
    return s


def feature_cosine(features: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor,
                   n_users: int, centre: bool = False) -> torch.Tensor:
    """Model-free content consistency: the mean cosine of i's features with those of each of
    the user's other items (leave-one-out), summed over modalities; NaN for users with a single
    interaction (nothing to compare with). ``centre``: the features centred first (the mean
    present row subtracted, ``graphs.centred_unit``, as AMSC compares them), which removes the
    direction every pretrained feature shares."""
    from guider.denoise.guider.amsc import rowwise_dot
    from guider.graphs import centred_unit, unit_rows

    s = torch.zeros(len(users))
    count = torch.bincount(users, minlength=n_users).float()
    for f in features.values():
        f = (centred_unit if centre else unit_rows)(torch.as_tensor(f))  # a missing row stays 0
        total = torch.zeros(n_users, f.shape[1]).index_add_(0, users, f[items])
        # minus i's own term: 1 for a unit row, 0 for a missing one
        s += rowwise_dot(total, users, f, items) - rowwise_dot(f, items, f, items)
    s = s / (count[users] - 1)
    s[count[users] < 2] = torch.nan
    return s


def zsum(*signals: torch.Tensor) -> torch.Tensor:
    return sum((x - x.mean()) / x.std() for x in signals)


def item_popularity(items: torch.Tensor, n_items: int) -> torch.Tensor:
    """log(1 + the item's training degree) of each interaction: high = popular, the trivial
    detector's score with its sign turned (random noise lands on rare items more often than real
    interactions do), to add to a model's score."""
    return torch.log1p(torch.bincount(items, minlength=n_items).float())[items]


def centred_scores(users_e: torch.Tensor, items_e: torch.Tensor, users: torch.Tensor,
                   items: torch.Tensor, how: str | None) -> torch.Tensor:
    """A model's score of each (u, i), set against what else it could have scored.

    None: the inner product s_ui = e_u . e_i. ``catalogue``: s_ui standardised over u's scores
    of every item, (s_ui - e_u . m_I) / sqrt(e_u^T C_I e_u) (how far up u's own ranking i sits,
    comparable across users); ``item``: standardised over every user's score of i,
    (s_ui - m_U . e_i) / sqrt(e_i^T C_U e_i) (how much more u likes i than users at large: a
    random pair should score as an average user does); ``both``: (e_u - m_U) . (e_i - m_I).
    m and C are the mean and covariance of the item (I) or user (U) representations, so each
    costs O((|R| + n) d^2), no users x items block."""
    from guider.denoise.guider.amsc import rowwise_dot

    s = rowwise_dot(users_e, users, items_e, items)
    if how is None:
        return s
    if how == "both":
        return rowwise_dot(users_e - users_e.mean(0), users, items_e - items_e.mean(0), items)
    own, other, rows = (users_e, items_e, users) if how == "catalogue" else (items_e, users_e, items)
    m = other.mean(0)
    cov = torch.cov(other.T, correction=0)
    mean = (own @ m)[rows]
    std = ((own @ cov) * own).sum(-1).clamp(min=1e-12).sqrt()[rows]
    return (s - mean) / std


def noise_scores(c: torch.Tensor) -> np.ndarray:
    """-c, users with one interaction least suspicious (as Guider.noise_scores)."""
    c = c.clone()
    nan = torch.isnan(c)
    c[nan] = (c[~nan].max() + 1.0) if (~nan).any() else 0.0
    return (-c).numpy()


def levers_of_run(run_dir: Path, data_dir: str | None, rhos: list[float] | None = None,
                  only: list[str] | None = None) -> pd.DataFrame:
    from guider.config import register_schemas
    from guider.denoise.guider.amsc import AMSC, AMSCConfig, rowwise_dot
    from guider.evaluation.detection import detection_metrics
    from guider.identity import current_form
    from guider.pipeline import prepare

    register_schemas()
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    cfg = OmegaConf.create(current_form(saved))
    if data_dir:
        cfg.data_dir = data_dir
    cfg.graph_cache.dir = None
    job = prepare(cfg)
    state = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    job.model.load_state_dict(state["model"])
    job.model.eval()
    with torch.no_grad():
        student_e = tuple(t.float().cpu() for t in job.model.final_embeddings())
    data = job.data
    g = job.denoiser
    guided = state.get("denoiser") is not None and hasattr(g, "teacher")
    if guided:  # a GUIDER run: its teacher at the student's best epoch
        g.load_state_dict(state["denoiser"])
        g.teacher.eval()
        with torch.no_grad():
            users_e, items_e = (t.float().cpu() for t in g.teacher.final_embeddings())
        base = g.cfg.amsc
    else:  # any other run: the student's own signals only (AMSC's defaults for rho_max)
        users_e, items_e = student_e
        base = AMSCConfig()
    users, items = (torch.as_tensor(a, dtype=torch.long)
                    for a in (data.train.users, data.train.items))
    # the teacher's score of every training interaction breaks the per-user cap's ties
    affinity = rowwise_dot(users_e, users, items_e, items)
    reps = {"teacher": (users_e, items_e), "student": student_e}
    rows = []
    settings = [(label, change, None) for label, change in LEVERS.items()] if guided else []
    settings += [(label, {"per_user": per_user}, (who, how)) for label, who, per_user, how in SIGNALS
                 if guided or who == "student"]
    own = content_score(job.model, student_e[0], users, items)
    student_score = centred_scores(*student_e, users, items, None)
    content = {"mean feature cosine to the user's other items":
               feature_cosine(data.features, users, items, data.n_users),
               "mean feature cosine, centred features":
               feature_cosine(data.features, users, items, data.n_users, centre=True),
               "student score + item popularity (z-sum)":
               zsum(student_score, item_popularity(items, data.n_items))}
    if own is not None:
        content["student content score"] = own
        content["student score + content score (z-sum)"] = zsum(student_score, own)
    settings += [(label, {}, ("content", label)) for label in CONTENT_SIGNALS if label in content]
    if only:
        settings = [s for s in settings if any(word in s[0] for word in only)]
    for label, change, signal in settings:
        if signal is None:
            scores = None
        elif signal[0] == "content":
            scores = content[signal[1]]
        else:
            scores = centred_scores(*reps[signal[0]], users, items, signal[1])
        # one AMSC per setting (its kNN confidence, modality weights) serves every share: the
        # share enters only its schedule
        amsc = AMSC(replace(base, **change), data.features, data.train.users, data.train.items,
                    data.n_users, data.n_items, job.root.seed + 1)
        for rho in rhos or [base.rho_max]:
            amsc.cfg = replace(amsc.cfg, rho_max=rho)
            amsc.previous = None  # each share a first refresh (no score_ema across shares)
            # a model's own score goes through AMSC's own path for it (GUIDER's dbpr.flags=student)
            c, flagged = amsc.refresh(items_e, epoch=10 ** 6, affinity=affinity,
                                      scores=scores)
            noise = noise_scores(c)
            det = detection_metrics(noise, flagged.numpy(), data.train_noise,
                                    data.train.users, data.train.items)
            item_bands = {f"item {q}": b.get("auc") for q, b in det["item_bands"].items()}
            # bands with at least 20 noisy and 20 clean pairs (an AUC over fewer says little)
            band_aucs = {name: b["auc"] for name, b in (det.get("bands") or {}).items()
                         if b.get("auc") is not None and 20 <= b["n_noisy"] <= b["n"] - 20}
            rows.append({"run": run_dir.name, "teacher": g.cfg.teacher.name if guided else None,
                         "lever": label, "rho": rho,
                         "auc": det["auc"], "band_auc": det.get("band_auc"),
                         "min_band_auc": min(band_aucs.values()) if band_aucs else None,
                         **{f"band {k}": v for k, v in band_aucs.items()}, **item_bands,
                         "degree_auc": det.get("degree_auc"),
                         "popularity_auc": det.get("popularity_auc"),
                         "precision": det.get("precision"), "recall": det.get("recall"),
                         "n_flagged": det.get("n_flagged"),
                         "mean_w": float(amsc.w.mean()),
                         **{f"cfg.{k}": v for k, v in change.items()}})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rho", default=None, metavar="R1,R2,...",
                        help="flagged shares to measure each row at (default: the run's rho_max)")
    parser.add_argument("--only", default=None, metavar="WORD1,WORD2,...",
                        help="measure only the rows whose label contains one of these words "
                             "(e.g. 'student score' or 'centred'): faster")
    args = parser.parse_args(argv)
    only = [w for w in args.only.split(",") if w] if args.only else None
    rhos = [float(r) for r in args.rho.split(",")] if args.rho else None
    if rhos and not all(0 < r < 1 for r in rhos):
        parser.error(f"--rho {args.rho}: each share must be in (0, 1)")
    torch.set_num_threads(1)
    table = pd.concat([levers_of_run(r, args.data_dir, rhos, only) for r in args.runs], ignore_index=True)
    pd.set_option("display.width", 200)
    cols = ["run", "teacher", "lever", "rho", "auc", "band_auc", "min_band_auc", "degree_auc",
            "popularity_auc", "item q1", "item q5", "precision", "recall", "mean_w"]
    print(table[cols].round(3).to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
