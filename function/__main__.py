"""`python -m function URL...`"""

from .cli import run

run()
