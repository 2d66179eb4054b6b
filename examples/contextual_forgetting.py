"""Paper 1's contextual-forgetting figure from the library API alone (no CLI, no file reading by hand).

    python examples/contextual_forgetting.py [RUN_DIR] [--out FIGURE.png]

Without RUN_DIR it runs the offline default (``forgetlab.run()``; 103 s on a 2-core EPYC once the
offline backbone is built). It then draws, for the first task, the Wu-Palmer similarity to the task's
domain of the forgotten upstream images against all of them, with the permutation test in the title.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import forgetlab  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--out", default="contextual_forgetting.png")
    args = parser.parse_args(argv)
    run = forgetlab.load_run(args.run_dir) if args.run_dir else forgetlab.run(log=None)
    test = forgetlab.contextual(run, phase=1)
    labels = run.predictions(0)["labels"]
    similarity_of_image = test.similarity[labels]
    forgotten = np.repeat(test.similarity, test.forgotten_per_class)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 21)
    axis.hist(
        similarity_of_image, bins=bins, density=True, alpha=0.5, label=f"all upstream test images ({len(labels)})"
    )
    if len(forgotten):
        axis.hist(
            forgotten,
            bins=bins,
            density=True,
            alpha=0.5,
            label=f"forgotten after {run.accuracy_matrix.phases[0]} ({test.forgotten})",
        )
    axis.set_xlabel("Wu-Palmer similarity to the task's domain")
    axis.set_title(f"mean {test.mean_forgotten:.3f} vs {test.mean_all:.3f}, permutation p = {test.p_value:.2g}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(
        f"{run}: forgotten {test.forgotten} images, mean similarity {test.mean_forgotten:.3f} vs {test.mean_all:.3f}, "
        f"p = {test.p_value:.2g} -> {args.out}"
    )
    return {
        "forgotten": test.forgotten,
        "mean_forgotten": test.mean_forgotten,
        "mean_all": test.mean_all,
        "p_value": test.p_value,
    }


if __name__ == "__main__":
    main()
