try:
    from ebt_scaling.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the commands are imported: exit 130 as at any later moment
    import sys

    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

main()
