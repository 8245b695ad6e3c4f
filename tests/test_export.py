"""SavedModel export: reloaded in a fresh process with plain tf.saved_model.load, same predictions."""
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import reference_case as rc
import tie_aware
from deeplab_tf import EvalOptions, ModelOptions, build_deeplab
from deeplab_tf.evaluation import inference
from deeplab_tf.export import export_saved_model, read_exported_model_options

PHOTO = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "voc2012_sample",
                     "JPEGImages", "2011_000003.jpg")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=4, output_stride=16, depth_multiplier=0.5)

# Runs in a fresh interpreter: nothing of deeplab_tf may be needed to load and run the export.
LOAD_AND_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs, outputs = sys.argv[1:4]
    data = np.load(inputs)
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["probabilities"](image_bytes=tf.constant([data["a"].tobytes(), data["b"].tobytes()]))
    tensor = loaded.signatures["image_tensor"](image_tensor=tf.constant(data["pixels_b"][None]))
    assert not any(m.startswith("deeplab_tf") for m in sys.modules), "the export needed deeplab_tf"
    np.savez(outputs, **{"served_" + k: v.numpy() for k, v in served.items()},
             **{"tensor_" + k: v.numpy() for k, v in tensor.items()})
""")


def _encode(pixels, fmt):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


def _model_with_varied_labels(images):
  """A model whose labels vary over `images`: the reference recipe's weights (a fresh model predicts
  0.25 for every class everywhere), with the logits' bias centring the classes' mean logits on them."""
  model = rc.assign_reference_weights(build_deeplab(OPTIONS))
  network = inference.low_resolution_logits_model(model)
  mean = np.mean([network(image[None].astype(np.float32)).numpy().mean(axis=(0, 1, 2)) for image in images],
                 axis=0)
  bias = model.get_layer("logits.semantic").bias
  bias.assign(bias - mean)
  return model


def test_export_reloads_in_a_fresh_process_with_the_same_predictions(tmp_path):
  photo = np.array(Image.open(PHOTO).convert("RGB"))
  model = _model_with_varied_labels([photo[100:149, 200:265], photo[50:91, 10:67]])
  eval_options = EvalOptions(add_flipped_images=True)
  export_dir = export_saved_model(model, str(tmp_path / "export"), OPTIONS, eval_options)
  assert read_exported_model_options(export_dir) == OPTIONS
  assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary left behind

  a = _encode(photo[100:149, 200:265], "JPEG")   # 49x65, a JPEG
  b = _encode(photo[50:91, 10:67], "PNG")        # 41x57, a PNG
  pixels_b = photo[50:91, 10:67]
  np.savez(tmp_path / "in.npz", a=np.frombuffer(a, np.uint8), b=np.frombuffer(b, np.uint8), pixels_b=pixels_b)
  subprocess.run([sys.executable, "-c", LOAD_AND_RUN, export_dir, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, cwd=str(tmp_path), env={**os.environ})
  out = np.load(tmp_path / "out.npz")

  np.testing.assert_array_equal(out["served_height"], [49, 41])
  np.testing.assert_array_equal(out["served_width"], [65, 57])
  assert out["served_semantic_predictions"].shape == (2, 49, 65)
  assert out["served_probabilities"].shape == (2, 49, 65, 4)
  # The fresh process runs a traced graph (other kernels and fusions than this eager process): the
  # probabilities agree to float noise (~1e-6 here; 1e-5 allowed), labels by the tie-aware rule.
  for i, (encoded, (h, w)) in enumerate([(a, (49, 65)), (b, (41, 57))]):
    image = tf.io.decode_image(encoded, channels=3)[tf.newaxis]
    expected = inference.predict_probabilities(model, image, eval_options).numpy()[0]
    tie_aware.assert_matches(out["served_probabilities"][i, :h, :w], expected, 1e-5,
                             our_labels=out["served_semantic_predictions"][i, :h, :w])
    assert len(np.unique(expected.argmax(-1))) == 4  # every class wins somewhere: labels are tested
    assert (out["served_semantic_predictions"][i, h:] == -1).all()
    assert (out["served_semantic_predictions"][i, :, w:] == -1).all()
    assert (out["served_probabilities"][i, h:] == 0).all()
  # The original export's interface: uint8 [1, H, W, 3] in, int32 [1, H, W] out, same as the PNG above.
  assert out["tensor_semantic_predictions"].dtype == np.int32
  tie_aware.assert_matches(out["tensor_probabilities"][0], out["served_probabilities"][1, :41, :57], 1e-5,
                           our_labels=out["tensor_semantic_predictions"][0],
                           reference_labels=out["served_semantic_predictions"][1, :41, :57])


def test_export_refuses_existing_dir_and_sliding_window(tmp_path):
  model = build_deeplab(OPTIONS)
  (tmp_path / "taken").mkdir()
  with pytest.raises(FileExistsError, match="taken exists"):
    export_saved_model(model, str(tmp_path / "taken"), OPTIONS)
  with pytest.raises(ValueError, match="sliding_window cannot be exported"):
    export_saved_model(model, str(tmp_path / "new"), OPTIONS,
                       EvalOptions(eval_crop_size=(33, 33), sliding_window=True))
  with pytest.raises(ValueError, match="predicts 4 classes but model_options.num_classes=5"):
    export_saved_model(model, str(tmp_path / "new"), OPTIONS.replace(num_classes=5))
  assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_export_resizes_into_the_range_and_predicts_at_the_image_size(tmp_path):
  """research/deeplab export_model.py's --min_resize_value/--max_resize_value/--resize_factor: the image is
  resized into the range inside the export, predicted there, and the labels resized back (nearest)."""
  from deeplab_tf.data import preprocess
  from deeplab_tf.image_ops import resize_bilinear_align_corners, resize_nearest_align_corners
  pixels = np.array(Image.open(PHOTO).convert("RGB"))[50:91, 10:67]  # 41x57
  model = _model_with_varied_labels([pixels])
  resize = dict(min_resize_value=33, max_resize_value=40, resize_factor=8, keep_aspect_ratio=True)
  export_dir = export_saved_model(model, str(tmp_path / "export"), OPTIONS, resize=resize)
  assert json.loads(open(os.path.join(export_dir, "assets.extra", "resize.json")).read()) == resize
  out = tf.saved_model.load(export_dir).signatures["image_tensor"](image_tensor=pixels[None])
  assert out["semantic_predictions"].shape == (1, 41, 57)
  assert out["probabilities"].shape == (1, 41, 57, 4)
  # By hand: max 40 lowered to 8k+1 = 33; 57 is the larger side -> scale 33/57 -> 23x33, sides raised
  # to 8k+1 -> 25x33.
  size = preprocess.resize_to_range_size(41, 57, 33, 40, 8).numpy()
  np.testing.assert_array_equal(size, [25, 33])
  resized = resize_bilinear_align_corners(tf.constant(pixels[None], tf.float32), size)
  expected = inference.predict_probabilities(model, resized).numpy()
  top2 = np.sort(expected, axis=-1)[..., -2:]
  clear = resize_nearest_align_corners((top2[..., 1] - top2[..., 0] > 1e-4)[..., None].astype(np.uint8),
                                       (41, 57)).numpy()[0, ..., 0] == 1
  labels = resize_nearest_align_corners(expected.argmax(-1)[..., None].astype(np.int32), (41, 57)).numpy()
  assert clear.mean() > 0.9 and len(np.unique(labels)) > 1
  np.testing.assert_array_equal(out["semantic_predictions"].numpy()[0][clear], labels[0, ..., 0][clear])
  with pytest.raises(ValueError, match="--max_resize_value=40 needs --min_resize_value"):
    export_saved_model(model, str(tmp_path / "bad"), OPTIONS, resize=dict(max_resize_value=40))


def test_mixed_bfloat16_export_stores_bfloat16_weights(tmp_path):
  """A mixed_bfloat16 model (--mixed_precision) exports folded bfloat16 weights and serves float32."""
  from deeplab_tf.model.deeplab import global_dtype_policy  # pylint: disable=import-outside-toplevel
  with global_dtype_policy("mixed_bfloat16"):
    model = build_deeplab(OPTIONS)
  export_dir = str(tmp_path / "export")
  export_saved_model(model, export_dir, OPTIONS)
  dtypes = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables")
                                    ).get_variable_to_dtype_map()
  kernels = {name: dtype for name, dtype in dtypes.items() if "kernel" in name}
  # Every convolution but the logits one, which is float32 in the mixed model too.
  assert list(kernels.values()).count(tf.float32) == 1 and len(kernels) > 50, kernels
  loaded = tf.saved_model.load(export_dir)
  photo = np.array(Image.open(PHOTO).convert("RGB"))[100:149, 200:265]
  out = loaded.signatures["probabilities"](image_bytes=tf.constant([_encode(photo, "PNG")]))
  assert out["probabilities"].dtype == tf.float32 and tuple(out["probabilities"].shape) == (1, 49, 65, 4)
  np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
  assert tuple(out["semantic_predictions"].shape) == (1, 49, 65)
