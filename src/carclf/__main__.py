"""``python -m carclf <command> ...``: the same as the ``carclf`` console command."""

from carclf.commands import run

if __name__ == "__main__":
    run()
