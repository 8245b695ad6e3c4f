"""DeepLabv2's fully connected CRF post-processing (Chen et al. 2017, DeepLabv2 TPAMI, section 3.3).

The network's class probabilities are the unary potentials (`-log p`) of Krähenbühl and Koltun's dense
CRF (NIPS 2011, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials"), whose
pairwise potential is a Potts compatibility times two Gaussian kernels on pixel positions p and RGB
colours I:

  w1 exp(-|p_i - p_j|^2 / (2 bi_xy_std^2) - |I_i - I_j|^2 / (2 bi_rgb_std^2))   (appearance)
  + w2 exp(-|p_i - p_j|^2 / (2 pos_xy_std^2))                                     (smoothness)

solved by `iterations` steps of mean-field inference with permutohedral-lattice filtering, on the
image at its own size. Defaults (`CrfOptions`): DeepLabv2 section 4.1 fixes w2 = 3, pos_xy_std = 3 and
10 mean-field iterations and cross-validates w1, bi_xy_std, bi_rgb_std; w1 = 4, bi_xy_std = 67,
bi_rgb_std = 3 are the values DeepLabv2's released ResNet-101 PASCAL model was evaluated with (its
release notes; ports such as deeplab-pytorch also use pos_xy_std = 1 there). Cross-validate them again
for another dataset: bi_xy_std is in pixels of the image and bi_rgb_std in [0, 255] intensity units.

Needs the optional `pydensecrf2` package (`pip install deeplab_tf[crf]`, built from source), the
maintained fork of Krähenbühl's code with its Python interface `pydensecrf.densecrf`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deeplab_tf.options import _JsonOptions

# Probabilities are clipped from below before the log, so that a zero gives a finite unary.
_MIN_PROBABILITY = 1e-10


@dataclasses.dataclass(frozen=True)
class CrfOptions(_JsonOptions):
  """The dense CRF's parameters, with DeepLabv2's names (`run_densecrf.sh`: bi_w, bi_xy_std, ...).

  Attributes:
    iterations: mean-field iterations (10 in DeepLabv2).
    pos_w, pos_xy_std: weight w2 and width in pixels of the smoothness kernel (3 and 3).
    bi_w, bi_xy_std, bi_rgb_std: weight w1, position width in pixels and colour width (in [0, 255]
      units) of the appearance kernel (4, 67, 3).
  """

  iterations: int = 10
  pos_w: float = 3.0
  pos_xy_std: float = 3.0
  bi_w: float = 4.0
  bi_xy_std: float = 67.0
  bi_rgb_std: float = 3.0

  def __post_init__(self):
    if self.iterations < 0:
      raise ValueError(f"crf iterations={self.iterations}: expected 0 or more.")
    for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
      if getattr(self, name) <= 0:
        raise ValueError(f"crf {name}={getattr(self, name)}: expected a positive kernel width.")
    for name in ("pos_w", "bi_w"):
      if getattr(self, name) < 0:
        raise ValueError(f"crf {name}={getattr(self, name)}: expected a non-negative weight.")


def _densecrf_module():
  from deeplab_tf.errors import require_extra  # pylint: disable=import-outside-toplevel
  # pydensecrf2 builds from source: it needs a C++ compiler.
  return require_extra("pydensecrf.densecrf", "crf", "The dense CRF (--crf_iterations)")


def dense_crf(image, probabilities, options: CrfOptions = CrfOptions()) -> np.ndarray:
  """Refines one image's class probabilities with the fully connected CRF.

  Args:
    image: `[height, width, 3]` RGB, uint8 or float with integer-valued pixels in [0, 255] (the
      appearance kernel compares these colours).
    probabilities: `[height, width, num_classes]` float class probabilities (softmax output) of the
      same image.
    options: the CRF's parameters.

  Returns:
    float32 `[height, width, num_classes]` marginals after `options.iterations` mean-field steps
    (with 0 iterations, the input renormalised).

  Raises:
    ValueError: shapes that are not `[h, w, 3]` and `[h, w, c]` of the same h, w, or fewer than two
      classes, or image values outside [0, 255].
    MissingExtraError: (an ImportError) pydensecrf2 is not installed (the `crf` extra).
  """
  image = np.asarray(image)
  probabilities = np.asarray(probabilities, dtype=np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [height, width, 3] RGB, got shape {image.shape}.")
  if probabilities.ndim != 3 or probabilities.shape[:2] != image.shape[:2] or probabilities.shape[-1] < 2:
    raise ValueError(f"probabilities must be [height, width, num_classes >= 2] of the image's size "
                     f"{image.shape[:2]}, got shape {probabilities.shape}.")
  if image.dtype != np.uint8:
    if image.size and (image.min() < 0 or image.max() > 255):
      raise ValueError(f"image values must be in [0, 255], got [{image.min()}, {image.max()}].")
    image = np.round(image).astype(np.uint8)
  densecrf = _densecrf_module()
  height, width, num_classes = probabilities.shape
  crf = densecrf.DenseCRF2D(width, height, num_classes)
  unary = -np.log(np.maximum(probabilities, _MIN_PROBABILITY))
  crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, num_classes).T))
  crf.addPairwiseGaussian(sxy=options.pos_xy_std, compat=options.pos_w)
  crf.addPairwiseBilateral(sxy=options.bi_xy_std, srgb=options.bi_rgb_std,
                           rgbim=np.ascontiguousarray(image), compat=options.bi_w)
  marginals = np.asarray(crf.inference(options.iterations), dtype=np.float32)
  return marginals.T.reshape(height, width, num_classes)


def dense_crf_labels(images, probabilities, options: CrfOptions = CrfOptions(), heights=None,
                     widths=None) -> np.ndarray:
  """Argmax of `dense_crf` for each image of a batch, on its unpadded `height x width` top-left part.

  Args:
    images: `[batch, H, W, 3]` RGB in [0, 255] (padded to a common size).
    probabilities: `[batch, H, W, num_classes]` class probabilities.
    options: the CRF's parameters.
    heights, widths: per image, the size of the real image inside the padding; None means H, W.
      Outside it, the labels are the plain argmax (the padding is not part of any image).

  Returns:
    int32 `[batch, H, W]` class ids.
  """
  images = np.asarray(images)
  probabilities = np.asarray(probabilities, dtype=np.float32)
  labels = probabilities.argmax(-1).astype(np.int32)
  for b in range(probabilities.shape[0]):
    h = probabilities.shape[1] if heights is None else int(heights[b])
    w = probabilities.shape[2] if widths is None else int(widths[b])
    labels[b, :h, :w] = dense_crf(images[b, :h, :w], probabilities[b, :h, :w], options).argmax(-1)
  return labels
