from setuptools import find_packages, setup

setup(
    name="dglkd",
    version="0.1.0",
    description="Knowledge distillation for DGL: GNN/CNN teachers into GNN, MLP or CNN students",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["dglkd", "dglkd.*"]),
    package_data={"dglkd.data": ["bundled/*/*"]},
    install_requires=[
        "torch>=2.0",
        "dgl>=2.1",
        "numpy",
        "scipy",
        "pandas",
        "pydantic>=2",
        "pyyaml",
        "ogb>=1.3",
        "scikit-learn",
        "tensorboard",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "hypothesis>=6"]},
    entry_points={"console_scripts": ["dglkd=dglkd.cli:main"]},
)
