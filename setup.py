"""Packaging for deeplab_tf: DeepLab (v3, v3+) for TensorFlow 2 / Keras 3.

The repository's `datasets/` (the converters) is installed as `deeplab_tf.datasets` and `experiments/`
(the flagfiles) as `deeplab_tf/experiments/`, so that nothing is installed under a top-level name of
another project (Hugging Face's `datasets`); from a checkout, `python -m datasets.build_voc2012_data`
works as in the original.
"""
from setuptools import find_packages, setup

# Optional features, each refused with its `pip install 'deeplab_tf[<extra>]'` line when missing.
EXTRAS = {
    # Cityscapes labels drawn from *_gtFine_polygons.json by build_cityscapes_data.
    "cityscapes": ["cityscapesscripts>=2.3,<3"],
    # Reading datasets prepared with `tfds build` (build_dataset(tfds_name=...)).
    "tfds": ["tensorflow-datasets>=4.9"],
    # DeepLabv2's dense CRF (deeplab_tf.evaluation.crf); builds from source, needs a C++ compiler.
    "crf": ["pydensecrf2>=1.1,<2"],
    # The LiteRT interpreter, to run the .tflite files deeplab_export_model --format=tflite writes.
    "tflite": ["ai-edge-litert>=2.3,<3"],
    "and-cuda": ["tensorflow[and-cuda]>=2.21,<2.22"],
}
# Tests run every optional feature but the CRF (a compiler is not everywhere: `make test` adds [crf]),
# TFLite exports with LiteRT, and build TF Serving's gRPC requests.
EXTRAS["test"] = (["pytest", "tensorflow-serving-api>=2.21,<2.22"] + EXTRAS["cityscapes"] + EXTRAS["tfds"]
                  + EXTRAS["tflite"])

setup(
    name="deeplab_tf",
    version="0.1.0",
    description="DeepLabv3 / DeepLabv3+ semantic segmentation for TensorFlow 2 and Keras 3, "
    "faithful to research/deeplab and able to load its model-zoo checkpoints.",
    packages=find_packages(include=["deeplab_tf", "deeplab_tf.*"])
    + ["deeplab_tf.datasets", "deeplab_tf.experiments"],
    package_dir={"deeplab_tf.datasets": "datasets", "deeplab_tf.experiments": "experiments"},
    package_data={
        "deeplab_tf.model": ["*.json"],  # the Dense Prediction Cell configs
        "deeplab_tf.experiments": ["*.flags", "model_zoo/*.flags"],
    },
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "numpy",
        "absl-py",
        "pillow",
        "scipy",
        "tqdm",
        "matplotlib",  # evaluation charts (confusion matrix, per-class IoU)
        "tensorboard>=2.21,<2.22",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "deeplab_train=deeplab_tf.bin.train:run",
            "deeplab_eval=deeplab_tf.bin.eval:run",
            "deeplab_vis=deeplab_tf.bin.vis:run",
            "deeplab_export_model=deeplab_tf.bin.export_model:run",
            "deeplab_predict=deeplab_tf.bin.predict:run",
            "deeplab_convert_checkpoint=deeplab_tf.bin.convert_checkpoint:run",
            "deeplab_build_voc_data=deeplab_tf.datasets.build_voc2012_data:run",
            "deeplab_build_cityscapes_data=deeplab_tf.datasets.build_cityscapes_data:run",
            "deeplab_build_ade20k_data=deeplab_tf.datasets.build_ade20k_data:run",
            "deeplab_build_folder_data=deeplab_tf.datasets.build_folder_data:run",
        ],
    },
)
