"""The ``detjax`` command line: ``detjax train | val | predict | anchors | demo ...``.

Each sub-command lives in the module that owns its logic and is registered here by
name as ``"module:function"``; the module is imported only when its command runs, so
``detjax --help`` stays fast. A command function takes the remaining argv (a list
of strings) and returns an exit code.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from detjax._malloc import limit_arenas

# name -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("detjax.demo:main", "IoU + NMS on generated detector-like candidates"),
    "anchors": ("detjax.anchors:main", "fit anchors to box sizes: detjax anchors BOXES.npy|DATA"),
    "val": ("detjax.eval.cli:val_main", "COCO mAP of a trained run: detjax val RUN_DIR"),
    "predict": ("detjax.infer.cli:predict_main", "draw boxes: detjax predict RUN_DIR SOURCE"),
    "train": ("detjax.train.cli:main",
              "train a detector: detjax train [config.yaml] key=value ..."),
    "export": ("detjax.export:main", "deploy a run as jax.export/ONNX: detjax export RUN_DIR"),
    "data": ("detjax.data.cli:main", "check a data set or export the synthetic one: detjax data"),
    "tune": ("detjax.tune.cli:main", "search hyperparameters: detjax tune [config] --trials N"),
    "convert": ("detjax.convert:main", "ultralytics .pt -> safetensors: detjax convert IN.pt OUT"),
    "prune": ("detjax.compress.prune_run:main",
              "prune a run: detjax prune RUN --method channel|magnitude --ratio 0.3"),
    "quantize": ("detjax.compress.cli:main", "int8 PTQ into a new run: detjax quantize RUN"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: detjax <command> [args...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"detjax: unknown command {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    limit_arenas()  # before JAX starts its threads
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
