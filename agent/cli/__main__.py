"""`python -m agent.cli`, the same as `cra`."""

from agent.cli import app

if __name__ == "__main__":
    app()
