"""``python -m defectdet``: the same command line as ``defectdet``."""

from defectdet.cli import main

if __name__ == "__main__":
    main()
