"""`python -m distil`: the same as the `distil` command (`distil.cli.main`)."""

from distil.cli import main

if __name__ == "__main__":
    main()
