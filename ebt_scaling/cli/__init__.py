"""The ``ebt-scale`` command line. One small module per command; heavy imports happen inside commands
so that ``ebt-scale --help`` never imports torch or ray."""
