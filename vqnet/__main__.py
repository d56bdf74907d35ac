"""`python -m vqnet` runs the CLI (the tests use it to exercise the real entry point)."""

from vqnet.cli import main

main()
