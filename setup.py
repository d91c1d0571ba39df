from setuptools import find_packages, setup

setup(
    name="dgn-plugins",
    version="0.1.0",
    description="Dynamic Group Normalization for MMDetection, MMSegmentation and Detectron2",
    packages=find_packages(include=["dgn_plugins", "dgn_plugins.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.0", "numpy", "scipy"],
    extras_require={
        "mm": ["mmengine==0.10.7", "mmcv>=2.0.0,<2.2.0", "mmdet==3.3.0",
               "mmsegmentation==1.2.2", "ftfy", "regex", "pycocotools>=2.0.8"],
        "tools": ["pycocotools>=2.0.8", "matplotlib"],
        "test": ["pytest", "hypothesis"],
        "bench": ["k-means-constrained"],
    },
)
