"""`keras-deit train` over a grid: light vs DeiT's recipe, without and with a teacher, seeds.

    python benchmarks/digits_train.py WORK_DIR [--epochs 60] [--seeds 0 1 2] [--backend jax]
        [--logs-to benchmarks/digits_grid]
    python benchmarks/digits_train.py WORK_DIR --data SHAPES --fine-tune --teacher TEACHER.keras
        --epochs 10 --batch-size 8 --lr 1e-4

Without `--data`: writes the digits folder (benchmarks/digits_folder.py) to WORK_DIR/digits and
trains the built-in model's architecture from scratch (`--model deit-digits --from-scratch`),
with the built-in model as the hard-distillation teacher (trained on train/ only, so it never
saw val/). `--fine-tune` starts from the trained `--model` instead. Runs each recipe (light,
deit) without and with the teacher, for each seed; prints each exact command and a markdown
table of validation accuracy (averaged logits, class head, distillation head), mean over seeds.
`--logs-to` copies each run's per-epoch CSV log there as RECIPE-TEACHER-SEED.csv (notebook 06
plots them).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HEADS = ("logits", "cls_logits", "distillation_logits")


def run(command, env):
    started = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    line = next(l for l in result.stdout.splitlines() if "validation accuracy" in l)
    return {h: float(re.search(rf"\b{h} ([0-9.]+)", line).group(1)) for h in HEADS}, \
        time.time() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir")
    parser.add_argument("--data", help="a class folder (default: the digits, written here)")
    parser.add_argument("--model", default="deit-digits")
    parser.add_argument("--fine-tune", action="store_true",
                        help="start from the trained --model (default: its architecture only)")
    parser.add_argument("--teacher", default="deit-digits")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--batch-size", default="64")
    parser.add_argument("--base-lr", default="1e-2", help="deit's rule: x batch / 512")
    parser.add_argument("--lr", help="the peak rate itself (instead of --base-lr)")
    parser.add_argument("--logs-to", help="a folder for the per-epoch CSV logs")
    args = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    env = dict(os.environ, KERAS_BACKEND=args.backend,
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    data = args.data or os.path.join(args.work_dir, "digits")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(here, "digits_folder.py"), data], env=env,
                       check=True)
    rate = ["--lr", args.lr] if args.lr else ["--base-lr", args.base_lr]
    rows = []
    for recipe in ("light", "deit"):
        for teacher in (False, True):
            results = []
            for seed in args.seeds:
                out = os.path.join(args.work_dir, f"{recipe}-{'hard' if teacher else 'none'}-{seed}",
                                   "model.keras")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                command = [sys.executable, "-m", "keras_deit.cli", "train", data, out,
                           "--model", args.model, "--recipe", recipe, "--epochs", str(args.epochs),
                           "--batch-size", args.batch_size, *rate, "--warmup-epochs", "1",
                           "--seed", str(seed)]
                if not args.fine_tune:
                    command.append("--from-scratch")
                if teacher:
                    command += ["--teacher", args.teacher, "--distillation", "hard"]
                print("KERAS_BACKEND=" + args.backend, " ".join(command[1:]), flush=True)
                accuracy, seconds = run(command, env)
                print(f"  {accuracy} in {seconds:.0f} s", flush=True)
                results.append(accuracy)
                if args.logs_to:
                    os.makedirs(args.logs_to, exist_ok=True)
                    shutil.copy(out[:-len(".keras")] + ".log.csv", os.path.join(
                        args.logs_to, os.path.basename(os.path.dirname(out)) + ".csv"))
            rows.append((recipe, teacher, results))
    print("\n| recipe | teacher | logits | cls_logits | distillation_logits | per seed (logits) |")
    print("|---|---|---|---|---|---|")
    for recipe, teacher, results in rows:
        means = [100 * np.mean([r[h] for r in results]) for h in HEADS]
        spread = [100 * np.std([r[h] for r in results]) for h in HEADS]
        seeds = ", ".join(f"{100 * r['logits']:.1f}" for r in results)
        cells = " | ".join(f"{m:.1f} +- {s:.1f}" for m, s in zip(means, spread))
        print(f"| {recipe} | {args.teacher + ' (hard)' if teacher else 'none'} | {cells} | {seeds} |")


if __name__ == "__main__":
    main()
