"""`python -m slimkit ...` runs the `slimkit` command."""

from slimkit.cli.main import app

app(prog_name="slimkit")
