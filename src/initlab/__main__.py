"""``python -m initlab <stage>``: the same CLI as the ``initlab`` command."""

from initlab.cli import main

if __name__ == "__main__":
    main()
