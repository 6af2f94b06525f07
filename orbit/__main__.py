"""`python -m orbit` is the same as the `orbit` command."""
from orbit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
