"""jaxalign: pure-functional, sharded language-model alignment in JAX."""

from setuptools import find_packages, setup

setup(
    name="jaxalign",
    version="0.1.0",
    description="Aligning language models in JAX: SFT, DPO and family, on a device mesh.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxalign", "jaxalign.*"]),
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "tensorflow-datasets>=4.9.8,<5",
        "array-record>=0.7,<0.9",
        "sentencepiece>=0.2,<0.3",
        "tokenizers>=0.20,<1",  # Hugging Face tokenizer.json (model.hf_path); no torch
        "jinja2>=3.1.4,<4",  # chat templates of Hugging Face tokenizers
        "ml-dtypes>=0.4",  # bfloat16 safetensors on the host (also a jax dependency)
        "ml-collections>=1.0,<2",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
    ],
    extras_require={
        # (nbclient, ipykernel and matplotlib run experiments/colab.ipynb in the tests)
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "nbclient>=0.10,<1", "nbformat>=5.10,<6",
                 "ipykernel>=6.29,<8", "matplotlib>=3.8,<4"],
        "plot": ["matplotlib>=3.8,<4"],
        # transformers and torch only check parity in tests; jaxalign itself never imports them.
        "hf": ["torch==2.13.0", "transformers>=4.45,<6", "safetensors>=0.4,<1", "tokenizers>=0.20,<1"],
        # side-by-side benchmarks only (experiments/bench/compare_trl.py, generate.py --hf)
        "bench": ["torch==2.13.0", "transformers>=4.45,<6", "trl>=1.0,<2"],
    },
)
