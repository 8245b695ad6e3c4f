"""Packaging for deeplab_tf: DeepLab (v3, v3+) for TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="deeplab_tf",
    version="0.1.0",
    description="DeepLabv3 / DeepLabv3+ semantic segmentation for TensorFlow 2 and Keras 3, "
    "faithful to research/deeplab and able to load its model-zoo checkpoints.",
    packages=find_packages(include=["deeplab_tf", "deeplab_tf.*", "datasets", "datasets.*"]),
    package_data={"deeplab_tf.model": ["*.json"]},  # the Dense Prediction Cell configs
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-datasets>=4.9",
        "numpy",
        "absl-py",
        "pillow",
        "scipy",
        "tqdm",
        "tensorboard>=2.21,<2.22",
        "cityscapesscripts>=2.3,<3",
    ],
    extras_require={
        "test": ["pytest"],
        # DeepLabv2's dense CRF (deeplab_tf.evaluation.crf); builds from source, needs a C++ compiler.
        "crf": ["pydensecrf2>=1.1,<2"],
        "and-cuda": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
    entry_points={
        "console_scripts": [
            "deeplab_train=deeplab_tf.bin.train:run",
            "deeplab_eval=deeplab_tf.bin.eval:run",
            "deeplab_vis=deeplab_tf.bin.vis:run",
            "deeplab_export_model=deeplab_tf.bin.export_model:run",
            "deeplab_convert_checkpoint=deeplab_tf.bin.convert_checkpoint:run",
        ],
    },
)
