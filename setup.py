"""vismae_jax: VIS-MAE (Swin masked autoencoders for medical images) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="vismae_jax",
    version="0.1.0",
    description="Swin-Transformer masked autoencoder pretraining and fine-tuning for medical "
                "images, in JAX/Flax (a reimplementation of VIS-MAE)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["vismae_jax*", "data_pipelines*"]),
    package_data={"data_pipelines": ["sample/*.md", "sample/us/*.png", "sample/us/labels.csv",
                                     "sample/xr/*.jpeg"]},
    # Lower bounds are the versions tested together (Python 3.11, CPU).
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "ml-collections>=1.1.0",
        "tensorflow-datasets>=4.9.10",
        "numpy>=2.0",
        "msgpack>=1.0",
        "pillow>=10.0",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "scikit-learn>=1.5",
        "scipy>=1.13",  # volume resampling (data_pipelines.volumes)
        "cryptography>=44.0",  # ingest's plan files, which name the source files
    ],
    extras_require={
        "torch": ["torch>=2.1", "safetensors>=0.8.0"],
        # DICOM / NIfTI readers (with JPEG and JPEG 2000 decoders) and the Beam ingest pipeline.
        "ingest": ["apache-beam>=2.77.0", "pydicom>=3.0.2", "nibabel>=5.4.2", "pylibjpeg>=2.1.0",
                   "pylibjpeg-libjpeg>=2.5.0", "pylibjpeg-openjpeg>=2.6.0"],
        # MONAI, the client of the interchange (convert/monai.py); never imported by the models.
        "monai": ["monai>=1.6", "torch>=2.1", "safetensors>=0.8.0"],
        "test": ["pytest>=8.0", "pytest-xdist>=3.6", "pydicom-data>=1.0.0"],
    },
)
