"""Package discovery is here rather than in pyproject.toml for one reason: the repository's top-level `saes/`
folder (the shipped SAEs) is installed as the package data `workbench/saes/shipped/`, so that
`load_sae("synthsocial/image-embed")` works after a normal (non-editable) install too. Everything else about the
package is in pyproject.toml."""
from pathlib import Path

from setuptools import find_packages, setup

shipped = ["workbench.saes.shipped"] if (Path(__file__).resolve().parent / "saes").is_dir() else []
setup(
    packages=find_packages(include=["workbench*"]) + shipped,
    package_dir={name: "saes" for name in shipped},
)
