"""Fixture trees laid out as the real datasets, made of small crops of the shipped samples."""
import os

import numpy as np
import pytest
from PIL import Image

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples")
VOC = os.path.join(SAMPLES, "voc2012_sample")
VOC_NAMES = ("2011_000003", "2011_000006", "2011_000025")


def voc_crop(name, size=(40, 56)):
  """(RGB uint8, VOC class ids uint8) of the top-left `size` of a VOC sample."""
  h, w = size
  image = np.asarray(Image.open(os.path.join(VOC, "JPEGImages", name + ".jpg")))[100:100 + h, 150:150 + w]
  label = np.asarray(Image.open(os.path.join(VOC, "SegmentationClass", name + ".png")))[100:100 + h, 150:150 + w]
  return np.ascontiguousarray(image), np.ascontiguousarray(label)


def save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)


@pytest.fixture
def convert_kwargs(tmp_path):
  return dict(output_dir=str(tmp_path / "out"), num_workers=1, progress=False)
