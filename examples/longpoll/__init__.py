"""The long-polling pattern: an async actor that loops on a remote call and stays responsive.

Run it with ``python -m examples.longpoll`` (``--help`` for the options); see
``README.md`` beside this file.
"""
