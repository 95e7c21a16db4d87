"""`python -m stitchcli` (also what torchrun launches)."""

from stitchcli.cli import app

if __name__ == "__main__":
    app(prog_name="stitchcli")
