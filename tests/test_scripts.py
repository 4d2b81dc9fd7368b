"""The exploratory-plot and training-curve scripts, run as a user runs them, on real files."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _script(name, *args):
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)


def test_eda_writes_counts_samples_sizes_and_links_them(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  r = _script("eda.py", f"--data_dir={SAMPLE_DIR}", f"--out_dir={tmp_path}", f"--tfds_data_dir={tfds_dir}")
  assert r.returncode == 0, r.stderr[-2000:]
  md = (tmp_path / "eda.md").read_text()
  for png in ("class_counts.png", "samples.png", "image_sizes.png"):
    assert (tmp_path / png).stat().st_size > 0 and f"({png})" in md
  # The counts in the table are the folders' own.
  n_normal = len(os.listdir(os.path.join(SAMPLE_DIR, "train", "NORMAL")))
  assert f"| train/ (folder) | {n_normal} |" in md and "validation (by patient)" in md


def test_eda_without_train_folder_is_a_clear_error(tmp_path):
  r = _script("eda.py", f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}")
  assert r.returncode != 0 and "has no train/ folder" in r.stderr


def test_plot_curves_from_a_metrics_file(tmp_path):
  rows = [{"step": 10 * e, "epoch": float(e), "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5,
           "val_accuracy": 0.6, "train_roc_auc": 0.7, "val_roc_auc": 0.8} for e in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  r = _script("plot_curves.py", str(tmp_path))
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / "reports" / "training_curves.png").stat().st_size > 0
  r = _script("plot_curves.py", str(tmp_path / "missing"))
  assert r.returncode != 0 and "metrics.jsonl does not exist" in r.stderr


def test_benchmark_prints_the_shared_scripts_fields_and_the_pipeline_and_originals_rates(prepared_sample):
  _, tfds_dir = prepared_sample
  r = _script("benchmark.py", "--model=mlp", "--batch=4", "--steps=2", f"--data_dir={SAMPLE_DIR}",
              f"--tfds_data_dir={tfds_dir}", f"--originals_dir={os.path.join(SAMPLE_DIR, 'val')}",
              "--originals_repeat=2", "--turnover_epochs=2", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(l) for l in r.stdout.splitlines()]
  assert len(rows) == 1
  row = rows[0]
  for key in ("train_img_per_s", "infer_img_per_s", "batch", "params", "train_fraction_of_matmul",
              "pipeline_cached_img_per_s", "pipeline_to_step_ratio", "originals_cold_img_per_s"):
    assert row[key] > 0, key
  assert row["batch"] == 4 and row["originals_examples"] == 2 * 16  # every file of val/, twice
  assert row["conv"] == "none"  # the mlp has no convolution to report
  assert row["cpu"]["logical_cpus"] == os.cpu_count() and row["cpu"]["machine"]  # the host the figures belong to
  assert row["train_page_faults_per_step"] >= 0 and row["infer_page_faults_per_call"] >= 0
  for variant in ("shipped", "autotune"):  # one deletion timed per epoch and variant
    assert len(row[f"turnover_{variant}_s"]) == 2 and row[f"turnover_{variant}_total_s"] >= 0


def test_benchmark_times_a_recipe_with_its_own_batch_size_and_augmentation(tmp_path):
  recipe = tmp_path / "tiny.flags"
  recipe.write_text("# a recipe header\n--model=mlp\n--image_size=32\n--batch_size=3\n--augment\n"
                    "--aug_blur=1.0\n--aug_erase=0.5\n")
  named_as_its_model = tmp_path / "mlp.flags"  # a recipe row says it is one even under its model's name
  named_as_its_model.write_text("--model=mlp\n--image_size=32\n--batch_size=4\n")
  progressive = tmp_path / "progressive.flags"  # 1 epoch at 32 px, then 2 at 64
  progressive.write_text("--model=cnn\n--image_size=64\n--size_schedule=32:1\n--num_epochs=3\n--batch_size=2\n")
  r = _script("benchmark.py", "--model=mlp", "--batch=2", "--image_size=32", f"--recipe={recipe}",
              f"--recipe={named_as_its_model}", f"--recipe={progressive}", "--steps=2", "--matmul_size=64",
              "--rounds=2", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  plain, row, same_name, sched = [json.loads(l) for l in r.stdout.splitlines()]
  assert sched["size_schedule"] == "32:1" and "size_schedule" not in row
  rates = sched["train_img_per_s_by_size"]
  assert set(rates) == {"32", "64"} and rates["64"] == sched["train_img_per_s"]
  # The run's mean: its 3 epochs' images over their summed step time.
  assert sched["train_img_per_s_schedule"] == pytest.approx(3 / (1 / rates["32"] + 2 / rates["64"]), rel=0.01)
  assert same_name["recipe"] == "mlp" and same_name["model"] == "mlp" and same_name["batch"] == 4
  assert "recipe" not in plain and plain["batch"] == 2 and plain["augment"] is False
  assert row["recipe"] == "tiny" and row["model"] == "mlp" and row["batch"] == 3  # not --batch's 2
  assert row["augment"] is True and row["augment_config"]["erase"] == 0.5 and row["augment_config"]["blur"] == 1.0
  assert row["augment_config"]["noise"] == 0.0  # the flag's default, not a value left by another recipe
  assert len(row["train_img_per_s_rounds"]) == 2 and row["train_img_per_s_interleaved"] > 0
  r = _script("benchmark.py", f"--recipe={tmp_path / 'missing.flags'}", "--steps=2", "--matmul_size=64")
  assert r.returncode != 0 and "missing.flags: no such flag file" in r.stderr


# Run as a user runs it, but with these packages unimportable, as on a GPU image without TensorFlow.
_WITHOUT_TF = """
import runpy, sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "orbax"):
      raise ImportError("no " + name + " here")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmark.py"] + sys.argv[1:]
runpy.run_path("scripts/benchmark.py", run_name="__main__")
"""


def test_benchmark_times_the_step_without_tensorflow_and_reports_mfu():
  r = subprocess.run([sys.executable, "-c", _WITHOUT_TF, "--model=mlp", "--model=refcnn", "--batch=2", "--steps=2",
                      "--image_size=32", "--rounds=3", "--matmul_size=64", "--peak_tflops=1", "--dtype=bfloat16", "--json"],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  mlp, row = [json.loads(l) for l in r.stdout.splitlines()]
  assert row["dtype"] == row["matmul_dtype"] == "bfloat16" and row["matmul_size"] == 64
  # MFU is the step's GFLOP/s over the peak given (1 TFLOP/s here).
  assert row["train_mfu"] == round(row["train_gflop_per_s"] / 1e3, 4) > 0
  # --rounds: each model timed once per round, the speed-up taken against the first model's median.
  assert len(mlp["train_img_per_s_rounds"]) == len(row["train_img_per_s_rounds"]) == 3
  assert mlp["train_speedup_vs_first_model"] == 1.0 and row["train_speedup_vs_first_model"] > 0
  assert abs(row["train_speedup_vs_first_model"] * mlp["train_img_per_s_interleaved"]
             - row["train_img_per_s_interleaved"]) < 0.1 + 1e-3 * row["train_img_per_s_interleaved"]


# A stand-in for ../shared/bench/keras_refcnn.py (a real Keras run takes a minute): its rate rises
# 10 img/s with each run, as a machine's drift would, so each round's ratio is checkable.
_FAKE_KERAS = """
import json, os, sys
count = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.txt")
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
batch = int(sys.argv[sys.argv.index("--batch") + 1])
print("warming up")
print(json.dumps({"framework": "keras-tensorflow", "batch": batch, "params": 1,
                  "train_img_per_s": 10.0 * n, "infer_img_per_s": 50.0 * n}))
"""


def test_benchmark_compare_takes_each_ratio_within_a_round_and_reports_the_median(tmp_path):
  (tmp_path / "keras_refcnn.py").write_text(_FAKE_KERAS)  # no torch_refcnn.py here: skipped, said on stderr
  r = _script("benchmark.py", "--model=refcnn", "--batch=2", "--steps=2", "--image_size=32", "--matmul_size=64",
              "--compare", "--compare_rounds=3", f"--bench_dir={tmp_path}", f"--profile_dir={tmp_path}/prof",
              "--profile_steps=2", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "torch_refcnn.py" in r.stderr
  jax_row, keras = [json.loads(l) for l in r.stdout.splitlines()]
  assert jax_row["model"] == "refcnn" and keras["framework"] == "keras-tensorflow"
  # --profile_dir: the step's ops from a real trace, its four convolutions' kinds among them.
  table = (tmp_path / "prof" / "refcnn_train_ops.md").read_text()
  assert jax_row["profile_table"] == str(tmp_path / "prof" / "refcnn_train_ops.md")
  assert all(f"| {name} | {what} |" in table for name, what, _ in jax_row["profile_top_ops"])
  assert any("convolution" in kind for kind in jax_row["profile_share_by_kind"])
  assert 0 < jax_row["profile_op_ms_per_step"] and abs(sum(jax_row["profile_share_by_kind"].values()) - 1) < 0.01
  assert (tmp_path / "runs.txt").read_text() == "3" and keras["rounds"] == 3
  assert keras["train_img_per_s_rounds"] == [10.0, 20.0, 30.0] and keras["train_img_per_s"] == 20.0
  for kind in ("train", "infer"):
    jax_rates = keras[f"jax_refcnn_{kind}_img_per_s_rounds"]  # JAX re-timed before each run
    ratios = [j / x for j, x in zip(jax_rates, keras[f"{kind}_img_per_s_rounds"])]
    assert len(jax_rates) == 3 and all(j > 0 for j in jax_rates)
    assert keras[f"jax_refcnn_{kind}_speedup_rounds"] == [round(x, 3) for x in ratios]
    assert keras[f"jax_refcnn_{kind}_speedup"] == round(sorted(ratios)[1], 2)


def test_benchmark_reports_the_convolution_each_model_really_builds(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from xray_jax import layers, models  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("benchmark", os.path.join(REPO, "scripts", "benchmark.py"))
  benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(benchmark)
  assert benchmark.conv_kinds(models.get_model("cnn"), 32) == "nn.Conv"
  assert benchmark.conv_kinds(models.get_model("refcnn"), 32) == "layers.Conv"
  # layers.Conv's matmul kernel gradients where YNNPACK convolves, else only one-channel inputs change (layers.py).
  monkeypatch.delenv("XRAY_JAX_CPU_CONV", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert benchmark.conv_kernel_grad("nn.Conv") == "xla"
  assert benchmark.conv_kernel_grad("layers.Conv") == benchmark.ONE_CHANNEL_TAPS
  monkeypatch.setenv("XRAY_JAX_CPU_CONV", "ynnpack")
  assert benchmark.conv_kernel_grad("layers.Conv") == "matmuls"
  assert benchmark.conv_kernel_grad("nn.Conv") == "xla" and benchmark.conv_kernel_grad("none") == "none"
  fast = layers.Conv
  try:  # what --plain_conv does
    layers.Conv = nn.Conv
    assert benchmark.conv_kinds(models.get_model("refcnn"), 32) == "nn.Conv"
  finally:
    layers.Conv = fast


def test_summarize_runs_gives_mean_and_spread_and_says_when_a_figure_has_fewer_runs(tmp_path):
  def report(auc, em=None):
    rules = {"stress_youden_left_out": {"mean": {"sensitivity": 0.9, "specificity": 0.8}}}
    if em is not None:
      rules["em_per_shift"] = {"mean": {"estimated_prior": em, "sensitivity": 0.9, "specificity": 0.8}}
    block = {"accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.8}
    return {"roc_auc": auc, "at_threshold_0.5": block, "at_chosen_threshold": block,
            "label_shift": {"estimated_prior": 0.7},
            "stress": {"mean": {"roc_auc": auc, "sensitivity": 0.9, "specificity": 0.8, "sensitivity_at_0.5": 0.9,
                                "specificity_at_0.5": 0.8},
                       "worst": {"roc_auc": auc, "specificity": 0.8}, "threshold_rules": rules}}
  for seed, (auc, em) in enumerate([(0.90, 0.70), (0.94, None)]):
    d = tmp_path / f"exp_s{seed}" / "reports"
    d.mkdir(parents=True)
    (d / "validation_stress.json").write_text(json.dumps(report(auc, em)))
    # Seed 1 was resumed, so run_seeds.sh timed only its tail, apart: not a training time.
    (d.parent / ("wall_time_s.txt" if seed == 0 else "wall_time_resumed_s.txt")).write_text("600" if seed == 0 else "60")
  r = _script("summarize_runs.py", "exp", f"--runs_dir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  row = [c.strip() for c in r.stdout.splitlines()[-1].strip("|").split("|")]
  assert row[:3] == ["exp", "2", "0.9200 ± 0.0283"]  # mean and sample std of 0.90, 0.94
  assert "0.7000 (n=1)" in row and row[-1] == "10.0 (n=1)"
  # --report reads another report of the same runs; --per_shift tabulates each shift over seeds.
  for seed, sens in enumerate([0.5, 0.7]):
    unseen = report(0.8)
    unseen["stress"]["shifts"] = {"markers": {"roc_auc": 0.9, "sensitivity": sens, "specificity": 1.0}}
    (tmp_path / f"exp_s{seed}" / "reports" / "validation_unseen.json").write_text(json.dumps(unseen))
  r = _script("summarize_runs.py", "exp", f"--runs_dir={tmp_path}", "--report=validation_unseen", "--per_shift")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert [c.strip() for c in lines[2].strip("|").split("|")][:3] == ["exp", "2", "0.8000 ± 0.0000"]
  assert [c.strip() for c in lines[-1].strip("|").split("|")] == [
      "exp", "markers", "2", "0.9000 ± 0.0000", "0.6000 ± 0.1414", "1.0000 ± 0.0000"]
  # --against pairs each run with another report beside it; LABEL=GLOB,GLOB pools folders.
  other = tmp_path / "elsewhere_s0" / "reports"
  other.mkdir(parents=True)
  (other / "validation_stress.json").write_text(json.dumps(report(0.96)))
  for folder, auc in ((tmp_path / "exp_s0" / "reports", 0.93), (tmp_path / "exp_s1" / "reports", 0.92)):
    (folder / "validation_stress_latest.json").write_text(json.dumps(report(auc)))  # +0.03, -0.02
  pooled = f"all={tmp_path}/exp_s*/reports/validation_stress.json,{tmp_path}/elsewhere_s0/reports/validation_stress.json"
  r = _script("summarize_runs.py", "--against=validation_stress_latest", pooled)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in r.stdout.splitlines()[-2:]]
  assert rows[0][:2] == ["all", "3"]  # the third run has no latest report: not paired
  assert rows[1][:3] == ["all: validation_stress_latest minus validation_stress", "2", "+0.0050 ± 0.0354 (1/2)"]
  # --subgroups: each file-name subgroup over the runs, unshifted and over the shifts.
  for seed, (rate, worst_shift) in enumerate([(0.90, "blur"), (0.96, "noise")]):
    with_groups = report(0.9)
    with_groups["subgroups"] = {"virus": {"num_examples": 142, "rate": "sensitivity", "at_chosen_threshold": rate,
                                          "at_threshold_0.5": 1.0, "roc_auc_vs_other_class": 0.99}}
    with_groups["stress"]["subgroups"] = {"mean": {"virus": rate - 0.1}, "worst": {"virus": rate - 0.2},
                                          "worst_shift": {"virus": worst_shift}}
    (tmp_path / f"exp_s{seed}" / "reports" / "validation_stress.json").write_text(json.dumps(with_groups))
  r = _script("summarize_runs.py", "exp", f"--runs_dir={tmp_path}", "--subgroups")
  assert r.returncode == 0, r.stderr[-2000:]
  assert [c.strip() for c in r.stdout.splitlines()[-1].strip("|").split("|")] == [
      "exp", "virus", "2", "142", "sensitivity", "0.9300 ± 0.0424", "1.0000 ± 0.0000", "0.9900 ± 0.0000",
      "0.8300 ± 0.0424", "0.7300 ± 0.0424", "blur, noise"]


def test_summarize_runs_per_run_table_names_each_runs_worst_shifts_and_means_them(tmp_path):
  left_out = {"stress_youden_left_out": {"mean": {"sensitivity": 0.98, "specificity": 0.97}}}
  for seed, (zoom, unsharp, coll, wall) in enumerate([(0.995, 0.999, 0.97, "800"), (0.999, 0.994, 0.99, None)]):
    d = tmp_path / f"exp_s{seed}" / "reports"
    d.mkdir(parents=True)
    stress = {"roc_auc": 0.99, "at_chosen_threshold": {"threshold": 0.3 + 0.1 * seed},
              "stress": {"threshold_rules": left_out, "shifts": {"zoom_out": {"roc_auc": zoom}, "blur": {"roc_auc": 0.997}}}}
    unseen = {"stress": {"shifts": {"unsharp": {"roc_auc": unsharp}, "equalize": {"roc_auc": 0.996},
                                    "collimation": {"roc_auc": coll, "sensitivity": 0.5 + 0.2 * seed}}}}
    (d / "validation_stress.json").write_text(json.dumps(stress))
    (d / "validation_unseen.json").write_text(json.dumps(unseen))
    if wall:
      (d.parent / "wall_time_s.txt").write_text(wall)
  r = _script("summarize_runs.py", "exp", f"--runs_dir={tmp_path}", "--per_run")
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [[c.strip() for c in l.strip("|").split("|")] for l in r.stdout.splitlines()[-3:]]
  assert rows[0] == ["exp", "exp_s0", "0.9950 (zoom_out)", "0.9800", "0.9700", "0.9960 (equalize)",
                     "0.9700 (collimation)", "0.5000", "0.3000", "800"]
  assert rows[1][2] == "0.9970 (blur)" and rows[1][5] == "0.9940 (unsharp)" and rows[1][-1] == "n/a"
  assert rows[2][:3] == ["exp", "mean ± sd", "0.9960 ± 0.0014"] and rows[2][-1] == "800 (n=1)"
  r = _script("summarize_runs.py", "exp", f"--runs_dir={tmp_path}", "--per_run", "--unseen_exclude=")
  assert [c.strip() for c in r.stdout.splitlines()[-3].strip("|").split("|")][5] == "0.9700 (collimation)"


def test_summarize_runs_per_run_reads_an_ensembles_own_unseen_report_and_no_member_wall_time(tmp_path):
  # An ensemble's reports sit in its first member's folder, beside that run's own: a row must not
  # take the member's unseen figures or training time for the ensemble's.
  d = tmp_path / "exp_s0" / "reports"
  d.mkdir(parents=True)
  left_out = {"stress_youden_left_out": {"mean": {"sensitivity": 0.98, "specificity": 0.97}}}
  stress = {"roc_auc": 0.99, "at_chosen_threshold": {"threshold": 0.4}, "extra": {"ensemble": "a, b, c"},
            "stress": {"threshold_rules": left_out, "shifts": {"zoom_out": {"roc_auc": 0.997}}}}
  unseen = lambda coll: {"stress": {"shifts": {"collimation": {"roc_auc": coll, "sensitivity": coll - 0.1}}}}
  (d / "mix_validation_stress.json").write_text(json.dumps(stress))
  (d / "mix_validation_unseen.json").write_text(json.dumps(unseen(0.993)))
  (d / "validation_unseen.json").write_text(json.dumps(unseen(0.950)))  # the first member's own
  (d.parent / "wall_time_s.txt").write_text("1000")
  r = _script("summarize_runs.py", f"mix={d}/mix_validation_stress.json", "--per_run")
  assert r.returncode == 0, r.stderr[-2000:]
  row = [c.strip() for c in r.stdout.splitlines()[-2].strip("|").split("|")]
  assert row[6:8] == ["0.9930 (collimation)", "0.8930"] and row[-1] == "n/a"


def test_prior_shift_set_drops_whole_patients_of_one_class_and_copies_files_unchanged(prepared_sample, tmp_path):
  import collections
  import filecmp
  from xray_jax import images
  builder, tfds_dir = prepared_sample
  val = [(ex["file_name"].decode(), int(ex["label"])) for ex in builder.as_dataset(split="validation").as_numpy_iterator()]
  share = sum(label == 0 for _, label in val) / len(val)
  for asked, dropped_class in ((min(0.9, share + 0.2), "PNEUMONIA"), (max(0.1, share - 0.2), "NORMAL")):
    out = tmp_path / f"share{asked:.2f}"
    r = _script("make_prior_shift_set.py", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}",
                f"--normal_share={asked}", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / f"share{asked:.2f}.json").read_text())
    kept = set(manifest["files"])
    counts = {c: len(os.listdir(out / c)) for c in images.CLASS_NAMES}
    assert counts == manifest["counts"]
    got = counts["NORMAL"] / sum(counts.values())
    assert (got >= asked) if dropped_class == "PNEUMONIA" else (got <= asked)
    # The other class is kept whole; of the dropped one, every patient is all in or all out.
    by_patient = collections.defaultdict(set)
    for name, label in val:
      by_patient[(images.CLASS_NAMES[label], images.patient_id(name))].add(name in kept)
      if images.CLASS_NAMES[label] != dropped_class:
        assert name in kept
    assert all(len(v) == 1 for v in by_patient.values())
    assert len(kept) < len(val)
    for name in kept:
      assert filecmp.cmp(os.path.join(SAMPLE_DIR, name), out / name.split("/")[-2] / os.path.basename(name),
                         shallow=False)
  again = _script("make_prior_shift_set.py", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}",
                  "--normal_share=0.5", f"--out_dir={out}")
  assert again.returncode != 0 and "exists; remove it" in again.stderr
  bad = _script("make_prior_shift_set.py", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}",
                "--normal_share=1.5", f"--out_dir={tmp_path / 'bad'}")
  assert bad.returncode != 0 and "--normal_share=1.5" in bad.stderr
