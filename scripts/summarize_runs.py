"""Mean and spread over seeds of the reports that scripts/run_seeds.sh writes, as Markdown rows.

    python scripts/summarize_runs.py cnn cnn_affine cnn_seed mlp_baseline
    python scripts/summarize_runs.py "cnn, ensemble of 3=runs/cnn_s0/reports/ensemble_validation_stress.json"
    python scripts/summarize_runs.py --report=validation_unseen --per_shift cnn cnn_plain
    python scripts/summarize_runs.py --subgroups cnn
    python scripts/summarize_runs.py --per_run cnn cnn_progressive
    python scripts/summarize_runs.py --against=validation_stress_latest "all=runs/cnn_s*/reports/validation_stress.json,other/runs/*_s0/reports/validation_stress.json"

An argument NAME reads runs/NAME_s*/reports/REPORT.json (--report, default validation_stress;
and kaggle_val.json, wall_time_s.txt beside them); LABEL=GLOB reads the report files GLOB
matches (several GLOBs: comma-separated). Figures are mean +- sample standard deviation over
the runs found ("n" says how many); nothing is filled in by hand. --per_shift adds a table of
each stress shift. --subgroups adds a table of each file-name subgroup (xray_jax.images.subgroup:
bacteria, virus, NORMAL2-IM, IM): its sensitivity or specificity at the run's threshold on the
unshifted images and its mean and worst over the stress shifts. --against=OTHER adds, after each
row, the paired differences OTHER minus REPORT over the runs that have both (OTHER.json beside
each report, e.g. the same runs evaluated at another checkpoint), with in how many runs OTHER's
figure is at least REPORT's. --per_run adds a table of one row per run and a mean row, of the
figures the recipe ideas since 37 are judged by (experiments/RESULTS.md): the worst standard shift
and which, the left-out sensitivity and specificity; from the unseen report beside it (X_stress.json pairs
with X_unseen.json), the worst unseen shift other than --unseen_exclude and the worst of all, collimation's sensitivity at
the run's threshold, the threshold, and the train wall time.
"""

import argparse
import glob
import json
import os

import numpy as np

COLUMNS = (
    ("val ROC AUC", lambda r: r["roc_auc"]),
    ("val acc @0.5", lambda r: r["at_threshold_0.5"]["accuracy"]),
    ("val spec @thr", lambda r: r["at_chosen_threshold"]["specificity"]),
    ("stress AUC mean", lambda r: r["stress"]["mean"]["roc_auc"]),
    ("stress AUC worst", lambda r: r["stress"]["worst"]["roc_auc"]),
    ("stress sens @thr mean", lambda r: r["stress"]["mean"]["sensitivity"]),
    ("stress spec @thr mean", lambda r: r["stress"]["mean"]["specificity"]),
    ("stress spec @thr worst", lambda r: r["stress"]["worst"]["specificity"]),
    ("stress sens @0.5 mean", lambda r: r["stress"]["mean"]["sensitivity_at_0.5"]),
    ("stress spec @0.5 mean", lambda r: r["stress"]["mean"]["specificity_at_0.5"]),
    ("stress sens, stress-Youden thr, left out", lambda r: r["stress"]["threshold_rules"]["stress_youden_left_out"]["mean"]["sensitivity"]),
    ("stress spec, stress-Youden thr, left out", lambda r: r["stress"]["threshold_rules"]["stress_youden_left_out"]["mean"]["specificity"]),
    ("EM prior (true 0.744)", lambda r: r["label_shift"]["estimated_prior"]),
    ("stress EM prior mean (true 0.744)", lambda r: r["stress"]["threshold_rules"]["em_per_shift"]["mean"]["estimated_prior"]),
    ("stress sens, EM thr, mean", lambda r: r["stress"]["threshold_rules"]["em_per_shift"]["mean"]["sensitivity"]),
    ("stress spec, EM thr, mean", lambda r: r["stress"]["threshold_rules"]["em_per_shift"]["mean"]["specificity"]),
)


SHIFT_COLUMNS = ("roc_auc", "sensitivity", "specificity")
SUBGROUP_COLUMNS = (
    ("rate @thr", lambda r, g: r["subgroups"][g]["at_chosen_threshold"]),
    ("rate @0.5", lambda r, g: r["subgroups"][g]["at_threshold_0.5"]),
    ("ROC AUC vs other class", lambda r, g: r["subgroups"][g]["roc_auc_vs_other_class"]),
    ("stress rate @thr mean", lambda r, g: r["stress"]["subgroups"]["mean"][g]),
    ("stress rate @thr worst", lambda r, g: r["stress"]["subgroups"]["worst"][g]),
)


def _fmt(values: list[float], digits: int = 4, of: int | None = None) -> str:
  """Mean ± sample std; "(n=k)" when only k of the `of` runs have the figure."""
  if not values:
    return "n/a"
  fewer = f" (n={len(values)})" if of is not None and len(values) < of else ""
  if len(values) == 1:
    return f"{values[0]:.{digits}f}{fewer}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}{fewer}"


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _figure(get, report: dict) -> float | None:
  try:
    return float(get(report))
  except (KeyError, TypeError):
    return None


def _paired(pairs: list[tuple[dict, dict]]) -> list[str]:
  """Per column: mean ± sd of (other - report) over the runs with both figures, and k/n with other >= report."""
  cells = []
  for _, get in COLUMNS:
    both = [(_figure(get, r), _figure(get, o)) for r, o in pairs]
    d = [b - a for a, b in both if a is not None and b is not None]
    if not d:
      cells.append("n/a")
      continue
    spread = f" ± {np.std(d, ddof=1):.4f}" if len(d) > 1 else ""
    cells.append(f"{np.mean(d):+.4f}{spread} ({sum(x >= 0 for x in d)}/{len(d)})")
  return cells


def _worst(shifts: dict, exclude: tuple[str, ...] = ()) -> tuple[float, str] | None:
  """The lowest ROC AUC among `shifts` not in `exclude`, and its shift."""
  kept = [(v["roc_auc"], k) for k, v in shifts.items() if k not in exclude]
  return min(kept) if kept else None


def per_run_rows(label: str, paths: list[str], exclude: tuple[str, ...]) -> list[list[str]]:
  """One row per report in `paths` (its run's folder name) and a mean ± sd row: see --per_run."""
  cols: list[list[float | None]] = []  # per run, each column's figure
  rows = []
  for p in paths:
    r, reports_dir = _load(p), os.path.dirname(p)
    # The unseen report of the same model: X_stress.json pairs with X_unseen.json (an ensemble's
    # report with the ensemble's, not with its first member's validation_unseen.json).
    stem = os.path.basename(p)[:-len(".json")]
    unseen_path = os.path.join(reports_dir, stem[:-len("stress")] + "unseen.json") if stem.endswith("stress") else ""
    unseen = _load(unseen_path)["stress"]["shifts"] if os.path.exists(unseen_path) else {}
    ensemble = "ensemble" in r.get("extra", {})  # several runs' training: no one wall time
    wall_path = "" if ensemble else os.path.join(os.path.dirname(reports_dir), "wall_time_s.txt")
    left_out = r["stress"]["threshold_rules"]["stress_youden_left_out"]["mean"]
    figures = [_worst(r["stress"]["shifts"]), (left_out["sensitivity"], ""), (left_out["specificity"], ""),
               _worst(unseen, exclude), _worst(unseen),
               (unseen["collimation"]["sensitivity"], "") if "collimation" in unseen else None,
               (r["at_chosen_threshold"]["threshold"], ""),
               (float(open(wall_path).read()), "") if os.path.exists(wall_path) else None]
    cols.append([f[0] if f else None for f in figures])
    name = os.path.basename(os.path.dirname(reports_dir))
    rows.append([label, name] + ["n/a" if f is None else f"{f[0]:.4f}" + (f" ({f[1]})" if f[1] else "")
                                 for f in figures[:-1]]
                + ["n/a" if figures[-1] is None else f"{figures[-1][0]:.0f}"])
  digits = [4] * (len(PER_RUN_HEADER) - 3) + [0]  # seconds as whole numbers
  means = [_fmt([c[i] for c in cols if c[i] is not None], digits[i], of=len(cols)) for i in range(len(digits))]
  return rows + [[label, "mean ± sd"] + means]


PER_RUN_HEADER = ["experiment", "run", "stress AUC worst (shift)", "left-out sens", "left-out spec",
                  "unseen AUC worst, excluded ones aside (shift)", "unseen AUC worst (shift)",
                  "collimation sens @thr", "threshold", "train wall time (s)"]


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("groups", nargs="+")
  ap.add_argument("--runs_dir", default="runs")
  ap.add_argument("--report", default="validation_stress", help="report name that NAME arguments read")
  ap.add_argument("--against", help="another report name: add each group's paired differences, it minus --report")
  ap.add_argument("--per_shift", action="store_true", help="also a table: each shift's ROC AUC, sensitivity "
                  "and specificity at the run's threshold")
  ap.add_argument("--subgroups", action="store_true", help="also a table: each file-name subgroup's sensitivity "
                  "or specificity, unshifted and over the stress shifts")
  ap.add_argument("--per_run", action="store_true", help="also a table: each run's worst standard shift, "
                  "left-out operating point, worst unseen shifts, collimation sensitivity, threshold and wall time")
  ap.add_argument("--unseen_exclude", default="markers,collimation",
                  help="with --per_run: unseen shifts the 'excluded ones aside' column leaves out")
  args = ap.parse_args()
  per_shift, per_subgroup, per_run = [], [], []
  header = ["experiment", "n"] + [c for c, _ in COLUMNS] + ["Kaggle val/ acc @thr (16 images)", "train wall time (min)"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for group in args.groups:
    if "=" in group:
      label, patterns = group.split("=", 1)
      paths = sorted(p for pattern in patterns.split(",") for p in glob.glob(pattern))
    else:
      label, paths = group, sorted(glob.glob(os.path.join(args.runs_dir, f"{group}_s[0-9]*", "reports",
                                                          f"{args.report}.json")))
    reports = [_load(p) for p in paths]
    row = [label, str(len(reports))]
    for _, get in COLUMNS:
      vals = [v for v in (_figure(get, r) for r in reports) if v is not None]
      # A figure older reports lack is averaged over the runs that have it, and says how many.
      row.append(_fmt(vals, of=len(reports)))
    kaggle, wall = [], []
    for p in paths:
      folder = os.path.dirname(p)
      kv = os.path.join(folder, "kaggle_val.json")
      if os.path.exists(kv) and "=" not in group:
        kaggle.append(_load(kv)["at_chosen_threshold"]["accuracy"])
      wt = os.path.join(os.path.dirname(folder), "wall_time_s.txt")
      if os.path.exists(wt) and "=" not in group:
        wall.append(float(open(wt).read()) / 60)
    # run_seeds.sh times a resumed run apart (wall_time_resumed_s.txt): its time is not counted.
    row += [_fmt(kaggle, 3), _fmt(wall, 1, of=len(paths))]
    print("| " + " | ".join(row) + " |")
    if args.against:
      others = [os.path.join(os.path.dirname(p), f"{args.against}.json") for p in paths]
      pairs = [(r, _load(o)) for r, o in zip(reports, others) if os.path.exists(o)]
      print("| " + " | ".join([f"{label}: {args.against} minus {args.report}", str(len(pairs))] + _paired(pairs)
                              + ["", ""]) + " |")
    if args.per_run:
      per_run += per_run_rows(label, paths, tuple(x for x in args.unseen_exclude.split(",") if x))
    shifts = list(reports[0].get("stress", {}).get("shifts", {})) if reports and args.per_shift else []
    for shift in shifts:
      got = [r["stress"]["shifts"][shift] for r in reports if shift in r.get("stress", {}).get("shifts", {})]
      per_shift.append([label, shift, str(len(got))] + [_fmt([g[k] for g in got]) for k in SHIFT_COLUMNS])
    for g in list(reports[0].get("subgroups", {})) if reports and args.subgroups else []:
      got = [r for r in reports if g in r.get("subgroups", {})]
      worst = [r["stress"]["subgroups"]["worst_shift"][g] for r in got if "subgroups" in r.get("stress", {})]
      per_subgroup.append([label, g, str(len(got)), str(got[0]["subgroups"][g]["num_examples"]),
                           got[0]["subgroups"][g]["rate"]]
                          + [_fmt([v for v in (_figure(lambda r: get(r, g), r) for r in got) if v is not None],
                                  of=len(got)) for _, get in SUBGROUP_COLUMNS]
                          + [", ".join(sorted(set(worst)))])
  if args.subgroups:
    header = ["experiment", "subgroup", "n", "images", "rate"] + [c for c, _ in SUBGROUP_COLUMNS] + ["worst shift"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in per_subgroup:
      print("| " + " | ".join(row) + " |")
  if args.per_run:
    print("\n| " + " | ".join(PER_RUN_HEADER) + " |")
    print("|" + "---|" * len(PER_RUN_HEADER))
    for row in per_run:
      print("| " + " | ".join(row) + " |")
  if args.per_shift:
    header = ["experiment", "shift", "n", "ROC AUC", "sens @thr", "spec @thr"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in per_shift:
      print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  main()
