"""``python -m xreg`` runs the command line."""

from xreg.cli import app

app(prog_name="xreg")
