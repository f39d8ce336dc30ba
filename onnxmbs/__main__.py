"""``python -m onnxmbs``: the command line."""
from onnxmbs.cli import main

main(prog_name="onnxmbs")
