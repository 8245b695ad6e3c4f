"""Training's TensorBoard sample images: labels and predictions in the dataset's colours, read back."""
import numpy as np
import tensorflow as tf

from deeplab_tf.data.colormaps import get_colormap
from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import trainer

import helpers


def _images(logdir):
  """{tag: [decoded uint8 images]} of the event files of `logdir`."""
  found = {}
  for event_file in tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      for value in event.summary.value:
        if value.tag.startswith("samples/"):
          encoded = tf.make_ndarray(value.tensor)[2:]  # width, height, then the PNGs
          found[value.tag] = [tf.io.decode_png(png).numpy() for png in encoded]
  return found


def test_label_and_prediction_samples_use_the_dataset_colormap(tmp_path):
  images, labels = helpers.examples(n=4)
  labels[:, :2] = 255  # ignored rows: shown in the colormap's colour for 255, as deeplab_vis does
  options = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=2, training_number_of_steps=1,
                         base_learning_rate=0.0, save_summaries_steps=1, save_summaries_images=True,
                         log_steps=1, seed=1)
  trainer.train(ModelOptions(num_classes=helpers.NUM_CLASSES), options,
                helpers.dataset_fn_for(2, images, labels), str(tmp_path), model_fn=helpers.tiny_model,
                ignore_label=255, colormap="cityscapes")
  found = _images(tmp_path)
  colours = get_colormap("cityscapes")
  assert len(found["samples/label"]) == 2 and found["samples/label"][0].shape == (helpers.CROP, helpers.CROP, 3)
  for k in range(2):  # the first batch: images 0 and 1 (dataset_fn_for neither shuffles nor augments)
    np.testing.assert_array_equal(found["samples/label"][k], colours[labels[k, ..., 0]])
    np.testing.assert_array_equal(found["samples/image"][k], images[k].astype(np.uint8))
  predicted = np.concatenate([p.reshape(-1, 3) for p in found["samples/prediction"]])
  # Every predicted pixel is one of the three class colours (road, sidewalk, building), never grey ids.
  assert {tuple(c) for c in predicted} <= {tuple(c) for c in colours[:helpers.NUM_CLASSES]}
