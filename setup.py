"""Packaging for catga_sync (setuptools; the version lives in catga_sync/_version.py)."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """Read ``__version__`` from the package without importing it."""
    text = (HERE / "catga_sync" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("__version__ not found in catga_sync/_version.py")
    return match.group(1)


setup(
    name="catga-sync",
    version=read_version(),
    description=(
        "Raft-based cluster coordination for Flask apps and Python workers, "
        "with state in SQL through SQLAlchemy"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["catga_sync", "catga_sync.*"]),
    package_data={"catga_sync": ["py.typed"]},
    include_package_data=True,
    zip_safe=False,
    entry_points={"console_scripts": ["catga = catga_sync.cli.main:main"]},
    python_requires=">=3.10",
    install_requires=[
        "sqlalchemy>=2",
        "flask>=3",
        "requests",
        "tenacity",
        "apscheduler>=3.10,<4",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        "mysql": ["PyMySQL>=1.1"],
        "metrics": ["prometheus_client>=0.17"],
        "test": [
            "pytest>=8",
            "pytest-cov",
            "pytest-xdist",
            "pytest-timeout",
            "hypothesis",
            "prometheus_client>=0.17",
            "gunicorn>=22",  # tests/e2e runs the example under it (example_flask/gunicorn.conf.py)
            "trustme",  # tests/test_tls.py makes its CA and node certificates at test time
            # tests/test_deploy.py: deploy/k8s/ against the Kubernetes schemas, and the YAML of
            # deploy/ read directly (kubernetes-validate depends on PyYAML; listed since the
            # tests import yaml themselves)
            "kubernetes-validate>=1.28",
            "pyyaml>=6",
        ],
        "docs": ["sphinx>=7", "furo"],
        # benchmarks/ only (--plot): never imported by catga_sync
        "bench": ["matplotlib>=3.6"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Framework :: Flask",
        "Topic :: System :: Distributed Computing",
        "Typing :: Typed",
    ],
)
