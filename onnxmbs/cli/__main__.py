from onnxmbs.cli import main

main()
