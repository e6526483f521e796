"""``python -m openseer ...``: the ``openseer`` command (e.g. under ``torchrun -m openseer`` or without the script)."""

from openseer.cli import main

if __name__ == "__main__":
    main()
