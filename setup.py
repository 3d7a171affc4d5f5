"""Package list for setuptools; the folder mapping itself lives in setup.cfg ([options] package_dir).

backends/, models/ and convert/ sit at the top of the repository (ARCHITECTURE.md) but install as mmx.backends,
mmx.models and mmx.convert only: a top-level `models` or `convert` import name would collide with half of PyPI.
"""
from setuptools import find_packages, setup

MAPPED = {"mmx.backends": "backends", "mmx.models": "models", "mmx.convert": "convert"}

packages = find_packages(include=["mmx", "mmx.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages)
