"""Effect of ``train.loss.class_weights`` on a rare class: the synthetic training split made
imbalanced (one class ~20x rarer), trained with class weights off vs ``auto``, per-class AP.

    .venv/bin/python benchmarks/bench_class_weights.py [--out DIR] [--rare-class arrow]
        [--ratio 20] [--time-limit 5 | --epochs N] [--weights 1,1,1,1,1,1,3]
        [--also-copy-paste] [--force] [key=value ...]

The training split of the embedded synthetic data set (``--num-train`` images, 7 shape classes)
loses whole IMAGES that contain the rare class (``--rare-class``, index or name, default the
last class), in a seeded random order, until the rare class's box count is at most 1/``--ratio``
of the mean box count of the other classes. Dropping only the rare boxes would leave the
objects in the pixels, labelled as background, and teach the model to suppress them; dropping
the image removes the object altogether (the other classes lose the boxes of those images too,
which the printed counts show). The validation split stays whole and balanced. Both splits are
written as a COCO folder (``detjax.data.write_dataset``) to ``OUT/data``, so each run reads it
with the ordinary reader (``data.format=coco data.path=OUT/data``); no special data key.

Runs, each an ordinary run folder ``OUT/run_<name>`` trained by
``detjax.train.train_and_evaluate`` with the same budget (``train.time_limit`` = ``--time-limit``
minutes, default 5, or exactly ``--epochs`` epochs):

  none        ``train.loss.class_weights`` unset (every class weight 1)
  auto        ``class_weights: auto`` (Cui et al.'s effective-number weights of the training
              split's box counts, beta 0.999, mean 1; ``detjax.train.loop.resolve_class_weights``)
  explicit    ``--weights w0,w1,...`` (only when given)
  copy_paste  weights unset, ``data.augment.box_copy_paste=--copy-paste-p`` with
              ``box_copy_paste_class_p`` = min(1, n_min / n_c) (rare class 1, the others about
              1/ratio) (only with ``--also-copy-paste``)

A run whose folder already holds ``bench_result.json`` is not trained again (``--force``
rewrites the data and retrains every run); an interrupted one resumes from its checkpoint. The
per-class AP50-95 / AP50 are the COCO result of the run's final evaluation (``per_class_ap``,
``per_class_ap50`` of ``detjax.eval.evaluate``, passed to ``on_eval``). Prints the training
split's box counts per class, the AP table (rare class marked) and overall mAP, and writes
``OUT/class_weights.md`` and ``OUT/class_weights.json``. ``key=value`` overrides apply to every
run (e.g. ``model.head=retina``, ``train.batch=16``).

Defaults (2000 synthetic training images at 256 px, the cached default set, about 880 left
after subsetting; ``data.imgsz`` 160; 5 min per run) make the two default runs take ~12 minutes
on a 2-core CPU. Quick check of the plumbing (numbers meaningless):

    .venv/bin/python benchmarks/bench_class_weights.py --num-train 200 --num-val 40 \\
        --imgsz 64 --epochs 1 --out /tmp/bench_cw_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RESULT = "bench_result.json"
SUBSET = "subset.json"


# ----------------------------------------------------------------------------- data


def box_counts(records, num_classes: int) -> np.ndarray:
    """Boxes per class ``[C]`` of a list of records."""
    labels = [np.asarray(r.labels, np.int64).ravel() for r in records]
    flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=num_classes)


def imbalanced_subset(records, num_classes: int, rare: int, ratio: float, seed: int):
    """``(kept records, dropped image count)``: every image without class ``rare``, plus the
    images with it taken in a seeded random order while the rare class's box count stays at
    most the mean box count of the other classes / ``ratio`` (an image that would overshoot is
    dropped; a later one with fewer rare boxes may still fit)."""
    has = [bool((np.asarray(r.labels) == rare).any()) for r in records]
    kept = [r for r, h in zip(records, has) if not h]
    counts = box_counts(kept, num_classes)
    others = np.arange(num_classes) != rare
    candidates = [i for i, h in enumerate(has) if h]
    order = np.random.default_rng(seed).permutation(len(candidates))
    taken = set()
    for j in order:
        r = records[candidates[j]]
        new = counts + box_counts([r], num_classes)
        if new[rare] * ratio <= new[others].mean():
            counts = new
            taken.add(candidates[j])
    # keep the original order of the images
    kept = [r for i, (r, h) in enumerate(zip(records, has)) if not h or i in taken]
    return kept, len(records) - len(kept)


def prepare_data(args, data_dir: Path) -> dict[str, Any]:
    """Writes ``data_dir`` (COCO: the imbalanced training split, the whole validation split)
    unless it already holds the same subset; returns its description (``subset.json``)."""
    from detjax.data import DetectionDataset, synthetic_dataset, write_dataset

    params = {"num_train": args.num_train, "num_val": args.num_val,
              "synthetic_size": args.synthetic_size, "difficulty": args.difficulty,
              "synthetic_seed": args.synthetic_seed, "rare_class": args.rare_class,
              "ratio": args.ratio, "subset_seed": args.subset_seed}
    info_path = data_dir / SUBSET
    if info_path.is_file() and not args.force:
        info = json.loads(info_path.read_text())
        if info["params"] == params:
            print(f"data: reusing {data_dir} (the same subset)")
            return info
        raise SystemExit(f"{data_dir} holds another subset ({info['params']}); use another "
                         f"--out or --force (retrains every run)")
    kw = dict(num_train=args.num_train, num_val=args.num_val, seed=args.synthetic_seed,
              image_size=args.synthetic_size, difficulty=args.difficulty)
    t0 = time.time()
    train, val = synthetic_dataset("train", **kw), synthetic_dataset("val", **kw)
    names = list(train.class_names)
    rare = resolve_rare(args.rare_class, names)
    kept, dropped = imbalanced_subset(train.records, len(names), rare, args.ratio,
                                      args.subset_seed)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    subset = DetectionDataset(kept, names)
    write_dataset(subset, str(data_dir), format="coco", split="train")
    write_dataset(val, str(data_dir), format="coco", split="val")
    full, counts = box_counts(train.records, len(names)), box_counts(kept, len(names))
    others = np.arange(len(names)) != rare
    info = {"params": params, "class_names": names, "rare": rare,
            "train_images": len(kept), "train_images_full": len(train), "dropped_images": dropped,
            "train_boxes": counts.tolist(), "train_boxes_full": full.tolist(),
            "val_images": len(val), "val_boxes": box_counts(val.records, len(names)).tolist(),
            "achieved_ratio": float(counts[others].mean() / max(counts[rare], 1))}
    info_path.write_text(json.dumps(info, indent=1))
    print(f"data: wrote {data_dir} in {time.time() - t0:.0f}s: {len(kept)} of {len(train)} "
          f"training images kept ({dropped} with {names[rare]!r} dropped), "
          f"{len(val)} validation images")
    return info


def resolve_rare(value: str, names: list[str]) -> int:
    """The class index of ``--rare-class`` (an index, negative from the end, or a name)."""
    if value in names:
        return names.index(value)
    try:
        index = int(value)
    except ValueError:
        raise SystemExit(f"--rare-class {value!r}: not a class index or one of {names}") from None
    if not -len(names) <= index < len(names):
        raise SystemExit(f"--rare-class {index}: out of range for {len(names)} classes")
    return index % len(names)


# ----------------------------------------------------------------------------- runs


def run_specs(args, info: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(name, overrides)`` of each run."""
    specs = [("none", []), ("auto", ["train.loss={class_weights: auto}"])]
    n = len(info["class_names"])
    if args.weights:
        weights = [float(w) for w in args.weights.split(",")]
        if len(weights) != n:
            raise SystemExit(f"--weights has {len(weights)} values; the data set has {n} classes")
        specs.append(("explicit", [f"train.loss={{class_weights: {weights}}}"]))
    if args.also_copy_paste:
        counts = np.maximum(np.asarray(info["train_boxes"], np.float64), 1.0)
        class_p = [round(float(p), 4) for p in np.minimum(1.0, counts.min() / counts)]
        specs.append(("copy_paste", [f"data.augment.box_copy_paste={args.copy_paste_p}",
                                     f"data.augment.box_copy_paste_class_p={class_p}"]))
    return specs


def common_overrides(args, data_dir: Path) -> list[str]:
    budget = ([f"train.epochs={args.epochs}", "train.time_limit=0"] if args.epochs
              else [f"train.time_limit={args.time_limit}"])
    return ["data.format=coco", f"data.path={data_dir.absolute()}", f"data.imgsz={args.imgsz}",
            "log.progress=false", "log.plots=false", "log.tensorboard=false", *budget,
            *args.overrides]


def _final_eval(run_dir: Path) -> dict[str, Any]:
    """The COCO result of a run folder's latest periodic save on its validation split (for a
    run that finished without this script seeing its last evaluation)."""
    from detjax.eval.validation import eval_settings, evaluate
    from detjax.run import build_datasets, build_loaders, restore_run

    run = restore_run(run_dir / "checkpoints")
    val_ds = build_datasets(run.config, splits=("val",)).val
    loader = build_loaders(run.config, val_ds=val_ds).val
    result, _ = evaluate(run.model, loader, class_names=run.class_names,
                         **eval_settings(run.config))
    return result


def train_run(name: str, overrides: list[str], run_dir: Path, force: bool) -> dict[str, Any]:
    """Trains (or reuses) one run; returns its ``bench_result.json`` content."""
    from detjax.config import load_config
    from detjax.train import train_and_evaluate
    from detjax.train.loop import resolve_class_weights

    path = run_dir / RESULT
    if path.is_file() and not force:
        saved = json.loads(path.read_text())
        if saved["overrides"] != overrides:
            raise SystemExit(f"{run_dir} was trained with other settings ({saved['overrides']}); "
                             "use another --out or --force")
        print(f"run {name}: finished before, reusing {run_dir}")
        return saved
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = load_config(None, overrides)
    if cfg.compile_cache:
        from detjax.train.cli import enable_compile_cache

        enable_compile_cache()
    print(f"\n=== run {name}: {run_dir}")
    last: dict[str, Any] = {}

    def on_eval(epoch: int, result: dict[str, Any]) -> None:
        last.clear()
        last.update(result)

    final = train_and_evaluate(cfg, run_dir, on_eval=on_eval)
    result = last or _final_eval(run_dir)
    weights = None
    loss = cfg.train.loss
    if loss is not None and loss.get("class_weights") is not None:
        if loss.get("class_weights") == "auto":
            from detjax.run import build_datasets

            cfg = resolve_class_weights(cfg, build_datasets(cfg, splits=("train",)).train)
        weights = list(cfg.train.loss.class_weights)
    out = {"name": name, "overrides": overrides, "class_names": list(result["class_names"]),
           "class_weights": weights,
           "per_class_ap": [float(v) for v in result["per_class_ap"]],
           "per_class_ap50": [float(v) for v in result["per_class_ap50"]],
           **{k: float(result[k]) for k in ("map", "map50", "map75")},
           **{k: final[k] for k in ("epochs", "iterations", "train_time_s", "total_time_s")
              if k in final}}
    path.write_text(json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------- report


def _fmt(v: float) -> str:
    return f"{v:.4f}" if v > -1 else "-"


def _mean(values) -> float:
    values = [v for v in values if v > -1]
    return float(np.mean(values)) if values else -1.0


def table_rows(info: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[list[str], list[list]]:
    """The header and rows: one per class (train / val boxes, AP50-95 per run, AP50 per run),
    then the other classes' mean and the overall mAP."""
    names, rare = info["class_names"], info["rare"]
    header = (["class", "train boxes", "val boxes"] + [f"AP50-95 {r['name']}" for r in runs]
              + [f"AP50 {r['name']}" for r in runs])
    rows = []
    for c, name in enumerate(names):
        rows.append([name + (" (rare)" if c == rare else ""), info["train_boxes"][c],
                     info["val_boxes"][c]] + [_fmt(r["per_class_ap"][c]) for r in runs]
                    + [_fmt(r["per_class_ap50"][c]) for r in runs])
    others = [c for c in range(len(names)) if c != rare]
    rows.append(["mean of the others", round(_mean(info["train_boxes"][c] for c in others), 1),
                 round(_mean(info["val_boxes"][c] for c in others), 1)]
                + [_fmt(_mean(r["per_class_ap"][c] for c in others)) for r in runs]
                + [_fmt(_mean(r["per_class_ap50"][c] for c in others)) for r in runs])
    rows.append(["all (mAP)", sum(info["train_boxes"]), sum(info["val_boxes"])]
                + [_fmt(r["map"]) for r in runs] + [_fmt(r["map50"]) for r in runs])
    return header, rows


def text_table(header: list[str], rows: list[list], rare_row: int) -> str:
    cells = [header] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r, mark: mark + "  ".join(
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    out = [line(cells[0], "   "), "   " + "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r, ">> " if i == rare_row else "   ") for i, r in enumerate(cells[1:])]
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list], rare_row: int) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, row in enumerate(rows):
        cells = [str(v) for v in row]
        if i == rare_row:
            cells = [f"**{v}**" for v in cells]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def describe(info: dict[str, Any], runs: list[dict[str, Any]], budget: str) -> list[str]:
    names, rare = info["class_names"], info["rare"]
    counts = info["train_boxes"]
    lines = [
        f"Training split: {info['train_images']} of {info['train_images_full']} synthetic "
        f"images ({info['dropped_images']} images containing {names[rare]!r} dropped); box "
        f"counts per class {dict(zip(names, counts))} (before: "
        f"{dict(zip(names, info['train_boxes_full']))}); the other classes' mean / "
        f"{names[rare]!r} = {info['achieved_ratio']:.1f}.",
        f"Validation split: {info['val_images']} images, box counts "
        f"{dict(zip(names, info['val_boxes']))} (unchanged).",
        f"Budget per run: {budget}."]
    for r in runs:
        w = "" if r["class_weights"] is None else \
            f", class_weights {[round(v, 3) for v in r['class_weights']]}"
        lines.append(f"run {r['name']}: {r.get('epochs', '?')} epochs, {r.get('iterations', '?')} "
                     f"iterations, {r.get('total_time_s', 0) / 60:.1f} min{w}")
    base = runs[0]
    for r in runs[1:]:
        d, d50 = (r["per_class_ap"][rare] - base["per_class_ap"][rare],
                  r["per_class_ap50"][rare] - base["per_class_ap50"][rare])
        lines.append(f"{names[rare]} (rare) {r['name']} vs {base['name']}: AP50-95 {d:+.4f}, "
                     f"AP50 {d50:+.4f}; mAP50-95 {r['map'] - base['map']:+.4f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_class_weights")
    parser.add_argument("--rare-class", default="-1", help="index or name (default: the last)")
    parser.add_argument("--ratio", type=float, default=20.0,
                        help="mean box count of the other classes / the rare class's")
    parser.add_argument("--num-train", type=int, default=2000,
                        help="synthetic training images before subsetting")
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--synthetic-size", type=int, default=256)
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--synthetic-seed", type=int, default=0)
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--imgsz", type=int, default=160, help="data.imgsz")
    parser.add_argument("--time-limit", type=float, default=5.0, help="minutes per run")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train exactly this many epochs per run (no time limit)")
    parser.add_argument("--weights", default=None,
                        help="also a run with these class weights (w0,w1,...)")
    parser.add_argument("--also-copy-paste", action="store_true",
                        help="also a run with box copy-paste favouring the rare class")
    parser.add_argument("--copy-paste-p", type=float, default=0.5)
    parser.add_argument("--force", action="store_true",
                        help="rewrite the data and retrain every run")
    args, overrides = parser.parse_known_args(argv)
    if any("=" not in o or o.startswith("-") for o in overrides):
        parser.error(f"unrecognised arguments {overrides}; overrides look like key=value")
    args.overrides = overrides

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = prepare_data(args, out / "data")
    common = common_overrides(args, out / "data")
    runs = [train_run(name, [*common, *extra, f"workdir={out / f'run_{name}'}"],
                      out / f"run_{name}", args.force)
            for name, extra in run_specs(args, info)]

    budget = (f"{args.epochs} epoch(s)" if args.epochs
              else f"train.time_limit={args.time_limit} min")
    header, rows = table_rows(info, runs)
    notes = describe(info, runs, budget)
    print("\nclass weights on an imbalanced synthetic split (per-class COCO AP of the final "
          "evaluation, EMA weights)\n")
    print("\n".join(notes))
    print()
    print(text_table(header, rows, info["rare"]))
    md = ["# train.loss.class_weights on an imbalanced split", "",
          *[f"- {n}" for n in notes], "", markdown_table(header, rows, info["rare"]), ""]
    (out / "class_weights.md").write_text("\n".join(md))
    (out / "class_weights.json").write_text(json.dumps(
        {"data": info, "budget": budget, "runs": runs,
         "table": {"header": header, "rows": rows}}, indent=1))
    print(f"\nwrote {out / 'class_weights.md'} and {out / 'class_weights.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
