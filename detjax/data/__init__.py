"""detjax.data: detection data sets, augmentations and a fixed-shape batch loader.

Boxes are float32 ``[n, 4]`` ``xyxy`` absolute pixels (pixel ``(r, c)`` covers
``[c, c + 1) x [r, r + 1)``); labels int32 ``[n]``; images uint8 RGB ``[H, W, 3]``.

Data sets
  ``load_dataset(path, *, format='coco'|'yolo'|'voc', split='train', class_names=None,
      on_error='skip', verify=True)``
      -> :class:`DetectionDataset` (``class_names``, ``len()``, ``ds[i]`` -> :class:`Record`
      with ``image_path``, ``image_size`` (h, w), ``boxes``, ``labels``, ``difficult`` (VOC),
      ``mask_path`` / ``segments`` (instance masks), and ``ds.report`` (clipped boxes,
      dropped boxes with the reason, skipped images and ``skipped_files``, each problem
      naming its file). VOC class names default to ``voc_class_names(path)``: the sorted
      names in all ``Annotations/*.xml``, one list for every split. Every image is decoded
      up front (``verify_dataset``; EXIF orientation applied; cached by file size and
      mtime under ``$DETJAX_CACHE/verify``); ``write_report(ds.report, path)`` writes the
      skipped files and problems as text.
  ``write_dataset(ds, out_dir, *, format='coco'|'yolo', split='train')`` -> annotation path.
  ``synthetic_dataset(split='train', *, num_train=2000, num_val=300, seed=0,
      image_size=256, difficulty=0.5, cache_dir=None)`` -> the embedded default data set
      (7 shape classes, instance masks), generated once and cached under
      ``$DETJAX_CACHE`` or ``~/.cache/detjax``; ``SyntheticConfig`` for every knob.
  ``DataError``: a bad file (names the file and record/line).

Loader
  ``Loader(ds, LoaderConfig(...), **overrides)``; ``loader.epoch()`` yields the batches of
  the current epoch (``images`` uint8 [B,S,S,3], ``boxes`` f32 [B,M,4], ``labels`` i32
  [B,M], ``gt_mask`` bool [B,M], ``index``, ``image_mask``, ``scale``, ``pad``,
  ``orig_size``), ``iter(loader)`` loops over epochs; ``loader.state`` / ``loader.restore``
  checkpoint the position (epoch, batch, seed) so a resumed run sees the same batches;
  ``loader.report`` collects boxes over ``max_boxes`` and skipped images.
  ``LoaderConfig``: batch_size, image_size, multi_scale (per-batch sizes, multiples of 32),
  max_boxes, augment, aug (:class:`AugmentConfig`, ultralytics defaults incl.
  close_mosaic), epochs, shuffle, drop_remainder, repeat_threshold (LVIS repeat-factor
  sampling), workers (grain processes, started once per run; 0 = in-process), seed,
  on_error, use_masks (None = only when an op needs them), partners (mosaic/mixup images
  from the same batch, decoded once, or from the whole data set), pipeline (explicit ops).
  Scripts that use ``workers > 0`` need an ``if __name__ == "__main__":`` guard (spawn).

Augmentations (``Sample(image, boxes, labels, instance_map=None)``; ``rng`` a NumPy Generator)
  ``letterbox``, ``resize``, ``horizontal_flip``, ``random_hsv``, ``random_affine``,
  ``cutout``, ``mosaic4``, ``mixup``, ``copy_paste``, ``albu_geometric`` / ``albu_color``
  (albumentations Compose) with ``apply_albumentations``; ``repeat_factors`` /
  ``epoch_indices``. Registered ops: ``get_op(name, **params)(sample, rng, ctx)``,
  ``OPS``, ``register_op``, ``build_ops``.

Command line: ``detjax data check PATH --format ... [--class-names a,b] [--plot PNG]``
(class counts, objects per image, COCO small/medium/large, images without boxes, every
problem with its file), ``detjax data export OUT --format coco|yolo`` (the synthetic set
for other tools).

Nothing heavy is imported until used (albumentations, grain, cv2 load lazily).
"""

from detjax.data.formats import VOC_CLASSES, load_dataset, voc_class_names, write_dataset
from detjax.data.loader import Loader, LoaderConfig, LoaderState, load_sample, pad_boxes
from detjax.data.mosaic import copy_paste, mixup, mosaic4
from detjax.data.ops import OPS, AugmentConfig, build_ops, get_op, register_op
from detjax.data.records import (
    DataError,
    DataReport,
    DetectionDataset,
    Record,
    boxes_from_instance_map,
    load_instance_map,
    read_image,
)
from detjax.data.sampling import epoch_indices, repeat_factors
from detjax.data.synthetic import SHAPES, SyntheticConfig, generate_image, synthetic_dataset
from detjax.data.transforms import (
    Sample,
    albu_color,
    albu_geometric,
    apply_albumentations,
    box_candidates,
    cutout,
    horizontal_flip,
    letterbox,
    random_affine,
    random_hsv,
    resize,
)
from detjax.data.verify import verify_dataset, verify_image, write_report

__all__ = [
    "OPS", "SHAPES", "VOC_CLASSES", "AugmentConfig", "DataError", "DataReport",
    "DetectionDataset", "Loader", "LoaderConfig", "LoaderState", "Record", "Sample",
    "SyntheticConfig", "albu_color", "albu_geometric", "apply_albumentations",
    "box_candidates", "boxes_from_instance_map", "build_ops", "copy_paste", "cutout",
    "epoch_indices", "generate_image", "get_op", "horizontal_flip", "letterbox",
    "load_dataset", "load_instance_map", "load_sample", "mixup", "mosaic4", "pad_boxes",
    "random_affine", "random_hsv", "read_image", "register_op", "repeat_factors", "resize",
    "synthetic_dataset", "verify_dataset", "verify_image", "voc_class_names", "write_dataset",
    "write_report",
]
