"""``detjax convert WEIGHTS.pt OUT.safetensors``: an ultralytics YOLOv8 detect checkpoint as a
detjax weights file (class names, model scale and source in its metadata).

Needs torch and ultralytics, at convert time only: the ``.pt`` file is a pickle of their
classes. The output loads anywhere with ``model.weights: OUT.safetensors``. Weights converted
from ultralytics carry ultralytics' licence (AGPL-3.0).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="detjax convert",
        description="Convert an ultralytics YOLOv8 detect checkpoint (.pt) to detjax "
                    "safetensors. Needs torch and ultralytics.")
    parser.add_argument("weights", help="ultralytics checkpoint, e.g. yolov8n.pt")
    parser.add_argument("out", help="output file, e.g. yolov8n.safetensors")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        print(f"detjax convert: the output must end in .safetensors, got {args.out!r}",
              file=sys.stderr)
        return 2
    from detjax.models.ultralytics import read_ultralytics_checkpoint, ultralytics_to_detjax
    from detjax.models.weights import save_arrays

    try:
        state_dict, meta = read_ultralytics_checkpoint(args.weights)
        arrays = ultralytics_to_detjax(state_dict)
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"detjax convert: {err}", file=sys.stderr)
        return 2
    path = save_arrays(arrays, args.out, metadata=meta)
    names = meta["class_names"] or []
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    print(f"detjax convert: wrote {path} ({meta['model']}{'-p2' if meta['p2'] else ''}, "
          f"{meta['num_classes']} classes: {shown}; {len(arrays)} tensors). Converted "
          "ultralytics weights carry ultralytics' AGPL-3.0 licence.")
    return 0
