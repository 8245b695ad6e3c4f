"""TF Serving end to end as far as this machine allows: the versioned layout deeplab_export_model writes,
the REST bodies and the gRPC PredictRequest a client sends (turned into the signature's inputs as the
server does), saved_model_cli show/run, and bad requests that fail clearly while the model keeps serving.

There is no tensorflow_model_server here (it ships as a Docker image / Debian binary outside PyPI), so:
- REST: the JSON body is converted to tensors following TF Serving's documented rules
  (tensorflow_serving/g3doc/api_rest.md: "instances" row format and "inputs" columnar format; a
  `{"b64": ...}` object is base64-decoded for DT_STRING inputs; a signature with one input accepts bare
  values) and the response is built as the server builds it ("predictions" / "outputs").
- gRPC: a real gRPC server on 127.0.0.1 implements tensorflow-serving-api's PredictionService
  with the server's conversions (`TensorProto` <-> tensor, InvalidArgumentError -> INVALID_ARGUMENT), and
  the client is the package's own `PredictionServiceStub`.
"""
import base64
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from deeplab_tf import EvalOptions, ModelOptions, build_deeplab
from deeplab_tf.bin import export_model as export_bin
from deeplab_tf.evaluation import inference
from deeplab_tf import export
from deeplab_tf.errors import UserError
from deeplab_tf.model_io import save_model_options

PHOTO = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "voc2012_sample",
                     "JPEGImages", "2011_000003.jpg")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=3, output_stride=16, depth_multiplier=0.5)
MAX_PIXELS = 80 * 80  # the fixture's --max_image_pixels: a 81x81 image is "huge"


def _encode(pixels, fmt):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A checkpoint exported by the binary into a model base path, loaded as a server would."""
  root = tmp_path_factory.mktemp("serving")
  model = build_deeplab(OPTIONS)
  save_model_options(str(root / "train"), OPTIONS)
  tf.train.Checkpoint(model=model).save(str(root / "train" / "ckpt"))
  (root / "models" / "deeplab" / "3").mkdir(parents=True)   # an older version already there
  (root / "models" / "deeplab" / "notes").mkdir()           # not a version: ignored
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), export_path=str(root / "models" / "deeplab"),
                           max_image_pixels=MAX_PIXELS, add_flipped_images=True):
    export_bin.main([])
  export_dir = str(root / "models" / "deeplab" / "4")
  photo = np.array(Image.open(PHOTO).convert("RGB"))
  images = {"jpeg": photo[100:149, 200:265], "png": photo[50:91, 10:67]}
  encoded = {"jpeg": _encode(images["jpeg"], "JPEG"), "png": _encode(images["png"], "PNG")}
  loaded = tf.saved_model.load(export_dir)
  return dict(root=root, model=model, export_dir=export_dir, loaded=loaded, images=images, encoded=encoded,
              eval_options=EvalOptions(add_flipped_images=True))


def _keras_probabilities(served, encoded):
  image = tf.io.decode_image(encoded, channels=3)[tf.newaxis]
  return inference.predict_probabilities(served["model"], image, served["eval_options"]).numpy()[0]


def _assert_matches_keras(served, encoded, labels, probabilities):
  """Probabilities within float noise of the Keras model; labels equal where the top-2 margin is clear."""
  expected = _keras_probabilities(served, encoded)
  h, w = expected.shape[:2]
  # Same graph, same process, but the export's tf.function may fuse ops differently: 1e-5 absolute.
  np.testing.assert_allclose(probabilities[:h, :w], expected, atol=1e-5)
  top2 = np.sort(expected, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4
  np.testing.assert_array_equal(np.asarray(labels)[:h, :w][clear], expected.argmax(-1)[clear])


def test_versioned_layout(served, tmp_path):
  base = served["root"] / "models" / "deeplab"
  assert sorted(os.listdir(base)) == ["3", "4", "notes"]  # the next version, no temporary left behind
  assert sorted(os.listdir(served["export_dir"])) == ["assets", "assets.extra", "fingerprint.pb",
                                                      "saved_model.pb", "variables"]
  assert export.read_exported_model_options(served["export_dir"]) == OPTIONS
  assert export.versioned_export_dir(str(tmp_path / "new")) == str(tmp_path / "new" / "1")
  assert export.versioned_export_dir(str(base), 12) == str(base / "12")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="export_path=.*file is a file"):
    export.versioned_export_dir(str(tmp_path / "file"))
  with pytest.raises(ValueError, match="export_version=-1"):
    export.versioned_export_dir(str(base), -1)
  with flagsaver.flagsaver(checkpoint_dir=str(served["root"] / "train"), export_path=str(base),
                           export_version=4):
    with pytest.raises(UserError, match="4 exists"):
      export_bin.main([])
  with flagsaver.flagsaver(checkpoint_dir=str(served["root"] / "train"), export_path=str(base),
                           quantize="int8"):
    with pytest.raises(ValueError, match="--quantize=int8 applies to --format=tflite only"):
      export_bin.main([])


def test_export_to_ram_filesystem_loads_back():
  """Every file operation goes through tf.io.gfile: a whole export (temporary + move) on ram://."""
  model = build_deeplab(OPTIONS)
  base = "ram://serving_test/models/deeplab"
  path = export.export_saved_model(model, export.versioned_export_dir(base), OPTIONS)
  assert path == base + "/1"
  assert export.versioned_export_dir(base) == base + "/2"
  assert sorted(tf.io.gfile.listdir(base)) == ["1"]
  assert export.read_exported_model_options(path) == OPTIONS
  image = np.full((1, 33, 33, 3), 90, np.uint8)
  labels = tf.saved_model.load(path).signatures["image_tensor"](image_tensor=image)["semantic_predictions"]
  np.testing.assert_array_equal(labels.numpy(), inference.predict_labels(model, image).numpy())


# --- REST --------------------------------------------------------------------------------------------

def _rest_value(value, dtype):
  """One JSON value -> numpy, as TF Serving's json_tensor: {"b64": ...} for DT_STRING only."""
  if dtype == tf.string:
    decode = lambda v: base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode("utf-8")
    return np.array([decode(v) for v in value] if isinstance(value, list) else decode(value), dtype=object)
  return np.asarray(value, dtype=dtype.as_numpy_dtype)


def _rest_output(name, value):
  """A tensor as TF Serving's json_tensor writes it: DT_STRING outputs named `*_bytes` as {"b64": ...}."""
  if value.dtype == object and name.endswith("_bytes"):
    return np.vectorize(lambda v: {"b64": base64.b64encode(v).decode("ascii")}, otypes=[object])(value).tolist()
  return value.tolist()


def _png_labels(value):
  """Class ids of a `semantic_predictions_png_bytes` value (a REST {"b64": ...} or bytes)."""
  data = base64.b64decode(value["b64"]) if isinstance(value, dict) else value
  return np.asarray(Image.open(io.BytesIO(data)))


def rest_predict(signatures, body: str) -> dict:
  """A TF Serving REST `:predict` call: JSON body in, JSON response out (row or columnar format)."""
  request = json.loads(body)
  signature = signatures[request.get("signature_name", "serving_default")]
  specs = signature.structured_input_signature[1]
  if "instances" in request:
    rows = request["instances"]
    if len(specs) == 1 and not (isinstance(rows[0], dict) and set(rows[0]) <= set(specs) and
                                "b64" not in rows[0]):
      rows = [{next(iter(specs)): row} for row in rows]   # bare values for a one-input signature
    inputs = {name: np.stack([_rest_value(row[name], spec.dtype) for row in rows])
              for name, spec in specs.items()}
  else:
    columns = request["inputs"]
    if not isinstance(columns, dict) or "b64" in columns:
      columns = {next(iter(specs)): columns}
    inputs = {name: _rest_value(columns[name], spec.dtype) for name, spec in specs.items()}
  outputs = {k: _rest_output(k, v.numpy()) for k, v in signature(**inputs).items()}
  if "instances" in request:
    count = len(request["instances"])
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(count)]}
  return {"outputs": outputs}


def test_rest_row_and_columnar_bodies(served):
  signatures = served["loaded"].signatures
  jpeg, png = served["encoded"]["jpeg"], served["encoded"]["png"]
  b64 = lambda data: {"b64": base64.b64encode(data).decode("ascii")}
  row = json.dumps({"signature_name": "probabilities",
                    "instances": [{"image_bytes": b64(jpeg)}, {"image_bytes": b64(png)}]})
  response = json.loads(json.dumps(rest_predict(signatures, row)))  # through JSON, as on the wire
  predictions = response["predictions"]
  assert [p["height"] for p in predictions] == [49, 41] and [p["width"] for p in predictions] == [65, 57]
  for prediction, encoded in zip(predictions, (jpeg, png)):
    labels = np.array(prediction["semantic_predictions"])
    assert labels.shape == (49, 65)  # padded to the request's largest image
    _assert_matches_keras(served, encoded, labels, np.array(prediction["probabilities"]))
  assert (np.array(predictions[1]["semantic_predictions"])[41:] == export.PADDING_LABEL).all()

  columnar = json.dumps({"signature_name": "probabilities", "inputs": {"image_bytes": [b64(png)]}})
  outputs = json.loads(json.dumps(rest_predict(signatures, columnar)))["outputs"]
  np.testing.assert_array_equal(outputs["semantic_predictions"][0],
                                np.array(predictions[1]["semantic_predictions"])[:41, :57])
  bare = json.dumps({"inputs": [b64(png)]})  # one-input signature, default signature name: PNG labels
  default = json.loads(json.dumps(rest_predict(signatures, bare)))["outputs"]
  assert default["height"] == [41] and default["width"] == [57]
  np.testing.assert_array_equal(_png_labels(default[export.LABELS_PNG_OUTPUT][0]), outputs["semantic_predictions"][0])

  # The original export's interface over REST: a nested list of uint8 pixels.
  pixels = served["images"]["png"]
  tensor = json.dumps({"signature_name": "image_tensor", "instances": [pixels.tolist()]})
  labels = np.array(rest_predict(signatures, tensor)["predictions"][0]["semantic_predictions"])
  np.testing.assert_array_equal(labels, np.array(predictions[1]["semantic_predictions"])[:41, :57])


# --- gRPC --------------------------------------------------------------------------------------------

class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """TF Serving's Predict: TensorProto inputs -> signature -> TensorProto outputs (output_filter kept)."""

  def __init__(self, signatures):
    self._signatures = signatures

  def Predict(self, request, context):
    signature = self._signatures[request.model_spec.signature_name or "serving_default"]
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    try:
      outputs = signature(**inputs)
    except tf.errors.InvalidArgumentError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
      if not request.output_filter or name in request.output_filter:
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


@pytest.fixture(scope="module")
def grpc_stub(served):
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _PredictionService(served["loaded"].signatures), server)
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  channel = grpc.insecure_channel(f"127.0.0.1:{port}")
  yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
  channel.close()
  server.stop(grace=None)


def _request(signature_name, name, values, output_filter=()):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "deeplab"
  request.model_spec.signature_name = signature_name
  request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
  request.output_filter.extend(output_filter)
  return request


def test_grpc_predict_request(served, grpc_stub):
  jpeg, png = served["encoded"]["jpeg"], served["encoded"]["png"]
  response = grpc_stub.Predict(_request("probabilities", "image_bytes", [jpeg, png]), timeout=120)
  assert sorted(response.outputs) == ["height", "probabilities", "semantic_predictions", "width"]
  labels = tf.make_ndarray(response.outputs["semantic_predictions"])
  probabilities = tf.make_ndarray(response.outputs["probabilities"])
  assert labels.dtype == np.int32 and labels.shape == (2, 49, 65)
  np.testing.assert_array_equal(tf.make_ndarray(response.outputs["height"]), [49, 41])
  for i, encoded in enumerate((jpeg, png)):
    _assert_matches_keras(served, encoded, labels[i], probabilities[i])

  pixels = served["images"]["png"][np.newaxis]
  response = grpc_stub.Predict(_request("image_tensor", "image_tensor", pixels, ["semantic_predictions"]),
                               timeout=120)
  assert list(response.outputs) == ["semantic_predictions"]
  np.testing.assert_array_equal(tf.make_ndarray(response.outputs["semantic_predictions"])[0],
                                labels[1, :41, :57])

  response = grpc_stub.Predict(_request("serving_default", "image_bytes", [jpeg, png]), timeout=120)
  assert sorted(response.outputs) == ["height", export.LABELS_PNG_OUTPUT, "width"]
  for i, png_labels in enumerate(tf.make_ndarray(response.outputs[export.LABELS_PNG_OUTPUT])):
    h, w = tf.make_ndarray(response.outputs["height"])[i], tf.make_ndarray(response.outputs["width"])[i]
    np.testing.assert_array_equal(_png_labels(png_labels), labels[i, :h, :w])


def _huge_png_header():
  """A PNG signature + IHDR claiming 100000 x 100000 pixels (a decompression bomb's header)."""
  import struct
  import zlib
  ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr +
          struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


@pytest.mark.parametrize("bad, message", [
    (b"", r"image_bytes\[1\]: empty string"),
    (b"this is not an image", r"image_bytes\[1\]: 20 bytes that are not a JPEG, PNG, GIF or BMP"),
    ("webp", r"image_bytes\[1\]: \d+ bytes that are not a JPEG, PNG, GIF or BMP file .*WebP"),
    ("tiff", r"image_bytes\[1\]: \d+ bytes that are not a JPEG, PNG, GIF or BMP"),
    ("large_png", r"image_bytes\[1\]: image of 81x81 pixels exceeds the limit max_image_pixels=6400 of this export"),
    ("large_jpeg", r"image_bytes\[1\]: image of 90x81 pixels exceeds"),
    ("large_bmp", r"image_bytes\[1\]: image of 81x81 pixels exceeds"),
    ("bomb", r"image_bytes\[1\]: image of 100000x100000 pixels exceeds"),
])
def test_bad_requests_fail_clearly_and_the_model_keeps_serving(served, grpc_stub, bad, message):
  photo = np.array(Image.open(PHOTO).convert("RGB"))
  bad = {"webp": lambda: _encode(photo[:40, :40], "WEBP"), "tiff": lambda: _encode(photo[:40, :40], "TIFF"),
         "large_png": lambda: _encode(photo[:81, :81], "PNG"),
         "large_jpeg": lambda: _encode(photo[:90, :81], "JPEG"),
         "large_bmp": lambda: _encode(photo[:81, :81], "BMP"), "bomb": _huge_png_header}.get(bad, lambda: bad)()
  good = served["encoded"]["png"]
  for signature in ("serving_default", "probabilities"):
    with pytest.raises(grpc.RpcError) as error:
      grpc_stub.Predict(_request(signature, "image_bytes", [good, bad]), timeout=120)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, error.value.details()), error.value.details()
  # The same model answers the next request, and correctly.
  response = grpc_stub.Predict(_request("probabilities", "image_bytes", [good]), timeout=120)
  _assert_matches_keras(served, good, tf.make_ndarray(response.outputs["semantic_predictions"])[0],
                        tf.make_ndarray(response.outputs["probabilities"])[0])


def test_image_tensor_refuses_huge_images(served):
  with pytest.raises(tf.errors.InvalidArgumentError, match="image_tensor: images of 81x81 pixels exceed the limit max_image_pixels=6400"):
    served["loaded"].signatures["image_tensor"](image_tensor=np.zeros((1, 81, 81, 3), np.uint8))


# --- saved_model_cli ---------------------------------------------------------------------------------

def _saved_model_cli(*args):
  script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  command = [script] if os.path.exists(script) else [sys.executable, "-m",
                                                     "tensorflow.python.tools.saved_model_cli"]
  return subprocess.run(command + list(args), check=True, capture_output=True, text=True,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).stdout


def test_saved_model_cli_show_and_run(served, tmp_path):
  shown = _saved_model_cli("show", "--dir", served["export_dir"], "--all")
  serving = shown.split("signature_def['serving_default']")[1]
  # Inputs of unknown rank: the graph checks the shape itself (TF Serving feeds whatever it is sent).
  assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: unknown_rank" in serving
  assert "outputs['semantic_predictions_png_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" \
      in serving
  probabilities = shown.split("signature_def['probabilities']")[1]
  assert "outputs['semantic_predictions'] tensor_info:\n        dtype: DT_INT32\n        shape: (-1, -1, -1)" \
      in probabilities
  tensor = shown.split("signature_def['image_tensor']")[1]
  assert "inputs['image_tensor'] tensor_info:\n        dtype: DT_UINT8\n        shape: unknown_rank" in tensor

  pixels = served["images"]["png"][np.newaxis]
  np.save(tmp_path / "pixels.npy", pixels)
  _saved_model_cli("run", "--dir", served["export_dir"], "--tag_set", "serve", "--signature_def",
                   "image_tensor", "--inputs", f"image_tensor={tmp_path / 'pixels.npy'}",
                   "--outdir", str(tmp_path / "out"))
  labels = np.load(tmp_path / "out" / "semantic_predictions.npy")
  probabilities = np.load(tmp_path / "out" / "probabilities.npy")
  _assert_matches_keras(served, served["encoded"]["png"], labels[0], probabilities[0])


def test_tf1_session_loader_restores_every_variable(served):
  """TF Serving's C++ SavedModelBundle loads as TF1 did: a Session, the saver's restore op, the
  signature's tensor names. Keras 3 variables untracked as tf.Variables would load uninitialised."""
  with tf.compat.v1.Session(graph=tf.Graph()) as session:
    meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], served["export_dir"])
    signature = meta_graph.signature_def["probabilities"]
    labels, probabilities = session.run(
        [signature.outputs["semantic_predictions"].name, signature.outputs["probabilities"].name],
        {signature.inputs["image_bytes"].name: [served["encoded"]["png"]]})
  _assert_matches_keras(served, served["encoded"]["png"], labels[0], probabilities[0])


# --- answer size, shape checks, label map, non-finite models -------------------------------------------

def test_serving_default_answer_for_a_1000x563_photo_is_under_1_mb(served, tmp_path):
  """Class ids as one PNG per image: the REST answer for a 1000x563 JPEG is kilobytes (it was 37 MB
  with the probabilities, and a JSON list of ids alone costs 3 bytes a pixel, 1.7 MB)."""
  export_dir = export.export_saved_model(served["model"], str(tmp_path / "export"), OPTIONS)
  signatures = tf.saved_model.load(export_dir).signatures
  photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((1000, 563), Image.BILINEAR))
  jpeg = base64.b64encode(_encode(photo, "JPEG")).decode("ascii")
  body = json.dumps({"instances": [{"image_bytes": {"b64": jpeg}}]})
  answer = json.dumps(rest_predict(signatures, body))  # Python's separators are TF Serving's ", "
  print(f"serving_default REST answer for one 1000x563 JPEG: {len(answer):,} bytes")
  assert len(answer) < 1_000_000
  prediction = json.loads(answer)["predictions"][0]
  assert (prediction["height"], prediction["width"]) == (563, 1000)
  labels = _png_labels(prediction[export.LABELS_PNG_OUTPUT])
  full = rest_predict(signatures, json.dumps({"signature_name": "probabilities",
                                             "instances": [{"image_bytes": {"b64": jpeg}}]}))
  np.testing.assert_array_equal(labels, full["predictions"][0]["semantic_predictions"])
  assert labels.shape == (563, 1000) and labels.dtype == np.uint8


# Runs in a fresh process, as TF Serving does: the TF1 loader (SavedModelBundle), Session.run with the
# signature's tensor names, no Python-side shape check. A CHECK failure would abort this process.
SESSION_REQUESTS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, png_path = sys.argv[1:3]
    good_png = open(png_path, "rb").read()
    bad = [("image_tensor", np.zeros((41, 57, 3), np.uint8), "shape \\\\[41 57 3\\\\]; expected uint8 \\\\[batch, height, width, 3\\\\]"),
           ("image_tensor", np.zeros((1, 2, 41, 57, 3), np.uint8), "shape \\\\[1 2 41 57 3\\\\]; expected"),
           ("image_tensor", np.zeros((1, 41, 57, 4), np.uint8), "shape \\\\[1 41 57 4\\\\]; expected"),
           ("image_tensor", np.zeros((1, 0, 0, 3), np.uint8), "shape \\\\[1 0 0 3\\\\]; expected"),
           ("image_tensor", np.zeros((0, 41, 57, 3), np.uint8), "shape \\\\[0 41 57 3\\\\]; expected"),
           ("serving_default", np.array([[good_png]], object), "image_bytes: a string tensor of shape \\\\[1 1\\\\]"),
           ("serving_default", np.array([], object), "image_bytes: a string tensor of shape \\\\[0\\\\]"),
           ("probabilities", np.array(good_png, object), "image_bytes: a string tensor of shape \\\\[\\\\]")]
    import re
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
      meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], export_dir)
      def run(name, value, output):
        signature = meta_graph.signature_def[name]
        (key,) = signature.inputs
        return session.run(signature.outputs[output].name, {signature.inputs[key].name: value})
      for name, value, message in bad:
        try:
          run(name, value, "height" if name != "image_tensor" else "semantic_predictions")
        except tf.errors.InvalidArgumentError as e:
          assert re.search(message, e.message), (message, e.message)
        else:
          raise AssertionError(f"{name} answered {value.shape}")
      heights = run("serving_default", np.array([good_png], object), "height")
      labels = run("image_tensor", np.zeros((1, 41, 57, 3), np.uint8), "semantic_predictions")
    print("served after the bad requests:", heights, labels.shape)
""")


def test_bad_request_shapes_fail_clearly_and_the_server_keeps_serving(served, tmp_path):
  """A rank-3 tensor sent to image_tensor used to abort TF Serving (CHECK failure, SIGABRT)."""
  (tmp_path / "good.png").write_bytes(served["encoded"]["png"])
  done = subprocess.run([sys.executable, "-c", SESSION_REQUESTS, served["export_dir"], str(tmp_path / "good.png")],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  assert "served after the bad requests: [41] (1, 41, 57)" in done.stdout


def test_class_names_travel_with_the_export(served, tmp_path):
  from deeplab_tf.errors import UserError
  path = export.export_saved_model(served["model"], str(tmp_path / "named"), OPTIONS,
                                   class_names=["background", "road", "car"])
  with open(os.path.join(path, "assets", "labels.txt")) as f:
    assert f.read() == "background\nroad\ncar\n"
  assert export.read_exported_class_names(path) == ("background", "road", "car")
  loaded = tf.saved_model.load(path)
  assert loaded.labels_file.asset_path.numpy().decode().endswith(os.path.join("assets", "labels.txt"))
  # Without names: the ids.
  assert export.read_exported_class_names(served["export_dir"]) == ("0", "1", "2")
  for bad in (["a", "b"], ["a", "a", "b"], ["a", "b\nc", "d"]):
    with pytest.raises(UserError, match="class names"):
      export.export_saved_model(served["model"], str(tmp_path / "bad"), OPTIONS, class_names=bad)
  assert not os.path.exists(tmp_path / "bad")
  # The binary: from --dataset (a descriptor JSON), else from dataset.json beside the checkpoint.
  descriptor = tmp_path / "roads.json"
  descriptor.write_text(json.dumps({"name": "roads", "num_classes": 3, "ignore_label": 255,
                                    "class_names": ["background", "road", "car"]}))
  with flagsaver.flagsaver(checkpoint_dir=str(served["root"] / "train"), export_path=str(tmp_path / "base"),
                           dataset=str(descriptor)):
    export_bin.main([])
  assert export.read_exported_class_names(str(tmp_path / "base" / "1")) == ("background", "road", "car")
  train = tmp_path / "train"
  save_model_options(str(train), OPTIONS)
  tf.train.Checkpoint(model=served["model"]).save(str(train / "ckpt"))
  (train / "dataset.json").write_text(descriptor.read_text().replace("car", "bus"))
  with flagsaver.flagsaver(checkpoint_dir=str(train), export_path=str(tmp_path / "base")):
    export_bin.main([])
  assert export.read_exported_class_names(str(tmp_path / "base" / "2")) == ("background", "road", "bus")
  with flagsaver.flagsaver(checkpoint_dir=str(train), export_path=str(tmp_path / "base"), dataset="pascal_voc_seg"):
    with pytest.raises(UserError, match="--dataset=pascal_voc_seg: 21 classes, but the model predicts 3"):
      export_bin.main([])


def _broken_copy(model):
  """A copy of `model` whose first BatchNorm moving variance holds NaN (a diverged run's checkpoint)."""
  broken = build_deeplab(OPTIONS)
  broken.set_weights(model.get_weights())
  variance = next(w for w in broken.weights if "moving_variance" in w.path)
  variance.assign(np.full(variance.shape, np.nan, np.float32))
  return broken


def test_non_finite_models_are_refused_and_their_answers_too(served, tmp_path, monkeypatch):
  from deeplab_tf.errors import UserError
  broken = _broken_copy(served["model"])
  with pytest.raises(UserError, match="1 weight tensor\\(s\\) holding NaN or Inf .*moving_variance"):
    export.export_saved_model(broken, str(tmp_path / "nan"), OPTIONS)
  with pytest.raises(UserError, match="holding NaN or Inf"):
    export.export_tflite(broken, str(tmp_path / "nan.tflite"), (65, 65))
  assert not os.listdir(tmp_path)
  # Exported anyway (the check skipped): the signatures refuse to answer "class 0" from NaN.
  monkeypatch.setattr(export, "check_finite_model", lambda *args, **kwargs: None)
  loaded = tf.saved_model.load(export.export_saved_model(broken, str(tmp_path / "nan"), OPTIONS))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[\d\]: the probabilities of the model are not finite"):
    loaded.signatures["serving_default"](image_bytes=tf.constant([served["encoded"]["png"]] * 2))
  with pytest.raises(tf.errors.InvalidArgumentError, match="image_tensor: the probabilities of the model are not finite"):
    loaded.signatures["image_tensor"](image_tensor=served["images"]["png"][None])


def test_export_accepts_eval_scales_for_inference_scales(served, tmp_path):
  with flagsaver.flagsaver(checkpoint_dir=str(served["root"] / "train"), export_path=str(tmp_path / "base"),
                           eval_scales=[0.5, 1.0]):
    export_bin.main([])
  with open(tmp_path / "base" / "1" / "assets.extra" / "eval_options.json") as f:
    assert json.load(f)["eval_scales"] == [0.5, 1.0]
  with flagsaver.flagsaver(checkpoint_dir=str(served["root"] / "train"), export_path=str(tmp_path / "base"),
                           eval_scales=[0.5, 1.0], inference_scales=[1.0, 2.0]):
    with pytest.raises(UserError, match="are the same flag; give one"):
      export_bin.main([])
