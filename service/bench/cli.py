"""Temporary: replaced by the benchmark's own command line."""

from __future__ import annotations

import argparse

from service.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*")


def run(args: argparse.Namespace, settings: Settings) -> int:
    print("buddycast bench is not built yet")
    return 2
