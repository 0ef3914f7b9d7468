"""One module per ``eksft`` subcommand, each with ``main(argv) -> int``."""
