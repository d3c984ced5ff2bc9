"""The process environment speechq writes, in one place. Configuration is read through `Settings`; these
variables are for what reads only the environment: CUDA, Hugging Face, Flower, and child processes."""

from __future__ import annotations

import os


def pin_device(device: str) -> None:
    """Show this process only GPU `device` (as device 0); call before anything can import CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device


def stay_offline() -> None:
    """Hugging Face libraries never reach the network: workers open only prepared models."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def export(**variables: str) -> None:
    """Set variables for this process and every process it starts (REDIS_URL, FLOWER_BASIC_AUTH)."""
    os.environ.update(variables)


def for_child(**overrides: str) -> dict[str, str]:
    """The environment of a child process: this one's, with `overrides`."""
    return {**os.environ, **overrides}
