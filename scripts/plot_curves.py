"""Training curves of one or more runs: loss, accuracy and ROC AUC per epoch, train vs validation.

    python scripts/plot_curves.py runs/cnn_s0 runs/cnn_s1

Writes WORKDIR/reports/training_curves.png for each run (evaluate also does, and links it
from its Markdown report). The train figures are on the augmented images as the model saw
them during the epoch, so they lag the validation figures early in training.
"""

import argparse

from xray_jax import reports


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("workdirs", nargs="+", help="training run folders holding metrics.jsonl")
  for workdir in ap.parse_args().workdirs:
    try:
      print(reports.plot_training_curves(workdir))
    except FileNotFoundError as e:
      raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  main()
