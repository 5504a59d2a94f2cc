"""yaad at the papers' sizes: ``--config=configs/yaad.py:<size>`` (tiny, 170m, 340m, 760m, 1.3b).

Model preset from ``configs/models.py``; training recipe from ``configs/base.py:paper_config``.
"""

from configs import base


def get_config(arg=None):
    return base.paper_config("yaad", arg or "340m")
