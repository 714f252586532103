"""Source adapters that publish real streams into node topics.

``streamlearn connect <kind> ...`` with kind ``csv``, ``jsonl``, ``mqtt``,
``http`` or ``river`` (see the README, "Plug in your own sensor stream"). Every reading is checked
against the stream's schema (:mod:`streamlearn.connectors.schema`) and published as sample
JSON into ``<prefix>.samples.<node>``; bad records go to ``<prefix>.deadletter``
with the reason and are counted. One ``run_*`` function per kind returns the
counts (:class:`~streamlearn.connectors.publish.ConnectStats`).
"""

from streamlearn.connectors.cli import add_connect_parser, main

__all__ = ["add_connect_parser", "main"]
