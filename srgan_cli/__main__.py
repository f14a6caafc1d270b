"""`python -m srgan_cli` runs the same command as `srgan`."""

from .cli.app import main

if __name__ == "__main__":
    main()
