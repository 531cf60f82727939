"""artv_jax: ART·V (auto-regressive text-to-video with diffusion models) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="artv_jax",
    version="0.1.0",
    description="ART·V auto-regressive text-to-video diffusion on TPUs and GPUs, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # jax >= 0.10
    packages=setuptools.find_packages(include=["artv_jax", "artv_jax.*"]),
    package_data={"artv_jax.checkpoints": ["presets/*/*/*.json"]},
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "transformers>=5.0,<6",
        "tensorflow-datasets>=4.9,<5",
        # The input pipeline: TFDS's array_record files read by index, decoded by Grain workers.
        "grain>=0.2.12,<0.3",
        "array-record>=0.7,<1",
        # TFDS builds data sets with it (the CPU build keeps TF off the accelerators).
        "tensorflow-cpu>=2.16,<3",
        # tensorflow-datasets imports it when preparing a builder, but does not require it.
        "importlib_resources",
        "tensorboard>=2.16,<3",  # event files of the training metrics
        "tqdm>=4.60",
        "ml_collections>=1.0,<2",
        "imageio>=2.34,<3",
        "imageio-ffmpeg>=0.5,<1",
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "scipy>=1.10",
        "absl-py>=2.0,<3",
    ],
    extras_require={
        # The accelerator builds of jax: pip install -e ".[cuda]" (NVIDIA GPUs, CUDA 13) or
        # ".[tpu]" (Cloud TPU VMs, libtpu).
        "cuda": ["jax[cuda13]>=0.10,<0.12"],
        "tpu": ["jax[tpu]>=0.10,<0.12"],
        # torch is pinned: an unpinned torch pulls several GB of CUDA packages.
        "test": [
            "pytest>=8,<10",
            "torch==2.13.0",
            "diffusers>=0.35,<0.50",
        ],
    },
)
