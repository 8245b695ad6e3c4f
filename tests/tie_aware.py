"""The one rule for comparing our scores and labels with a reference computed elsewhere.

A reference computed by another process, program or CPU (the original's outputs, an exported model run
in a fresh process, a binary's predictions) agrees with ours only up to float noise: different kernels
(oneDNN on or off, AVX2 or AVX-512, eager or graph, batch 1 or 2) sum in different orders. If every
score differs by at most `allowed_error`, ours can pick a different label than the reference only where
the reference's best two scores are within `2 * allowed_error` of each other. So:

- scores must agree within `allowed_error` everywhere;
- labels must be equal wherever the reference's top-1 minus top-2 margin exceeds `2 * allowed_error`;
- the pixels at or below that margin ("near ties") are counted, and their share of all pixels must stay
  at or below `MAX_NEAR_TIE_SHARE` (0.1%): a comparison made mostly of near ties would prove nothing.

Used by every test comparing with reference outputs and by `benchmarks/reference_equivalence.py`.
"""

import dataclasses
from typing import Optional

import numpy as np

MAX_NEAR_TIE_SHARE = 1e-3


@dataclasses.dataclass(frozen=True)
class Comparison:
  """How ours compares with a reference (see the module docstring).

  Attributes:
    pixels: number of pixels compared.
    max_error: max |ours - reference| over all scores.
    allowed_error: the bound `max_error` is held to.
    near_ties: pixels whose reference top-2 margin is at most `2 * allowed_error`.
    different: pixels whose labels differ.
    different_clear: pixels whose labels differ although the reference margin exceeds the bound.
  """
  pixels: int
  max_error: float
  allowed_error: float
  near_ties: int
  different: int
  different_clear: int

  @property
  def near_tie_share(self) -> float:
    return self.near_ties / max(self.pixels, 1)

  @property
  def equal_share(self) -> float:
    return 1.0 - self.different / max(self.pixels, 1)

  def __str__(self):
    return (f"max error {self.max_error:.3g} (allowed {self.allowed_error:.3g}), labels equal "
            f"{self.equal_share:.4%} ({self.different} of {self.pixels} differ, "
            f"{self.different_clear} of them clear of a near tie), near ties {self.near_ties} "
            f"({self.near_tie_share:.4%})")


def near_tie_mask(reference: np.ndarray, allowed_error: float) -> np.ndarray:
  """Pixels of `reference` scores `[..., classes]` whose top-1 minus top-2 margin is <= 2 * error."""
  top2 = np.sort(np.asarray(reference, np.float64), axis=-1)[..., -2:]
  return top2[..., 1] - top2[..., 0] <= 2.0 * allowed_error


def compare(ours: Optional[np.ndarray], reference: np.ndarray, allowed_error: float,
            our_labels: Optional[np.ndarray] = None,
            reference_labels: Optional[np.ndarray] = None) -> Comparison:
  """Compares scores `[..., classes]` (logits or probabilities) and their labels.

  Args:
    ours: our scores, or None when only `our_labels` are known (max_error is then 0).
    reference: the reference's scores, same shape.
    allowed_error: largest |ours - reference| the float noise can explain, in score units.
    our_labels: our labels `[...]`; None takes the argmax of `ours`.
    reference_labels: the reference's labels; None takes the argmax of `reference`.
  """
  reference = np.asarray(reference)
  if our_labels is None:
    our_labels = np.asarray(ours).argmax(-1)
  if reference_labels is None:
    reference_labels = reference.argmax(-1)
  our_labels, reference_labels = np.asarray(our_labels), np.asarray(reference_labels)
  assert our_labels.shape == reference_labels.shape == reference.shape[:-1], (
      our_labels.shape, reference_labels.shape, reference.shape)
  max_error = 0.0
  if ours is not None:
    ours = np.asarray(ours)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    max_error = float(np.abs(ours.astype(np.float64) - reference).max())
  ties = near_tie_mask(reference, allowed_error)
  different = our_labels != reference_labels
  return Comparison(pixels=int(different.size), max_error=max_error, allowed_error=float(allowed_error),
                    near_ties=int(ties.sum()), different=int(different.sum()),
                    different_clear=int((different & ~ties).sum()))


def assert_matches(ours: Optional[np.ndarray], reference: np.ndarray, allowed_error: float,
                   our_labels: Optional[np.ndarray] = None,
                   reference_labels: Optional[np.ndarray] = None,
                   max_near_tie_share: float = MAX_NEAR_TIE_SHARE) -> Comparison:
  """`compare`, then asserts the rule of the module docstring; returns the comparison."""
  result = compare(ours, reference, allowed_error, our_labels, reference_labels)
  assert result.max_error <= allowed_error, str(result)
  assert result.different_clear == 0, str(result)
  assert result.near_tie_share <= max_near_tie_share, str(result)
  return result
